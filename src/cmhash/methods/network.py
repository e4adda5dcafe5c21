"""Shared training machinery of the deep methods: networks on frozen features, seeded minibatches.

A deep method subclasses :class:`NetworkHash` and supplies four things: its networks
(``build_networks``), its optimisers (``make_optimizers``), the loss of one minibatch
(``batch_loss``) and, unless its networks are simply named ``image`` and ``text``, the real-valued
outputs whose signs are the codes (``image_output`` / ``text_output``, or ``pair_output`` for fused
codes). The loop here does the rest the same way for
every method: a seeded shuffle per epoch, a fixed number of epochs (no model selection, so nothing
is ever chosen on the query set), progress bars, the loss history,
encoding in chunks, and saving/loading.

Every optimiser is built with ``fused=True``: one kernel updates a whole parameter instead of a
dozen tensor operations per parameter. On a 2-core CPU the unfused Adam update took 12 of CFRH's
24 ms a step, the fused one 2 ms (bench/train_step.py, bench/README.md); it rounds differently in
the last bit, and is as deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from cmhash.device import resolve_device
from cmhash.errors import CmhashError
from cmhash.methods import HashingMethod, to_codes

ENCODE_CHUNK = 4096


@dataclass
class Batch:
    """One minibatch: both modalities' features and (if any) labels."""

    images: Any
    texts: Any
    labels: Any = None


def end_epoch(method, epoch: int, total: float, steps: int, rate_setting: str) -> None:
    """Record an epoch's mean loss in ``method.history``; stop, naming the method, the epoch and the
    likely cause, when the loss is no longer a number (training on would save a broken model)."""
    mean = total / max(steps, 1)
    if not np.isfinite(mean):
        name = type(method).__name__
        raise CmhashError(f"{name} {method.bits} bits: the loss became {mean} in epoch {epoch + 1} of {method.epochs}; "
                          f"the likely cause is a learning rate too high for these features (methods.{name.lower()}."
                          f"{rate_setting} = {getattr(method, rate_setting)}): lower it, or check the features for NaN.")
    method.history.append(mean)


def minibatches(n: int, batch_size: int, generator, device: str = "cpu", smallest: int = 2):
    """Index tensors of a seeded shuffle of ``n`` items, ``batch_size`` at a time; a last batch of
    fewer than ``smallest`` items is left out (similarities within a batch need two)."""
    order = torch.randperm(n, generator=generator).to(device)
    for start in range(0, n, batch_size):
        index = order[start:start + batch_size]
        if len(index) >= smallest:
            yield index


def mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    """``in -> hidden -> out`` with a ReLU in between: the per-modality head of most methods."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_dim))


def label_similarity(labels_a, labels_b):
    """S_ij = 1 where items share at least one label, else 0 (float tensor)."""
    return ((labels_a @ labels_b.T) > 0).float()


def affinity_reconstruction_loss(image_codes, text_codes, affinity, lambda1: float, lambda2: float):
    """DJSRH's reconstruction of ``affinity`` by the relaxed codes in three pairings (rows are
    normalised here): ``lambda1 MSE(B_I B_I^T, S) + MSE(B_I B_T^T, S) + lambda2 MSE(B_T B_T^T, S)``.
    Used by DJSRH and CFRH."""
    import torch.nn.functional as F

    bi, bt = F.normalize(image_codes, dim=1), F.normalize(text_codes, dim=1)
    return (
        lambda1 * F.mse_loss(bi @ bi.T, affinity)
        + F.mse_loss(bi @ bt.T, affinity)
        + lambda2 * F.mse_loss(bt @ bt.T, affinity)
    )


class Standardize(nn.Module):
    """A first layer ``(x - mean) / std``. The statistics come from the training split (``fit``) and
    are buffers, so they are saved and loaded with the model."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def fit(self, features) -> None:
        self.mean.copy_(features.mean(0))
        self.std.copy_(features.std(0) + 1e-6)

    def forward(self, x):
        return (x - self.mean) / self.std


class NetworkHash(HashingMethod):
    """Base of the deep methods (see the module docstring for what a subclass provides)."""

    rate_setting = "lr"  # the learning-rate setting an error names when the loss diverges

    def __init__(self, bits: int, seed: int, device: str, epochs: int, batch_size: int, progress: bool):
        self.bits, self.seed, self.device = int(bits), int(seed), resolve_device(device)
        self.epochs, self.batch_size, self.progress = int(epochs), int(batch_size), progress
        self.nets = None
        self.dims: dict[str, int] = {}
        self.history: list[float] = []

    # ---- what a method provides
    def build_networks(self, image_dim: int, text_dim: int, label_dim: int) -> dict[str, Any]:
        raise NotImplementedError

    def make_optimizers(self) -> list[Any]:
        raise NotImplementedError

    def batch_loss(self, batch: Batch, epoch: int):
        raise NotImplementedError

    def image_output(self, images):
        """Real-valued image outputs whose signs are the codes (default: the ``image`` network)."""
        return self.nets["image"](images)

    def text_output(self, texts):
        return self.nets["text"](texts)

    def pair_output(self, images, texts):
        raise NotImplementedError

    # ---- the shared machinery
    def _build(self, dims: dict[str, int]) -> None:
        torch.manual_seed(self.seed)
        self.dims = dict(dims)
        self.nets = nn.ModuleDict(self.build_networks(dims["image"], dims["text"], dims["label"])).to(self.device)

    def fit(self, image_features, text_features, labels=None, aligned=False):
        if self.supervised and labels is None:
            raise CmhashError(f"{type(self).__name__} is supervised and needs the training labels.")
        self._build({"image": image_features.shape[1], "text": text_features.shape[1],
                     "label": 0 if labels is None else labels.shape[1]})
        as_tensor = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32, device=self.device)  # noqa: E731
        images, texts = as_tensor(image_features), as_tensor(text_features)
        label_tensor = None if labels is None else as_tensor(labels)
        self.fit_standardizers(images, texts)
        optimizers = self.make_optimizers()
        generator = torch.Generator().manual_seed(self.seed)

        def batches(epoch):
            for index in minibatches(len(images), self.batch_size, generator, self.device):
                yield Batch(images[index], texts[index], None if label_tensor is None else label_tensor[index])

        def step(batch, epoch):
            loss = self.batch_loss(batch, epoch)
            for optimizer in optimizers:
                optimizer.zero_grad()
            loss.backward()
            for optimizer in optimizers:
                optimizer.step()
            return loss.item()

        self.nets.train()
        self.train_epochs(batches, step)
        return self

    def train_epochs(self, batches, step, begin_epoch=None) -> None:
        """The training loop every deep method runs: for each epoch, ``begin_epoch(epoch)`` (say,
        a learning-rate schedule), then ``step(batch, epoch) -> loss`` on every batch of
        ``batches(epoch)``; the epoch's mean loss goes to ``history`` (or stops training if it is
        no longer a number); a progress bar on a terminal."""
        for epoch in tqdm(range(self.epochs), desc=f"{type(self).__name__} {self.bits} bits", unit="epoch", disable=not self.progress):
            if begin_epoch is not None:
                begin_epoch(epoch)
            total, steps = 0.0, 0
            for batch in batches(epoch):
                total, steps = total + step(batch, epoch), steps + 1
            end_epoch(self, epoch, total, steps, self.rate_setting)

    def fit_standardizers(self, images, texts) -> None:
        """Set the statistics of every ``image``/``text`` network that starts with a Standardize layer."""
        for name, features in (("image", images), ("text", texts)):
            network = self.nets[name] if name in self.nets else None
            if isinstance(network, nn.Sequential) and isinstance(network[0], Standardize):
                network[0].fit(features)

    def _encode(self, output, *features: np.ndarray) -> np.ndarray:
        if self.nets is None:
            raise CmhashError(f"{type(self).__name__} must be fitted (or loaded) before encoding.")
        self.nets.eval()
        chunks = []
        with torch.inference_mode():
            for start in range(0, len(features[0]), ENCODE_CHUNK):
                inputs = [torch.as_tensor(np.asarray(f[start:start + ENCODE_CHUNK]), dtype=torch.float32, device=self.device)
                          for f in features]
                chunks.append(output(*inputs).float().cpu().numpy())
        return to_codes(np.concatenate(chunks) if chunks else np.zeros((0, self.bits)))

    def encode_images(self, features: np.ndarray) -> np.ndarray:
        return self._encode(self.image_output, features)

    def encode_texts(self, features: np.ndarray) -> np.ndarray:
        return self._encode(self.text_output, features)

    def encode_pairs(self, image_features: np.ndarray, text_features: np.ndarray) -> np.ndarray:
        return self._encode(self.pair_output, image_features, text_features)

    def state_dict(self) -> dict[str, Any]:
        return {"dims": dict(self.dims), "nets": {k: v.cpu() for k, v in self.nets.state_dict().items()},
                "history": list(self.history)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._build(state["dims"])
        self.nets.load_state_dict(state["nets"])
        self.history = list(state.get("history", []))
