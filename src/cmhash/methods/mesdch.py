"""MESDCH: Multi-label Enhancement based Self-supervised Deep Cross-modal Hashing (Zou et al.,
Neurocomputing 2022). Supervised.

Three networks give relaxed codes in (-1, 1): an image net (features -> codes), a text net and a
label net (multi-hot labels -> codes). Buffers ``F``, ``G``, ``L`` hold the current codes of the whole
training set for each network, and ``B = sign(F + G + L)``. For a batch with labels ``l`` and codes
``H`` of one network, against the buffer ``H'`` of another and the labels ``L_all`` of all items:

    S_L = cos(l, L_all)                S_H = ReLU(cos(H, H'))
    KL(S_L, S_H) = sum (S_L - S_H) log((S_L + 1e-5) / (S_H + 1e-5)) / (n bs)   ("positive constraint":
                                                                              every term is >= 0)
    Q = ||B_batch - H||^2 / (bs K)

    label net:  beta KL_ll + KL_lx + alpha KL_ly + gamma Q
    image net:  beta KL_xx + KL_xl + gamma Q          text net:  beta KL_yy + KL_yl + gamma Q

(x: image buffer, y: text buffer, l: label buffer). Published: alpha 0.3, beta 1.9, gamma 0.9, SGD
with lr 10^-1.5 decayed linearly to 1e-6, batch 128. Each epoch trains the label net, then the image
net, then the text net over all batches, refreshing its buffer rows as it goes; ``B`` is recomputed
at the start of every epoch. Heads are MLPs on frozen features.

Fix of the public code, stated: its last partial batch is never encoded, so those items keep
all-zero codes; here every item is encoded. Only training-split labels are read.

Departure, stated: the image and text nets start with a per-dimension standardisation fitted on
the training split (``network.Standardize``). The paper's nets take raw CNN activations and
bag-of-words counts, whose scale suits its SGD learning rate; cmhash's features are L2-normalised
(entries of about 1/sqrt(d)), and at that scale SGD at the published rate stalled and the codes
collapsed to a handful of values on the built-in dataset (image-to-text mAP@all 0.50, chance level).
"""

from __future__ import annotations

from torch import nn

from cmhash.methods import BatchSize, Epochs, LearningRate, Weight, Width
from cmhash.methods.network import NetworkHash, Standardize, minibatches, mlp

EPSILON = 1e-5


def positive_constraint_kl(label_similarity, hash_similarity):
    """MESDCH's KL-like divergence between two (bs, n) similarity matrices, averaged per entry."""
    import torch

    terms = (label_similarity - hash_similarity) * torch.log((label_similarity + EPSILON) / (hash_similarity + EPSILON))
    return terms.sum() / label_similarity.numel()


def cosine_matrix(a, b):
    import torch.nn.functional as F

    return F.normalize(a, dim=1) @ F.normalize(b, dim=1).T


class MESDCH(NetworkHash):
    supervised = True

    def __init__(self, bits: int, seed: int = 0, device: str = "auto", alpha: Weight = 0.3, beta: Weight = 1.9,
                 gamma: Weight = 0.9, hidden: Width = 1024, epochs: Epochs = 120, batch_size: BatchSize = 128,
                 lr: LearningRate = 0.0316, lr_final: Weight = 1e-6, progress: bool = True):
        super().__init__(bits, seed, device, epochs, batch_size, progress)
        self.alpha, self.beta, self.gamma, self.hidden = alpha, beta, gamma, int(hidden)
        self.lr, self.lr_final = lr, lr_final

    def build_networks(self, image_dim, text_dim, label_dim):
        return {"image": nn.Sequential(Standardize(image_dim), mlp(image_dim, self.hidden, self.bits)),
                "text": nn.Sequential(Standardize(text_dim), mlp(text_dim, self.hidden, self.bits)),
                "label": mlp(label_dim, self.hidden, self.bits)}

    def _learning_rate(self, epoch: int) -> float:
        """Linear decay from ``lr`` at the first epoch to ``lr_final`` at the last."""
        return self.lr + (self.lr_final - self.lr) * epoch / max(self.epochs - 1, 1)

    def _codes(self, name, inputs):
        import torch

        return torch.tanh(self.nets[name](inputs))

    def mesdch_loss(self, network, codes, batch_labels, index, all_labels, buffers, binary):
        """The loss of one network's batch codes against the buffers (see the module docstring)."""
        label_similarity = cosine_matrix(batch_labels, all_labels)
        kl = lambda other: positive_constraint_kl(label_similarity, cosine_matrix(codes, buffers[other]).relu())  # noqa: E731
        quantization = ((binary[index] - codes) ** 2).sum() / codes.numel()
        if network == "label":
            return self.beta * kl("label") + kl("image") + self.alpha * kl("text") + self.gamma * quantization
        return self.beta * kl(network) + kl("label") + self.gamma * quantization

    def fit(self, image_features, text_features, labels=None, aligned=False):
        """MESDCH alternates its three networks: its batches are each network's in turn, and a
        network's step updates that network and its code buffer."""
        import numpy as np
        import torch

        from cmhash.errors import CmhashError

        if labels is None:
            raise CmhashError("MESDCH is supervised and needs the training labels.")
        self._build({"image": image_features.shape[1], "text": text_features.shape[1], "label": labels.shape[1]})
        networks = ("label", "image", "text")  # trained in this order within every epoch
        optimizers = {name: torch.optim.SGD(self.nets[name].parameters(), lr=self.lr, fused=True) for name in networks}
        as_tensor = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32, device=self.device)  # noqa: E731
        inputs = {"image": as_tensor(image_features), "text": as_tensor(text_features), "label": as_tensor(labels)}
        self.fit_standardizers(inputs["image"], inputs["text"])
        n = len(labels)
        with torch.no_grad():
            buffers = {name: self._codes(name, inputs[name]) for name in networks}
        generator = torch.Generator().manual_seed(self.seed)
        binary = {}

        def begin_epoch(epoch):
            for optimizer in optimizers.values():
                for group in optimizer.param_groups:
                    group["lr"] = self._learning_rate(epoch)
            binary["codes"] = torch.sign(buffers["image"] + buffers["text"] + buffers["label"])

        def batches(epoch):
            for network in networks:  # every batch, the last partial one included
                for index in minibatches(n, self.batch_size, generator, self.device, smallest=1):
                    yield network, index

        def step(batch, epoch):
            network, index = batch
            codes = self._codes(network, inputs[network][index])
            loss = self.mesdch_loss(network, codes, inputs["label"][index], index, inputs["label"], buffers, binary["codes"])
            optimizers[network].zero_grad()
            loss.backward()
            optimizers[network].step()
            buffers[network][index] = codes.detach()
            return loss.item()

        self.nets.train()
        self.train_epochs(batches, step, begin_epoch)
        return self
