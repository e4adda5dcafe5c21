"""``params.yaml``: one schema for every key of every stage, checked once, when the file is loaded.

:func:`load_params` returns the file as a plain dict, checked against the schema and completed
with the defaults, so every stage reads typed values and none keeps a default of its own. Where
the defaults live: a dataset source's options in its module (``Options``), an encoder's and a
hashing method's settings in their class's signature, everything else here. An unknown key is an
error that names it and the closest valid key; a wrong type or range is one line naming the key,
the value given and what is expected.
"""

from __future__ import annotations

import difflib
import functools
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, Field, ValidationError, create_model, field_validator

from cmhash.errors import CmhashError, quote
from cmhash.pipeline.params_file import read_yaml_file
from cmhash.settings import Count, Device, Section, Seed, settings_model

if TYPE_CHECKING:
    from cmhash.datasets.settings import DatasetSettings
    from cmhash.encoders import EncoderSpec


def _method_model(name: str, partial: bool) -> type[Section]:
    """The schema of one method's settings (``partial``: of its per-dataset overrides). Built from
    that method's class alone, so checking one method's settings imports that method only."""
    from cmhash.methods import settings_schema

    return settings_schema(name, partial)


def _method_models(partial: bool) -> dict[str, type[Section]]:
    from cmhash.methods.registry import METHODS

    return {name: _method_model(name, partial) for name in METHODS}


SECTIONS = ("dataset", "encode", "train", "methods", "dataset_overrides", "evaluate")


def _dataset_model() -> type[Section]:
    from cmhash.datasets.settings import DatasetSettings

    return DatasetSettings


@functools.cache
def _encode_model() -> type[Section]:
    from cmhash.encoders import ENCODERS

    encoders = {name: settings_model(ENCODERS.load(name), f"{name}Settings") for name in ENCODERS}

    def check_batch_size(cls, value):
        if value != "auto" and (type(value) is not int or not 1 <= value <= 65_536):
            raise ValueError(f"encode.batch_size is {quote(value)}; expected auto or a whole number from 1 to 65536")
        return value

    return create_model(
        "Encode", __base__=Section, __validators__={
            "batch_size_is_auto_or_a_count": field_validator("batch_size", mode="before")(check_batch_size)},
        backend=(Literal[tuple(ENCODERS)], "offline"), device=(Device, "auto"), batch_size=(int | str, "auto"),
        text=(Literal["auto", "captions", "bag_of_words"], "auto"),
        loaders=(Annotated[int, Field(ge=0, le=256)], 2), shard_items=(Count, 4096),
        workers=(Annotated[int, Field(ge=0, le=4096)], 0), scheduler=(str | None, None),
        **{name: (model, model()) for name, model in encoders.items()})


@functools.cache
def _train_model() -> type[Section]:
    from cmhash.codes import MAX_BITS
    from cmhash.methods.registry import METHODS

    Bits = Annotated[int, Field(ge=1, le=MAX_BITS)]
    return create_model(
        "Train", __base__=Section, seed=(Seed, 0), device=(Device, "auto"),
        methods=(Annotated[list[Literal[tuple(METHODS)]], Field(min_length=1)], list(METHODS)),
        bits=(Annotated[list[Bits], Field(min_length=1)], [16, 32, 64, 128]))


@functools.cache
def _methods_model() -> type[Section]:
    return create_model("Methods", __base__=Section, **{name: (model, model()) for name, model in _method_models(False).items()})


@functools.cache
def _dataset_overrides_model() -> type[Section]:
    from cmhash.datasets import SOURCES

    MethodOverrides = create_model("MethodOverrides", __base__=Section,
                                   **{name: (model | None, None) for name, model in _method_models(True).items()})
    return create_model("DatasetOverrides", __base__=Section, **{name: (MethodOverrides | None, None) for name in SOURCES})


@functools.cache
def _evaluate_model() -> type[Section]:
    from cmhash.metrics.report import DEFAULT_MAP_KS, DEFAULT_TOP_R

    return create_model(
        "Evaluate", __base__=Section, device=(Device, "auto"),
        map_ks=(Annotated[list[Count], Field(max_length=100)], list(DEFAULT_MAP_KS)),
        top_r=(Annotated[list[Count], Field(min_length=1, max_length=1000)], list(DEFAULT_TOP_R)))


_SECTION_MODELS = {"dataset": _dataset_model, "encode": _encode_model, "train": _train_model, "methods": _methods_model,
                   "dataset_overrides": _dataset_overrides_model, "evaluate": _evaluate_model}


@functools.cache
def schema(sections: tuple[str, ...] = SECTIONS) -> type[Section]:
    """params.yaml with ``sections`` checked (default: all). A command that reads fewer sections
    checks only those, so that it does not import what the others need (the methods' settings
    import torch); the ``check-params`` stage, which dvc.yaml runs before every other, checks all."""
    fields: dict[str, Any] = {}
    for name in SECTIONS:
        if name in sections:
            model = _SECTION_MODELS[name]()
            fields[name] = (model, ... if name == "dataset" else model())
        else:
            fields[name] = (Any, None)
    return create_model("Params", __base__=Section, **fields)


def validate_params(raw: Any, path: str | Path = "params.yaml", sections: tuple[str, ...] = SECTIONS) -> dict[str, Any]:
    """``raw`` checked against :func:`schema` (``sections`` of it), completed with the defaults, as a
    plain dict (the sections not checked are left as they are)."""
    checked = _checked(raw, path, tuple(sections))
    params = checked.model_dump(by_alias=True)
    if "dataset_overrides" in sections:  # only what is set
        params["dataset_overrides"] = checked.dataset_overrides.model_dump(by_alias=True, exclude_none=True)
    return params


def _checked(raw: Any, path: str | Path, sections: tuple[str, ...]) -> BaseModel:
    """``raw`` as :func:`schema` (``sections`` of it) reads it, or an error of one line per problem."""
    if not isinstance(raw, dict):
        raise CmhashError(f"{path}: expected a mapping of stage names to settings, got {type(raw).__name__}.")
    model = schema(sections)
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        problems = [_describe(error, model) for error in err.errors()]
        more = f" (and {len(problems) - 1} more: {'; '.join(problems[1:4])})" if len(problems) > 1 else ""
        raise CmhashError(f"{path}: {problems[0]}{more}") from None


def _describe(error: dict[str, Any], model: type[BaseModel]) -> str:
    """One validation error as one line: the key, the value given, what is expected."""
    # pydantic's location, less the names it gives to the branches of a union
    loc = [part for part in error["loc"] if isinstance(part, int) or not (
        part.startswith(("literal[", "function-")) or part in ("str", "int", "dict[str,union[int,str]]"))]
    key = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc).lstrip(".")
    loc = [str(part) for part in loc]
    kind, context, given = error["type"], error.get("ctx", {}), error.get("input")
    if kind == "extra_forbidden":
        valid = _keys_at(model, loc[:-1])
        close = difflib.get_close_matches(loc[-1], valid, n=1)
        hint = f"did you mean {'.'.join([*loc[:-1], close[0]])}?" if close else f"valid keys here: {', '.join(valid)}"
        return f"unknown key {key}; {hint}"
    if kind == "missing":
        return f"{key} is missing"
    expected = {
        "int_type": "a whole number", "float_type": "a number", "string_type": "a text", "bool_type": "true or false",
        "list_type": "a list", "dict_type": "a mapping of keys to values", "model_type": "a mapping of keys to values",
        "finite_number": "a finite number", "greater_than_equal": f"at least {context.get('ge')}",
        "greater_than": f"more than {context.get('gt')}", "less_than_equal": f"at most {context.get('le')}",
        "literal_error": f"one of {context.get('expected')}", "too_short": "at least one entry",
        "too_long": f"at most {context.get('max_length')} entries",
        "string_pattern_mismatch": "auto, cpu, cuda or cuda:N",
    }.get(kind)
    if kind == "value_error":
        message = str(error["msg"]).removeprefix("Value error, ")
        message = quote(message, 300)[1:-1] if len(message) > 300 else message
        return message if message.startswith(key) else f"{key}: {message}"
    return f"{key} is {quote(given)}; expected {expected or quote(error['msg'], 200)}"


def _keys_at(model: type[BaseModel], loc: list[str]) -> list[str]:
    """The valid keys of the mapping at ``loc``."""
    for part in loc:
        annotation = model.model_fields[part].annotation if part in model.model_fields else None
        candidates = [a for a in typing.get_args(annotation) or [annotation] if isinstance(a, type) and issubclass(a, BaseModel)]
        if not candidates:
            return []
        model = candidates[0]
    return list(model.model_fields)


def load_params(path: str | Path = "params.yaml", sections: tuple[str, ...] = SECTIONS) -> dict[str, Any]:
    """Read, check and complete the parameter file (``sections`` of it; see :func:`schema`)."""
    path = Path(path)
    if not path.is_file():
        raise CmhashError(
            f"{path}: parameter file not found. Run cmhash from the project root "
            "(the folder with dvc.yaml and params.yaml) or pass --params PATH."
        )
    return validate_params(read_yaml_file(path), path, sections)


def dataset_settings(params: dict[str, Any], path: str | Path = "params.yaml") -> DatasetSettings:
    """The ``dataset`` section, checked and typed, as the library takes it."""
    return _checked({"dataset": params.get("dataset")}, path, ("dataset",)).dataset


def encoder_spec(encode: dict[str, Any], device: str | None = None) -> EncoderSpec:
    """The encoder that the checked ``encode`` section describes, as the library builds it; on
    ``device`` (default: ``encode.device``)."""
    from cmhash.encoders import EncoderSpec

    return EncoderSpec(encode["backend"], device or encode["device"], dict(encode[encode["backend"]]))


def trained_models(params: dict[str, Any], chosen: list[tuple[str, int]] | None = None) -> list[tuple[str, int]]:
    """``chosen`` (method, bits) pairs, or every one the train stages fit (``train.methods`` x
    ``train.bits``, in params.yaml's order): what an evaluate or index run covers. Every name and
    length is checked before any work."""
    from cmhash.methods import check_method_and_bits

    models = [(method, int(bits)) for method in params["train"]["methods"] for bits in params["train"]["bits"]] \
        if chosen is None else chosen
    for method, bits in models:
        check_method_and_bits(method, bits)
    return models


def method_params(params: dict[str, Any], method: str) -> dict[str, Any]:
    """The checked settings of one hashing method: ``methods.<name>`` completed with the defaults of
    its class, with the entry ``dataset_overrides.<dataset.name>.<name>`` (the papers' per-dataset
    values) merged over it. Only this method's schema is used, so a train stage imports its own
    method only; ``params`` may have been loaded without the methods' sections (they are checked
    here) or with them (checking again changes nothing)."""
    dataset = params["dataset"]["name"]
    settings, overrides = _method_model(method, False), _method_model(method, True)
    one_method = create_model("OneMethod", __base__=Section, methods=(
        create_model("Methods", __base__=Section, **{method: (settings, settings())}), ...), dataset_overrides=(
        create_model("DatasetOverrides", __base__=Section, **{dataset: (create_model(
            "MethodOverrides", __base__=Section, **{method: (overrides | None, None)}) | None, None)}), ...))
    raw = {"methods": {method: ((params.get("methods") or {}).get(method) or {})},
           "dataset_overrides": {dataset: {method: ((params.get("dataset_overrides") or {}).get(dataset) or {}).get(method)}}}
    try:
        checked = one_method.model_validate(raw)
    except ValidationError as err:
        raise CmhashError(f"params.yaml: {_describe(err.errors()[0], one_method)}") from None
    base = getattr(checked.methods, method).model_dump(by_alias=True)
    override = getattr(getattr(checked.dataset_overrides, dataset), method)
    return {**base, **(override.model_dump(by_alias=True, exclude_none=True) if override else {})}
