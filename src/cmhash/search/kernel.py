"""The exact Hamming top-k kernel: a counting sort over distances, in two passes over the database.

For one query against N codes (uint64 words, see :mod:`cmhash.bitcodes`):

1. every distance is computed once (XOR and popcount) into a uint8 buffer, and counted in a
   histogram of the K + 1 possible distances;
2. the histogram gives the k-th smallest distance t and, for every distance d <= t, where its
   items start in the answer; one more scan of the uint8 buffer (N bytes, not the codes) writes
   each item with d < t, and the first items with d == t in increasing id, straight into place.

No sort and no heap: the answer comes out ordered by (distance, id), which is what makes ties
deterministic. A single query splits the database into chunks scanned by all threads (each chunk
keeps its own histogram, and a chunk's items of distance d go after those of earlier chunks, so
the id order holds); a batch of queries runs one query per thread.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from cmhash.bitcodes import popcount


@njit(cache=True, inline="always")
def _distances(database, query, lo, hi, distance, histogram):
    """Distances of items lo..hi-1 to ``query`` into ``distance``, counted in ``histogram``."""
    if database.shape[1] == 1:  # <= 64 bits: no inner word loop
        word = query[0]
        for i in range(lo, hi):
            d = popcount(database[i, 0] ^ word)
            distance[i] = d
            histogram[d] += 1
    else:
        for i in range(lo, hi):
            d = np.uint64(0)
            for w in range(database.shape[1]):
                d += popcount(database[i, w] ^ query[w])
            distance[i] = d
            histogram[d] += 1


@njit(cache=True, inline="always")
def _threshold(histogram, k):
    """The k-th smallest distance t and how many of the k results lie at distances below t."""
    below = 0
    for t in range(histogram.shape[0]):
        if below + histogram[t] >= k:
            return t, below
        below += histogram[t]
    return histogram.shape[0] - 1, below


@njit(cache=True, inline="always")
def _place(distance, lo, hi, t, starts, slots_at_t, out_ids, out_distances, expected):
    """Write the chunk's results: items of distance d < t at ``starts[d]`` onwards, and its first
    ``slots_at_t`` items of distance t at ``starts[t]`` onwards, in id order. Stops when the
    ``expected`` items of the chunk are placed."""
    placed = 0
    taken_at_t = 0
    for i in range(lo, hi):
        if placed == expected:
            break
        d = distance[i]
        if d < t:
            out_ids[starts[d]] = i
            out_distances[starts[d]] = d
            starts[d] += 1
            placed += 1
        elif d == t and taken_at_t < slots_at_t:
            out_ids[starts[t]] = i
            out_distances[starts[t]] = d
            starts[t] += 1
            taken_at_t += 1
            placed += 1


@njit(cache=True)
def _top_k_one(database, query, k, n_bits, distance, out_ids, out_distances):
    """Top-k of one query, sequentially (one thread; the batch kernel runs many of these at once)."""
    n = database.shape[0]
    histogram = np.zeros(n_bits + 1, np.int64)
    _distances(database, query, 0, n, distance, histogram)
    t, below = _threshold(histogram, k)
    starts = np.zeros(n_bits + 1, np.int64)
    position = 0
    for d in range(t + 1):
        starts[d] = position
        position += histogram[d]
    _place(distance, 0, n, t, starts, k - below, out_ids, out_distances, k)


@njit(cache=True, parallel=True)
def top_k_batch(database, queries, k, n_bits, out_ids, out_distances, n_blocks):
    """Top-k of every query; the queries are split into ``n_blocks`` blocks run in parallel, each
    with one distance buffer."""
    n_queries = queries.shape[0]
    for block in prange(n_blocks):
        distance = np.empty(database.shape[0], np.uint8)
        for q in range(block * n_queries // n_blocks, (block + 1) * n_queries // n_blocks):
            _top_k_one(database, queries[q], k, n_bits, distance, out_ids[q], out_distances[q])


@njit(cache=True, parallel=True)
def top_k_single(database, query, k, n_bits, out_ids, out_distances, n_chunks):
    """Top-k of one query with the database split into ``n_chunks`` chunks scanned in parallel."""
    n = database.shape[0]
    distance = np.empty(n, np.uint8)
    histograms = np.zeros((n_chunks, n_bits + 1), np.int64)
    for c in prange(n_chunks):
        _distances(database, query, c * n // n_chunks, (c + 1) * n // n_chunks, distance, histograms[c])
    total = histograms.sum(axis=0)
    t, below = _threshold(total, k)
    # chunk c's items of distance d start after every item of a smaller distance and after the
    # items of distance d in the chunks before c; at distance t only k - below slots exist
    starts = np.zeros((n_chunks, n_bits + 1), np.int64)
    slots_at_t = np.zeros(n_chunks, np.int64)
    expected = np.zeros(n_chunks, np.int64)
    position = 0
    for d in range(t + 1):
        for c in range(n_chunks):
            starts[c, d] = position
            position += histograms[c, d]
    left_at_t = k - below
    for c in range(n_chunks):
        slots_at_t[c] = min(histograms[c, t], left_at_t)
        left_at_t -= slots_at_t[c]
        expected[c] = histograms[c, :t].sum() + slots_at_t[c]
    for c in prange(n_chunks):
        _place(distance, c * n // n_chunks, (c + 1) * n // n_chunks, t, starts[c], slots_at_t[c], out_ids, out_distances,
               expected[c])
