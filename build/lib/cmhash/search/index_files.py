"""What the ``items`` and ``index`` stages write, and reading it back for search (docs/search.md).

``data/index/items/`` (stage ``items``, one per dataset) shows the items:

- ``items.h5``: every item's captions (``texts`` with ``text_item``, as in the prepared file), its
  ``labels`` (N, C) with the attribute ``label_names``, and ``image_paths``: the source image file
  of datasets that keep their images as files, else the item's file in ``images/``;
- ``images/<id>.jpg``: a thumbnail of every item (at most 256 pixels a side).

``data/index/<method>-<bits>/`` (stage ``index``, one per method and length) finds them:

- ``index.json``: the method, the length, whether codes are per modality or per image-text pair,
  the item count, and the query recipe: the encoder (backend, name, settings, text source) and the
  features' fingerprint;
- ``model.pt``: the fitted method (a copy of the train stage's), which turns a query's features into
  a code;
- ``images.hidx`` and ``texts.hidx`` (``pairs.hidx`` for fused codes): the retrieval items' codes,
  packed (:class:`~cmhash.search.engine.HammingIndex` files, memory-mapped when read);
- ``ids.npy``: the item id of each row of the codes.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from cmhash import __version__
from cmhash.errors import CmhashError

THUMBNAIL_SIDE = 256
_STR = h5py.string_dtype(encoding="utf-8")


def build_items(prepared_path: Path, out_dir: Path, progress: bool = False) -> Path:
    """Write ``data/index/items/`` from the prepared file (atomically, as one folder)."""
    from tqdm import tqdm

    from cmhash.atomic import atomic_directory
    from cmhash.datasets.prepared import PreparedData

    with PreparedData(prepared_path) as data, atomic_directory(out_dir) as tmp:
        (tmp / "images").mkdir()
        sources = [str(data.image_root / path) for path in data.image_paths] if not data.stores_pixels else None
        for start in tqdm(range(0, data.n_items, 256), desc="thumbnails", unit="batch", disable=not progress):
            items = np.arange(start, min(start + 256, data.n_items))
            for item, image in zip(items, data.load_images(items)):
                image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
                image.save(tmp / "images" / f"{item}.jpg", quality=85)
        with h5py.File(tmp / "items.h5", "w") as f:
            f.create_dataset("texts", data=np.array(data.texts, dtype=object).astype(_STR))
            f.create_dataset("text_item", data=data.text_item)
            f.create_dataset("labels", data=data.labels)
            paths = sources or [f"images/{item}.jpg" for item in range(data.n_items)]
            f.create_dataset("image_paths", data=np.array(paths, dtype=object).astype(_STR))
            f.attrs.update({"label_names": np.array(data.label_names, dtype=object).astype(_STR),
                            "image_files": "source" if sources else "thumbnails", "cmhash_version": __version__})
    return out_dir


def build_index(codes_path: Path, model_path: Path, features_path: Path, out_dir: Path) -> Path:
    """Write ``data/index/<method>-<bits>/`` from a train stage's codes and model (atomically)."""
    from cmhash.atomic import atomic_directory
    from cmhash.codes import read_codes
    from cmhash.features import read_recipe
    from cmhash.search.engine import HammingIndex

    retrieval = read_codes(codes_path)["retrieval"]
    with h5py.File(codes_path, "r") as f:
        method, bits = str(f.attrs["method"]), int(f.attrs["bits"])
    fused = retrieval.pairs is not None
    with atomic_directory(out_dir) as tmp:
        for kind in ("pairs",) if fused else ("images", "texts"):
            HammingIndex(getattr(retrieval, kind)).save(tmp / f"{kind}.hidx")
        np.save(tmp / "ids.npy", retrieval.index.astype(np.int64))
        shutil.copyfile(model_path, tmp / "model.pt")
        (tmp / "index.json").write_text(json.dumps({
            "format_version": 1, "method": method, "bits": bits, "fused": fused, "items": int(len(retrieval.index)),
            "encoder": read_recipe(features_path), "cmhash_version": __version__}, indent=2) + "\n")
    return out_dir


@dataclass
class Items:
    """The items catalog, read once per process."""

    folder: Path
    texts: list[list[str]]
    labels: np.ndarray
    label_names: list[str]
    image_paths: list[str]

    @classmethod
    def read(cls, folder: Path) -> "Items":
        path = folder / "items.h5"
        if not path.is_file():
            raise CmhashError(f"{path} is missing: build the search index with `dvc repro` (stage items).")
        with h5py.File(path, "r") as f:
            texts: list[list[str]] = [[] for _ in range(len(f["labels"]))]
            for text, item in zip(f["texts"].asstr()[()], f["text_item"][()]):
                texts[item].append(text)
            names = [n.decode() if isinstance(n, bytes) else str(n) for n in f.attrs["label_names"]]
            return cls(folder, texts, f["labels"][()], names, list(f["image_paths"].asstr()[()]))

    def __len__(self) -> int:
        return len(self.texts)

    def describe(self, item: int) -> dict[str, Any]:
        """What a result shows of an item: its captions, labels and image."""
        path = self.image_paths[item]
        return {"id": int(item), "captions": self.texts[item],
                "labels": [self.label_names[c] for c in np.flatnonzero(self.labels[item])],
                "image_path": path if Path(path).is_absolute() else str(self.folder / path)}

    def thumbnail(self, item: int) -> Path:
        return self.folder / "images" / f"{int(item)}.jpg"


@dataclass
class IndexFiles:
    """One ``data/index/<method>-<bits>/`` folder."""

    folder: Path
    info: dict[str, Any]
    ids: np.ndarray

    @classmethod
    def read(cls, folder: Path) -> "IndexFiles":
        if not (folder / "index.json").is_file():
            raise CmhashError(f"{folder}: no index there; build it with `dvc repro` (stage index).")
        return cls(folder, json.loads((folder / "index.json").read_text()), np.load(folder / "ids.npy"))

    def codes(self, kind: str):
        """The :class:`HammingIndex` of the retrieval items' ``images``, ``texts`` or ``pairs`` codes."""
        from cmhash.search.engine import HammingIndex

        return HammingIndex.load(self.folder / f"{kind}.hidx")
