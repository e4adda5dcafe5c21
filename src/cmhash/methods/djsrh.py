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

from cmhash.methods import BatchSize, Epochs, LearningRate, Share, Weight, Width
from cmhash.methods.network import NetworkHash, affinity_reconstruction_loss, mlp


def joint_semantic_affinity(image_features, text_features, beta: float, eta: float, mu: float):
    """The scaled joint-semantics matrix S of a batch (torch tensors in, (m, m) tensor out)."""
    import torch.nn.functional as F

    fi, ft = F.normalize(image_features, dim=1), F.normalize(text_features, dim=1)
    s_image = 2 * fi @ fi.T - 1
    s_text = 2 * ft @ ft.T - 1
    joint = beta * s_image + (1 - beta) * s_text
    m = joint.shape[0]
    return mu * ((1 - eta) * joint + eta * (joint @ joint.T) / m)


class DJSRH(NetworkHash):
    rate_setting = "lr_image"  # (and lr_text)

    def __init__(
        self,
        bits: int,
        seed: int = 0,
        device: str = "auto",
        beta: Share = 0.9,
        eta: Share = 0.4,
        mu: Weight = 1.5,
        lambda1: Weight = 0.1,
        lambda2: Weight = 0.1,
        hidden: Width = 1024,
        epochs: Epochs = 40,
        batch_size: BatchSize = 32,
        lr_image: LearningRate = 1e-3,
        lr_text: LearningRate = 1e-2,
        momentum: Weight = 0.9,
        weight_decay: Weight = 5e-4,
        progress: bool = True,
    ):
        super().__init__(bits, seed, device, epochs, batch_size, progress)
        self.beta, self.eta, self.mu, self.lambda1, self.lambda2 = beta, eta, mu, lambda1, lambda2
        self.hidden = int(hidden)
        self.lr_image, self.lr_text, self.momentum, self.weight_decay = lr_image, lr_text, momentum, weight_decay

    def build_networks(self, image_dim, text_dim, label_dim):
        return {"image": mlp(image_dim, self.hidden, self.bits), "text": mlp(text_dim, self.hidden, self.bits)}

    def make_optimizers(self):
        import torch

        sgd = lambda net, lr: torch.optim.SGD(net.parameters(), lr=lr, momentum=self.momentum,  # noqa: E731
                                              weight_decay=self.weight_decay, fused=True)
        return [sgd(self.nets["image"], self.lr_image), sgd(self.nets["text"], self.lr_text)]

    def batch_loss(self, batch, epoch):
        import torch

        alpha = math.sqrt(epoch + 1.0)
        affinity = joint_semantic_affinity(batch.images, batch.texts, self.beta, self.eta, self.mu)
        codes_image = torch.tanh(alpha * self.nets["image"](batch.images))
        codes_text = torch.tanh(alpha * self.nets["text"](batch.texts))
        return affinity_reconstruction_loss(codes_image, codes_text, affinity, self.lambda1, self.lambda2)
