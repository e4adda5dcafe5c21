"""Reading the field's MATLAB files, whichever of the two formats they were saved in.

MATLAB writes ``-v7`` and older files in its own format (read here with scipy) and ``-v7.3`` files
as HDF5 (read with h5py). Loading one with the other's reader is the classic "file signature not
found" / "Unknown mat file type" error of the public code; here the format is detected per file.

HDF5 stores MATLAB arrays with their axes reversed (MATLAB is column-major), so every array read
with h5py is transposed back: both readers return arrays in MATLAB's own orientation, e.g. a
label matrix ``LAll`` is (N, C) either way. Strings come back as Python strings: a char matrix
gives one string per row, a cell array one entry per cell (a string, or a list of strings when a
cell holds several captions). Pixels are read lazily (:class:`MatPixels`), a chunk at a time, in any of the usual layouts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np

from cmhash.errors import CmhashError


def _check(path: Path) -> None:
    if not path.is_file():
        raise CmhashError(f"{path} not found; put the .mat files in dataset.root (docs/data.md).")


def is_hdf5(path: Path) -> bool:
    """True for a MATLAB v7.3 (HDF5) file, False for the older MATLAB format."""
    _check(path)
    return h5py.is_hdf5(path)


def variable_names(path: Path) -> list[str]:
    if is_hdf5(path):
        with h5py.File(path, "r") as f:
            return [k for k in f.keys() if not k.startswith("#")]
    import scipy.io

    try:
        return [name for name, _, _ in scipy.io.whosmat(path)]
    except (ValueError, OSError) as err:
        raise CmhashError(f"{path} is neither a MATLAB v5-v7 nor a v7.3 (HDF5) file ({err}).") from None


def pick_variable(path: Path, candidates: tuple[str, ...]) -> str:
    """The first of ``candidates`` stored in the file; an error lists what the file has."""
    names = variable_names(path)
    for name in candidates:
        if name in names:
            return name
    raise CmhashError(f"{path} has no variable {' or '.join(repr(c) for c in candidates)} (it has "
                      f"{', '.join(names) or 'none'}); is it the right file?")


def _scipy_variable(path: Path, key: str) -> Any:
    import scipy.io

    try:
        return scipy.io.loadmat(path, variable_names=[key])[key]
    except (ValueError, OSError, NotImplementedError) as err:
        raise CmhashError(f"{path}: cannot read {key!r} ({err}).") from None


def read_array(path: Path, key: str) -> np.ndarray:
    """A numeric variable, whole, in MATLAB orientation."""
    key = pick_variable(path, (key,))
    if is_hdf5(path):
        with h5py.File(path, "r") as f:
            node = f[key]
            if not isinstance(node, h5py.Dataset) or node.dtype.kind not in "biuf":
                raise CmhashError(f"{path}: {key!r} is not a numeric array.")
            return np.transpose(node[()])
    value = _scipy_variable(path, key)
    if not isinstance(value, np.ndarray) or value.dtype.kind not in "biuf":
        raise CmhashError(f"{path}: {key!r} is not a numeric array (it is {getattr(value, 'dtype', type(value))}).")
    return value


def read_strings(path: Path, key: str) -> list[str | list[str]]:
    """A char matrix (one string per row) or a cell array (one entry per cell) as Python strings."""
    key = pick_variable(path, (key,))
    if is_hdf5(path):
        with h5py.File(path, "r") as f:
            return _h5_entries(f, f[key], path, key)
    return _scipy_entries(_scipy_variable(path, key), path, key)


def _items_axis(array: np.ndarray) -> np.ndarray:
    """A MATLAB-oriented array with one row per item: a 1 x N or N x 1 array becomes N rows of one,
    an N x M array (e.g. five captions per image) stays N rows of M (DCMHT's loaders read it so)."""
    if array.ndim == 2 and 1 in array.shape:
        return array.reshape(-1, 1)
    return array.reshape(len(array), -1) if array.ndim else array.reshape(1, 1)


def _scipy_entries(value: Any, path: Path, key: str) -> list[str | list[str]]:
    if isinstance(value, np.ndarray) and value.dtype.kind == "U":  # char data: loadmat gives one string per row
        return [_one_entry([str(s).rstrip() for s in row]) for row in _items_axis(value)]
    if isinstance(value, np.ndarray) and value.dtype == object:  # cell array: one entry per cell (or row of cells)
        return [_one_entry([s for cell in row for s in _scipy_strings(cell, path, key)]) for row in _items_axis(value)]
    raise CmhashError(f"{path}: {key!r} holds {getattr(value, 'dtype', type(value))}, not text; expected a char "
                      "matrix or a cell array of strings.")


def _scipy_strings(value: Any, path: Path, key: str) -> list[str]:
    if isinstance(value, str):
        return [value.rstrip()]
    if isinstance(value, np.ndarray) and value.dtype.kind == "U":
        return [str(s).rstrip() for s in value.ravel()]
    if isinstance(value, np.ndarray) and value.dtype == object:
        return [s for cell in value.ravel(order="F") for s in _scipy_strings(cell, path, key)]
    raise CmhashError(f"{path}: {key!r} has a cell holding {getattr(value, 'dtype', type(value))}, not text.")


def _h5_entries(f: h5py.File, node: Any, path: Path, key: str) -> list[str | list[str]]:
    if not isinstance(node, h5py.Dataset):
        raise CmhashError(f"{path}: {key!r} is a group, not a char matrix or cell array.")
    if node.dtype == h5py.ref_dtype:  # cell array: references to the cells
        rows = _items_axis(np.transpose(node[()]))
        return [_one_entry([s for ref in row for s in _h5_strings(f, f[ref], path, key)]) for row in rows]
    return _h5_strings(f, node, path, key)


def _h5_strings(f: h5py.File, node: Any, path: Path, key: str) -> list[str]:
    if node.dtype == h5py.ref_dtype:
        return [s for ref in np.transpose(node[()]).ravel(order="F") for s in _h5_strings(f, f[ref], path, key)]
    if node.attrs.get("MATLAB_class", b"") in (b"char", "char") or node.dtype.kind in "ui":
        codes = np.atleast_2d(np.transpose(node[()]))  # MATLAB orientation: one string per row
        if node.attrs.get("MATLAB_empty", 0):
            return [""]
        return ["".join(map(chr, row)).rstrip("\x00 ") for row in codes]
    if node.dtype.kind in "SO":  # strings written by h5py rather than MATLAB
        return [(s.decode("utf-8") if isinstance(s, bytes) else str(s)).rstrip() for s in np.ravel(node[()])]
    raise CmhashError(f"{path}: {key!r} holds {node.dtype}, not text.")


def _one_entry(strings: list[str]) -> str | list[str]:
    return strings[0] if len(strings) == 1 else strings


# How an image stack may be laid out in the array a reader returns (h5py's stored shape, or scipy's
# MATLAB-oriented one), as (item axis, the axes order that gives (N, H, W, 3)).
_PIXEL_LAYOUTS = {
    "(N, 3, W, H)": (0, (0, 3, 2, 1)),  # MATLAB H x W x 3 x N saved as v7.3 (DCMH's IAll), or NCWH saved by scipy
    "(H, W, 3, N)": (3, (3, 0, 1, 2)),  # MATLAB H x W x 3 x N saved as v5-v7
    "(N, H, W, 3)": (0, (0, 1, 2, 3)),
    "(3, W, H, N)": (3, (3, 2, 1, 0)),  # MATLAB N x H x W x 3 saved as v7.3
}


def _pixel_layout(shape: tuple[int, ...], n_items: int) -> tuple[int, tuple[int, ...]] | None:
    if len(shape) != 4:
        return None
    for name, (item_axis, order) in _PIXEL_LAYOUTS.items():
        channel_axis = name.strip("()").split(", ").index("3")
        if shape[item_axis] == n_items and shape[channel_axis] == 3:
            return item_axis, order
    return None


class MatPixels:
    """(N, H, W, 3) uint8 view of an image stack in a .mat file, read a slice at a time.

    ``n_items`` (from the label file) tells which axis counts the images; the layouts accepted are
    those of :data:`_PIXEL_LAYOUTS`, as the reader returns the array (DCMH's ``IAll`` is
    (N, 3, W, H) through h5py). An older-format file is read whole (scipy cannot read part of a
    variable); a v7.3 file is read one slice at a time.
    """

    def __init__(self, path: Path, key: str, n_items: int):
        self.path, self.key = path, pick_variable(path, (key,))
        self.hdf5 = is_hdf5(path)
        if self.hdf5:
            with h5py.File(path, "r") as f:
                shape = f[self.key].shape
            self._array = None
        else:
            self._array = _scipy_variable(path, self.key)
            shape = self._array.shape
        layout = _pixel_layout(shape, n_items)
        if layout is None:
            raise CmhashError(f"{path}: {self.key!r} has shape {shape}; expected {n_items} RGB images laid out as one of "
                              f"{', '.join(_PIXEL_LAYOUTS)} (with N = {n_items}, the number of labelled items).")
        self._item_axis, self._order = layout
        self.shape = tuple(shape[axis] for axis in self._order)

    def __getitem__(self, rows: slice) -> np.ndarray:
        start, stop, _ = rows.indices(self.shape[0])
        take = (slice(start, stop),) if self._item_axis == 0 else (..., slice(start, stop))
        if self.hdf5:
            with h5py.File(self.path, "r") as f:
                block = f[self.key][take]
        else:
            block = self._array[take]
        if block.dtype != np.uint8:
            raise CmhashError(f"{self.path}: {self.key!r} holds {block.dtype} pixels; expected uint8 (0-255).")
        return np.ascontiguousarray(np.transpose(block, self._order))
