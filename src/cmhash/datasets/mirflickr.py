"""MIRFlickr-25K from the raw release (``dataset.name: mirflickr25k``).

``dataset.root`` holds the two archives unpacked side by side::

    mirflickr/im1.jpg ... im25000.jpg
    mirflickr/meta/tags/tags1.txt ...          one tag per line, for image N in tagsN.txt
    mirflickr25k_annotations_v080/<concept>.txt   image numbers (1-based), one per line, 24 concepts

The ``<concept>_r1.txt`` files are the strict "relevant" subsets of the same concepts and are not
labels; README files are ignored. The classic filter keeps the tags that occur in at least
``min_tag_count`` images (20) and drops images with no label or no kept tag: on the full release
that leaves 20,015 pairs and a 1,386-word vocabulary. The text of an item is its kept tags joined
by spaces (what CLIP reads); the bag-of-words vector over the kept vocabulary is stored beside it.
Tag files are read as UTF-8, falling back to Latin-1 for the few that are not.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import numpy as np
from pydantic import Field

from cmhash.datasets.source import SourceData, source_root
from cmhash.errors import CmhashError
from cmhash.settings import Section

if TYPE_CHECKING:
    from cmhash.datasets.settings import DatasetSettings

IMAGES = "mirflickr"
TAGS = "mirflickr/meta/tags"
ANNOTATIONS = "mirflickr25k_annotations_v080"
N_CONCEPTS = 24
FULL_RELEASE = {"images": 25_000, "items": 20_015, "vocabulary": 1_386}
class Options(Section):
    """``dataset.mirflickr25k``."""

    min_tag_count: Annotated[int, Field(ge=1, le=1_000_000)] = 20  # a tag in fewer images is not in the vocabulary




def _image_numbers(root: Path) -> list[int]:
    folder = root / IMAGES
    if not folder.is_dir():
        raise CmhashError(f"{folder} not found: unpack mirflickr25k.zip into dataset.root ({root}).")
    numbers = sorted(int(m.group(1)) for p in folder.iterdir() if (m := re.fullmatch(r"im(\d+)\.jpg", p.name)))
    if not numbers:
        raise CmhashError(f"{folder} holds no im<N>.jpg images.")
    return numbers


def _read_lines(path: Path) -> list[str]:
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    return [line.strip() for line in text.splitlines() if line.strip()]


def read_concepts(root: Path, numbers: list[int]) -> tuple[list[str], dict[str, set[int]]]:
    """The 24 concept names (sorted) and, for each, the image numbers it labels."""
    folder = root / ANNOTATIONS
    if not folder.is_dir():
        raise CmhashError(f"{folder} not found: unpack mirflickr25k_annotations_v080.zip into dataset.root ({root}).")
    files = sorted(p for p in folder.glob("*.txt") if not p.stem.endswith("_r1") and p.stem.lower() != "readme")
    if len(files) != N_CONCEPTS:
        raise CmhashError(f"{folder} has {len(files)} concept files ({', '.join(p.stem for p in files)}); "
                          f"the release has {N_CONCEPTS} (the _r1 files are not labels).")
    known = set(numbers)
    concepts = {}
    for path in files:
        members = set()
        for line_number, line in enumerate(_read_lines(path), start=1):
            if not line.isdigit():
                raise CmhashError(f"{path}:{line_number}: expected an image number, got {line!r}.")
            if int(line) not in known:
                raise CmhashError(f"{path}:{line_number}: image {line} is not in {root / IMAGES}; the annotations do "
                                  "not match the image list (are both archives from the same release?).")
            members.add(int(line))
        concepts[path.stem] = members
    return sorted(concepts), concepts


def read_tags(root: Path, numbers: list[int], progress: bool) -> dict[int, list[str]]:
    """Each image's tags in file order, without repeats."""
    from tqdm import tqdm

    tags = {}
    for number in tqdm(numbers, desc="reading tags", unit="image", disable=not progress):
        path = root / TAGS / f"tags{number}.txt"
        if not path.is_file():
            raise CmhashError(f"{path} is missing: every image has a tags file in the release (an empty one when "
                              "it has no tags); unpack the whole mirflickr25k.zip.")
        tags[number] = list(dict.fromkeys(tag.lower() for tag in _read_lines(path)))
    return tags


def build(dataset: DatasetSettings, progress: bool) -> SourceData:
    """Items, labels, texts and bag of words after the classic filter."""
    min_tag_count = dataset.options.min_tag_count
    root = source_root(dataset)
    numbers = _image_numbers(root)
    names, concepts = read_concepts(root, numbers)
    tags = read_tags(root, numbers, progress)
    counts = Counter(tag for image_tags in tags.values() for tag in image_tags)
    vocabulary = sorted(tag for tag, count in counts.items() if count >= min_tag_count)
    column = {tag: i for i, tag in enumerate(vocabulary)}
    kept, labels, texts, bow = [], [], [], []
    skipped = Counter()
    for number in numbers:
        label_row = np.array([number in concepts[name] for name in names], dtype=np.uint8)
        kept_tags = [tag for tag in tags[number] if tag in column]
        if not label_row.any() or not kept_tags:
            skipped["skipped_no_label" if not label_row.any() else "skipped_no_kept_tag"] += 1
            continue
        kept.append(number)
        labels.append(label_row)
        texts.append(" ".join(kept_tags))
        row = np.zeros(len(vocabulary), dtype=np.uint8)
        row[[column[tag] for tag in kept_tags]] = 1
        bow.append(row)
    if not kept:
        raise CmhashError(f"{root}: no image has both a label and a tag used at least {min_tag_count} times.")
    return SourceData(
        labels=np.stack(labels), label_names=names, texts=texts, text_item=np.arange(len(kept)),
        image_paths=[f"{IMAGES}/im{number}.jpg" for number in kept], image_root=str(root),
        bag_of_words=np.stack(bow), vocabulary=vocabulary,
        summary={"images": len(numbers), "items": len(kept), "vocabulary": len(vocabulary), **skipped},
    )


def expected(dataset: DatasetSettings, summary: dict[str, int]) -> dict[str, int]:
    """24 labels always; the classic counts when the whole release was read with the classic filter."""
    full = (summary.get("images") == FULL_RELEASE["images"]
            and dataset.options.min_tag_count == Options().min_tag_count)
    return {"labels": N_CONCEPTS, **({"items": FULL_RELEASE["items"], "vocabulary": FULL_RELEASE["vocabulary"]} if full else {})}
