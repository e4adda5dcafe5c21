"""DCMHT's three .mat files (``dataset.name: dcmht_mat``), with its image paths made to work here.

``dataset.root`` holds the images (in any folder structure) and the files DCMHT's data scripts
write (names adjustable under ``dataset.dcmht_mat``)::

    index.mat     index: the N image paths, absolute paths on the machine that made the file
    caption.mat   caption (or tags): per image a string (raw tags) or a list of captions
    label.mat     category (or label): (N, C) 0/1 labels

Each file may be MATLAB v5-v7 or v7.3. The stored paths point to the author's disk; each is
rewritten against ``dataset.root`` by keeping its longest tail that exists there (found on the first
image, then used for all), so ``/home/someone/data/mirflickr/im1.jpg`` becomes
``mirflickr/im1.jpg`` under the root - no path-fixing script. A path whose rewritten file is
missing, a blank caption or files of different lengths stop the stage; nothing is skipped.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import TYPE_CHECKING

import numpy as np

from cmhash.datasets.dcmh_mat import label_names, read_labels
from cmhash.datasets.matfile import pick_variable, read_strings
from cmhash.datasets.source import SourceData, check_images_exist, source_root
from cmhash.errors import CmhashError
from cmhash.settings import Section

if TYPE_CHECKING:
    from cmhash.datasets.settings import DatasetSettings


class Options(Section):
    """``dataset.dcmht_mat``: the three files' names, and the label names (the files hold none)."""

    index: str = "index.mat"
    caption: str = "caption.mat"
    label: str = "label.mat"
    label_names: list[str] | None = None




def relocate(paths: list[str], root: Path, index_file: Path) -> list[str]:
    """Each stored path as a path relative to ``root`` (see the module docstring)."""
    def parts(path: str) -> tuple[str, ...]:
        pure = PureWindowsPath(path) if "\\" in path else PurePosixPath(path)
        return pure.parts[1:] if pure.anchor else pure.parts

    first = parts(paths[0])
    drop = next((i for i in range(len(first)) if (root.joinpath(*first[i:])).is_file()), None)
    if drop is None:
        raise CmhashError(f"{index_file}: item 0: no tail of the stored path {paths[0]!r} is a file under dataset.root "
                          f"{root}; put the images under the root keeping at least their last folder and file name.")
    return [PurePosixPath(*parts(path)[drop:]).as_posix() for path in paths]


def build(dataset: DatasetSettings, progress: bool) -> SourceData:
    options = dataset.options
    root = source_root(dataset)
    files = {part: root / getattr(options, part) for part in ("index", "caption", "label")}
    labels = read_labels(files["label"], pick_variable(files["label"], ("category", "label")))
    n = len(labels)
    stored = read_strings(files["index"], "index")
    captions = read_strings(files["caption"], pick_variable(files["caption"], ("caption", "tags")))
    for path, values in ((files["index"], stored), (files["caption"], captions)):
        if len(values) != n:
            raise CmhashError(f"{path} has {len(values)} entries but {files['label']} labels {n} items; the files do "
                              "not belong together.")
    if not all(isinstance(p, str) and p for p in stored):
        bad = next(i for i, p in enumerate(stored) if not (isinstance(p, str) and p))
        raise CmhashError(f"{files['index']}: item {bad}: expected one image path, got {stored[bad]!r}.")
    per_item = [[c] if isinstance(c, str) else c for c in captions]
    for item, texts in enumerate(per_item):
        if not texts or not all(t.strip() for t in texts):
            raise CmhashError(f"{files['caption']}: item {item} ({stored[item]}) has an empty caption; DCMHT would train "
                              "on an empty string. Fix the file or drop the item from all three files.")
    paths = relocate(stored, root, files["index"])
    check_images_exist(root, paths, lambda i: f"{files['index']}: item {i} ({stored[i]})", progress)
    return SourceData(
        labels=labels, label_names=label_names(options.label_names, labels.shape[1], "dcmht_mat.label_names", files["label"]),
        texts=[t.strip() for texts in per_item for t in texts],
        text_item=np.repeat(np.arange(n), [len(texts) for texts in per_item]),
        image_paths=paths, image_root=str(root),
        summary={"items": n, "captions": sum(len(texts) for texts in per_item)},
    )


def expected(dataset: DatasetSettings, summary: dict[str, int]) -> dict[str, int]:
    return {}
