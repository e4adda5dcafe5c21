"""UCMFH: Unsupervised Contrastive Multi-modal Fusion Hashing (2023). Unsupervised.

An item's image and text features form one token ``[u_I, u_T]``; a transformer encoder (4 heads,
2 layers) fuses it; the output is split back into two L2-normalised halves ``z_I``, ``z_T``; per
modality an MLP and tanh give the relaxed codes. The loss is NT-Xent (temperature tau 0.5) between
the modalities' fused halves plus 0.5 x NT-Xent between their codes:

    L = NTXent(z_I, z_T) + 0.5 NTXent(tanh(mlp_I(z_I')), tanh(mlp_T(z_T')))
    NTXent(a, b) = mean over the 2m views of -log softmax_j(cos(view, j) / tau)[its partner]

Known flaw of the public code, not copied: it feeds the whole batch to the transformer as one
sequence, so an item's code depends on the other items of its batch (and on the batch size at
encoding time). Here every item is its own sequence of one token.

Adaptations, stated:

- Cross-modal retrieval encodes an image without its caption (and a text without its image), while
  the public code encodes every query and retrieval item from its fused image-text pair. Here a
  single modality is encoded from the token with the other half zeroed (``z_I'``, ``z_T'`` above),
  and the code loss is computed on exactly those single-modality tokens, so training and encoding
  see the same inputs; the fusion loss uses the full pair tokens.
- Each modality is first projected to ``width / 2`` (the paper concatenates two 512-d CLIP features
  into a 1024-d token; other encoders have other sizes, and a narrower token keeps CPU training short).
- Optimiser (Adam), learning rate, batch size and epochs are not published; they are cmhash's choices
  in params.yaml.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cmhash.methods import BatchSize, Depth, Epochs, LearningRate, Weight, Width
from cmhash.methods.network import NetworkHash, mlp


def nt_xent(a, b, tau: float):
    """SimCLR's normalised-temperature cross entropy for the m positive pairs (a_i, b_i)."""
    views = F.normalize(torch.cat([a, b]), dim=1)
    similarity = views @ views.T / tau
    similarity.fill_diagonal_(float("-inf"))  # a view is not its own candidate
    m = len(a)
    partners = torch.cat([torch.arange(m, 2 * m), torch.arange(m)]).to(a.device)
    return F.cross_entropy(similarity, partners)


class UCMFH(NetworkHash):
    def __init__(self, bits: int, seed: int = 0, device: str = "auto", width: Width = 512, heads: Depth = 4,
                 layers: Depth = 2, feedforward: Width = 1024, hidden: Width = 1024, tau: Weight = 0.5,
                 code_weight: Weight = 0.5, epochs: Epochs = 20, batch_size: BatchSize = 128, lr: LearningRate = 1e-3,
                 progress: bool = True):
        super().__init__(bits, seed, device, epochs, batch_size, progress)
        if width % 2 or width % heads:
            raise ValueError(f"UCMFH width {width} must be even and divisible by heads {heads}")
        self.width, self.heads, self.layers, self.feedforward = int(width), int(heads), int(layers), int(feedforward)
        self.hidden, self.tau, self.code_weight, self.lr = int(hidden), tau, code_weight, lr

    def build_networks(self, image_dim, text_dim, label_dim):
        half = self.width // 2
        layer = nn.TransformerEncoderLayer(self.width, self.heads, self.feedforward, batch_first=True)
        return {"image_in": nn.Linear(image_dim, half), "text_in": nn.Linear(text_dim, half),
                "fusion": nn.TransformerEncoder(layer, self.layers, enable_nested_tensor=False),
                "image": mlp(half, self.hidden, self.bits), "text": mlp(half, self.hidden, self.bits)}

    def make_optimizers(self):
        return [torch.optim.Adam(self.nets.parameters(), lr=self.lr, fused=True)]

    def fuse(self, image_half, text_half):
        """Fused, normalised halves of each item's token, every item a sequence of one token."""
        fused = self.nets["fusion"](torch.cat([image_half, text_half], dim=1).unsqueeze(1)).squeeze(1)
        half = self.width // 2
        return F.normalize(fused[:, :half], dim=1), F.normalize(fused[:, half:], dim=1)

    def _image_alone(self, images):
        projected = self.nets["image_in"](images)
        return self.fuse(projected, torch.zeros_like(projected))[0]

    def _text_alone(self, texts):
        projected = self.nets["text_in"](texts)
        return self.fuse(torch.zeros_like(projected), projected)[1]

    def batch_loss(self, batch, epoch):
        fused_image, fused_text = self.fuse(self.nets["image_in"](batch.images), self.nets["text_in"](batch.texts))
        codes_image = torch.tanh(self.nets["image"](self._image_alone(batch.images)))
        codes_text = torch.tanh(self.nets["text"](self._text_alone(batch.texts)))
        return nt_xent(fused_image, fused_text, self.tau) + self.code_weight * nt_xent(codes_image, codes_text, self.tau)

    def image_output(self, images):
        return self.nets["image"](self._image_alone(images))

    def text_output(self, texts):
        return self.nets["text"](self._text_alone(texts))
