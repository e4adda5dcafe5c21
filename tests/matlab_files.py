"""Writing .mat files as MATLAB does, for fixtures: v5 through scipy, v7.3 the way MATLAB lays out HDF5.

A MATLAB v7.3 file is HDF5 with a 512-byte user block that starts "MATLAB 7.3 MAT-file"; arrays are
stored with their axes reversed (column-major), each with a MATLAB_class attribute; char arrays are
uint16 code points; a cell array is a dataset of object references into the "#refs#" group.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import scipy.io

_CLASS = {np.dtype(np.uint8): "uint8", np.dtype(np.float64): "double", np.dtype(np.float32): "single",
          np.dtype(np.int32): "int32", np.dtype(np.uint16): "uint16"}


def save_v5(path: Path, variables: dict) -> None:
    """``variables`` in MATLAB orientation; a list of strings becomes a cell array, a list of lists a
    cell of cells."""
    scipy.io.savemat(path, {key: _v5_value(value) for key, value in variables.items()})


def _v5_value(value):
    if isinstance(value, list):
        cell = np.empty((1, len(value)), dtype=object)
        for i, entry in enumerate(value):
            cell[0, i] = _v5_value(entry) if isinstance(entry, list) else entry
        return cell
    return value


def save_v73(path: Path, variables: dict) -> None:
    """``variables`` in MATLAB orientation: arrays, a list of strings (a 1 x N cell of char rows) or a
    list of lists of strings (a cell whose cells are cells)."""
    with h5py.File(path, "w", userblock_size=512) as f:
        refs = f.create_group("#refs#")
        for key, value in variables.items():
            _write(f, refs, key, value)
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 ."
    with open(path, "r+b") as handle:
        handle.write(header.ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02IM")


def _write(parent, refs, name, value):
    if isinstance(value, str):
        codes = np.array([[ord(c)] for c in value], dtype=np.uint16) if value else np.zeros((2,), dtype=np.uint64)
        node = parent.create_dataset(name, data=codes)  # 1 x L char, reversed to (L, 1)
        node.attrs["MATLAB_class"] = np.bytes_("char")
        node.attrs["MATLAB_int_decode"] = np.int32(2)
        if not value:
            node.attrs["MATLAB_empty"] = np.uint8(1)
        return node
    if isinstance(value, list):
        references = np.empty((len(value), 1), dtype=h5py.ref_dtype)  # a 1 x N cell, reversed
        for i, entry in enumerate(value):
            references[i, 0] = _write(refs, refs, f"{name}_{len(refs)}_{i}", entry).ref
        node = parent.create_dataset(name, data=references)
        node.attrs["MATLAB_class"] = np.bytes_("cell")
        return node
    value = np.asarray(value)
    node = parent.create_dataset(name, data=np.transpose(value))
    node.attrs["MATLAB_class"] = np.bytes_(_CLASS[value.dtype])
    return node
