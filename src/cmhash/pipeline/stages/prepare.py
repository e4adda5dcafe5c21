"""The ``prepare`` stage: the dataset of ``dataset.name`` built into the prepared HDF5 file, split drawn."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cmhash.datasets import prepare_dataset
from cmhash.pipeline.layout import Layout
from cmhash.pipeline.params import dataset_settings

SECTIONS = ("dataset",)


def run(params: dict[str, Any], layout: Layout, progress: bool = True) -> Path:
    out = layout.prepared(params["dataset"]["name"])
    summary = prepare_dataset(dataset_settings(params), out, progress=progress)
    if progress:
        print(f"{out}: " + ", ".join(f"{key.replace('_', ' ')} {value:,}" for key, value in summary.items()))
    return out
