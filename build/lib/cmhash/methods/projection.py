"""Shared parts of the linear baselines: ``codes = sign((x - centre) @ projection)`` per modality,
and ITQ's rotation step (used by ITQ and CCA-ITQ)."""

from __future__ import annotations

import numpy as np

from cmhash.methods import HashingMethod, to_codes

_STATE_KEYS = ("image_centre", "text_centre", "image_projection", "text_projection")


class LinearProjectionHash(HashingMethod):
    """Base of LSH and ITQ: subclasses set the four arrays in ``fit``."""

    def __init__(self, bits: int, seed: int = 0, device: str = "auto"):
        self.bits = bits
        self.seed = seed

    def encode_images(self, features: np.ndarray) -> np.ndarray:
        return to_codes((features - self.image_centre) @ self.image_projection)

    def encode_texts(self, features: np.ndarray) -> np.ndarray:
        return to_codes((features - self.text_centre) @ self.text_projection)

    def state_dict(self) -> dict:
        """The arrays as tensors: model files load with ``torch.load(weights_only=True)``, which
        refuses numpy objects (they unpickle through arbitrary globals)."""
        import torch

        return {key: torch.from_numpy(np.ascontiguousarray(getattr(self, key))) for key in _STATE_KEYS}

    def load_state_dict(self, state: dict) -> None:
        for key in _STATE_KEYS:
            setattr(self, key, state[key].numpy())


def canonical_signs(vectors: np.ndarray) -> np.ndarray:
    """+1 or -1 for each row of ``vectors`` (singular vectors), making its largest-magnitude entry
    positive. LAPACK builds may return either sign for a singular vector, and ITQ's rotation and
    codes follow the sign; fixing it keeps a fit the same on every machine."""
    return np.sign(vectors[np.arange(len(vectors)), np.abs(vectors).argmax(1)])


def itq_rotation(projected: np.ndarray, iterations: int, rng: np.random.Generator) -> np.ndarray:
    """The (bits, bits) orthogonal rotation R minimising ``||sign(V R) - V R||_F^2`` for centred V."""
    bits = projected.shape[1]
    rotation, _ = np.linalg.qr(rng.standard_normal((bits, bits)))
    for _ in range(iterations):
        codes = np.where(projected @ rotation >= 0, 1.0, -1.0)
        u, _, wt = np.linalg.svd(projected.T @ codes)
        rotation = u @ wt
    return rotation
