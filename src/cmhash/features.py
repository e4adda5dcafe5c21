"""The encode stage: features of every item in both modalities, in one HDF5 file per dataset.

Layout: ``images`` (N, d_image) and ``texts`` (N, d_text) float32, each row L2-normalised; an item
with several captions gets the normalised mean of its captions' embeddings. ``encode.text`` picks
what the text features are: ``captions`` (the encoder's text tower), ``bag_of_words`` (the stored
bag-of-words rows, as the DCMH-era methods read text) or ``auto`` (captions when the source has
them, else the bag of words, e.g. for the DCMH .mat files). Attributes record the encoder's name
and settings, the text source, whether the two spaces are aligned, and the cmhash version.

Encoding is resumable: batches are written to ``<out>.partial`` as they finish, and a rerun with
the same encoder and the same prepared file continues where the last one stopped (a ``.partial``
left unreadable is discarded, with a message). The finished file is written anew from the
``.partial`` one, atomically, so a reader never sees a half-encoded file and a resumed encode gives
the same bytes as an uninterrupted one. One encode at a time may write an output.
"""

from __future__ import annotations

import fcntl
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import h5py
import numpy as np
from tqdm import tqdm

from cmhash import __version__
from cmhash.atomic import atomic_path
from cmhash.checksums import file_md5
from cmhash.datasets.prepared import PreparedData
from cmhash.errors import CmhashError

if TYPE_CHECKING:
    from cmhash.encoders import Encoder


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


def encode_dataset(prepared_path: Path, out_path: Path, encoder: Encoder, batch_size: int = 64, progress: bool = True,
                   text: str = "auto") -> None:
    """Encode every image and every text of a prepared file into ``out_path`` (resumable)."""
    out_path = Path(out_path)
    partial = out_path.with_name(out_path.name + ".partial")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(out_path), PreparedData(prepared_path) as data:
        text = text_source(data, text)
        # the prepared file's content, not its mtime: the fingerprint stays in the finished file, so
        # encoding the same data again must give the same bytes (DVC then reruns nothing downstream)
        fingerprint = json.dumps(
            {"encoder": encoder.name, "settings": encoder.settings(), "text": text, "prepared_md5": file_md5(prepared_path)},
            sort_keys=True,
        )
        with _open_partial(partial) as f:
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
        attrs = {
            "fingerprint": fingerprint,
            "encoder": encoder.name if text == "captions" else f"{encoder.name} images + bag-of-words text",
            "encoder_settings": json.dumps(encoder.settings(), sort_keys=True),
            "text": text,
            "aligned": encoder.aligned and text == "captions",
            "prepared": str(prepared_path),
            "cmhash_version": __version__,
        }
        _write_final(partial, out_path, attrs)
        partial.unlink()


@contextmanager
def _exclusive(out_path: Path) -> Iterator[None]:
    """One encode at a time per output: a second one stops at once instead of writing the same
    ``.partial`` file (an exclusive lock on ``<out>.lock``, dropped by the kernel if a process dies)."""
    lock = out_path.with_name(out_path.name + ".lock")
    with open(lock, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CmhashError(f"another process is writing {out_path} (it holds {lock}); wait for it to finish, "
                              "or stop it, before encoding again.") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _open_partial(partial: Path) -> h5py.File:
    """The resumable ``.partial`` file; one an interrupted run left unreadable is discarded, with a
    message, and encoding starts over."""
    try:
        return h5py.File(partial, "a")
    except OSError as err:
        print(f"discarding {partial}: an interrupted encode left it unreadable ({str(err).splitlines()[0]}); starting over")
        partial.unlink()
        return h5py.File(partial, "a")


def _write_final(partial: Path, out_path: Path, attrs: dict) -> None:
    """Copy the encoded arrays into a new file written in one go, atomically. The ``.partial`` file's
    bytes depend on whether and where encoding was interrupted (the order HDF5 allocated its
    chunks and metadata); the copy's do not, so a resumed encode gives the same file as an
    uninterrupted one, and DVC reruns nothing downstream."""
    with h5py.File(partial, "r") as source, atomic_path(out_path) as tmp, h5py.File(tmp, "w") as f:
        for name in ("images", "texts"):
            rows = source[name]
            target = f.create_dataset(name, shape=rows.shape, dtype=rows.dtype)
            for start in range(0, rows.shape[0], 8192):  # in slices: memory stays bounded at any size
                target[start:start + 8192] = rows[start:start + 8192]
        for key in sorted(attrs):
            f.attrs[key] = attrs[key]


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

