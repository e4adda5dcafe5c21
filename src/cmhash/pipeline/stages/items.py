"""The ``items`` stage: the catalog that search results show (captions, labels, thumbnails)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cmhash.pipeline.layout import Layout
from cmhash.search.index_files import build_items

SECTIONS = ("dataset",)


def run(params: dict[str, Any], layout: Layout, progress: bool = True) -> Path:
    return build_items(layout.prepared(params["dataset"]["name"]), layout.items_dir(), progress)
