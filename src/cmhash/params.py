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
    """The settings of one hashing method (``methods.<name>``), empty when it has none."""
    settings = params["methods"].get(method) or {}
    if not isinstance(settings, dict):
        raise CmhashError(f"params.yaml: methods.{method} must be a mapping of settings.")
    return dict(settings)
