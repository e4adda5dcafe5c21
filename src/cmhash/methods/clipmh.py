"""CLIPMH: CLIP Multi-modal Hashing (Zhu et al., 2023/2024). Supervised, *fused* codes.

One code per image-text **pair**: retrieval is pair-to-pair (the query is a pair), so its metrics are
reported under ``p2p`` rather than ``i2t`` / ``t2i``.

    u = tanh(W_I f_I),  v = tanh(W_T f_T)          (Linear(d -> 256) per modality)
    x = [u, v]                                      (512-d)
    g = sigmoid(W_g x) * x                          (context gating)
    h = tanh(W_h g)                                 (Linear(512 -> K)); code = sign(h)

The paper's loss is "a metric loss that pulls similar pairs together and pushes dissimilar ones
apart, plus a quantisation loss", with unpublished weights and margin; cmhash chooses, with
``c_ij = cos(h_i, h_j)`` and ``S_ij = 1`` when the pairs share a label:

    L = mean(S (1 - c)^2 + (1 - S) max(0, c - margin)^2) + q mean((|h| - 1)^2)

with margin 0 (dissimilar codes at least orthogonal) and q = 0.1. Adam, lr 1e-3. The public code is
incomplete; this module follows the architecture as the paper describes it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cmhash.methods import BatchSize, Epochs, LearningRate, Weight, Width
from cmhash.methods.network import NetworkHash, label_similarity


class FusionNet(nn.Module):
    """Per-modality projections, concatenation, context gating, hash layer (see the module docstring)."""

    def __init__(self, image_dim: int, text_dim: int, bits: int, width: int = 256):
        super().__init__()
        self.image = nn.Linear(image_dim, width)
        self.text = nn.Linear(text_dim, width)
        self.gate = nn.Linear(2 * width, 2 * width)
        self.hash = nn.Linear(2 * width, bits)

    def forward(self, images, texts):
        fused = torch.cat([torch.tanh(self.image(images)), torch.tanh(self.text(texts))], dim=1)
        return torch.tanh(self.hash(torch.sigmoid(self.gate(fused)) * fused))


def clipmh_loss(codes, similarity, margin: float, quantization: float):
    """The metric + quantisation loss above, for (m, K) relaxed codes and an (m, m) 0/1 similarity."""
    cosine = F.normalize(codes, dim=1) @ F.normalize(codes, dim=1).T
    metric = (similarity * (1 - cosine) ** 2 + (1 - similarity) * (cosine - margin).clamp(min=0) ** 2).mean()
    return metric + quantization * ((codes.abs() - 1) ** 2).mean()


class CLIPMH(NetworkHash):
    supervised = True
    fused = True

    def __init__(self, bits: int, seed: int = 0, device: str = "auto", width: Width = 256, margin: Weight = 0.0,
                 quantization: Weight = 0.1, epochs: Epochs = 50, batch_size: BatchSize = 128, lr: LearningRate = 1e-3,
                 progress: bool = True):
        super().__init__(bits, seed, device, epochs, batch_size, progress)
        self.width, self.margin, self.quantization, self.lr = int(width), margin, quantization, lr

    def build_networks(self, image_dim, text_dim, label_dim):
        return {"fusion": FusionNet(image_dim, text_dim, self.bits, self.width)}

    def make_optimizers(self):
        return [torch.optim.Adam(self.nets.parameters(), lr=self.lr, fused=True)]

    def batch_loss(self, batch, epoch):
        codes = self.nets["fusion"](batch.images, batch.texts)
        return clipmh_loss(codes, label_similarity(batch.labels, batch.labels), self.margin, self.quantization)

    def pair_output(self, images, texts):
        return self.nets["fusion"](images, texts)
