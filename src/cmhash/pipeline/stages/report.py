"""The ``report`` stage: the results table of every method and code length (reports/results.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cmhash.atomic import write_text
from cmhash.pipeline.layout import Layout
from cmhash.pipeline.report import render_results

SECTIONS = ("dataset", "train", "evaluate")


def run(params: dict[str, Any], layout: Layout) -> Path:
    out = layout.results_report()
    write_text(out, render_results(params, layout) + "\n")
    return out
