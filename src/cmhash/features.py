"""The encode stage: features of every item in both modalities, in one HDF5 file per dataset.

Layout: ``images`` (N, d_image) and ``texts`` (N, d_text) float32, each row L2-normalised; an item
with several captions gets the normalised mean of its captions' embeddings. ``encode.text`` picks
what the text features are: ``captions`` (the encoder's text tower), ``bag_of_words`` (the stored
bag-of-words rows, as the DCMH-era methods read text) or ``auto`` (captions when the source has
them, else the bag of words, e.g. for the DCMH .mat files). Attributes record the encoder's name
and settings, the text source, whether the two spaces are aligned, and the cmhash version.

Encoding is resumable: batches are written to ``<out>.partial`` as they finish, and a rerun with
the same encoder and the same prepared file continues where the last one stopped. The finished
file is renamed into place, so a reader never sees a half-encoded file.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
import h5py
import numpy as np
from tqdm import tqdm

from cmhash import __version__
from cmhash.datasets.prepared import PreparedData
from cmhash.encoders import Encoder
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
    with h5py.File(path, "r") as f:
        return Features(f["images"][()], f["texts"][()], str(f.attrs["encoder"]), bool(f.attrs["aligned"]),
                        str(f.attrs.get("fingerprint", "")))


def read_recipe(path: str | Path) -> dict:
    """How the features were made, without reading them: the encoder's name and settings and the
    text source (what a query must be encoded with to be comparable), and the full fingerprint."""
    path = Path(path)
    if not path.is_file():
        raise CmhashError(f"{path}: features not found; run `cmhash encode` (or `dvc repro encode`) first.")
    with h5py.File(path, "r") as f:
        fingerprint = str(f.attrs.get("fingerprint", ""))
        aligned = bool(f.attrs["aligned"])
    made = json.loads(fingerprint)
    return {"name": made["encoder"], "settings": made["settings"], "text": made["text"], "aligned": aligned,
            "fingerprint": fingerprint}


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


def encode_dataset(prepared_path: Path, out_path: Path, encoder: Encoder, batch_size: int = 64, progress: bool = True,
                   text: str = "auto") -> None:
    """Encode every image and every text of a prepared file into ``out_path`` (resumable)."""
    out_path = Path(out_path)
    partial = out_path.with_name(out_path.name + ".partial")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with PreparedData(prepared_path) as data:
        text = text_source(data, text)
        # the prepared file's content, not its mtime: the fingerprint stays in the finished file, so
        # encoding the same data again must give the same bytes (DVC then reruns nothing downstream)
        fingerprint = json.dumps(
            {"encoder": encoder.name, "settings": encoder.settings(), "text": text, "prepared_md5": _file_md5(prepared_path)},
            sort_keys=True,
        )
        with h5py.File(partial, "a") as f:
            if f.attrs.get("fingerprint") != fingerprint:  # a different run's leftovers: start over
                for key in list(f.keys()):
                    del f[key]
                f.attrs.update({"fingerprint": fingerprint, "images_done": 0, "texts_done": 0})
            elif f.attrs["images_done"] or f.attrs["texts_done"]:
                print(f"resuming {partial}: {f.attrs['images_done']} images and {f.attrs['texts_done']} items' texts already encoded")
            _encode_images(f, data, encoder, batch_size, progress)
            if text == "captions":
                _encode_texts(f, data, encoder, batch_size, progress)
            else:
                _store_bag_of_words(f, data)
            f.attrs.update(
                {
                    "encoder": encoder.name if text == "captions" else f"{encoder.name} images + bag-of-words text",
                    "encoder_settings": json.dumps(encoder.settings(), sort_keys=True),
                    "text": text,
                    "aligned": encoder.aligned and text == "captions",
                    "prepared": str(prepared_path),
                    "cmhash_version": __version__,
                }
            )
    os.replace(partial, out_path)


def _file_md5(path: Path, block: int = 1 << 24) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        while chunk := handle.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def _store(f: h5py.File, name: str, start: int, rows: np.ndarray, total: int) -> None:
    if name not in f:
        f.create_dataset(name, shape=(total, rows.shape[1]), dtype=np.float32)
    f[name][start : start + len(rows)] = normalise_rows(rows)
    f.attrs[f"{name}_done"] = start + len(rows)
    f.flush()


def _encode_images(f: h5py.File, data: PreparedData, encoder: Encoder, batch_size: int, progress: bool) -> None:
    done = int(f.attrs["images_done"])
    with tqdm(total=data.n_items, initial=done, desc="encoding images", unit="img", disable=not progress) as bar:
        for batch in data.iter_images(batch_size, first=done):
            _store(f, "images", done, encoder.encode_images(batch), data.n_items)
            done += len(batch)
            bar.update(len(batch))


def _store_bag_of_words(f: h5py.File, data: PreparedData, rows: int = 8192) -> None:
    bow, _ = data.bag_of_words
    for start in range(int(f.attrs["texts_done"]), data.n_items, rows):
        _store(f, "texts", start, bow[start : start + rows].astype(np.float32), data.n_items)


def _encode_texts(f: h5py.File, data: PreparedData, encoder: Encoder, batch_size: int, progress: bool) -> None:
    done = int(f.attrs["texts_done"])
    captions = data.texts_by_item()
    with tqdm(total=data.n_items, initial=done, desc="encoding texts", unit="item", disable=not progress) as bar:
        for start in range(done, data.n_items, batch_size):
            items = captions[start : start + batch_size]
            flat = [text for texts in items for text in texts]
            embedded = normalise_rows(encoder.encode_texts(flat))
            owner = np.repeat(np.arange(len(items)), [len(texts) for texts in items])
            means = np.zeros((len(items), embedded.shape[1]), dtype=np.float64)
            np.add.at(means, owner, embedded)
            _store(f, "texts", start, means, data.n_items)
            bar.update(len(items))

