"""NUS-WIDE from the raw release (``dataset.name: nuswide``).

``dataset.root`` holds the unpacked release files and the images::

    ImageList/Imagelist.txt                  one image per line (269,648), e.g. C:\\ImageData\\Flickr\\actor\\0001_2124494179.jpg
    Groundtruth/AllLabels/Labels_<concept>.txt   81 files, one 0/1 per line, in Imagelist order
    NUS_WID_Tags/AllTags1k.txt               one row of 0/1 values per image over the 1k tag list (bag of words)
    NUS_WID_Tags/TagList1k.txt               the 1,000 tags (ConceptsList/TagList1k.txt is also looked for)
    Flickr/<folder>/<file>.jpg               the images: the last two parts of each Imagelist line

The classic variants keep the ``concepts`` (10 or 21) most frequent of the 81 concepts as labels
(frequency over all images; ties by name) and the images that carry at least one of them: 186,577
pairs for 10 and about 195k for 21 in the papers. Images none of whose tags is in the 1k list are
dropped too, since they have no text; the summary counts both kinds of skipped image.
The text is the image's tags from the 1k list (in that list's order), stored beside the bag of
words. Labels are in name order. The 0/1 files are parsed in blocks of lines with numpy, so memory
stays near the size of the kept rows; a row of the wrong width or a value other than 0/1 stops the
stage with the file and line.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Iterator

import numpy as np
from pydantic import Field
from tqdm import tqdm

from cmhash.datasets.source import SourceData, check_images_exist, source_root
from cmhash.errors import CmhashError
from cmhash.settings import Section

if TYPE_CHECKING:
    from cmhash.datasets.settings import DatasetSettings

IMAGE_LIST = "ImageList/Imagelist.txt"
LABELS = "Groundtruth/AllLabels"
TAGS = "NUS_WID_Tags/AllTags1k.txt"
TAG_LISTS = ("NUS_WID_Tags/TagList1k.txt", "ConceptsList/TagList1k.txt")
IMAGES = "Flickr"
N_CONCEPTS = 81
FULL_RELEASE_IMAGES = 269_648
BLOCK_LINES = 20_000


class Options(Section):
    """``dataset.nuswide``."""

    concepts: Annotated[int, Field(ge=1, le=N_CONCEPTS)] = 10  # the most frequent concepts kept as labels (10 or 21)


def _require(path: Path, what: str) -> Path:
    if not path.is_file():
        raise CmhashError(f"{path} not found: {what} (docs/data.md lists the NUS-WIDE files).")
    return path


def read_image_list(root: Path) -> tuple[Path, list[str]]:
    """The image list file and each image's path under ``Flickr/``: the last two parts of its line."""
    folder = root / IMAGE_LIST.split("/")[0]
    # the release spells it Imagelist.txt; some copies and scripts use ImageList.txt
    found = [p for p in folder.glob("*.txt") if p.name.lower() == "imagelist.txt"] if folder.is_dir() else []
    path = _require(found[0] if found else root / IMAGE_LIST, "unpack the image list (ImageList.zip) into dataset.root")
    images = []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        parts = [p for p in re.split(r"[\\/]", line.strip()) if p]
        if len(parts) < 2:
            raise CmhashError(f"{path}:{number}: expected a path such as C:\\ImageData\\Flickr\\actor\\0001_2124494179.jpg, "
                              f"got {line!r}.")
        images.append(f"{IMAGES}/{parts[-2]}/{parts[-1]}")
    return path, images


def _line_blocks(path: Path) -> Iterator[tuple[int, bytes]]:
    """(first line number, bytes of up to BLOCK_LINES lines) through the file."""
    with path.open("rb") as handle:
        first, lines = 1, []
        for line in handle:
            if line.strip():
                lines.append(line)
            if len(lines) == BLOCK_LINES:
                yield first, b"".join(lines)
                first, lines = first + len(lines), []
        if lines:
            yield first, b"".join(lines)


def read_binary_rows(path: Path, width: int, n_rows: int, keep: np.ndarray | None = None, progress: bool = False) -> np.ndarray:
    """The (n_rows, width) 0/1 matrix of a text file with one row of ``width`` 0/1 values per line
    (rows where ``keep`` is False are dropped as they are read)."""
    rows, done = [], 0
    for first, block in tqdm(_line_blocks(path), desc=f"reading {path.name}", unit="block", total=-(-n_rows // BLOCK_LINES),
                             disable=not progress):
        codes = np.frombuffer(block, dtype=np.uint8)
        is_digit = (codes == ord("0")) | (codes == ord("1"))
        n_lines = block.count(b"\n") + (not block.endswith(b"\n"))
        bad = ~is_digit & ~np.isin(codes, np.frombuffer(b" \t\r\n", dtype=np.uint8))
        glued = is_digit[:-1] & is_digit[1:]  # "10" or "11": not a 0/1 value
        if bad.any() or glued.any() or is_digit.sum() != n_lines * width:
            _raise_bad_line(path, first, block, width)
        values = (codes[is_digit] - ord("0")).reshape(n_lines, width)
        if keep is not None:
            values = values[keep[done : done + n_lines]]
        rows.append(values)
        done += n_lines
    if done != n_rows:
        raise CmhashError(f"{path} has {done} rows but the image list ({IMAGE_LIST}) has {n_rows} images; the files "
                          "are from different releases.")
    return np.concatenate(rows) if rows else np.zeros((0, width), dtype=np.uint8)


def _raise_bad_line(path: Path, first: int, block: bytes, width: int) -> None:
    for offset, line in enumerate(block.splitlines()):
        values = line.split()
        if len(values) != width or any(v not in (b"0", b"1") for v in values):
            raise CmhashError(f"{path}:{first + offset}: expected {width} values of 0 or 1, got "
                              f"{len(values)} value(s) starting {line[:40]!r}.")
    raise CmhashError(f"{path}: lines {first}.. hold something other than {width} 0/1 values per line.")


def read_concepts(root: Path, n_images: int, n_concepts: int, progress: bool) -> dict[str, np.ndarray]:
    """Each concept's 0/1 column over all images (81 concepts in the release)."""
    folder = root / LABELS
    files = sorted(folder.glob("Labels_*.txt")) if folder.is_dir() else []
    if len(files) < n_concepts:
        raise CmhashError(f"{folder} has {len(files)} Labels_<concept>.txt files, fewer than the {n_concepts} concepts "
                          f"asked for; the release has {N_CONCEPTS} (unpack Groundtruth.zip into dataset.root).")
    return {p.stem[len("Labels_"):]: read_binary_rows(p, 1, n_images)[:, 0]
            for p in tqdm(files, desc="reading concept files", unit="file", disable=not progress)}


def read_tag_list(root: Path) -> list[str]:
    path = next((root / p for p in TAG_LISTS if (root / p).is_file()), None)
    if path is None:
        raise CmhashError(f"TagList1k.txt not found under {root} (looked for {', '.join(TAG_LISTS)}).")
    tags = [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    if not tags:
        raise CmhashError(f"{path} lists no tags; the release's 1k tag list has 1,000.")
    return tags


def build(dataset: DatasetSettings, progress: bool) -> SourceData:
    n_concepts = dataset.options.concepts
    root = source_root(dataset)
    list_file, images = read_image_list(root)
    columns = read_concepts(root, len(images), n_concepts, progress)
    ranked = sorted(columns, key=lambda name: (-int(columns[name].sum()), name))
    names = sorted(ranked[:n_concepts])
    labels = np.stack([columns[name] for name in names], axis=1).astype(np.uint8)
    labelled = labels.any(axis=1)
    vocabulary = read_tag_list(root)
    bow = read_binary_rows(_require(root / TAGS, "unpack NUS_WID_Tags.zip into dataset.root"), len(vocabulary),
                           len(images), keep=labelled, progress=progress)
    tagged = bow.any(axis=1)
    kept = np.flatnonzero(labelled)[tagged]
    summary = {"images": len(images), "items": len(kept), "skipped_no_label": int((~labelled).sum()),
               "skipped_no_tag": int((~tagged).sum())}
    if not len(kept):
        raise CmhashError(f"{root}: no image carries one of the {n_concepts} most frequent concepts and a 1k tag.")
    bow = bow[tagged]
    paths = [images[i] for i in kept]
    check_images_exist(root, paths, lambda i: f"{list_file}:{kept[i] + 1}", progress)
    texts = [" ".join(vocabulary[j] for j in np.flatnonzero(row)) for row in bow]
    return SourceData(labels=labels[kept], label_names=names, texts=texts, text_item=np.arange(len(kept)),
                      image_paths=paths, image_root=str(root), bag_of_words=bow, vocabulary=vocabulary,
                      summary=summary)


def expected(dataset: DatasetSettings, summary: dict[str, int]) -> dict[str, int]:
    """The concept count; the 1,000-tag vocabulary when the whole release was read. The papers' pair
    counts are not asserted (see docs/data.md)."""
    full = summary.get("images") == FULL_RELEASE_IMAGES
    return {"labels": dataset.options.concepts, **({"vocabulary": 1000} if full else {})}
