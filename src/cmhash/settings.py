"""Settings: the base of every schema of settings, the ranges they share, and a schema read from a
class's signature.

A component declares its settings once: a dataset source in its ``Options`` (a :class:`Section`),
an encoder or a hashing method in its constructor's signature (``epochs: Epochs = 40``), from which
:func:`settings_model` reads types, ranges and defaults. :mod:`cmhash.pipeline.params` composes
them into the schema of params.yaml.
"""

from __future__ import annotations

import inspect
import typing
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, create_model


class Section(BaseModel):
    """A mapping of params.yaml: no unknown keys, no type coercion (``'0.001'`` is not a number),
    no NaN or infinity."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, protected_namespaces=(),
                              populate_by_name=True)


Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]        # what numpy's and torch's generators take everywhere
Count = Annotated[int, Field(ge=1, le=1_000_000_000)]   # items, ks, ranks: far above any dataset here
Device = Annotated[str, Field(pattern=r"^(auto|cpu|cuda(:\d+)?)$")]


# ---- settings taken from a class signature (encoders, hashing methods)

_SIGNATURE_ONLY = {"self", "bits", "seed", "device", "progress"}  # given by the stage, not by params.yaml


def settings_model(cls: type, name: str, partial: bool = False) -> type[Section]:
    """A schema of the keyword settings of ``cls``'s constructor: types and ranges from its
    annotations (``epochs: Epochs = 40``), defaults from its signature; ``partial``: every setting
    optional, no defaults filled in."""
    hints = typing.get_type_hints(cls.__init__, include_extras=True)
    fields: dict[str, Any] = {}
    for parameter in inspect.signature(cls.__init__).parameters.values():
        if parameter.name in _SIGNATURE_ONLY:
            continue
        constraint: dict[str, Any] = {}
        kind = hints.get(parameter.name, Any)
        # pydantic keeps the name model_config for itself: such a setting gets another name in
        # Python and keeps its own in params.yaml (the alias)
        field_name = f"{parameter.name}_" if parameter.name == "model_config" else parameter.name
        constraint["alias"] = parameter.name
        if partial:
            fields[field_name] = (kind | None, Field(None, **constraint))
        else:
            fields[field_name] = (kind, Field(parameter.default, **constraint))
    return create_model(name, __base__=Section, **fields)
