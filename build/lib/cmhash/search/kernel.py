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
the id order holds). A batch works on blocks of queries that share each read of the database and
keeps no distance buffer (``_top_k_block``); the blocks run in parallel.
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


QUERY_BLOCK = 16  # queries that share one read of the database in a batch


@njit(cache=True, inline="always")
def _block_distance(database, queries, i, q):
    if database.shape[1] == 1:
        return popcount(database[i, 0] ^ queries[q, 0])
    d = np.uint64(0)
    for w in range(database.shape[1]):
        d += popcount(database[i, w] ^ queries[q, w])
    return d


@njit(cache=True)
def _top_k_block(database, queries, k, n_bits, out_ids, out_distances):
    """Top-k of a block of queries in two reads of the database and no distance buffer: the first
    read fills one histogram per query, the second computes the distances again (a popcount is
    cheaper than storing and reloading them) and places each query's results. Each database row is
    loaded once for all the block's queries, and the histograms of different queries, updated in
    turn, do not wait on one another."""
    n, n_queries = database.shape[0], queries.shape[0]
    histograms = np.zeros((n_queries, n_bits + 1), np.int64)
    for i in range(n):
        for q in range(n_queries):
            histograms[q, _block_distance(database, queries, i, q)] += 1
    thresholds = np.empty(n_queries, np.int64)
    slots_at_t = np.empty(n_queries, np.int64)
    starts = np.zeros((n_queries, n_bits + 1), np.int64)
    for q in range(n_queries):
        t, below = _threshold(histograms[q], k)
        thresholds[q], slots_at_t[q] = t, k - below
        position = 0
        for d in range(t + 1):
            starts[q, d] = position
            position += histograms[q, d]
    taken_at_t = np.zeros(n_queries, np.int64)
    left = n_queries * k
    for i in range(n):
        if left == 0:
            break
        for q in range(n_queries):
            d = np.int64(_block_distance(database, queries, i, q))
            t = thresholds[q]
            if d < t or (d == t and taken_at_t[q] < slots_at_t[q]):
                taken_at_t[q] += d == t
                out_ids[q, starts[q, d]] = i
                out_distances[q, starts[q, d]] = d
                starts[q, d] += 1
                left -= 1


@njit(cache=True, parallel=True)
def top_k_batch(database, queries, k, n_bits, out_ids, out_distances):
    """Top-k of every query: blocks of QUERY_BLOCK queries, the blocks in parallel."""
    n_blocks = (queries.shape[0] + QUERY_BLOCK - 1) // QUERY_BLOCK
    for block in prange(n_blocks):
        rows = slice(block * QUERY_BLOCK, min((block + 1) * QUERY_BLOCK, queries.shape[0]))
        _top_k_block(database, queries[rows], k, n_bits, out_ids[rows], out_distances[rows])


@njit(cache=True, inline="always")
def _tighten(counts, k, limit):
    """The smallest distance t with at least k kept items at distances <= t (else ``limit``)."""
    total = 0
    for t in range(limit):
        total += counts[t]
        if total >= k:
            return t
    return limit


TILE = 2048  # database rows read once per block of queries (16 KB at 64 bits: they stay in L1)


@njit(cache=True)
def _collect(database, queries, lo, hi, k, limits, counts, buckets):
    """One read of rows lo..hi-1 for every query of a block. An item is kept when its distance d is
    below the query's limit: the smallest t such that k kept items lie at distances <= t (an item
    at distance >= t ranks after those k, the earlier ids winning ties). Kept items go to
    ``buckets[q, d]`` in id order; no bucket ever holds more than k.

    The rows come in tiles that stay in the cache while the block's queries scan them, four queries
    at a time with their words and limits in registers: almost every item fails the comparison, so
    a row costs one load and, per query and word, a XOR and a popcount."""
    n_queries = queries.shape[0]
    n_words = database.shape[1]
    for start in range(lo, hi, TILE):
        stop = min(start + TILE, hi)
        for q in range(0, n_queries, 4):
            if q + 4 > n_queries:  # the last one to three queries, one by one
                for single in range(q, n_queries):
                    limits[single] = _scan_one(database, queries, single, start, stop, k, limits[single], counts, buckets)
            elif n_words == 1:
                _scan_four_1word(database, queries, q, start, stop, k, limits, counts, buckets)
            elif n_words == 2:
                _scan_four_2words(database, queries, q, start, stop, k, limits, counts, buckets)
            else:
                for single in range(q, q + 4):
                    limits[single] = _scan_one(database, queries, single, start, stop, k, limits[single], counts, buckets)


@njit(cache=True, inline="always")
def _scan_one(database, queries, q, start, stop, k, limit, counts, buckets):
    if database.shape[1] == 1:
        word = queries[q, 0]
        for i in range(start, stop):
            d = np.int64(popcount(database[i, 0] ^ word))
            if d < limit:
                limit = _keep(q, d, i, k, limit, counts, buckets)
    elif database.shape[1] == 2:
        a, b = queries[q, 0], queries[q, 1]
        for i in range(start, stop):
            d = np.int64(popcount(database[i, 0] ^ a) + popcount(database[i, 1] ^ b))
            if d < limit:
                limit = _keep(q, d, i, k, limit, counts, buckets)
    else:
        for i in range(start, stop):
            d = np.int64(_block_distance(database, queries, i, q))
            if d < limit:
                limit = _keep(q, d, i, k, limit, counts, buckets)
    return limit


# The four compare-and-keep steps are written out in both scans below on purpose: moved into one
# helper returning the four limits as a tuple, the batch search ran 3x slower (565 against 1,814
# queries/s at 1M x 64 bits, k=10), as numba no longer kept the limits in registers.
@njit(cache=True, inline="always")
def _scan_four_1word(database, queries, q, start, stop, k, limits, counts, buckets):
    w0, w1, w2, w3 = queries[q, 0], queries[q + 1, 0], queries[q + 2, 0], queries[q + 3, 0]
    l0, l1, l2, l3 = limits[q], limits[q + 1], limits[q + 2], limits[q + 3]
    for i in range(start, stop):
        x = database[i, 0]
        d0, d1 = np.int64(popcount(x ^ w0)), np.int64(popcount(x ^ w1))
        d2, d3 = np.int64(popcount(x ^ w2)), np.int64(popcount(x ^ w3))
        if d0 < l0:
            l0 = _keep(q, d0, i, k, l0, counts, buckets)
        if d1 < l1:
            l1 = _keep(q + 1, d1, i, k, l1, counts, buckets)
        if d2 < l2:
            l2 = _keep(q + 2, d2, i, k, l2, counts, buckets)
        if d3 < l3:
            l3 = _keep(q + 3, d3, i, k, l3, counts, buckets)
    limits[q], limits[q + 1], limits[q + 2], limits[q + 3] = l0, l1, l2, l3


@njit(cache=True, inline="always")
def _scan_four_2words(database, queries, q, start, stop, k, limits, counts, buckets):
    a0, a1, a2, a3 = queries[q, 0], queries[q + 1, 0], queries[q + 2, 0], queries[q + 3, 0]
    b0, b1, b2, b3 = queries[q, 1], queries[q + 1, 1], queries[q + 2, 1], queries[q + 3, 1]
    l0, l1, l2, l3 = limits[q], limits[q + 1], limits[q + 2], limits[q + 3]
    for i in range(start, stop):
        x, y = database[i, 0], database[i, 1]
        d0 = np.int64(popcount(x ^ a0) + popcount(y ^ b0))
        d1 = np.int64(popcount(x ^ a1) + popcount(y ^ b1))
        d2 = np.int64(popcount(x ^ a2) + popcount(y ^ b2))
        d3 = np.int64(popcount(x ^ a3) + popcount(y ^ b3))
        if d0 < l0:
            l0 = _keep(q, d0, i, k, l0, counts, buckets)
        if d1 < l1:
            l1 = _keep(q + 1, d1, i, k, l1, counts, buckets)
        if d2 < l2:
            l2 = _keep(q + 2, d2, i, k, l2, counts, buckets)
        if d3 < l3:
            l3 = _keep(q + 3, d3, i, k, l3, counts, buckets)
    limits[q], limits[q + 1], limits[q + 2], limits[q + 3] = l0, l1, l2, l3


@njit(cache=True, inline="always")
def _keep(q, d, i, k, limit, counts, buckets):
    """Keep item i at distance d for query q; the query's new limit."""
    buckets[q, d, counts[q, d]] = i
    counts[q, d] += 1
    return _tighten(counts[q], k, limit)


@njit(cache=True)
def _emit(counts, buckets, k, out_ids, out_distances):
    """The first k kept items by (distance, id): buckets in distance order, chunks (axis 0) in id order."""
    position = 0
    for d in range(counts.shape[1]):
        for chunk in range(counts.shape[0]):
            for c in range(counts[chunk, d]):
                if position == k:
                    return
                out_ids[position] = buckets[chunk, d, c]
                out_distances[position] = d
                position += 1


@njit(cache=True, parallel=True)
def top_k_batch_kept(database, queries, k, n_bits, out_ids, out_distances):
    """Top-k of every query in one read of the database per block of queries (for k small enough
    that (bits + 1) x k kept ids a query fit in memory; ``top_k_batch`` otherwise)."""
    n_queries = queries.shape[0]
    n_blocks = (n_queries + QUERY_BLOCK - 1) // QUERY_BLOCK
    for block in prange(n_blocks):
        first, last = block * QUERY_BLOCK, min((block + 1) * QUERY_BLOCK, n_queries)
        limits = np.full(last - first, n_bits + 1, np.int64)
        counts = np.zeros((last - first, n_bits + 1), np.int64)
        buckets = np.empty((last - first, n_bits + 1, k), np.int64)
        _collect(database, queries[first:last], 0, database.shape[0], k, limits, counts, buckets)
        for q in range(last - first):
            _emit(counts[q:q + 1], buckets[q:q + 1], k, out_ids[first + q], out_distances[first + q])


@njit(cache=True, parallel=True)
def top_k_single_kept(database, query, k, n_bits, out_ids, out_distances, n_chunks):
    """Top-k of one query, the database split into ``n_chunks`` chunks scanned in parallel, each
    keeping its own buckets; chunk order is id order, so merging keeps ties in id order."""
    n = database.shape[0]
    queries = query.reshape(1, -1)
    counts = np.zeros((n_chunks, n_bits + 1), np.int64)
    buckets = np.empty((n_chunks, n_bits + 1, k), np.int64)
    for c in prange(n_chunks):
        limits = np.full(1, n_bits + 1, np.int64)
        _collect(database, queries, c * n // n_chunks, (c + 1) * n // n_chunks, k, limits, counts[c:c + 1], buckets[c:c + 1])
    _emit(counts, buckets, k, out_ids, out_distances)


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
