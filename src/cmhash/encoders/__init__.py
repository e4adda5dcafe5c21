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
from dataclasses import dataclass, field
from typing import Annotated, Any

import numpy as np
from annotated_types import Ge, Le

from cmhash.registry import Registry

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

    # JPEG files decoded on the device (nvJPEG on CUDA): the loader threads only read the files'
    # bytes, and decoding, resizing and normalising run where the model runs. The result is close to
    # the CPU path's (PIL decodes and resizes there), not equal: resampling differs in the last bits.

    def prepare_jpegs(self, files: list[bytes]) -> list:
        """The encoded files as uint8 tensors (any thread)."""
        import torch

        return [torch.frombuffer(bytearray(data), dtype=torch.uint8) for data in files]

    def embed_jpegs(self, encoded: list) -> np.ndarray:
        """Decode on the device, preprocess there (:meth:`preprocess_on_device`) and embed."""
        from torchvision.io import ImageReadMode, decode_jpeg

        images = decode_jpeg(encoded, mode=ImageReadMode.RGB, device=self.device)
        return self.embed_images(self.preprocess_on_device(images))

    def prepare_pixels(self, pixels: np.ndarray):
        """Stored (n, H, W, 3) uint8 pixels as a tensor ready to copy to the device (any thread)."""
        import torch

        return self.pinned(torch.from_numpy(np.ascontiguousarray(pixels)))

    def embed_pixels(self, pixels) -> np.ndarray:
        """Copy uint8 pixels to the device (a quarter of the float batch's bytes), preprocess and
        embed them there."""
        images = pixels.to(self.device, non_blocking=True).permute(0, 3, 1, 2)
        return self.embed_images(self.preprocess_on_device(list(images)))

    def preprocess_on_device(self, images: list) -> Any:
        """Decoded (3, H, W) uint8 images on the device -> the model's input batch."""
        raise NotImplementedError(f"{type(self).__name__} preprocesses on the CPU only")

    @staticmethod
    def resize_on_device(images: list, size: int | tuple[int, int]):
        """Each image resized as PIL's bicubic resample does (antialiased), to ``size`` (height, width)
        or, for an int, so that its shorter side is ``size``; images of one shape are resized together.
        Returns float tensors in [0, 255], in the order given."""
        import torch
        import torch.nn.functional as F

        out: list = [None] * len(images)
        shapes: dict[tuple[int, int], list[int]] = {}
        for i, image in enumerate(images):
            shapes.setdefault(tuple(image.shape[-2:]), []).append(i)
        for (height, width), rows in shapes.items():
            if isinstance(size, int):
                scale = size / min(height, width)
                target = (max(size, round(height * scale)), max(size, round(width * scale)))
            else:
                target = size
            batch = torch.stack([images[i] for i in rows]).float()
            resized = F.interpolate(batch, size=target, mode="bicubic", antialias=True, align_corners=False).clamp_(0, 255)
            for i, image in zip(rows, resized):
                out[i] = image
        return out


# encode.backend -> the encoder's class; its settings are ``encode.<backend>`` (its constructor's signature)
ENCODERS = Registry("encoder", {
    "offline": "cmhash.encoders.offline:OfflinePretrainedEncoder",
    "open_clip": "cmhash.encoders.clip:OpenClipEncoder",
})


@dataclass(frozen=True)
class EncoderSpec:
    """Which encoder to build: ``backend`` (a name of :data:`ENCODERS`), the ``device`` it runs on
    and the backend's own ``settings`` (its constructor's keyword arguments: ``encode.<backend>``
    in params.yaml). Plain values, so that Dask workers receive it and build their own encoder."""

    backend: str
    device: str = "auto"
    settings: dict[str, Any] = field(default_factory=dict)


def build_encoder(spec: EncoderSpec) -> Encoder:
    """Build the encoder that ``spec`` describes."""
    return ENCODERS.load(spec.backend)(device=spec.device, **spec.settings)
