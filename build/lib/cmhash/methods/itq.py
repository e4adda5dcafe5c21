"""ITQ baseline: iterative quantisation of PCA-projected features (Gong & Lazebnik, CVPR 2011).

Per modality: centre, project onto the top ``bits`` principal components V, then alternate
``B = sign(V R)`` and the orthogonal Procrustes step ``R = U W^T`` with ``U S W^T = svd(V^T B)``
for ``iterations`` rounds, minimising the quantisation loss ``||B - V R||_F^2``. With aligned
feature spaces (CLIP) one PCA and one rotation are fitted on both modalities together.
"""

from __future__ import annotations

import numpy as np

from cmhash.errors import CmhashError
from cmhash.methods import Epochs
from cmhash.methods.projection import LinearProjectionHash, canonical_signs, itq_rotation


def fit_itq(features: np.ndarray, bits: int, iterations: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Return (centre, projection) with projection = PCA components @ ITQ rotation, shape (d, bits)."""
    n, dim = features.shape
    if bits > min(n, dim):
        raise CmhashError(f"ITQ needs bits <= feature dimension and sample count; got {bits} bits for {n} x {dim} features.")
    centre = features.mean(0)
    centred = (features - centre).astype(np.float64)
    _, _, components = np.linalg.svd(centred, full_matrices=False)
    pca = (components[:bits] * canonical_signs(components[:bits])[:, None]).T
    return centre, pca @ itq_rotation(centred @ pca, iterations, rng)


class ITQ(LinearProjectionHash):
    def __init__(self, bits: int, seed: int = 0, device: str = "auto", iterations: Epochs = 50):
        super().__init__(bits, seed, device)
        self.iterations = int(iterations)

    def fit(self, image_features, text_features, labels=None, aligned=False):
        rng = np.random.default_rng(self.seed)
        if aligned:
            centre, projection = fit_itq(np.concatenate([image_features, text_features]), self.bits, self.iterations, rng)
            self.image_centre = self.text_centre = centre
            self.image_projection = self.text_projection = projection
        else:
            self.image_centre, self.image_projection = fit_itq(image_features, self.bits, self.iterations, rng)
            self.text_centre, self.text_projection = fit_itq(text_features, self.bits, self.iterations, rng)
        return self
