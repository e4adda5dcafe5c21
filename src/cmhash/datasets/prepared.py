"""The canonical prepared-dataset file: one HDF5 file per dataset, the input of every later stage.

Layout (format version 1; documented in docs/data-format.md):

- ``labels``        (N, C) uint8, 0/1 multi-hot labels
- ``texts``         (M,) UTF-8 strings: every caption of every item (M = 0 for sources whose
  text is only a bag of words, such as the DCMH .mat files)
- ``text_item``     (M,) int64, the item each text belongs to (non-decreasing)
- ``images``        (N, H, W, 3) uint8 pixels, or
- ``image_paths``   (N,) UTF-8 paths relative to the ``image_root`` attribute
- ``bag_of_words``  (N, V) uint8, optional: the text as a bag of words, over the ``vocabulary``
  attribute when the source names its words (MIRFlickr-25K, NUS-WIDE)
- ``splits/query``, ``splits/retrieval``, ``splits/train``  int64 item indices
- attributes: ``label_names``, ``source``, ``params`` (JSON of the settings that made the file),
  ``split`` (JSON: protocol, seed, sizes), ``summary`` (JSON: what the source read, kept and
  skipped), ``cmhash_version``, ``format_version``, and ``image_root`` when paths are stored.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np

from cmhash import __version__
from cmhash.atomic import atomic_path, ensure_free_space
from cmhash.errors import CmhashError

if TYPE_CHECKING:
    from cmhash.datasets.source import PixelArray

FORMAT_VERSION = 1
SPLIT_NAMES = ("query", "retrieval", "train")
_STR = h5py.string_dtype(encoding="utf-8")


def write_prepared(
    path: str | Path,
    *,
    labels: np.ndarray,
    label_names: Sequence[str],
    texts: Sequence[str],
    text_item: np.ndarray,
    splits: dict[str, np.ndarray],
    source: str,
    params: dict[str, Any],
    split: dict[str, Any] | None = None,
    summary: dict[str, int] | None = None,
    images: "PixelArray | None" = None,
    image_paths: Sequence[str] | None = None,
    image_root: str | None = None,
    bag_of_words: np.ndarray | None = None,
    vocabulary: Sequence[str] | None = None,
    progress: bool = False,
) -> None:
    """Write a prepared dataset atomically. Exactly one of ``images`` / ``image_paths`` is given;
    ``images`` is copied a chunk at a time, so a lazy reader keeps memory bounded."""
    if (images is None) == (image_paths is None):
        raise ValueError("give exactly one of images or image_paths")
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.shape[1] != len(label_names):
        raise ValueError(f"labels must be (N, {len(label_names)}), got {labels.shape}")
    text_item = np.asarray(text_item, dtype=np.int64)
    if len(texts) != len(text_item):
        raise ValueError("texts and text_item differ in length")
    ensure_free_space(Path(path).parent, _expected_bytes(images, labels, texts), str(path))
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("labels", data=labels.astype(np.uint8), compression="gzip")
        gzip = "gzip" if len(texts) else None  # HDF5 cannot compress an empty dataset
        f.create_dataset("texts", data=np.array(list(texts), dtype=object), dtype=_STR, compression=gzip)
        f.create_dataset("text_item", data=text_item, compression=gzip)
        if images is not None:
            _copy_pixels(f, images, progress)
        else:
            f.create_dataset("image_paths", data=np.array(list(image_paths), dtype=object), dtype=_STR)
            f.attrs["image_root"] = str(image_root or "")
        if bag_of_words is not None:
            f.create_dataset("bag_of_words", data=np.asarray(bag_of_words, dtype=np.uint8), compression="gzip")
            if vocabulary is not None:  # the DCMH .mat files do not name their words
                f.attrs["vocabulary"] = np.array(list(vocabulary), dtype=object).astype(_STR)
        group = f.create_group("splits")
        for name in SPLIT_NAMES:
            group.create_dataset(name, data=np.asarray(splits[name], dtype=np.int64))
        f.attrs["label_names"] = np.array(list(label_names), dtype=object).astype(_STR)
        f.attrs["source"] = source
        f.attrs["params"] = json.dumps(params, sort_keys=True)
        f.attrs["split"] = json.dumps(split or {}, sort_keys=True)
        f.attrs["summary"] = json.dumps(summary or {}, sort_keys=True)
        f.attrs["cmhash_version"] = __version__
        f.attrs["format_version"] = FORMAT_VERSION


def _expected_bytes(images: "PixelArray | None", labels: np.ndarray, texts: Sequence[str]) -> int:
    """About what the file will take: the pixels as gzip compresses a sample of them (level 4, one
    image per chunk, as written), plus labels and texts uncompressed, plus a margin."""
    import zlib

    pixels = 0
    if images is not None and images.shape[0]:
        sample = np.asarray(images[: min(64, images.shape[0])], dtype=np.uint8)
        pixels = int(np.mean([len(zlib.compress(image.tobytes(), 4)) for image in sample]) * images.shape[0])
    return int(1.1 * (pixels + labels.size + sum(len(t) for t in texts) + 16 * len(texts))) + (1 << 20)


def _copy_pixels(f: h5py.File, images: "PixelArray", progress: bool, rows: int = 512) -> None:
    from tqdm import tqdm

    n = int(images.shape[0])
    shape = tuple(int(d) for d in images.shape[1:])
    if len(shape) != 3 or shape[2] != 3:
        raise ValueError(f"images must be (N, H, W, 3), got {(n, *shape)}")
    # One image per chunk: end-to-end training reads random items, and each read then decompresses
    # only its own image. With 64 images per chunk a random batch of 128 decompressed about 75
    # chunks (1 s on the built-in data, 36 of a 45 s DCMHT finetune epoch on an H100 machine);
    # sequential reads and the file size stay the same.
    dataset = f.create_dataset("images", shape=(n, *shape), dtype=np.uint8, chunks=(1, *shape),
                               compression="gzip", compression_opts=4)
    for start in tqdm(range(0, n, rows), desc="writing pixels", unit="chunk", disable=not progress):
        dataset[start : start + rows] = np.asarray(images[start : start + rows], dtype=np.uint8)


class PreparedData:
    """A prepared file opened for reading; use as a context manager.

    Small arrays (labels, texts, splits) are read eagerly; images stay in the file and are read
    batch by batch with :meth:`iter_images`, so memory stays bounded at any dataset size.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise CmhashError(f"{self.path}: prepared dataset not found; run `cmhash prepare` (or `dvc repro prepare`) first.")
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as err:
            raise CmhashError(f"{self.path}: not a readable HDF5 file, or truncated ({str(err).splitlines()[0]}); rebuild it "
                              "with `dvc repro prepare` (or delete it and run `cmhash prepare`).") from None
        f = self._file
        missing = [k for k in ("labels", "texts", "text_item", "splits") if k not in f]
        if "images" not in f and "image_paths" not in f:
            missing.append("images or image_paths")
        if missing:
            raise CmhashError(f"{self.path}: not a cmhash prepared file (missing {', '.join(missing)}); run `cmhash prepare` again.")
        try:
            self.labels: np.ndarray = f["labels"][()]
            self.label_names: list[str] = [_as_str(n) for n in f.attrs.get("label_names", [])]
            self.texts: list[str] = [_as_str(t) for t in f["texts"][()]]
            self.text_item: np.ndarray = f["text_item"][()]
            self.splits: dict[str, np.ndarray] = {name: f["splits"][name][()] for name in f["splits"]}
        except OSError as err:
            f.close()
            raise CmhashError(f"{self.path}: truncated or damaged ({str(err).splitlines()[0]}); rebuild it with "
                              "`dvc repro prepare` (or delete it and run `cmhash prepare`).") from None
        self.source: str = _as_str(f.attrs.get("source", ""))
        self.params: dict[str, Any] = json.loads(f.attrs.get("params", "{}"))
        self.split_record: dict[str, Any] = json.loads(f.attrs.get("split", "{}"))
        self.summary: dict[str, int] = json.loads(f.attrs.get("summary", "{}"))
        self.image_root: Path | None = None
        if "image_paths" in f:
            root = Path(_as_str(f.attrs.get("image_root", "")))
            self.image_root = root if root.is_absolute() else (self.path.parent / root)

    @property
    def has_bag_of_words(self) -> bool:
        return "bag_of_words" in self._file

    @property
    def n_items(self) -> int:
        return int(self.labels.shape[0])

    @property
    def stores_pixels(self) -> bool:
        return "images" in self._file

    @property
    def images(self) -> h5py.Dataset:
        """The (N, H, W, 3) pixel dataset (only when :attr:`stores_pixels`)."""
        return self._file["images"]

    @property
    def image_paths(self) -> list[str]:
        return [_as_str(p) for p in self._file["image_paths"][()]]

    @property
    def bag_of_words(self) -> tuple[np.ndarray, list[str]] | None:
        """(N, V) bag-of-words rows and the vocabulary ([] when the source does not name its words),
        for sources that store a bag of words, else None."""
        if not self.has_bag_of_words:
            return None
        return self._file["bag_of_words"][()], [_as_str(w) for w in self._file.attrs.get("vocabulary", [])]

    def texts_by_item(self) -> list[list[str]]:
        """The captions of each item, in item order."""
        grouped: list[list[str]] = [[] for _ in range(self.n_items)]
        for text, item in zip(self.texts, self.text_item):
            if 0 <= item < self.n_items:
                grouped[item].append(text)
        return grouped

    def load_images(self, items: np.ndarray) -> list["PIL.Image.Image"]:  # noqa: F821
        """The images of ``items`` (any order, as given) as RGB PIL images: random access for
        methods that train their image tower on the pixels."""
        from PIL import Image

        items = np.asarray(items, dtype=np.int64)
        if self.stores_pixels:
            # item by item: h5py's list indexing is about 70x slower than 128 single reads
            return [Image.fromarray(self.images[i]) for i in items]
        paths = self._file["image_paths"]
        # the limit the file was prepared with (dataset.max_image_pixels), so encode decodes what prepare accepted
        from cmhash.datasets.source import MAX_IMAGE_PIXELS

        max_pixels = int(self.params.get("max_image_pixels", MAX_IMAGE_PIXELS))
        return [_open_image(self.image_root / _as_str(paths[i]), self.path, int(i), max_pixels) for i in items]

    def load_pixels(self, items: np.ndarray) -> np.ndarray:
        """The stored (n, H, W, 3) uint8 pixels of ``items`` (only when :attr:`stores_pixels`)."""
        return np.stack([self.images[i] for i in np.asarray(items, dtype=np.int64)])  # item by item, as load_images

    def load_image_files(self, items: np.ndarray) -> list[bytes]:
        """The image files of ``items`` as they are on disk (for decoding on a GPU), each checked first
        from its header alone: it exists, is an image, and is within the pixel limit."""
        from cmhash.datasets.source import MAX_IMAGE_PIXELS

        paths = self._file["image_paths"]
        max_pixels = int(self.params.get("max_image_pixels", MAX_IMAGE_PIXELS))
        files = []
        for i in np.asarray(items, dtype=np.int64):
            path = self.image_root / _as_str(paths[i])
            _open_image(path, self.path, int(i), max_pixels, decode=False)
            files.append(path.read_bytes())
        return files

    def iter_images(self, batch_size: int, first: int = 0) -> Iterator[list["PIL.Image.Image"]]:  # noqa: F821
        """Yield the images from item ``first`` on as RGB PIL images, ``batch_size`` at a time."""
        from PIL import Image

        for start in range(first, self.n_items, batch_size):
            stop = min(start + batch_size, self.n_items)
            if self.stores_pixels:
                yield [Image.fromarray(a) for a in self.images[start:stop]]
            else:
                yield self.load_images(np.arange(start, stop))

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "PreparedData":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _open_image(path: Path, prepared: Path, item: int, max_pixels: int, decode: bool = True):
    """The image at ``path`` as RGB (``decode``), or only checked from its header."""
    from PIL import Image, UnidentifiedImageError

    from cmhash.datasets.source import check_pixels, quiet_about_bombs, too_many_pixels

    Image.MAX_IMAGE_PIXELS = max_pixels
    quiet_about_bombs()
    try:
        with Image.open(path) as img:
            check_pixels(img, max_pixels, path, f"{prepared}: item {item}")  # before decoding anything
            return img.convert("RGB") if decode else None
    except Image.DecompressionBombError as err:
        raise CmhashError(too_many_pixels(path, f"{prepared}: item {item}", max_pixels, err)) from None
    except FileNotFoundError as err:
        raise CmhashError(f"{prepared}: item {item}: image {path} does not exist; check dataset.root.") from err
    except (UnidentifiedImageError, OSError) as err:
        raise CmhashError(f"{prepared}: item {item}: cannot decode image {path} ({err}).") from err


def _as_str(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)
