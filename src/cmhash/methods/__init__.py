"""Hashing methods: a registry of estimators with one contract (scikit-learn style), :class:`HashingMethod`.

Every method is a class ``Method(bits, seed=0, device="auto", **settings)`` with::

    fit(image_features, text_features, labels=None, aligned=False) -> self
    encode(images=None, texts=None) -> np.ndarray   # (n, bits) int8 in {-1, +1}
    state_dict() -> dict                            # tensors and plain values: everything to encode again
    load_state_dict(state) -> None

and declares what it is: ``supervised`` (fit needs the labels), ``fused`` (one code per image-text
pair: ``encode`` takes both; otherwise one modality at a time) and ``end_to_end`` (it trains the
encoder towers too). ``settings`` are the method's entry under ``methods.<name>`` in params.yaml;
``aligned`` says whether the two feature spaces are one space (CLIP); baselines use it to share one
projection.

An end-to-end method (DCMHT's ``mode: finetune``) provides ``fit_end_to_end(items, towers, rows,
labels)`` and ``encode_items(items, rows) -> (image codes, text codes)`` instead, where ``items`` is
the prepared dataset (pixels and captions) and ``towers`` the open_clip encoder of ``encode.open_clip``.
Adding a method is one new module plus one line in ``registry.METHODS``. A method module imports
only the shared modules (this package, ``network``, ``projection``), never another method's module:
dvc.yaml makes each train stage depend on exactly those files (not on the registry), so adding or
editing one method reruns that method only.
"""

from __future__ import annotations

import functools
import inspect
import io
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from annotated_types import Ge, Gt, Le
from pydantic import ValidationError

from cmhash.errors import CmhashError
from cmhash.methods.registry import METHODS
from cmhash.settings import Section, settings_model

# The ranges of the settings a method takes, declared in its constructor's signature (``epochs:
# Epochs = 40``): params.yaml's schema reads the types, ranges and defaults from there, so each
# setting has one owner. The upper bounds are far above any sensible value; they stop a typo such as
# ``epochs: 4000000`` from running for a week.
Epochs = Annotated[int, Ge(1), Le(100_000)]         # also iterations
BatchSize = Annotated[int, Ge(2), Le(65_536)]       # a minibatch has at least one pair to compare
Width = Annotated[int, Ge(1), Le(65_536)]           # hidden layers, embedding widths
Depth = Annotated[int, Ge(1), Le(256)]              # attention heads, layers
LearningRate = Annotated[float, Gt(0), Le(10)]
Weight = Annotated[float, Ge(0), Le(1_000)]         # loss weights, decays, margins, momenta, scales
Share = Annotated[float, Ge(0), Le(1)]              # a mixing weight or a share of something
Threshold = Annotated[float, Ge(-1), Le(1)]          # a bound on a cosine similarity


class HashingMethod(ABC):
    """The contract of every hashing method (see the module docstring)."""

    supervised = False  # fit needs the training labels
    fused = False  # one code per image-text pair, instead of one per modality
    end_to_end = False  # trains the encoder towers too (fit_end_to_end / encode_items)
    bits: int

    @abstractmethod
    def fit(self, image_features: np.ndarray, text_features: np.ndarray, labels: np.ndarray | None = None,
            aligned: bool = False) -> "HashingMethod": ...

    def encode(self, images: np.ndarray | None = None, texts: np.ndarray | None = None) -> np.ndarray:
        """The codes of image features, of text features, or (fused methods) of image-text pairs."""
        if self.fused:
            if images is None or texts is None:
                raise ValueError(f"{type(self).__name__} codes image-text pairs: give both images and texts")
            return self.encode_pairs(images, texts)
        if (images is None) == (texts is None):
            raise ValueError(f"{type(self).__name__} codes one modality at a time: give images or texts")
        return self.encode_images(images) if images is not None else self.encode_texts(texts)

    # what encode calls; a method implements those its kind uses
    def encode_images(self, features: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def encode_texts(self, features: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def encode_pairs(self, image_features: np.ndarray, text_features: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    @abstractmethod
    def state_dict(self) -> dict[str, Any]: ...

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def check_method_and_bits(name: str, bits: int) -> None:
    """A registered method and a code length the evaluation handles, or a clear error."""
    from cmhash.codes import MAX_BITS

    METHODS.check(name)
    if not 1 <= int(bits) <= MAX_BITS:
        raise CmhashError(f"bits is {bits}: a code length is a whole number of bits from 1 to {MAX_BITS} "
                          "(the evaluation's limit; refused before fitting anything).")


def method_class(name: str) -> type:
    return METHODS.load(name)


@functools.cache
def settings_schema(name: str, partial: bool = False) -> type[Section]:
    """The schema of method ``name``'s settings, read from its constructor's signature: types,
    ranges and defaults (``partial``: every setting optional, no default filled in). params.yaml's
    schema is made of these, and :func:`build_method` checks with them."""
    return settings_model(method_class(name), f"{name}{'Override' if partial else 'Settings'}", partial)


def build_method(
    name: str, bits: int, settings: dict[str, Any], seed: int = 0, device: str = "auto", progress: bool = False
) -> HashingMethod:
    """Instantiate a registered method with ``settings`` (its keyword settings; those not given take
    their defaults); an unknown setting, a wrong type or a value out of range is an error that names it.

    ``progress`` turns on the per-epoch progress bar of the methods that train iteratively.
    """
    check_method_and_bits(name, bits)
    cls = method_class(name)
    try:
        settings_schema(name, partial=True).model_validate(settings)
    except ValidationError as err:
        raise CmhashError(f"params.yaml: methods.{name}: {_problem(err.errors()[0], name)}") from None
    extra = {"progress": progress} if "progress" in inspect.signature(cls).parameters else {}
    return cls(bits=int(bits), seed=int(seed), device=device, **settings, **extra)


def _problem(error: dict[str, Any], name: str) -> str:
    """One line for a settings error: the setting, the value given and what is expected."""
    setting = ".".join(str(part) for part in error["loc"])
    if error["type"] == "extra_forbidden":
        accepted = ", ".join(sorted(field.alias or key for key, field in settings_schema(name, True).model_fields.items()))
        return f"unknown setting {setting}; accepted: {accepted or 'none'}"
    return f"{setting} is {error.get('input')!r}: {error['msg'].lower()}"


def to_codes(values: np.ndarray) -> np.ndarray:
    """Binarise real values to {-1, +1} int8 codes; zero maps to +1 so every bit is defined."""
    return np.where(np.asarray(values) >= 0, 1, -1).astype(np.int8)


def save_model(path: Path, name: str, method: HashingMethod, settings: dict[str, Any], seed: int) -> None:
    """Save a fitted method with what is needed to rebuild it (torch file, written atomically)."""
    import torch

    from cmhash.atomic import atomic_path

    payload = {"method": name, "bits": method.bits, "settings": settings, "seed": seed, "state": method.state_dict()}
    # Serialised in memory first: saved to a path, torch names the archive's records after the
    # file, and atomic_path's temporary name is random, so the same model would hash differently.
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())


def load_model(path: Path, device: str = "auto") -> HashingMethod:
    """Rebuild a method saved by :func:`save_model`. The file is read with ``weights_only=True``:
    tensors and plain containers only, so a crafted model file cannot run code when loaded."""
    import pickle

    import torch

    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CmhashError(f"{path}: model not found; run `cmhash train` for this method and bit length first.") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CmhashError(f"{path}: not a cmhash model file, or one holding more than tensors and plain values "
                          f"(refused, nothing in it was run: {first_line}). Rebuild it with `cmhash train`.") from None
    method = build_method(payload["method"], payload["bits"], payload["settings"], payload["seed"], device)
    method.load_state_dict(payload["state"])
    return method
