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


def check_params(params: dict[str, Any], path: str | Path = "params.yaml") -> None:
    """Check the values that dvc.yaml turns into stage names and output paths (``dataset.name``,
    ``train.methods``, ``train.bits``). The ``check-params`` stage runs this upstream of every other
    stage, so a malformed value (say a bit length ``"16;touch x"`` or ``"16/../../src"``) stops
    ``dvc repro`` before DVC removes or writes any output, and an unknown method is reported with the
    list of known ones rather than as a missing source file."""
    from cmhash.datasets import SOURCES
    from cmhash.methods.registry import METHODS
    from cmhash.codes import MAX_BITS

    name = params["dataset"].get("name")
    if name not in SOURCES:
        raise CmhashError(f"{path}: dataset.name is {name!r}; known datasets: {', '.join(sorted(SOURCES))}.")
    methods, bits = params["train"].get("methods"), params["train"].get("bits")
    if not isinstance(methods, list) or not methods:
        raise CmhashError(f"{path}: train.methods must be a non-empty list of method names, got {methods!r}.")
    for method in methods:
        if method not in METHODS:
            raise CmhashError(f"{path}: train.methods lists {method!r}, which is not a hashing method; "
                              f"known methods: {', '.join(sorted(METHODS))}.")
    if not isinstance(bits, list) or not bits:
        raise CmhashError(f"{path}: train.bits must be a non-empty list of code lengths, got {bits!r}.")
    for length in bits:
        if isinstance(length, bool) or not isinstance(length, int) or not 1 <= length <= MAX_BITS:
            raise CmhashError(f"{path}: train.bits lists {length!r}; a code length is a whole number of bits "
                              f"from 1 to {MAX_BITS}.")
    for key, values in (("train.methods", methods), ("train.bits", bits)):
        if len(set(values)) != len(values):
            raise CmhashError(f"{path}: {key} lists a value twice: {values!r}.")


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
