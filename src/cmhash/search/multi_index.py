"""``MultiIndexHammingIndex``: exact k-nearest search in sub-linear time, by multi-index hashing
(Norouzi, Punjani and Fleet, "Fast search in Hamming space with multi-index hashing", CVPR 2012).

The K bits of a code are cut into m substrings, and each substring indexes a table: the items
sorted by that substring's value. If an item lies within distance r of a query, then by the
pigeonhole principle one of its m substrings lies within distance floor(r / m) of the query's. So
the search probes every table at substring radius s = 0, 1, 2, ..., computes the full distance of
each new item it meets, and stops once the k-th smallest distance found is below m * (s + 1): every
item that close has been met. The answer is the same as a scan's, ties in increasing item id.

It pays off on codes clustered as a trained model's are, from about a million items; on random
codes the scan stays faster at every size measured (bench/multi_index_crossover.py, bench/README.md).
The tables cost 4 bytes an item and substring, plus 8 bytes per possible
substring value (2^b; b is about log2 of the item count, at most 22).

Why not FAISS's ``IndexBinaryMultiHash``: it probes each table only up to a fixed flip radius
(``nflip``) and returns the nearest items it met there, so its k nearest are exact only when they
lie within that radius, which no setting guarantees. On 1M clustered 64-bit codes, k = 10, it gave
3,845 queries/s with 93 % of queries exact at nflip 1, and 589 queries/s with 100 % at nflip 2;
this module, exact on every query by its stopping rule, 4,516 queries/s (bench/README.md).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from cmhash.bitcodes import popcount
from cmhash.search.engine import HammingIndex

MAX_SUBSTRING_BITS = 22


def default_substrings(bits: int, items: int) -> int:
    """m with substrings of about log2(items) bits (between 8 and MAX_SUBSTRING_BITS)."""
    length = -(-bits // 8) * 8
    target = min(MAX_SUBSTRING_BITS, max(8, round(math.log2(max(items, 2)))))
    return max(1, -(-length // target))


def substring_bounds(bits: int, substrings: int) -> np.ndarray:
    """(m + 1,) start positions of m nearly equal substrings of the packed bits (the code's bits
    occupy the first ceil(bits / 8) bytes of the words; padding bits are zero everywhere)."""
    length = -(-bits // 8) * 8
    return np.linspace(0, length, substrings + 1).round().astype(np.int64)


@njit(cache=True, inline="always")
def _substring(row, start, stop):
    """Bits start..stop-1 (at most 32) of a row of uint64 words, as an integer."""
    word, offset = start // 64, start % 64
    value = row[word] >> np.uint64(offset)
    if offset + (stop - start) > 64:
        value |= row[word + 1] << np.uint64(64 - offset)
    return value & ((np.uint64(1) << np.uint64(stop - start)) - np.uint64(1))


@njit(cache=True)
def build_tables(words, bounds):
    """Per substring: the items sorted by its value (stable, so by id within a value), and where
    each value's items start."""
    n, m = words.shape[0], bounds.shape[0] - 1
    width = 0
    for j in range(m):
        width = max(width, bounds[j + 1] - bounds[j])
    offsets = np.zeros((m, (1 << width) + 1), np.int64)
    order = np.empty((m, n), np.int32)
    keys = np.empty(n, np.int64)
    for j in range(m):
        for i in range(n):
            keys[i] = _substring(words[i], bounds[j], bounds[j + 1])
            offsets[j, keys[i] + 1] += 1
        for value in range(1, offsets.shape[1]):
            offsets[j, value] += offsets[j, value - 1]
        fill = offsets[j].copy()
        for i in range(n):
            order[j, fill[keys[i]]] = i
            fill[keys[i]] += 1
    return offsets, order


@njit(cache=True, inline="always")
def _kth_distance(histogram, k):
    total = 0
    for d in range(histogram.shape[0]):
        total += histogram[d]
        if total >= k:
            return d
    return histogram.shape[0]


@njit(cache=True)
def _search_one(words, query, k, bounds, offsets, order, visited, out_ids, out_distances):
    n, m = words.shape[0], bounds.shape[0] - 1
    n_words = words.shape[1]
    histogram = np.zeros(n_words * 64 + 1, np.int64)
    capacity = max(4 * k, 64)
    candidate_ids = np.empty(capacity, np.int64)
    candidate_distances = np.empty(capacity, np.int64)
    found, kept, bound = 0, 0, n_words * 64 + 1
    touched = np.empty(min(n, 1 << 16), np.int64)
    n_touched = 0
    longest = 0
    for j in range(m):
        longest = max(longest, bounds[j + 1] - bounds[j])
    for radius in range(longest + 1):
        for j in range(m):
            length = bounds[j + 1] - bounds[j]
            if radius > length:
                continue
            center = _substring(query, bounds[j], bounds[j + 1])
            mask = (np.uint64(1) << np.uint64(radius)) - np.uint64(1)  # Gosper's hack: every mask of `radius` bits
            limit = np.uint64(1) << np.uint64(length)
            while mask < limit:
                value = np.int64(center ^ mask)
                for position in range(offsets[j, value], offsets[j, value + 1]):
                    item = order[j, position]
                    if visited[item]:
                        continue
                    visited[item] = 1
                    if n_touched == touched.shape[0]:
                        touched = np.concatenate((touched, np.empty(touched.shape[0], np.int64)))
                    touched[n_touched] = item
                    n_touched += 1
                    d = np.uint64(0)
                    for w in range(n_words):
                        d += popcount(words[item, w] ^ query[w])
                    d = np.int64(d)
                    histogram[d] += 1
                    found += 1
                    if d <= bound:
                        if kept == capacity:
                            capacity *= 2
                            candidate_ids = np.concatenate((candidate_ids, np.empty(capacity - kept, np.int64)))
                            candidate_distances = np.concatenate((candidate_distances, np.empty(capacity - kept, np.int64)))
                        candidate_ids[kept] = item
                        candidate_distances[kept] = d
                        kept += 1
                        if found >= k:
                            bound = _kth_distance(histogram, k)
                if mask == 0:
                    break
                lowest = mask & (~mask + np.uint64(1))
                ripple = mask + lowest
                mask = (((ripple ^ mask) >> np.uint64(2)) // lowest) | ripple
        if found >= k and bound < m * (radius + 1):
            break  # every item within distance `bound` has been met
    for t in range(n_touched):
        visited[touched[t]] = 0
    order_by = np.argsort(candidate_distances[:kept] * n + candidate_ids[:kept], kind="mergesort")
    for r in range(min(k, kept)):
        out_ids[r] = candidate_ids[order_by[r]]
        out_distances[r] = candidate_distances[order_by[r]]


@njit(cache=True, parallel=True)
def search_batch(words, queries, k, bounds, offsets, order, out_ids, out_distances, n_blocks):
    n_queries = queries.shape[0]
    for block in prange(n_blocks):
        visited = np.zeros(words.shape[0], np.uint8)
        for q in range(block * n_queries // n_blocks, (block + 1) * n_queries // n_blocks):
            _search_one(words, queries[q], k, bounds, offsets, order, visited, out_ids[q], out_distances[q])


class MultiIndexHammingIndex(HammingIndex):
    """A :class:`HammingIndex` that searches by multi-index hashing: the same results, found
    without scanning every item. ``substrings`` defaults to about log2(N)-bit substrings."""

    def __init__(self, codes=None, bits: int | None = None, substrings: int | None = None):
        super().__init__(codes, bits)
        self._substrings = substrings
        self._build()

    def _build(self) -> None:
        if len(self) >= 2**31:
            raise ValueError("multi-index hashing here handles up to 2^31 - 1 items")
        m = self._substrings or default_substrings(self.bits, len(self))
        self.bounds = substring_bounds(self.bits, m)
        if int(np.diff(self.bounds).max()) > MAX_SUBSTRING_BITS:
            raise ValueError(f"{m} substrings of {self.bits}-bit codes are longer than {MAX_SUBSTRING_BITS} bits; "
                             f"use at least {-(-self.bits // MAX_SUBSTRING_BITS)}")
        self.offsets, self.order = build_tables(np.ascontiguousarray(self._words), self.bounds)

    @property
    def substrings(self) -> int:
        return len(self.bounds) - 1

    def add(self, codes) -> None:
        super().add(codes)
        self._build()

    @classmethod
    def load(cls, path, mmap: bool = True, substrings: int | None = None) -> "MultiIndexHammingIndex":
        """Read a :meth:`HammingIndex.save` file and build the tables (a pass over the codes)."""
        plain = HammingIndex.load(path, mmap)
        index = cls.__new__(cls)
        index.bits, index._words, index._substrings = plain.bits, plain.words, substrings
        index._build()
        return index

    def search(self, queries, k: int, threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        queries, k = self._check_query(queries, k)
        ids = np.empty((len(queries), k), np.int64)
        distances = np.empty((len(queries), k), np.int64)
        if k and len(queries):
            from cmhash.search.engine import _threads

            search_batch(self._words, queries, k, self.bounds, self.offsets, self.order, ids, distances,
                         min(threads or _threads(), len(queries)))
        return distances, ids
