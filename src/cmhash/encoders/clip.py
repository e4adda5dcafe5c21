"""open_clip encoders: any architecture, with a pretrained tag or a local checkpoint.

Named tags (``laion2b_s34b_b79k``...) download weights from the internet; on an offline machine
set ``encode.open_clip.pretrained`` to a local checkpoint file (``.pt``, ``.bin``, ``.safetensors``)
instead. ``model_config`` registers extra architecture JSON files (a file or a folder), which is how
the tests build a tiny CLIP. On CUDA the forward passes run under fp16 autocast.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cmhash.device import resolve_device
from cmhash.encoders import Encoder
from cmhash.encoders.towers import autocast
from cmhash.errors import CmhashError


class OpenClipEncoder(Encoder):
    aligned = True

    def __init__(self, model: str = "ViT-B-32", pretrained: str | None = None, model_config: str | None = None, device: str = "auto"):
        import open_clip
        import torch

        self._torch = torch
        self.model_name = model
        self.pretrained = pretrained
        self.device = resolve_device(device)
        if model_config:
            open_clip.add_model_config(model_config)
        if model not in open_clip.list_models() and not model.startswith(("hf-hub:", "local-dir:")):
            raise CmhashError(
                f"params.yaml: encode.open_clip.model {model!r} is not a known open_clip architecture; "
                "register its JSON config with encode.open_clip.model_config."
            )
        try:
            # Without weights the model is randomly initialised (tests, benchmarks): from a fixed seed,
            # so that every process (a Dask worker, say) builds the same model; the caller's random
            # state is left as it was.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                self.model, _, self.preprocess = open_clip.create_model_and_transforms(
                    model, pretrained=pretrained or None, device=self.device)
        except RuntimeError as err:
            raise CmhashError(
                f"open_clip could not load weights {pretrained!r} for {model}: {err}\n"
                "This machine cannot download weights. Fetch the checkpoint where you have internet "
                "(e.g. open_clip_pytorch_model.bin from the model's hub page), copy it here and set "
                "encode.open_clip.pretrained to its local path in params.yaml."
            ) from err
        self.model.eval()
        self.tokenizer = open_clip.get_tokenizer(model)
        self.name = f"open_clip:{model}" + (f":{pretrained}" if pretrained else ":random-init")

    def settings(self) -> dict[str, Any]:
        return {"model": self.model_name, "pretrained": self.pretrained}

    def spec(self) -> dict[str, Any]:
        """What rebuilds this architecture without its weights (a fine-tuned copy is saved with them)."""
        import open_clip

        return {"model": self.model_name, "config": open_clip.get_model_config(self.model_name)}

    @classmethod
    def from_spec(cls, spec: dict[str, Any], device: str = "auto") -> "OpenClipEncoder":
        """The architecture of :meth:`spec`, randomly initialised (load the saved weights into ``model``)."""
        import json
        import tempfile
        from pathlib import Path

        import open_clip

        if spec["model"] not in open_clip.list_models() and spec.get("config"):
            folder = Path(tempfile.mkdtemp(prefix="cmhash-clip-config-"))
            (folder / f"{spec['model']}.json").write_text(json.dumps(spec["config"]))
            open_clip.add_model_config(folder)
        return cls(model=spec["model"], pretrained=None, device=device)

    def prepare_images(self, images: list):
        """open_clip's preprocessing on the CPU (any thread): the model's input batch."""
        batch = self._torch.stack([self.preprocess(img.convert("RGB")) for img in images])
        return self.pinned(batch)

    def preprocess_on_device(self, images: list):
        """open_clip's preprocessing (shorter side resized to the input size, bicubic; centre crop;
        the model's mean and standard deviation) on the device, for images decoded there."""
        torch = self._torch
        side = self.model.visual.image_size
        side = side[0] if isinstance(side, (tuple, list)) else int(side)
        crops = []
        for image in self.resize_on_device(images, side):
            top, left = round((image.shape[-2] - side) / 2), round((image.shape[-1] - side) / 2)  # as CenterCrop
            crops.append(image[:, top:top + side, left:left + side])
        mean = torch.tensor(self.model.visual.image_mean, device=crops[0].device).view(1, 3, 1, 1)
        std = torch.tensor(self.model.visual.image_std, device=crops[0].device).view(1, 3, 1, 1)
        return (torch.stack(crops) / 255.0 - mean) / std

    def embed_images(self, batch) -> np.ndarray:
        torch = self._torch
        batch = self.on_device(batch)
        with torch.inference_mode(), autocast(self.device):
            return self.model.encode_image(batch).float().cpu().numpy()

    @property
    def context_length(self) -> int:
        """Tokens the text tower reads (start and end tokens included); a longer text is truncated."""
        return int(self.model.context_length)

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` untruncated (padding is token 0 in open_clip's tokenizers)."""
        return int((self.tokenizer([text], context_length=max(4096, 4 * len(text))) != 0).sum())

    def prepare_texts(self, texts: list[str]):
        """Tokens on the CPU (any thread)."""
        tokens = self.tokenizer(list(texts))
        return self.pinned(tokens)

    def embed_texts(self, tokens) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode(), autocast(self.device):
            return self.model.encode_text(tokens.to(self.device, non_blocking=True)).float().cpu().numpy()
