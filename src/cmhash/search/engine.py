"""``HammingIndex``: exact Hamming top-k search over binary codes, shaped like FAISS's
``IndexBinaryFlat`` so that one can stand in for the other::

    index = HammingIndex(codes)             # (N, K) -1/+1 codes, or (N, K/8) packed uint8 bits
    distances, ids = index.search(queries, k)
    index.add(more_codes); len(index)
    index.save("codes.hidx"); index = HammingIndex.load("codes.hidx")   # memory-mapped

Results are exact: the same ids and distances as a brute-force scan, nearest first, and equal
distances in increasing item id (FAISS leaves the order of ties open). One difference: a ``k``
larger than the index returns every item (FAISS pads with -1). Only the packed codes are held:
``ceil(K / 64) * 8`` bytes an item. ``kernel.py`` explains the algorithm; bench/README.md its speed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from cmhash.bitcodes import pack_codes
from cmhash.codes import MAX_BITS
from cmhash.errors import CmhashError

KEPT_IDS = 1 << 16  # ids a query may keep in the one-pass search (512 KB)
_MAGIC = b"CMHASHIDX1\n"  # then one JSON line (bits, items), then the uint64 words


class HammingIndex:
    def __init__(self, codes=None, bits: int | None = None):
        """An index of ``codes`` (or an empty one of ``bits`` bits, to :meth:`add` to)."""
        if codes is None:
            if bits is None:
                raise ValueError("give the codes, or the code length (bits) of an empty index")
            self.bits = _check_bits(bits)
            self._words = np.zeros((0, -(-self.bits // 64)), np.uint64)
        else:
            packed = pack_codes(codes, bits)
            self.bits = _check_bits(packed.bits)
            self._words = packed.words

    @property
    def words(self) -> np.ndarray:
        """The packed codes: (N, ceil(K / 64)) uint64."""
        return self._words

    def __len__(self) -> int:
        return len(self._words)

    def add(self, codes) -> None:
        """Append codes of the same length; their ids continue from ``len(self)``."""
        packed = pack_codes(codes, self.bits if np.asarray(codes).dtype == np.uint8 else None)
        if packed.bits != self.bits:
            raise ValueError(f"the index holds {self.bits}-bit codes; these have {packed.bits} bits")
        self._words = np.concatenate([self._words, packed.words])

    def search(self, queries, k: int, threads: int | None = None, device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest items of each query: ``(distances, ids)``, both (Q, min(k, N)) int64,
        nearest first, equal distances in increasing id. ``queries`` are codes as the index takes
        them (one query may be a 1-D code). ``device``: ``cpu`` (the kernel measured in
        bench/README.md), or a torch device such as ``cuda`` (the codes are copied there once)."""
        from cmhash.search.kernel import top_k_batch, top_k_batch_kept, top_k_single, top_k_single_kept

        queries, k = self._check_query(queries, k)
        n_queries = len(queries)
        ids = np.empty((n_queries, k), np.int64)
        distances = np.empty((n_queries, k), np.int64)
        if k == 0 or n_queries == 0:
            return distances, ids
        if device != "cpu":
            from cmhash.search.torch_kernel import top_k_torch

            return top_k_torch(self._on_device(device), queries, k)
        threads = threads or _threads()
        # one pass keeping up to k ids per distance while (bits + 1) x k ids fit in KEPT_IDS, else
        # two passes (histogram, then placement) with memory independent of k
        keep = (self.bits + 1) * k <= KEPT_IDS
        if n_queries == 1:
            # one query: every thread scans a chunk of the database (each chunk at least 64K items)
            chunks = max(1, min(threads, len(self) // 65536))
            single = top_k_single_kept if keep else top_k_single
            single(self._words, queries[0], k, self.bits, ids[0], distances[0], chunks)
        else:
            (top_k_batch_kept if keep else top_k_batch)(self._words, queries, k, self.bits, ids, distances)
        return distances, ids

    def _on_device(self, device: str):
        """The codes as an int64 tensor on ``device``, copied once."""
        import torch

        from cmhash.device import resolve_device

        device = resolve_device(device)
        cached = getattr(self, "_device_words", None)
        if cached is None or str(cached.device) != str(torch.device(device)) or len(cached) != len(self):
            self._device_words = torch.from_numpy(np.ascontiguousarray(self._words).view(np.int64)).to(device)
        return self._device_words

    def _check_query(self, queries, k) -> tuple[np.ndarray, int]:
        """The queries packed into words like the index's codes, and k clipped to the item count."""
        queries = np.asarray(queries)
        if queries.ndim == 1:
            queries = queries[None, :]
        packed = pack_codes(queries, self.bits if queries.dtype == np.uint8 else None)
        if packed.bits != self.bits:
            raise ValueError(f"the index holds {self.bits}-bit codes; the queries have {packed.bits} bits")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        return packed.words, min(int(k), len(self))

    def save(self, path: str | os.PathLike) -> None:
        """Write the index (a header line and the raw words), atomically."""
        from cmhash.atomic import atomic_path

        with atomic_path(path) as tmp, open(tmp, "wb") as handle:
            handle.write(_MAGIC + json.dumps({"bits": self.bits, "items": len(self)}).encode() + b"\n")
            handle.write(np.ascontiguousarray(self._words).tobytes())

    @classmethod
    def load(cls, path: str | os.PathLike, mmap: bool = True) -> "HammingIndex":
        """Read an index written by :meth:`save`; memory-mapped (not read into memory) by default,
        so a 10M-item index opens at once and its pages are shared between processes."""
        path = Path(path)
        try:
            with open(path, "rb") as handle:
                return cls.from_open_file(handle, path, mmap)
        except FileNotFoundError:
            raise CmhashError(f"{path}: no such index file.") from None
        except IsADirectoryError:
            raise CmhashError(f"{path}: a folder, not an index file.") from None

    @classmethod
    def from_open_file(cls, handle, path: str | os.PathLike, mmap: bool = True) -> "HammingIndex":
        """:meth:`load` from a file already open for binary reading (read from its start; ``path``
        names it in messages): what was checked through this handle is what is loaded, even if the
        path is replaced meanwhile. The handle may be closed afterwards (a memory map keeps its file)."""
        handle.seek(0)
        try:
            magic, header = handle.readline(len(_MAGIC)), handle.readline(4096)
            offset = handle.tell()
            meta = json.loads(header) if magic == _MAGIC else None
        except (json.JSONDecodeError, UnicodeDecodeError):
            meta = None
        bits, items = (meta.get("bits"), meta.get("items")) if isinstance(meta, dict) else (None, None)
        if not all(isinstance(value, int) and not isinstance(value, bool) for value in (bits, items)) \
                or not 1 <= bits <= MAX_BITS or items < 0:
            raise CmhashError(f"{path}: not a cmhash Hamming index (written by HammingIndex.save), or its header is damaged.")
        n_words = -(-bits // 64)
        expected = offset + items * n_words * 8
        size = os.fstat(handle.fileno()).st_size
        if size != expected:
            raise CmhashError(f"{path}: truncated or damaged ({size} bytes, expected {expected}); build it again (dvc repro).")
        index = cls(bits=bits)
        if items == 0:
            return index
        if mmap:
            index._words = np.memmap(handle, np.uint64, "r", offset=offset, shape=(items, n_words))
        else:
            handle.seek(offset)
            index._words = np.fromfile(handle, np.uint64, count=items * n_words).reshape(items, n_words)
        return index


def _check_bits(bits: int) -> int:
    if not 1 <= int(bits) <= MAX_BITS:
        raise ValueError(f"codes of 1 to {MAX_BITS} bits are supported, got {bits}")
    return int(bits)


def _threads() -> int:
    import numba

    return numba.get_num_threads()
