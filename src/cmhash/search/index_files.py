"""What the ``items`` and ``index`` stages write, and reading it back for search (docs/search.md).

``data/items/`` (stage ``items``, one per dataset) shows the items:

- ``items.h5``: every item's captions (``texts`` with ``text_item``, as in the prepared file), its
  ``labels`` (N, C) with the attribute ``label_names``, and ``image_paths``: the source image file
  of datasets that keep their images as files, else the item's file in ``images/``;
- ``images/<id>.jpg``: a thumbnail of every item (at most 256 pixels a side), whose md5 ``items.h5``
  records (``thumbnail_md5``), so that a thumbnail is served only with the catalog it belongs to.

``data/index/<method>-<bits>/`` (stage ``index``: one folder per method and length) finds them:

- ``index.json``: the method, the length, whether codes are per modality or per image-text pair,
  the item count, the query recipe (the encoder: backend, name, settings, text source; and the
  features' fingerprint), the md5 of each of the other files, so that a file swapped with
  another index's, truncated or edited is found before it is trusted, and the md5 of the
  ``items.h5`` it was built with (``catalog``): an index is served only with that catalog;
- ``model.pt``: the fitted method (a copy of the train stage's), which turns a query's features into
  a code;
- ``images.hidx`` and ``texts.hidx`` (``pairs.hidx`` for fused codes): the retrieval items' codes,
  packed (:class:`~cmhash.search.engine.HammingIndex` files, memory-mapped when read);
- ``ids.npy``: the item id of each row of the codes.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from cmhash import __version__
from cmhash.checksums import file_md5, open_file_md5
from cmhash.errors import CmhashError, quote

THUMBNAIL_SIDE = 256
FORMAT_VERSION = 3  # 2: index.json records the md5 of every file; 3: and the catalog's (items.h5)
_STR = h5py.string_dtype(encoding="utf-8")


def build_items(prepared_path: Path, out_dir: Path, progress: bool = False) -> Path:
    """Write ``data/items/`` from the prepared file (atomically, as one folder)."""
    from tqdm import tqdm

    from cmhash.atomic import atomic_directory
    from cmhash.datasets.prepared import PreparedData

    with PreparedData(prepared_path) as data, atomic_directory(out_dir) as tmp:
        (tmp / "images").mkdir()
        sources = [str(data.image_root / path) for path in data.image_paths] if not data.stores_pixels else None
        thumbnail_md5 = []
        for start in tqdm(range(0, data.n_items, 256), desc="thumbnails", unit="batch", disable=not progress):
            items = np.arange(start, min(start + 256, data.n_items))
            for item, image in zip(items, data.load_images(items)):
                image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
                image.save(tmp / "images" / f"{item}.jpg", quality=85)
                thumbnail_md5.append(file_md5(tmp / "images" / f"{item}.jpg"))
        with h5py.File(tmp / "items.h5", "w") as f:
            f.create_dataset("texts", data=np.array(data.texts, dtype=object).astype(_STR))
            f.create_dataset("text_item", data=data.text_item)
            f.create_dataset("labels", data=data.labels)
            paths = sources or [f"images/{item}.jpg" for item in range(data.n_items)]
            f.create_dataset("image_paths", data=np.array(paths, dtype=object).astype(_STR))
            f.create_dataset("thumbnail_md5", data=np.array(thumbnail_md5, dtype="S32"))
            f.attrs.update({"label_names": np.array(data.label_names, dtype=object).astype(_STR),
                            "image_files": "source" if sources else "thumbnails", "cmhash_version": __version__})
    return out_dir


def build_index(codes_path: Path, model_path: Path, features_path: Path, items_dir: Path, out_dir: Path) -> Path:
    """Write ``data/index/<method>-<bits>/`` from a train stage's codes and model (atomically), for
    the items catalog of ``items_dir`` (its md5 is recorded: the index is served only with it)."""
    from cmhash.atomic import atomic_directory
    from cmhash.codes import read_codes
    from cmhash.features import read_recipe
    from cmhash.search.engine import HammingIndex

    retrieval = read_codes(codes_path)["retrieval"]
    with h5py.File(codes_path, "r") as f:
        method, bits = str(f.attrs["method"]), int(f.attrs["bits"])
    fused = retrieval.pairs is not None
    catalog = items_dir / "items.h5"
    if not catalog.is_file():
        raise CmhashError(f"{catalog} is missing: the index records the catalog it was built with; build the catalog "
                          "first (`dvc repro items`).")
    with atomic_directory(out_dir) as tmp:
        for kind in kinds_of(fused):
            HammingIndex(getattr(retrieval, kind)).save(tmp / f"{kind}.hidx")
        np.save(tmp / "ids.npy", retrieval.index.astype(np.int64))
        shutil.copyfile(model_path, tmp / "model.pt")
        files = {name: file_md5(tmp / name) for name in [*(f"{kind}.hidx" for kind in kinds_of(fused)), "ids.npy", "model.pt"]}
        (tmp / "index.json").write_text(json.dumps({
            "format_version": FORMAT_VERSION, "method": method, "bits": bits, "fused": fused, "items": int(len(retrieval.index)),
            "files": files, "catalog": file_md5(catalog), "encoder": read_recipe(features_path),
            "cmhash_version": __version__}, indent=2) + "\n")
    return out_dir


def kinds_of(fused: bool) -> tuple[str, ...]:
    """The code files of an index: one per modality, or one of image-text pairs (fused methods)."""
    return ("pairs",) if fused else ("images", "texts")


def _damaged(path: Path, problem: str, stage: str) -> CmhashError:
    return CmhashError(f"{path}: {problem}; rebuild it with `dvc repro {stage}` (or delete the folder, then dvc repro).")


def read_regular_file(path: Path) -> tuple[bytes, tuple[int, int, int]] | None:
    """The bytes of the regular file at ``path``, read through one open (a symbolic link is not
    followed), and its (inode, mtime, size) at that open; ``None`` when there is no such file."""
    handle = _open_regular_file(path)
    if handle is None:
        return None
    with handle:
        return handle.read(), file_stamp(os.fstat(handle.fileno()))


def file_stamp(status: os.stat_result) -> tuple[int, int, int]:
    """What tells one version of a file from the next one written in its place: (inode, mtime, size)."""
    return status.st_ino, status.st_mtime_ns, status.st_size


def _open_regular_file(path: Path):
    """``path`` open for binary reading, or ``None`` when it is missing or not a regular file (a
    symbolic link is not followed, a folder or a device is not opened as a file)."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)  # a pipe does not block the open
    except OSError:
        return None
    if not stat.S_ISREG(os.fstat(descriptor).st_mode):
        os.close(descriptor)
        return None
    return os.fdopen(descriptor, "rb")


@dataclass
class Items:
    """The items catalog, read once (``items.h5`` through one open, checked as it is read) and
    known by the md5 of those bytes: the version an index records."""

    folder: Path
    texts: list[list[str]]
    labels: np.ndarray
    label_names: list[str]
    image_paths: list[str]
    thumbnail_md5: list[str]
    md5: str
    stamp: tuple[int, int, int]  # items.h5's (inode, mtime, size) when it was read

    @classmethod
    def read(cls, folder: Path) -> "Items":
        path = folder / "items.h5"
        read = read_regular_file(path)
        if read is None:
            raise CmhashError(f"{path} is missing: build the search index with `dvc repro` (stage items).")
        data, stamp = read
        try:
            with h5py.File(io.BytesIO(data), "r") as f:
                if "thumbnail_md5" not in f:
                    raise _damaged(path, "written by an earlier version of cmhash (no thumbnail checksums)", "items")
                labels, text_item = f["labels"][()], f["text_item"][()]
                all_texts, image_paths = f["texts"].asstr()[()], list(f["image_paths"].asstr()[()])
                thumbnail_md5 = [digest.decode("ascii") for digest in f["thumbnail_md5"][()]]
                names = [n.decode() if isinstance(n, bytes) else str(n) for n in f.attrs["label_names"]]
        except (OSError, KeyError, ValueError, TypeError, AttributeError, UnicodeDecodeError) as err:
            raise _damaged(path, f"not a readable items catalog ({str(err).splitlines()[0][:120]})", "items") from None
        n = len(labels)
        if labels.ndim != 2 or labels.shape[1] != len(names) or len(image_paths) != n or text_item.shape != all_texts.shape \
                or len(thumbnail_md5) != n or (len(text_item) and (text_item.min() < 0 or text_item.max() >= n)):
            raise _damaged(path, "its labels, texts and images do not match each other", "items")
        texts: list[list[str]] = [[] for _ in range(n)]
        for text, item in zip(all_texts, text_item):
            texts[item].append(text)
        return cls(folder, texts, labels, names, image_paths, thumbnail_md5, hashlib.md5(data).hexdigest(), stamp)

    def __len__(self) -> int:
        return len(self.texts)

    def describe(self, item: int) -> dict[str, Any]:
        """What a result shows of an item: its captions, labels and image."""
        path = self.image_paths[item]
        return {"id": int(item), "captions": self.texts[item],
                "labels": [self.label_names[c] for c in np.flatnonzero(self.labels[item])],
                "image_path": path if Path(path).is_absolute() else str(self.folder / path)}

    def thumbnail(self, item: int) -> bytes | None:
        """The item's thumbnail (JPEG bytes), read through one open: a regular file inside the
        catalog's ``images/`` folder (a symbolic link, or anything that leads elsewhere, is not
        served) whose md5 is the one this catalog recorded; ``None`` when there is none, or when the
        file there belongs to another version of the catalog."""
        images = (self.folder / "images").resolve()
        path = self.folder / "images" / f"{int(item)}.jpg"
        if path.resolve().parent != images:
            return None
        read = read_regular_file(path)
        if read is None or hashlib.md5(read[0]).hexdigest() != self.thumbnail_md5[item]:
            return None
        return read[0]


@dataclass
class IndexFiles:
    """One ``data/index/<method>-<bits>/`` folder, checked before it is trusted: ``index.json`` is
    what it should be for that folder, every file is a regular file with the md5 it records, and the
    ids are item ids. Each file is opened once and loaded from what was checked (the bytes read, or
    the open file for the memory-mapped codes), so a rebuild meanwhile cannot mix two versions."""

    folder: Path
    info: dict[str, Any]
    ids: np.ndarray
    codes: dict[str, Any]   # "images" / "texts" / "pairs" -> HammingIndex
    model_file: bytes
    stamp: tuple[int, int, int]  # index.json's (inode, mtime, size) when it was read

    @classmethod
    def read(cls, folder: Path, method: str, bits: int) -> "IndexFiles":
        """Read and check the folder; the ids are checked against the catalog by :meth:`check_ids`."""
        from cmhash.search.engine import HammingIndex

        stage = "index"
        info_path = folder / "index.json"
        read = read_regular_file(info_path)
        if read is None:
            raise _damaged(info_path, "missing, or not a regular file", stage)
        try:
            info = json.loads(read[0].decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as err:
            raise _damaged(info_path, f"not readable JSON ({str(err)[:80]})", stage) from None
        expected = {"format_version": int, "method": str, "bits": int, "fused": bool, "items": int, "files": dict,
                    "catalog": str, "encoder": dict}
        if isinstance(info, dict) and info.get("format_version") != FORMAT_VERSION:
            raise _damaged(info_path, f"written by another version of cmhash (format {quote(info.get('format_version'))}, "
                                      f"this one reads {FORMAT_VERSION})", stage)
        recipe = info.get("encoder") if isinstance(info, dict) else None
        if not isinstance(info, dict) or any(not isinstance(info.get(key), kind) for key, kind in expected.items()) \
                or not (isinstance(recipe.get("name"), str) and isinstance(recipe.get("settings"), dict)
                        and isinstance(recipe.get("text"), str)):
            raise _damaged(info_path, "not the description of an index (a field is missing or of the wrong type)", stage)
        if (info["method"], info["bits"]) != (method, bits):
            raise _damaged(info_path, f"describes the index of {info['method']} at {info['bits']} bits, not of this "
                                      f"folder's {method} at {bits} bits", stage)
        names = [*(f"{kind}.hidx" for kind in kinds_of(info["fused"])), "ids.npy", "model.pt"]
        if sorted(info["files"]) != sorted(names):
            raise _damaged(info_path, f"lists the files {sorted(info['files'])}, expected {sorted(names)}", stage)
        codes, contents = {}, {}
        for name in names:
            path = folder / name
            handle = _open_regular_file(path)
            if handle is None:
                raise _damaged(path, "missing, or not a regular file", stage)
            with handle:
                if open_file_md5(handle) != info["files"][name]:
                    raise _damaged(path, "not the file this index was built with (its md5 differs from index.json's)", stage)
                if name.endswith(".hidx"):  # memory-mapped from the file that was checked, not reopened by path
                    try:
                        index = HammingIndex.from_open_file(handle, path)
                    except CmhashError as err:
                        raise _damaged(path, str(err).removeprefix(f"{path}: ").split(";")[0], stage) from None
                    if index.bits != info["bits"] or len(index) != info["items"]:
                        raise _damaged(path, f"holds {len(index)} codes of {index.bits} bits, not "
                                             f"{info['items']} of {info['bits']}", stage)
                    codes[name.removesuffix(".hidx")] = index
                else:
                    handle.seek(0)
                    contents[name] = handle.read()
        try:
            ids = np.load(io.BytesIO(contents["ids.npy"]), allow_pickle=False)
        except (ValueError, OSError, EOFError) as err:
            raise _damaged(folder / "ids.npy", f"not an array of item ids ({str(err)[:80]})", stage) from None
        return cls(folder, info, ids, codes, contents["model.pt"], read[1])

    def check_ids(self, n_items: int) -> None:
        """The ids must be distinct items of the catalog the index was built with (``n_items`` of them)."""
        ids, count = self.ids, self.info["items"]
        if not isinstance(ids, np.ndarray) or ids.dtype != np.int64 or ids.ndim != 1 or len(ids) != count or \
                (len(ids) and (ids.min() < 0 or ids.max() >= n_items)) or len(np.unique(ids)) != len(ids):
            raise _damaged(self.folder / "ids.npy", f"not {count} distinct item ids from 0 to {n_items - 1}", "index")

    def model(self, device: str):
        """The fitted method that encodes queries (from the bytes that were checked), checked to be
        this index's method and length."""
        from cmhash.methods import load_model, method_class

        path = self.folder / "model.pt"
        try:
            model = load_model(io.BytesIO(self.model_file), device)
        except CmhashError as err:  # its message names the stream, not the file
            raise _damaged(path, str(err).split(": ", 1)[-1].split(". Rebuild")[0], "index") from None
        if type(model) is not method_class(self.info["method"]) or model.bits != self.info["bits"]:
            raise _damaged(path, f"a {type(model).__name__} model of {model.bits} bits, not the "
                                 f"{self.info['method']} model of {self.info['bits']} bits", "index")
        return model
