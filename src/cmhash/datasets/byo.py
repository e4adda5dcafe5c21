"""Your own data ("bring your own", ``dataset.name: byo``): a folder of images and a pairs file.

``dataset.root`` holds the images (any sub-folders) and exactly one of:

- ``pairs.jsonl``: one JSON object per line,
  ``{"image": "relative/path.jpg", "text": "a caption", "labels": ["dog", "beach"]}``;
  ``text`` may also be a list of captions of the same image;
- ``pairs.csv``: a header ``image,text,labels`` and one row per pair, labels separated by ``|``.

Each line is one item. The label vocabulary is the sorted set of label names. The converter is
strict, because a silently dropped pair changes every number downstream: a malformed line, an image
that is missing, outside the root or cannot be decoded, an empty caption or a pair without labels
stops the stage with the file, the line and the fix. Nothing is skipped. Images are not copied: the
prepared file stores their paths relative to the root.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cmhash.datasets.source import SourceData, check_pixels, multi_hot, quiet_about_bombs, source_root, too_many_pixels
from cmhash.errors import CmhashError
from cmhash.settings import Section

if TYPE_CHECKING:
    from cmhash.datasets.settings import DatasetSettings

PAIRS_FILES = ("pairs.jsonl", "pairs.csv")


class Options(Section):
    """``dataset.byo``."""

    deduplicate: bool = False  # drop a pair whose image and captions an earlier pair already has


CSV_COLUMNS = ("image", "text", "labels")


@dataclass(frozen=True)
class Pair:
    image: str
    texts: list[str]
    labels: list[str]
    where: str  # "file:line", for error messages


def _check_pair(root: Path, image: Any, texts: Any, labels: Any, where: str) -> Pair:
    if not isinstance(image, str) or not image.strip():
        raise CmhashError(f"{where}: 'image' must be a path relative to {root}, got {image!r}.")
    path = (root / image).resolve()
    if Path(image).is_absolute() or not path.is_relative_to(root.resolve()):
        raise CmhashError(f"{where}: image {image!r} is outside dataset.root {root}; give a path relative to the root.")
    if not path.is_file():
        raise CmhashError(f"{where}: image {image!r} does not exist under {root}; fix the path or add the file.")
    texts = [texts] if isinstance(texts, str) else texts
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t.strip() for t in texts):
        raise CmhashError(f"{where}: 'text' must be a non-empty caption or a list of non-empty captions, got {texts!r}.")
    if not isinstance(labels, list) or not all(isinstance(label, str) and label.strip() for label in labels):
        raise CmhashError(f"{where}: 'labels' must be a list of label names, got {labels!r}.")
    if not labels:
        raise CmhashError(f"{where}: the pair has no label; relevance is defined by shared labels, so every pair "
                          "needs at least one (remove the pair or label it).")
    return Pair(image, [t.strip() for t in texts], sorted({label.strip() for label in labels}), where)


def _text_lines(path: Path) -> list[str]:
    """The file's lines, decoded as UTF-8; a line that is not names the file, the line and the byte."""
    lines = []
    for number, raw in enumerate(path.read_bytes().splitlines(keepends=True), start=1):
        try:
            lines.append(raw.decode("utf-8"))
        except UnicodeDecodeError as err:
            raise CmhashError(f"{path}:{number}: not UTF-8 text (byte 0x{raw[err.start]:02x} at column {err.start + 1}); "
                              "save the file as UTF-8.") from None
    return lines


def _read_jsonl(root: Path, path: Path) -> list[Pair]:
    pairs = []
    for number, line in enumerate(_text_lines(path), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise CmhashError(f"{where}: not valid JSON ({err.msg}); each line must be one JSON object.") from None
        if not isinstance(record, dict):
            raise CmhashError(f"{where}: each line must be a JSON object with image, text and labels.")
        pairs.append(_check_pair(root, record.get("image"), record.get("text"), record.get("labels"), where))
    return pairs


def _read_csv(root: Path, path: Path) -> list[Pair]:
    pairs = []
    reader = csv.DictReader(_text_lines(path))
    if reader.fieldnames is None or set(CSV_COLUMNS) - set(reader.fieldnames):
        raise CmhashError(f"{path}: the header must name the columns {','.join(CSV_COLUMNS)}, got {reader.fieldnames}.")
    for row in reader:
        labels = [label for label in (row["labels"] or "").split("|") if label.strip()]
        pairs.append(_check_pair(root, row["image"], row["text"] or "", labels, f"{path}:{reader.line_num}"))
    return pairs


def read_pairs(root: Path) -> list[Pair]:
    """The pairs of a BYO folder, checked (see the module docstring)."""
    found = [root / name for name in PAIRS_FILES if (root / name).is_file()]
    if len(found) != 1:
        problem = "has both" if found else "has neither"
        raise CmhashError(f"{root} {problem} of {' and '.join(PAIRS_FILES)}; put exactly one pairs file there "
                          "(format: docs/data-format.md).")
    pairs = _read_jsonl(root, found[0]) if found[0].suffix == ".jsonl" else _read_csv(root, found[0])
    if not pairs:
        raise CmhashError(f"{found[0]} has no pairs.")
    return pairs


def check_images_decode(root: Path, pairs: list[Pair], progress: bool, max_pixels: int) -> None:
    """Open every image once, so an undecodable file stops prepare rather than encode."""
    from PIL import Image, UnidentifiedImageError
    from tqdm import tqdm

    Image.MAX_IMAGE_PIXELS = max_pixels
    quiet_about_bombs()
    for pair in tqdm(pairs, desc="checking images", unit="image", disable=not progress):
        try:
            with Image.open(root / pair.image) as img:
                check_pixels(img, max_pixels, pair.image, pair.where)  # PIL alone refuses only above twice the limit
                img.verify()
        except Image.DecompressionBombError as err:
            raise CmhashError(too_many_pixels(root / pair.image, pair.where, max_pixels, err)) from None
        except (UnidentifiedImageError, OSError) as err:
            raise CmhashError(f"{pair.where}: image {pair.image!r} cannot be decoded ({err}); replace or remove it.") from None


def labels_matrix(pairs: list[Pair]) -> tuple[np.ndarray, list[str]]:
    """(N, C) multi-hot labels and the sorted label names."""
    names = sorted({label for pair in pairs for label in pair.labels})
    column = {name: i for i, name in enumerate(names)}
    return multi_hot([[column[label] for label in pair.labels] for pair in pairs], len(names)), names


def build(dataset: DatasetSettings, progress: bool) -> SourceData:
    root = source_root(dataset)
    pairs = read_pairs(root)
    first_of = {}
    for pair in pairs:
        first_of.setdefault((pair.image, tuple(sorted(pair.texts))), pair)
    duplicates = len(pairs) - len(first_of)
    if dataset.options.deduplicate:
        pairs = list(first_of.values())
    check_images_decode(root, pairs, progress, dataset.max_image_pixels)
    labels, names = labels_matrix(pairs)
    return SourceData(
        labels=labels, label_names=names,
        texts=[text for pair in pairs for text in pair.texts],
        text_item=np.repeat(np.arange(len(pairs)), [len(pair.texts) for pair in pairs]),
        image_paths=[pair.image for pair in pairs], image_root=str(root),
        summary={"pairs": len(pairs), "captions": sum(len(pair.texts) for pair in pairs),
                 ("duplicate_pairs_dropped" if dataset.options.deduplicate else "duplicate_pairs"): duplicates},
    )


def expected(dataset: DatasetSettings, summary: dict[str, int]) -> dict[str, int]:
    return {}
