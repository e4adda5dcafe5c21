"""The ``encode`` stage: every image and text of the prepared file encoded into the features file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cmhash.encoders import build_encoder
from cmhash.encoders.dataset import encode_dataset
from cmhash.pipeline.layout import Layout
from cmhash.pipeline.params import encoder_spec

SECTIONS = ("dataset", "encode")


def run(params: dict[str, Any], layout: Layout, progress: bool = True) -> Path:
    name = params["dataset"]["name"]
    settings = params["encode"]
    spec = encoder_spec(settings)
    encoder = build_encoder(spec)
    out = layout.features(name)
    encode_dataset(layout.prepared(name), out, encoder, batch_size=settings["batch_size"], progress=progress,
                   text=settings["text"], loaders=settings["loaders"], shard_items=settings["shard_items"],
                   workers=settings["workers"], scheduler=settings["scheduler"], spec=spec)
    return out
