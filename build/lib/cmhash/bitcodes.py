"""Binary codes as bits: packing into unsigned 64-bit words, and the CPU's popcount for numba kernels.

A K-bit code becomes ``ceil(K / 64)`` words, so a Hamming distance is a few XORs and popcounts (the
ranking kernel of :mod:`cmhash.metrics` and the search engine of :mod:`cmhash.search` both work on
these words). Labels are packed the same way, so "shares at least one label" is a few ANDs. Padding
bits are zero on both sides and therefore never count.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import types
from numba.core.extending import intrinsic

_WORD_BYTES = 8


@dataclass(frozen=True)
class PackedCodes:
    """Binary codes of ``bits`` bits, one row of uint64 words per item."""

    words: np.ndarray
    bits: int

    def __len__(self) -> int:
        return len(self.words)


def _bytes_to_words(packed_bytes: np.ndarray) -> np.ndarray:
    n, n_bytes = packed_bytes.shape
    padded = np.zeros((n, -(-max(n_bytes, 1) // _WORD_BYTES) * _WORD_BYTES), dtype=np.uint8)
    padded[:, :n_bytes] = packed_bytes
    return padded.view(np.uint64)


def pack_codes(codes, bits: int | None = None) -> PackedCodes:
    """Pack codes for the ranking kernel.

    Accepts a ``PackedCodes`` (returned as is), a {-1, +1} array of shape (n, K), or a uint8 array
    of packed bits as ``np.packbits(codes > 0, axis=1)`` makes it; ``bits`` gives K for packed
    bytes (default: 8 bits per byte).
    """
    if isinstance(codes, PackedCodes):
        return codes
    codes = np.asarray(codes)
    if codes.ndim != 2:
        raise ValueError(f"codes must be a 2-D array (items x bits), got shape {codes.shape}")
    if codes.dtype == np.uint8:
        n_bits = codes.shape[1] * 8 if bits is None else int(bits)
        if not codes.shape[1] * 8 - 8 < n_bits <= codes.shape[1] * 8:
            raise ValueError(f"{codes.shape[1]} packed bytes cannot hold {n_bits} bits")
        return PackedCodes(_bytes_to_words(np.ascontiguousarray(codes)), n_bits)
    bad = (codes != 1) & (codes != -1)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise ValueError(f"codes must be -1/+1 (or packed uint8 bits); item {row}, bit {col} is {codes[row, col]!r}. "
                         "A 0 usually means sign(0) was not mapped to +1 or -1.")
    return PackedCodes(_bytes_to_words(np.packbits(codes > 0, axis=1)), codes.shape[1])


def pack_labels(labels) -> np.ndarray:
    """Pack labels into uint64 words: a multi-hot (n, L) array, or (n,) class ids for single-label data.

    Two items are relevant to each other when their words share a set bit, which is "at least one
    common label" for multi-hot labels and label equality for class ids.
    """
    labels = np.asarray(labels)
    if labels.ndim == 1:
        if not np.issubdtype(labels.dtype, np.integer) or (labels < 0).any():
            raise ValueError("1-D labels must be non-negative integer class ids")
        multi_hot = np.zeros((len(labels), int(labels.max(initial=0)) + 1), dtype=bool)
        multi_hot[np.arange(len(labels)), labels] = True
    elif labels.ndim == 2:
        multi_hot = labels != 0
    else:
        raise ValueError(f"labels must be (n, L) multi-hot or (n,) class ids, got shape {labels.shape}")
    return _bytes_to_words(np.packbits(multi_hot, axis=1, bitorder="little"))


@intrinsic
def popcount(typingctx, word):
    """The CPU's population count of a uint64 (LLVM ``ctpop``), for numba kernels."""
    signature = types.uint64(types.uint64)

    def codegen(context, builder, sig, args):
        return builder.ctpop(args[0])

    return signature, codegen
