"""The ``check-params`` stage: every key of params.yaml checked before any other stage runs.

The stage runs upstream of every other one and depends on every key of params.yaml, so a malformed
value (a bit length ``"16;touch x"``, an unknown method, a wrong type) stops ``dvc repro`` before DVC
removes or writes any output. The stamp it writes never changes, so a changed parameter reruns this
check without rerunning anything downstream.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cmhash.atomic import write_text
from cmhash.pipeline.layout import Layout
from cmhash.pipeline.params import SECTIONS as ALL_SECTIONS

SECTIONS = ALL_SECTIONS


def run(params: dict[str, Any], layout: Layout) -> Path:
    """Write the stamp that the prepare stage depends on, for ``params`` that
    :func:`~cmhash.pipeline.params.load_params` has checked."""
    out = layout.params_checked()
    write_text(out, "params.yaml passed cmhash check-params; every stage of dvc.yaml runs after this check.\n")
    return out
