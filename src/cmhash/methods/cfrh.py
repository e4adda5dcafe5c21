"""CFRH: CLIP-based Fusion-modal Reconstructing Hashing (Li et al., IJMIR 2023). Unsupervised.

**A reconstruction from the paper's description.** The public repository cannot train (its main
script imports a module and configuration files that were never published), and the paper gives
no formulas. What the paper states, and how cmhash reads it:

- "modality-specific autoencoders learn the common hash space": per modality an encoder
  ``features -> hidden -> bits`` whose relaxed output ``b = tanh(alpha h)`` is the hash layer, and a
  decoder ``bits -> hidden -> fused features``;
- "a fusion affinity matrix combines the modalities so that they complement each other": with the
  fused feature ``F_F = [norm(F_I), norm(F_T)]`` and ``S_X = 2 cos(F_X, F_X) - 1``,

      S~ = a S_I + b S_T + c S_F,     S = mu ((1 - eta) S~ + eta S~ S~^T / m)   (DJSRH's high-order term)

- "the objective reconstructs that affinity in the codes": DJSRH's three-pairing reconstruction
  (``network.affinity_reconstruction_loss``) plus the autoencoders' reconstruction of the fused features,

      L = lambda1 MSE(B_I B_I^T, S) + MSE(B_I B_T^T, S) + lambda2 MSE(B_T B_T^T, S)
          + gamma (||dec_I(b_I) - F_F||^2 + ||dec_T(b_T) - F_F||^2) / m

Every weight (a, b, c, gamma) and the optimiser (Adam) are cmhash's choices, listed in params.yaml.
"""

from __future__ import annotations

import math

from cmhash.methods import BatchSize, Epochs, LearningRate, Share, Weight, Width
from cmhash.methods.network import NetworkHash, affinity_reconstruction_loss, mlp


def fused_affinity(image_features, text_features, a: float, b: float, c: float, eta: float, mu: float):
    """CFRH's fusion affinity of a batch, as read here ((m, m) torch tensor)."""
    import torch
    import torch.nn.functional as F

    fi, ft = F.normalize(image_features, dim=1), F.normalize(text_features, dim=1)
    ff = F.normalize(torch.cat([fi, ft], dim=1), dim=1)
    joint = a * (2 * fi @ fi.T - 1) + b * (2 * ft @ ft.T - 1) + c * (2 * ff @ ff.T - 1)
    return mu * ((1 - eta) * joint + eta * (joint @ joint.T) / joint.shape[0])


def fused_features(image_features, text_features):
    """``[norm(F_I), norm(F_T)]``: what both decoders reconstruct."""
    import torch
    import torch.nn.functional as F

    return torch.cat([F.normalize(image_features, dim=1), F.normalize(text_features, dim=1)], dim=1)


def reconstruction_loss(decoded, target):
    """Mean over items of the squared Euclidean reconstruction error."""
    return ((decoded - target) ** 2).sum(dim=1).mean()


class CFRH(NetworkHash):
    def __init__(self, bits: int, seed: int = 0, device: str = "auto", a: Weight = 0.4, b: Weight = 0.3, c: Weight = 0.3,
                 eta: Share = 0.4, mu: Weight = 1.5, lambda1: Weight = 0.1, lambda2: Weight = 0.1, gamma: Weight = 0.1,
                 hidden: Width = 1024, epochs: Epochs = 40, batch_size: BatchSize = 32, lr: LearningRate = 1e-3, progress: bool = True):
        super().__init__(bits, seed, device, epochs, batch_size, progress)
        self.affinity_settings = dict(a=a, b=b, c=c, eta=eta, mu=mu)
        self.lambda1, self.lambda2, self.gamma, self.hidden, self.lr = lambda1, lambda2, gamma, int(hidden), lr

    def build_networks(self, image_dim, text_dim, label_dim):
        fused_dim = image_dim + text_dim
        return {"image": mlp(image_dim, self.hidden, self.bits), "text": mlp(text_dim, self.hidden, self.bits),
                "image_decoder": mlp(self.bits, self.hidden, fused_dim), "text_decoder": mlp(self.bits, self.hidden, fused_dim)}

    def make_optimizers(self):
        import torch

        return [torch.optim.Adam(self.nets.parameters(), lr=self.lr, fused=True)]

    def batch_loss(self, batch, epoch):
        import torch

        alpha = math.sqrt(epoch + 1.0)
        affinity = fused_affinity(batch.images, batch.texts, **self.affinity_settings)
        target = fused_features(batch.images, batch.texts)
        codes_image = torch.tanh(alpha * self.nets["image"](batch.images))
        codes_text = torch.tanh(alpha * self.nets["text"](batch.texts))
        reconstruction = (reconstruction_loss(self.nets["image_decoder"](codes_image), target)
                          + reconstruction_loss(self.nets["text_decoder"](codes_text), target))
        return affinity_reconstruction_loss(codes_image, codes_text, affinity, self.lambda1, self.lambda2) + self.gamma * reconstruction
