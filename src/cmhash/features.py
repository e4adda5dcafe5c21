"""The features file the encode stage writes (:mod:`cmhash.encoders.dataset` writes it): features of every
item in both modalities, in one HDF5 file per dataset.

Layout: ``images`` (N, d_image) and ``texts`` (N, d_text) float32, each row L2-normalised; an item
with several captions gets the normalised mean of its captions' embeddings. ``encode.text`` picks
what the text features are: ``captions`` (the encoder's text tower), ``bag_of_words`` (the stored
bag-of-words rows, as the DCMH-era methods read text) or ``auto`` (captions when the source has
them, else the bag of words, e.g. for the DCMH .mat files). Attributes record the encoder's name
and settings, the text source, whether the two spaces are aligned, and the cmhash version.

The attribute ``fingerprint`` records what the features were made from (the encoder, its settings,
the text source and the prepared file's md5); later stages check it (:func:`check_made_from`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from cmhash.checksums import file_md5
from cmhash.datasets.prepared import PreparedData
from cmhash.errors import CmhashError


@dataclass
class Features:
    images: np.ndarray
    texts: np.ndarray
    encoder: str
    aligned: bool
    fingerprint: str = ""  # what they were encoded from: encoder, its settings, the prepared file's md5


def read_features(path: str | Path) -> Features:
    path = Path(path)
    if not path.is_file():
        raise CmhashError(f"{path}: features not found; run `cmhash encode` (or `dvc repro encode`) first.")
    try:
        with h5py.File(path, "r") as f:
            return Features(f["images"][()], f["texts"][()], str(f.attrs["encoder"]), bool(f.attrs["aligned"]),
                            str(f.attrs.get("fingerprint", "")))
    except (OSError, KeyError) as err:
        raise CmhashError(f"{path}: truncated or not a features file ({str(err).splitlines()[0]}); rebuild it with "
                          "`dvc repro encode` (or delete it and run `cmhash encode`).") from None


def read_recipe(path: str | Path) -> dict:
    """How the features were made, without reading them: the encoder's name and settings and the
    text source (what a query must be encoded with to be comparable), and the full fingerprint."""
    path = Path(path)
    if not path.is_file():
        raise CmhashError(f"{path}: features not found; run `cmhash encode` (or `dvc repro encode`) first.")
    try:
        with h5py.File(path, "r") as f:
            fingerprint = str(f.attrs["fingerprint"])
            aligned = bool(f.attrs["aligned"])
    except (OSError, KeyError) as err:
        raise CmhashError(f"{path}: truncated or not a features file ({str(err).splitlines()[0]}); rebuild it with "
                          "`dvc repro encode` (or delete it and run `cmhash encode`).") from None
    made = json.loads(fingerprint)
    return {"name": made["encoder"], "settings": made["settings"], "text": made["text"], "aligned": aligned,
            "fingerprint": fingerprint}


def check_made_from(features: Features, features_path: Path, prepared_path: Path) -> str:
    """The prepared file's md5, after checking that the features were encoded from it as it is now
    (not from an earlier version: another seed, another split)."""
    current = file_md5(prepared_path)
    if json.loads(features.fingerprint).get("prepared_md5") != current:
        raise CmhashError(f"{prepared_path} changed after {features_path} was encoded from it; run `dvc repro encode` "
                          "(or cmhash encode) first, then this stage again.")
    return current


def normalise_rows(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


TEXT_SOURCES = ("auto", "captions", "bag_of_words")


def text_source(data: PreparedData, requested: str) -> str:
    """Which text the features are made of (see the module docstring)."""
    if requested not in TEXT_SOURCES:
        raise CmhashError(f"params.yaml: encode.text is {requested!r}; choose one of {', '.join(TEXT_SOURCES)}.")
    has_captions, has_bow = len(data.texts) > 0, data.has_bag_of_words
    if requested == "auto":
        return "captions" if has_captions else "bag_of_words"
    if requested == "captions" and not has_captions:
        raise CmhashError(f"{data.path}: this {data.source} dataset has no captions, only a bag of words; set "
                          "encode.text: bag_of_words (or auto).")
    if requested == "bag_of_words" and not has_bow:
        raise CmhashError(f"{data.path}: this {data.source} dataset stores no bag of words; set encode.text: captions.")
    return requested


