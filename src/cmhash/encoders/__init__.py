"""Feature encoders: one interface, several backends, chosen by ``encode.backend`` in params.yaml.

An encoder turns a batch of RGB PIL images and a batch of strings into float arrays::

    encoder.encode_images(images: list[PIL.Image]) -> np.ndarray  # (n, image_dim)
    encoder.encode_texts(texts: list[str]) -> np.ndarray          # (n, text_dim)
    encoder.count_tokens(text) -> int   # a text longer than encoder.context_length is truncated

in two steps each, so that the CPU work of the next batches (decoding, resizing, tokenising: safe
in background threads) overlaps the model's work on this one: ``prepare_images(images)`` then
``embed_images(batch)``, ``prepare_texts(texts)`` then ``embed_texts(prepared)``.

and describes itself with ``name``, ``device``, ``aligned`` (True when both modalities share one embedding
space, as in CLIP) and ``settings()`` (what is recorded in the features file).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Annotated, Any

import numpy as np
from annotated_types import Ge, Le

from cmhash.errors import CmhashError

# Pixels per side of an encoder's input (its settings' range, read by params.yaml's schema).
ImageSize = Annotated[int, Ge(32), Le(1024)]


class Encoder(ABC):
    name: str
    aligned: bool
    device: str  # "cpu", "cuda", "cuda:1"...

    @abstractmethod
    def settings(self) -> dict[str, Any]: ...

    @abstractmethod
    def prepare_images(self, images: list) -> Any: ...

    @abstractmethod
    def embed_images(self, batch: Any) -> np.ndarray: ...

    @abstractmethod
    def prepare_texts(self, texts: list[str]) -> Any: ...

    @abstractmethod
    def embed_texts(self, prepared: Any) -> np.ndarray: ...

    @property
    @abstractmethod
    def context_length(self) -> int: ...

    @abstractmethod
    def count_tokens(self, text: str) -> int: ...

    def encode_images(self, images: list) -> np.ndarray:
        return self.embed_images(self.prepare_images(images))

    # for the backends: what a prepared batch (a torch tensor) goes through on the way to the model

    def pinned(self, batch):
        """``batch`` in page-locked memory on CUDA, so that its copy to the GPU overlaps compute."""
        return batch.pin_memory() if self.device.startswith("cuda") else batch

    def on_device(self, images):
        """An image batch on the device; channels-last on CUDA, where convolutions run faster so."""
        import torch

        images = images.to(self.device, non_blocking=True)
        return images.contiguous(memory_format=torch.channels_last) if self.device.startswith("cuda") else images

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        return self.embed_texts(self.prepare_texts(texts))


def build_encoder(encode: dict[str, Any]) -> Encoder:
    """Build the encoder that ``encode.backend`` names, with its settings from ``encode.<backend>``."""
    backend, device = encode["backend"], encode["device"]
    settings = dict(encode[backend])
    if backend == "offline":
        from cmhash.encoders.offline import OfflinePretrainedEncoder

        return OfflinePretrainedEncoder(device=device, **settings)
    if backend == "open_clip":
        from cmhash.encoders.clip import OpenClipEncoder

        return OpenClipEncoder(device=device, **settings)
    raise CmhashError(f"params.yaml: encode.backend is {backend!r}; choose 'offline' or 'open_clip'.")
