"""DJSRH: Deep Joint-Semantics Reconstructing Hashing (Su, Zhong & Zhang, ICCV 2019). Unsupervised.

Given a batch of m items with image features F_I and text features F_T:

    S_I = 2 cos(F_I, F_I) - 1,   S_T = 2 cos(F_T, F_T) - 1          (similarities in [-1, 1])
    S~  = beta S_I + (1 - beta) S_T                                  (joint semantics)
    S   = mu ((1 - eta) S~ + eta S~ S~^T / m)                        (high-order neighbours, scaled)
    B_I = norm(tanh(alpha h_I)),  B_T = norm(tanh(alpha h_T)),  alpha = sqrt(epoch + 1)
    L   = lambda1 MSE(B_I B_I^T, S) + MSE(B_I B_T^T, S) + lambda2 MSE(B_T B_T^T, S)

and codes are ``sign(h)`` at retrieval time. There is no quantisation term (as in the paper).

Departure from the original, stated: the paper fine-tunes AlexNet for images and trains an MLP
on bag-of-words texts. cmhash works on frozen encoder features, so both branches are MLPs
(``features -> hidden -> bits``); the objective, optimiser and schedule are the paper's.
Batches are drawn with a seeded generator, so a run is reproducible on a given device.
"""

from __future__ import annotations

import math

import numpy as np
from tqdm import tqdm

from cmhash.device import resolve_device
from cmhash.methods import to_codes


def joint_semantic_affinity(image_features, text_features, beta: float, eta: float, mu: float):
    """The scaled joint-semantics matrix S of a batch (torch tensors in, (m, m) tensor out)."""
    import torch.nn.functional as F

    fi, ft = F.normalize(image_features, dim=1), F.normalize(text_features, dim=1)
    s_image = 2 * fi @ fi.T - 1
    s_text = 2 * ft @ ft.T - 1
    joint = beta * s_image + (1 - beta) * s_text
    m = joint.shape[0]
    return mu * ((1 - eta) * joint + eta * (joint @ joint.T) / m)


def djsrh_loss(image_codes, text_codes, affinity, lambda1: float, lambda2: float):
    """DJSRH's reconstruction loss of ``affinity`` by the relaxed codes (rows are normalised here)."""
    import torch.nn.functional as F

    bi, bt = F.normalize(image_codes, dim=1), F.normalize(text_codes, dim=1)
    return (
        lambda1 * F.mse_loss(bi @ bi.T, affinity)
        + F.mse_loss(bi @ bt.T, affinity)
        + lambda2 * F.mse_loss(bt @ bt.T, affinity)
    )


def _mlp(in_dim: int, hidden: int, bits: int):
    from torch import nn

    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, bits))


class DJSRH:
    def __init__(
        self,
        bits: int,
        seed: int = 0,
        device: str = "auto",
        beta: float = 0.9,
        eta: float = 0.4,
        mu: float = 1.5,
        lambda1: float = 0.1,
        lambda2: float = 0.1,
        hidden: int = 4096,
        epochs: int = 80,
        batch_size: int = 32,
        lr_image: float = 1e-3,
        lr_text: float = 1e-2,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        progress: bool = True,
    ):
        self.bits, self.seed, self.device = bits, seed, resolve_device(device)
        self.beta, self.eta, self.mu, self.lambda1, self.lambda2 = beta, eta, mu, lambda1, lambda2
        self.hidden, self.epochs, self.batch_size = int(hidden), int(epochs), int(batch_size)
        self.lr_image, self.lr_text, self.momentum, self.weight_decay = lr_image, lr_text, momentum, weight_decay
        self.progress = progress
        self.image_net = self.text_net = None
        self.history: list[float] = []

    def _build(self, image_dim: int, text_dim: int) -> None:
        import torch

        torch.manual_seed(self.seed)
        self.image_net = _mlp(image_dim, self.hidden, self.bits).to(self.device)
        self.text_net = _mlp(text_dim, self.hidden, self.bits).to(self.device)

    def fit(self, image_features, text_features, labels=None, aligned=False):
        import torch

        self._build(image_features.shape[1], text_features.shape[1])
        fi = torch.as_tensor(image_features, dtype=torch.float32, device=self.device)
        ft = torch.as_tensor(text_features, dtype=torch.float32, device=self.device)
        opt_image = torch.optim.SGD(self.image_net.parameters(), lr=self.lr_image, momentum=self.momentum, weight_decay=self.weight_decay)
        opt_text = torch.optim.SGD(self.text_net.parameters(), lr=self.lr_text, momentum=self.momentum, weight_decay=self.weight_decay)
        generator = torch.Generator().manual_seed(self.seed)
        n = fi.shape[0]
        self.image_net.train()
        self.text_net.train()
        for epoch in tqdm(range(self.epochs), desc=f"DJSRH {self.bits} bits", unit="epoch", disable=not self.progress):
            alpha = math.sqrt(epoch + 1.0)
            order = torch.randperm(n, generator=generator).to(self.device)
            total, batches = 0.0, 0
            for start in range(0, n, self.batch_size):
                idx = order[start : start + self.batch_size]
                if len(idx) < 2:  # a similarity matrix needs at least two items
                    continue
                affinity = joint_semantic_affinity(fi[idx], ft[idx], self.beta, self.eta, self.mu)
                codes_image = torch.tanh(alpha * self.image_net(fi[idx]))
                codes_text = torch.tanh(alpha * self.text_net(ft[idx]))
                loss = djsrh_loss(codes_image, codes_text, affinity, self.lambda1, self.lambda2)
                opt_image.zero_grad()
                opt_text.zero_grad()
                loss.backward()
                opt_image.step()
                opt_text.step()
                total, batches = total + loss.item(), batches + 1
            self.history.append(total / max(batches, 1))
        return self

    def _encode(self, net, features: np.ndarray) -> np.ndarray:
        import torch

        net.eval()
        with torch.inference_mode():
            out = net(torch.as_tensor(features, dtype=torch.float32, device=self.device))
        return to_codes(out.cpu().numpy())

    def encode_images(self, features):
        return self._encode(self.image_net, features)

    def encode_texts(self, features):
        return self._encode(self.text_net, features)

    def state_dict(self):
        return {
            "image_dim": self.image_net[0].in_features,
            "text_dim": self.text_net[0].in_features,
            "image_net": {k: v.cpu() for k, v in self.image_net.state_dict().items()},
            "text_net": {k: v.cpu() for k, v in self.text_net.state_dict().items()},
            "history": list(self.history),
        }

    def load_state_dict(self, state):
        self._build(int(state["image_dim"]), int(state["text_dim"]))
        self.image_net.load_state_dict(state["image_net"])
        self.text_net.load_state_dict(state["text_net"])
        self.history = list(state.get("history", []))
