"""The DCMH-style .mat files that DJSRH, JDSH, UCCH and MESDCH users have (``dataset.name: dcmh_mat``).

``dataset.root`` holds, for one ``prefix`` (e.g. ``mirflickr25k``, ``nus-wide-tc10``)::

    <prefix>-iall.mat   IAll: the images, uint8 - (H, W, 3, N) in MATLAB, shown by h5py as (N, 3, W, H)
    <prefix>-lall.mat   LAll: (N, C) 0/1 labels
    <prefix>-yall.mat   YAll: (N, V) bag of words - the only text these files have
    <prefix>-fall.mat   FAll: the N image file names (optional; checked for length only)

Each file may be MATLAB v5-v7 or v7.3 (HDF5); :mod:`cmhash.datasets.matfile` reads both, and the
image stack in any of the usual layouts. The images are copied into the prepared file a chunk at a
time. The files name neither the labels nor
the words: labels are called ``label1 ...`` unless ``dataset.dcmh_mat.label_names`` lists them.
Because the text is a bag of words, encode turns it into the text features directly
(``encode.text: auto`` does this for any source without captions). Nothing is skipped: the files
are the published item list, so a mismatch between them stops the stage, and items whose bag of
words is empty are kept and counted (``items_without_words``; validate allows up to 1 %).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cmhash.datasets.matfile import MatPixels, read_array, read_strings
from cmhash.datasets.source import SourceData, source_root
from cmhash.errors import CmhashError
from cmhash.settings import Section

if TYPE_CHECKING:
    from cmhash.datasets.settings import DatasetSettings


class Options(Section):
    """``dataset.dcmh_mat``."""

    prefix: str | None = None  # the files' common prefix; found on its own when there is one set
    label_names: list[str] | None = None  # the files hold none


# the published files, as DCMH's and DJSRH's papers describe them
KNOWN = {
    "mirflickr25k": {"items": 20_015, "labels": 24, "vocabulary": 1_386},
    "nus-wide-tc10": {"items": 186_577, "labels": 10, "vocabulary": 1_000},
    "nus-wide-tc21": {"items": 195_834, "labels": 21, "vocabulary": 1_000},
}


def find_prefix(root: Path, prefix: str | None) -> str:
    """``prefix`` when given, else the one ``<prefix>-lall.mat`` in the folder."""
    if prefix:
        return str(prefix)
    found = sorted(p.name[: -len("-lall.mat")] for p in root.glob("*-lall.mat"))
    if len(found) != 1:
        raise CmhashError(f"{root} holds {len(found)} label files *-lall.mat ({', '.join(found) or 'none'}); set "
                          "dataset.dcmh_mat.prefix to the one to use.")
    return found[0]


def items_first(matrix: np.ndarray, n_items: int, path: Path, key: str) -> np.ndarray:
    """``matrix`` with its item axis first; a matrix with no axis of ``n_items`` is an error."""
    if matrix.ndim != 2:
        raise CmhashError(f"{path}: {key!r} has shape {matrix.shape}; expected a 2-D matrix.")
    if matrix.shape[0] == n_items:
        return matrix
    if matrix.shape[1] == n_items:
        return matrix.T
    raise CmhashError(f"{path}: {key!r} has shape {matrix.shape} but the labels list {n_items} items; the files "
                      "do not belong together.")


def read_labels(path: Path, key: str) -> np.ndarray:
    """An (N, C) 0/1 label matrix (a matrix stored the other way round is turned: N > C always)."""
    labels = read_array(path, key)
    if labels.ndim != 2:
        raise CmhashError(f"{path}: {key!r} has shape {labels.shape}; expected an (N, C) label matrix.")
    if labels.shape[0] < labels.shape[1]:
        labels = labels.T
    if not np.isin(labels, (0, 1)).all():
        raise CmhashError(f"{path}: {key!r} holds values other than 0 and 1; expected multi-hot labels.")
    return labels.astype(np.uint8)


def label_names(given: list[str] | None, n_labels: int, option: str, path: Path) -> list[str]:
    """The names in ``dataset.<option>`` when given, else label1, label2, ... (the .mat files name none)."""
    names = given or [f"label{i + 1}" for i in range(n_labels)]
    if len(names) != n_labels:
        raise CmhashError(f"params.yaml: dataset.{option} lists {len(names)} names; {path} has {n_labels} labels.")
    return [str(name) for name in names]


def build(dataset: DatasetSettings, progress: bool) -> SourceData:
    options = dataset.options
    root = source_root(dataset)
    prefix = find_prefix(root, options.prefix)
    files = {part: root / f"{prefix}-{part}.mat" for part in ("iall", "lall", "yall", "fall")}
    labels = read_labels(files["lall"], "LAll")
    n = len(labels)
    bow = items_first(read_array(files["yall"], "YAll"), n, files["yall"], "YAll")
    if (bow < 0).any() or (bow != np.round(bow)).any() or bow.max(initial=0) > 255:
        raise CmhashError(f"{files['yall']}: 'YAll' must hold word counts 0-255; it holds other values.")
    images = MatPixels(files["iall"], "IAll", n)
    named = len(read_strings(files["fall"], "FAll")) if files["fall"].is_file() else n
    if named != n:
        raise CmhashError(f"{files['fall']}: 'FAll' names {named} images but the labels list {n}; the files do not "
                          "belong together.")
    names = label_names(options.label_names, labels.shape[1], "dcmh_mat.label_names", files["lall"])
    return SourceData(labels=labels, label_names=names, texts=[],
                      text_item=np.array([], dtype=np.int64), images=images, bag_of_words=bow.astype(np.uint8),
                      summary={"items": n, "vocabulary": int(bow.shape[1]), "image_size": int(images.shape[1]),
                               "items_without_words": int((bow.sum(axis=1) == 0).sum())})


def expected(dataset: DatasetSettings, summary: dict[str, int]) -> dict[str, int]:
    """The published counts when the prefix is one of the known files."""
    prefix = find_prefix(source_root(dataset), dataset.options.prefix)
    return dict(KNOWN.get(prefix, {}))
