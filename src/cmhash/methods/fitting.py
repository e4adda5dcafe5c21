"""Fitting a hashing method and coding the query and retrieval items: what the train stage runs
between reading its inputs and writing its outputs, and what ``cmhash tune`` reuses."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cmhash.codes import SplitCodes
from cmhash.errors import CmhashError
from cmhash.features import Features
from cmhash.methods import HashingMethod

if TYPE_CHECKING:
    from cmhash.encoders import EncoderSpec


def fit_on_features(model: HashingMethod, features: Features, splits: dict[str, np.ndarray], labels: np.ndarray):
    """Fit on the ``train`` rows' features (and labels); the codes of the ``query`` and ``retrieval``
    rows; fit seconds. ``cmhash tune`` calls it with a validation split in place of the query set."""
    started = time.perf_counter()
    train_idx = splits["train"]
    model.fit(features.images[train_idx], features.texts[train_idx], labels=labels[train_idx], aligned=features.aligned)
    seconds = time.perf_counter() - started
    return {split: _encode_rows(model, features, splits[split]) for split in ("query", "retrieval")}, seconds


def _encode_rows(model: HashingMethod, features: Features, rows: np.ndarray) -> SplitCodes:
    """The codes of the items ``rows`` from their features: per modality, or per pair for fused codes."""
    if model.fused:  # one code per image-text pair
        return SplitCodes(rows, pairs=model.encode(images=features.images[rows], texts=features.texts[rows]))
    return SplitCodes(rows, images=model.encode(images=features.images[rows]), texts=model.encode(texts=features.texts[rows]))


def fit_end_to_end(model: HashingMethod, path: Path, towers: EncoderSpec, seed: int, splits, labels):
    """Fit a method that fine-tunes the open_clip towers that ``towers`` describes (on the device to
    train on), on the train split's pixels and captions in the
    prepared file ``path``; encode the query and retrieval splits through them; fit seconds."""
    import torch

    from cmhash.datasets.prepared import PreparedData
    from cmhash.encoders import build_encoder

    if towers.backend != "open_clip":
        raise CmhashError("params.yaml: fine-tuning (methods.dcmht.mode: finetune) trains the open_clip towers; set "
                          "encode.backend: open_clip, or use mode: frozen.")
    with PreparedData(path) as data:
        if len(data.texts) == 0:
            raise CmhashError(f"{path}: fine-tuning needs captions, and this dataset's text is only a bag of words; "
                              "use methods.dcmht.mode: frozen.")
        torch.manual_seed(seed)  # reproducible towers even without pretrained weights
        encoder = build_encoder(towers)
        started = time.perf_counter()
        model.fit_end_to_end(data, encoder, splits["train"], labels[splits["train"]])
        seconds = time.perf_counter() - started
        codes = {}
        for split in ("query", "retrieval"):
            images, texts = model.encode_items(data, splits[split])
            codes[split] = SplitCodes(splits[split], images=images, texts=texts)
    return codes, seconds
