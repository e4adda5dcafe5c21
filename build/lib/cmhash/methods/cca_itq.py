"""CCA-ITQ baseline: ITQ on a shared space found by canonical correlation analysis
(Gong, Lazebnik, Gordo & Perronnin, TPAMI 2013, "CCA-ITQ"; here unsupervised, image vs text).

CCA finds projections ``A`` (image) and ``B`` (text) that maximise the correlation of the paired
training features: with centred X, Y and regularised covariances ``Cxx + r I``, ``Cyy + r I``,

    M = Cxx^{-1/2} Cxy Cyy^{-1/2} = U diag(rho) V^T,   A = Cxx^{-1/2} U_K,   B = Cyy^{-1/2} V_K

(the K most correlated directions, unit variance). One ITQ rotation R is then fitted on the image
and text projections together, and the codes are ``sign((x - mean) A R)`` and ``sign((y - mean) B R)``:
the cross-modal baseline every learned method must beat, also when the encoders are not aligned.
``regularization`` r is relative to the mean eigenvalue of each covariance.
"""

from __future__ import annotations

import numpy as np

from cmhash.errors import CmhashError
from cmhash.methods import Epochs, Weight
from cmhash.methods.projection import LinearProjectionHash, canonical_signs, itq_rotation


def _inverse_sqrt(covariance: np.ndarray, regularization: float) -> np.ndarray:
    ridge = regularization * np.trace(covariance) / len(covariance)
    values, vectors = np.linalg.eigh(covariance + ridge * np.eye(len(covariance)))
    return (vectors / np.sqrt(values)) @ vectors.T


def fit_cca(images: np.ndarray, texts: np.ndarray, dims: int, regularization: float):
    """(image centre, A, text centre, B, canonical correlations) of paired features."""
    n = len(images)
    if dims > min(images.shape[1], texts.shape[1], n):
        raise CmhashError(f"CCA-ITQ needs bits <= both feature dimensions and the sample count; got {dims} bits for "
                          f"{images.shape[1]}-d images, {texts.shape[1]}-d texts, {n} items.")
    image_centre, text_centre = images.mean(0), texts.mean(0)
    x, y = (images - image_centre).astype(np.float64), (texts - text_centre).astype(np.float64)
    whiten_x = _inverse_sqrt(x.T @ x / n, regularization)
    whiten_y = _inverse_sqrt(y.T @ y / n, regularization)
    u, rho, vt = np.linalg.svd(whiten_x @ (x.T @ y / n) @ whiten_y, full_matrices=False)
    signs = canonical_signs(u[:, :dims].T)  # flips a pair of directions together: correlations unchanged
    return (image_centre, whiten_x @ (u[:, :dims] * signs), text_centre, whiten_y @ (vt[:dims].T * signs),
            rho[:dims])


class CCAITQ(LinearProjectionHash):
    def __init__(self, bits: int, seed: int = 0, device: str = "auto", iterations: Epochs = 50, regularization: Weight = 1e-3):
        super().__init__(bits, seed, device)
        self.iterations, self.regularization = int(iterations), float(regularization)

    def fit(self, image_features, text_features, labels=None, aligned=False):
        image_centre, a, text_centre, b, _ = fit_cca(image_features, text_features, self.bits, self.regularization)
        projected = np.concatenate([(image_features - image_centre) @ a, (text_features - text_centre) @ b])
        rotation = itq_rotation(projected, self.iterations, np.random.default_rng(self.seed))
        self.image_centre, self.text_centre = image_centre, text_centre
        self.image_projection, self.text_projection = a @ rotation, b @ rotation
        return self
