"""Reading ``params.yaml``: every knob of every stage, grouped by stage name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from cmhash.errors import CmhashError

REQUIRED_SECTIONS = ("dataset", "encode", "train", "methods", "evaluate")


def load_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    """Load and sanity-check the parameter file; errors name the file and the missing key."""
    path = Path(path)
    if not path.is_file():
        raise CmhashError(
            f"{path}: parameter file not found. Run cmhash from the project root "
            "(the folder with dvc.yaml and params.yaml) or pass --params PATH."
        )
    try:
        params = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise CmhashError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(params, dict):
        raise CmhashError(f"{path}: expected a mapping of stage names to settings.")
    missing = [s for s in REQUIRED_SECTIONS if not isinstance(params.get(s), dict)]
    if missing:
        raise CmhashError(f"{path}: missing section(s) {', '.join(missing)}; see the project's params.yaml.")
    return params


def method_params(params: dict[str, Any], method: str) -> dict[str, Any]:
    """The settings of one hashing method: its preset ``methods.<name>``, with the entry
    ``dataset_overrides.<dataset.name>.<name>`` (the papers' per-dataset values) merged over it."""
    settings = params["methods"].get(method) or {}
    dataset = params["dataset"].get("name")
    overrides = ((params.get("dataset_overrides") or {}).get(dataset) or {}).get(method) or {}
    for where, value in ((f"methods.{method}", settings), (f"dataset_overrides.{dataset}.{method}", overrides)):
        if not isinstance(value, dict):
            raise CmhashError(f"params.yaml: {where} must be a mapping of settings.")
    return {**settings, **overrides}
