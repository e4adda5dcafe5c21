"""JDSH: Joint-modal Distribution-based Similarity Hashing (Liu et al., SIGIR 2020). Unsupervised.

For a batch with similarities ``S_I = 2 cos(F_I, F_I) - 1`` and ``S_T = 2 cos(F_T, F_T) - 1`` (in
[-1, 1], as in DJSRH, whose code JDSH builds on; the thresholds below live on that scale):

    S_high = rownorm(S_I) rownorm(S_T)^T                       (joint-modal, second order)
    S_     = a S_I + b S_T + l (S_high + S_high^T) / 2
    S_     <- S_ (1 + L1 exp(-(S_ - MIN)))   where S_ < MIN      (distribution-based re-weighting:
    S_     <- S_ (1 + L2 exp(S_ - MAX))      where S_ > MAX       push clear pairs further out)
    S      = mu S_
    L = INTRA MSE(B_I B_I^T, S) + MSE(B_I B_T^T, S) + MSE(B_T B_I^T, S) - mean(diag(B_I B_T^T))
        + INTRA MSE(B_T B_T^T, S)

with ``B = norm(tanh(alpha h))`` as in DJSRH and ``sign(h)`` at retrieval.

Reading of the public code, stated: the paper fits two distributions to the similarity histogram
to place the left and right thresholds; the released MIRFlickr configuration gives them directly
(MIN = -0.52, MAX = 0.68), and that is what ``left``/``right`` are here. ``alpha = sqrt(epoch + 1)``
is taken from DJSRH, whose training loop JDSH reuses. Heads are MLPs on frozen features.
"""

from __future__ import annotations

import math

from cmhash.methods import BatchSize, Epochs, LearningRate, Threshold, Weight, Width
from cmhash.methods.network import NetworkHash, mlp


def jdsh_affinity(image_features, text_features, a: float, b: float, high: float, mu: float,
                  left: float, right: float, left_weight: float, right_weight: float):
    """JDSH's re-weighted joint-modal similarity matrix of a batch ((m, m) torch tensor)."""
    import torch
    import torch.nn.functional as F

    fi, ft = F.normalize(image_features, dim=1), F.normalize(text_features, dim=1)
    s_image, s_text = 2 * fi @ fi.T - 1, 2 * ft @ ft.T - 1
    s_high = F.normalize(s_image, dim=1) @ F.normalize(s_text, dim=1).T
    joint = a * s_image + b * s_text + high * (s_high + s_high.T) / 2
    weight = torch.ones_like(joint)
    weight = torch.where(joint < left, 1 + left_weight * torch.exp(-(joint - left)), weight)
    weight = torch.where(joint > right, 1 + right_weight * torch.exp(joint - right), weight)
    return mu * joint * weight


def jdsh_loss(image_codes, text_codes, affinity, intra: float):
    """JDSH's loss for relaxed codes (rows normalised here) and an affinity matrix."""
    import torch
    import torch.nn.functional as F

    bi, bt = F.normalize(image_codes, dim=1), F.normalize(text_codes, dim=1)
    cross = bi @ bt.T
    return (intra * F.mse_loss(bi @ bi.T, affinity) + F.mse_loss(cross, affinity) + F.mse_loss(cross.T, affinity)
            - torch.diagonal(cross).mean() + intra * F.mse_loss(bt @ bt.T, affinity))


class JDSH(NetworkHash):
    def __init__(self, bits: int, seed: int = 0, device: str = "auto", a: Weight = 0.5, b: Weight = 0.1,
                 high: Threshold = 0.4, mu: Weight = 1.4, left: Threshold = -0.52, right: Threshold = 0.68,
                 left_weight: Weight = 0.1, right_weight: Weight = 0.2, intra: Weight = 0.1, hidden: Width = 1024,
                 epochs: Epochs = 40, batch_size: BatchSize = 32, lr: LearningRate = 0.01, momentum: Weight = 0.9,
                 weight_decay: Weight = 5e-4, progress: bool = True):
        super().__init__(bits, seed, device, epochs, batch_size, progress)
        self.affinity_settings = dict(a=a, b=b, high=high, mu=mu, left=left, right=right,
                                      left_weight=left_weight, right_weight=right_weight)
        self.intra, self.hidden = intra, int(hidden)
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay

    def build_networks(self, image_dim, text_dim, label_dim):
        return {"image": mlp(image_dim, self.hidden, self.bits), "text": mlp(text_dim, self.hidden, self.bits)}

    def make_optimizers(self):
        import torch

        return [torch.optim.SGD(self.nets.parameters(), lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay,
                                fused=True)]

    def batch_loss(self, batch, epoch):
        import torch

        alpha = math.sqrt(epoch + 1.0)
        affinity = jdsh_affinity(batch.images, batch.texts, **self.affinity_settings)
        return jdsh_loss(torch.tanh(alpha * self.nets["image"](batch.images)),
                         torch.tanh(alpha * self.nets["text"](batch.texts)), affinity, self.intra)
