"""The ranking kernel: one linear scan per query, no sort.

A K-bit code has only K + 1 possible Hamming distances, so the ranking of the retrieval set is fully
described by per-distance counts plus, for ties broken by retrieval index, each item's position
inside its distance bucket. For each query the kernel makes

1. a counting pass over the retrieval set: the distance and relevance of every item, the number of
   items and of relevant items at each distance, and, for each relevant item, its running positions
   inside its bucket (the count of items, and of relevant items, at the same distance with a lower
   or equal index);
2. a pass over the relevant items only: with the bucket offsets from pass 1, a relevant item's rank
   under "ties by retrieval index" is ``items_before(d) + position`` and the number of relevant items
   ranked at or above it is ``relevant_before(d) + its ordinal in the bucket``. From these the AP sums
   of every protocol follow, each a sum over relevant items. Both positions come from pass 1, so
   the items of this pass are independent of each other (no running counter in memory that
   consecutive items of one bucket would wait on) and the whole-list sum, the only one mAP@all
   needs, compiles to vector instructions. The sums for depths shorter than the list, and the
   hits of precision@R, take only items ranked near the top: they come from the relevant items
   of the closest distance buckets.

This is a counting sort whose output is consumed on the fly: O(n) per query with O(K) state, the
retrieval set read once per query, memory bounded by one n-sized int64 buffer per thread. Pass 2 is
skipped when only per-distance counts are needed (tie rule "average", precision-recall by radius).
Queries run in parallel over the CPU's cores (numba ``prange``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit, prange

from cmhash.bitcodes import popcount
from cmhash.codes import MAX_BITS

# Bucket words and packed relevant items are int64: (items counted << 32) | (relevant counted << 8) | distance,
# which is why codes are at most MAX_BITS = 255 bits long.
MAX_RETRIEVAL = 2**24 - 1
_ITEM = np.int64(1) << 32
_RELEVANT = np.int64(1) << 8


@dataclass(frozen=True)
class RankStatistics:
    """Per-query sufficient statistics of a ranking (q queries, K bits, len(ks) depths).

    ``items_at``/``relevant_at`` (q, K + 1): items and relevant items at each Hamming distance.
    The rest holds for ties broken by retrieval index and is None when the scan skipped pass 2:
    ``precision_sum`` (q, len(ks)): sum of precision at the rank of each relevant item ranked <= k;
    ``relevant_in_top`` (q, len(ks)): relevant items ranked <= k;
    ``first_relevant_sum`` (q, len(ks)): sum of precision at the rank of the first min(k, R)
    relevant items, wherever they are ranked (DCMHT-refactor protocol);
    ``hits_at`` (q, len(r_values)): relevant items among the top R.
    """

    items_at: np.ndarray
    relevant_at: np.ndarray
    precision_sum: np.ndarray | None = None
    relevant_in_top: np.ndarray | None = None
    first_relevant_sum: np.ndarray | None = None
    hits_at: np.ndarray | None = None


@njit(inline="always")
def _tally(distance, is_relevant, bucket_words, packed, n_relevant):
    """Count one retrieval item into its bucket; returns the new number of packed relevant items.

    ``bucket_words[d]`` holds (items << 32) | (relevant items << 8) | d for the items counted so
    far at distance d, so one add both counts the item and gives its packed word: its position
    among the items and among the relevant items of its bucket, and its distance. The hot loop's
    only state; storing both positions here keeps pass 2 free of running counters."""
    word = bucket_words[distance] + (_ITEM | (is_relevant * _RELEVANT))
    bucket_words[distance] = word
    # written for every item, kept only for relevant ones: branch-free compaction
    packed[n_relevant] = word
    return n_relevant + is_relevant


@njit(inline="always")
def _distance(query_code, retrieval_code):
    distance = np.uint64(0)
    for w in range(query_code.shape[0]):
        distance += popcount(query_code[w] ^ retrieval_code[w])
    return distance


@njit(inline="always")
def _shares_label(query_label, retrieval_label):
    shared = np.uint64(0)
    for w in range(query_label.shape[0]):
        shared |= query_label[w] & retrieval_label[w]
    return np.int64(shared != 0)


@njit(cache=True)
def _count_pass(query_code, retrieval_codes, query_label, retrieval_labels, items_at, relevant_at, packed):
    """Pass 1 for one query. Fills the bucket counts; packs the bucket word of each relevant item
    (see ``_tally``), in retrieval order, into ``packed``; returns how many were packed."""
    bucket_words = np.arange(items_at.shape[0]).astype(np.int64)  # counts 0, distance d
    n_relevant = 0
    if retrieval_codes.shape[1] == 1 and retrieval_labels.shape[1] == 1:
        # <= 64 bits and <= 64 labels, the common case: no inner word loops (about 1.6x faster)
        code, label = query_code[0], query_label[0]
        for j in range(retrieval_codes.shape[0]):
            n_relevant = _tally(popcount(code ^ retrieval_codes[j, 0]), np.int64((label & retrieval_labels[j, 0]) != 0),
                                bucket_words, packed, n_relevant)
    else:
        for j in range(retrieval_codes.shape[0]):
            n_relevant = _tally(_distance(query_code, retrieval_codes[j]), _shares_label(query_label, retrieval_labels[j]),
                                bucket_words, packed, n_relevant)
    for d in range(items_at.shape[0]):
        items_at[d] = bucket_words[d] >> 32
        relevant_at[d] = (bucket_words[d] >> 8) & 0xFFFFFF
    return n_relevant


@njit(inline="always")
def _offsets(counts_at):
    """Exclusive prefix sums over distances: how many items (or relevant items) lie closer than d."""
    before = np.empty(counts_at.shape[0], np.int64)
    total = 0
    for d in range(counts_at.shape[0]):
        before[d] = total
        total += counts_at[d]
    return before


@njit(inline="always")
def _rank_and_hits(word, items_before, relevant_before):
    """A packed relevant item's rank in the whole list, and the relevant items ranked up to it."""
    distance = np.uint64(word & 0xFF)  # unsigned: no negative-index wraparound test
    return items_before[distance] + (word >> 32), relevant_before[distance] + ((word >> 8) & 0xFFFFFF)


# error_model="numpy": no ZeroDivisionError test per division (every rank is >= 1), and
# fastmath "reassoc": the sum may be reordered. Together they let LLVM vectorise the loop (gathers,
# int-to-double conversions and divisions 8 at a time with AVX-512), about twice as fast as the
# scalar loop. The price: the order of the additions depends on the CPU's vector width, so the
# last bits of the sum (~1e-16 relative) may differ between machines; metrics are reported to 6
# decimals.
@njit(cache=True, error_model="numpy", fastmath={"reassoc"})
def _whole_list_sum(packed, n_relevant, items_before, relevant_before):
    """Sum of the precision at the rank of every relevant item (the AP numerator of mAP@all)."""
    total = 0.0
    for t in range(n_relevant):
        rank, hits = _rank_and_hits(packed[t], items_before, relevant_before)
        total += np.float64(hits) / np.float64(rank)
    return total


@njit(cache=True, error_model="numpy")
def _relevant_pass(packed, n_relevant, items_at, relevant_at, ks, r_values, rank_hits,
                   precision_sum, relevant_in_top, first_relevant_sum, hits_at):
    """Pass 2 for one query: AP sums for every depth in ``ks`` and hits for every R in ``r_values``."""
    items_before, relevant_before = _offsets(items_at), _offsets(relevant_at)
    items, relevant = items_at.sum(), relevant_at.sum()
    whole_list_sum = _whole_list_sum(packed, n_relevant, items_before, relevant_before)
    # A depth k at or beyond the list's end (or, for the DCMHT protocol, beyond R) takes every
    # relevant item: it is filled from the whole-list sum. Only the shallower ones, and the R of
    # precision@R, need a test per item. An item ranked above such a depth lies at a distance
    # whose bucket starts above it, so only the relevant items of the closest buckets are tested.
    deepest_rank, deepest_hits = 0, 0
    for k in ks:
        if k < items:
            deepest_rank = max(deepest_rank, k)
        if k < relevant:
            deepest_hits = max(deepest_hits, k)
    max_r = rank_hits.shape[0] - 1
    deepest_rank_or_r = max(deepest_rank, max_r)
    nearest_buckets = -1  # the largest distance holding an item that some test can take
    for d in range(items_at.shape[0]):
        if items_before[d] < deepest_rank_or_r or relevant_before[d] < deepest_hits:
            nearest_buckets = d
    rank_hits[:] = 0
    precision_sum[:] = 0.0
    relevant_in_top[:] = 0
    first_relevant_sum[:] = 0.0
    if nearest_buckets >= 0:
        # First compact those items to the front of ``packed`` (in place, branch-free: no longer
        # needed after the whole-list sum), then test them: cheaper than testing inside one loop.
        n_near = 0
        for t in range(n_relevant):
            word = packed[t]
            packed[n_near] = word
            n_near += np.int64((word & 0xFF) <= nearest_buckets)
        for t in range(n_near):
            rank, hits = _rank_and_hits(packed[t], items_before, relevant_before)
            precision = hits / rank
            if rank <= max_r:
                rank_hits[rank] += 1
            for i in range(ks.shape[0]):
                if ks[i] < items and rank <= ks[i]:
                    precision_sum[i] += precision
                    relevant_in_top[i] += 1
                if ks[i] < relevant and hits <= ks[i]:
                    first_relevant_sum[i] += precision
    for i in range(ks.shape[0]):
        if ks[i] >= items:
            precision_sum[i] = whole_list_sum
            relevant_in_top[i] = relevant
        if ks[i] >= relevant:
            first_relevant_sum[i] = whole_list_sum
    cumulative = 0
    next_r = 0
    for rank in range(max_r + 1):
        cumulative += rank_hits[rank]
        while next_r < r_values.shape[0] and r_values[next_r] == rank:
            hits_at[next_r] = cumulative
            next_r += 1


@njit(parallel=True, cache=True)
def _scan(query_codes, retrieval_codes, query_labels, retrieval_labels, bits, ks, r_values, by_index, n_threads):
    n_queries, n = query_codes.shape[0], retrieval_codes.shape[0]
    items_at = np.zeros((n_queries, bits + 1), np.int64)
    relevant_at = np.zeros((n_queries, bits + 1), np.int64)
    precision_sum = np.zeros((n_queries, ks.shape[0]))
    relevant_in_top = np.zeros((n_queries, ks.shape[0]), np.int64)
    first_relevant_sum = np.zeros((n_queries, ks.shape[0]))
    hits_at = np.zeros((n_queries, r_values.shape[0]), np.int64)
    max_r = r_values[-1] if r_values.shape[0] else 0
    per_thread = (n_queries + n_threads - 1) // n_threads
    for thread in prange(n_threads):
        packed = np.empty(n, np.int64)  # one buffer per thread, reused for all its queries
        rank_hits = np.empty(max_r + 1, np.int64)
        for q in range(thread * per_thread, min(n_queries, (thread + 1) * per_thread)):
            n_relevant = _count_pass(query_codes[q], retrieval_codes, query_labels[q], retrieval_labels,
                                     items_at[q], relevant_at[q], packed)
            if by_index:
                _relevant_pass(packed, n_relevant, items_at[q], relevant_at[q], ks, r_values, rank_hits,
                               precision_sum[q], relevant_in_top[q], first_relevant_sum[q], hits_at[q])
    return items_at, relevant_at, precision_sum, relevant_in_top, first_relevant_sum, hits_at


def scan_rankings(query_words: np.ndarray, retrieval_words: np.ndarray, query_label_words: np.ndarray,
                  retrieval_label_words: np.ndarray, bits: int, ks, r_values, by_index: bool = True,
                  n_threads: int | None = None) -> RankStatistics:
    """Rank statistics of every query against the retrieval set (packed words, see :mod:`cmhash.bitcodes`).

    ``ks``: ranking depths, ``r_values``: the R of precision@R; both int64, ascending, at most n and
    ``ks`` not empty (``RetrievalProblem.statistics`` prepares them). ``by_index=False`` computes only
    the per-distance counts.
    """
    import numba

    n = len(retrieval_words)
    if bits > MAX_BITS or n > MAX_RETRIEVAL:
        raise ValueError(f"the ranking kernel handles codes of up to {MAX_BITS} bits and retrieval sets of up to "
                         f"{MAX_RETRIEVAL:,} items (got {bits} bits, {n:,} items); evaluate on a subset")
    ks, r_values = np.asarray(ks, dtype=np.int64), np.asarray(r_values, dtype=np.int64)
    threads = n_threads or numba.get_num_threads()
    arrays = _scan(np.ascontiguousarray(query_words), np.ascontiguousarray(retrieval_words),
                   np.ascontiguousarray(query_label_words), np.ascontiguousarray(retrieval_label_words),
                   int(bits), ks, r_values, bool(by_index), max(1, min(threads, len(query_words))))
    items_at, relevant_at = arrays[:2]
    if not by_index:
        return RankStatistics(items_at, relevant_at)
    return RankStatistics(items_at, relevant_at, *arrays[2:])
