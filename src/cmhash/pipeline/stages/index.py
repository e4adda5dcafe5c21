"""The ``index`` stage: the search index of one trained method and length (packed codes, ids, the
model that encodes queries)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cmhash.methods import check_method_and_bits
from cmhash.pipeline.layout import Layout
from cmhash.search.index_files import build_index

SECTIONS = ("dataset",)


def run(params: dict[str, Any], layout: Layout, method: str, bits: int) -> Path:
    check_method_and_bits(method, bits)
    model_dir = layout.model_dir(method, bits)
    return build_index(model_dir / "codes.h5", model_dir / "model.pt", layout.features(params["dataset"]["name"]),
                       layout.index_dir(method, bits))
