"""The ``validate`` stage: the Great Expectations checks of the prepared file; fails on any failure."""

from __future__ import annotations

from typing import Any

from cmhash.pipeline.layout import Layout
from cmhash.pipeline.params import dataset_settings
from cmhash.pipeline.validation import validate_prepared

SECTIONS = ("dataset",)


def run(params: dict[str, Any], layout: Layout) -> dict[str, Any]:
    name = params["dataset"]["name"]
    return validate_prepared(layout.prepared(name), layout.validation_report(name), dataset_settings(params))
