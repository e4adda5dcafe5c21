"""The ``index`` stage: the search index of every trained method and length (packed codes, ids,
the model that encodes queries), in one process; one stage for all of them, as ``evaluate`` is.
Each index records the items catalog (``data/items``) it was built with, so the stage runs after
``items``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cmhash.pipeline.layout import Layout
from cmhash.pipeline.params import trained_models
from cmhash.search.index_files import build_index

SECTIONS = ("dataset", "train")


def run(params: dict[str, Any], layout: Layout, chosen: list[tuple[str, int]] | None = None, log=print) -> list[Path]:
    """Build the indexes of ``chosen`` models (default: every model of params.yaml); their folders."""
    chosen = trained_models(params, chosen)
    features = layout.features(params["dataset"]["name"])
    written = []
    for method, bits in chosen:
        model_dir = layout.model_dir(method, bits)
        written.append(build_index(model_dir / "codes.h5", model_dir / "model.pt", features, layout.items_dir(),
                                   layout.index_dir(method, bits)))
        log(f"wrote {written[-1]}")
    return written
