"""LSH baseline: signs of random Gaussian projections of centred features (Charikar, STOC 2002).

Each modality gets its own projection unless the two feature spaces are aligned (CLIP), in which
case one projection and one centre serve both, so that an image and its caption can land on the
same code. With unaligned encoders LSH has no cross-modal signal: it is the floor every learned
method must clear.
"""

from __future__ import annotations

import numpy as np

from cmhash.methods.projection import LinearProjectionHash


class LSH(LinearProjectionHash):
    def fit(self, image_features, text_features, labels=None, aligned=False):
        rng = np.random.default_rng(self.seed)
        if aligned:
            centre = np.concatenate([image_features, text_features]).mean(0)
            projection = rng.standard_normal((image_features.shape[1], self.bits))
            self.image_centre = self.text_centre = centre
            self.image_projection = self.text_projection = projection
        else:
            self.image_centre, self.text_centre = image_features.mean(0), text_features.mean(0)
            self.image_projection = rng.standard_normal((image_features.shape[1], self.bits))
            self.text_projection = rng.standard_normal((text_features.shape[1], self.bits))
        return self
