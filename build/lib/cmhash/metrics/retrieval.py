"""Retrieval metrics for binary codes: every "mAP" of the field, precision@R and precision-recall.

Conventions (METHODS.md section 3), shared by every function here:

- Codes: {-1, +1} arrays (n, K), packed uint8 bits (``np.packbits(codes > 0, axis=1)``) or
  ``PackedCodes``. Hamming distance ``d = (K - b . b') / 2``.
- Labels: multi-hot (n, L) arrays; an item is relevant to a query when they share at least one label
  (``l_q . l_r > 0``). For single-label data pass one-hot rows or (n,) class ids: relevance is then
  label equality.
- ``ties``: how items at equal distance are ordered. ``"index"`` (default): lower retrieval index
  first, i.e. a stable sort, so every number is deterministic and independent of chunking, threads
  and sorting algorithm. ``"average"``: the exact expected value over all orders of the tied items.
  Public code uses neither: it sorts with an unstable sort, whose tie order is an accident.
- ``no_relevant``: a query with no relevant item in the whole retrieval set scores AP = 0 and counts
  in the mean (``"zero"``, the default, as DCMH's and DJSRH's code do), or is left out of the mean
  (``"skip"``, as UCCH's code does). A query whose relevant items all rank below k scores 0 at
  depth k under both rules.

- ``device``: ``"cpu"`` (default) or ``"cuda"`` / ``"auto"`` (CUDA when present). Same numbers on both.

On the CPU all metrics come from one linear scan per query (``kernel.scan_rankings``), never a
sort, so the whole retrieval set is evaluated at NUS-WIDE or COCO scale in seconds with memory
bounded by one retrieval-sized buffer per thread; on a GPU from a stable sort per query
(``torch_kernel``), in bounded chunks of queries.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cmhash.bitcodes import PackedCodes, pack_codes, pack_labels
from cmhash.metrics.kernel import RankStatistics, scan_rankings
from cmhash.metrics.ties import expected_average_precision, expected_hits_at

TIES = ("index", "average")
NO_RELEVANT = ("zero", "skip")
QUERY_CHUNK = 512  # queries per kernel call: the unit of progress reporting


@dataclass(frozen=True)
class RetrievalProblem:
    """Queries and retrieval set, packed and checked once, ready for any number of metrics."""

    query: PackedCodes
    retrieval: PackedCodes
    query_labels: np.ndarray
    retrieval_labels: np.ndarray

    @classmethod
    def build(cls, query_codes, retrieval_codes, query_labels, retrieval_labels) -> "RetrievalProblem":
        query, retrieval = pack_codes(query_codes), pack_codes(retrieval_codes)
        if query.bits != retrieval.bits:
            raise ValueError(f"query codes have {query.bits} bits, retrieval codes {retrieval.bits}")
        if len(retrieval) == 0:
            raise ValueError("the retrieval set is empty")
        query_words, retrieval_words = pack_labels(query_labels), pack_labels(retrieval_labels)
        if len(query) != len(query_words) or len(retrieval) != len(retrieval_words):
            raise ValueError(f"codes and labels differ in number of items: {len(query)} query codes, "
                             f"{len(query_words)} query labels, {len(retrieval)} retrieval codes, "
                             f"{len(retrieval_words)} retrieval labels")
        width = max(query_words.shape[1], retrieval_words.shape[1])  # class ids may differ in range
        pad = lambda words: np.pad(words, ((0, 0), (0, width - words.shape[1])))  # noqa: E731
        return cls(query, retrieval, pad(query_words), pad(retrieval_words))

    def statistics(self, ks=(), r_values=(), by_index: bool = True, progress: bool = False,
                   device: str = "cpu") -> RankStatistics:
        """Rank statistics of all queries: on the CPU with the ranking kernel, in chunks of queries
        (one progress step each); on any other device ("cuda", or "auto" with a GPU) with torch.
        ``ks`` (default: the whole list) and ``r_values`` must be ascending; both are clipped to n."""
        from tqdm import tqdm

        from cmhash.device import resolve_device

        n = len(self.retrieval)
        ks = np.minimum(np.asarray(ks if len(ks) else [n], dtype=np.int64), n)
        r_values = np.minimum(np.asarray(r_values, dtype=np.int64), n)
        if (np.diff(ks) < 0).any() or (np.diff(r_values) < 0).any():
            raise ValueError("ks and r_values must be sorted ascending")
        if device != "cpu" and resolve_device(device) != "cpu":
            from cmhash.metrics.torch_kernel import scan_rankings_torch

            return scan_rankings_torch(self.query.words, self.retrieval.words, self.query_labels,
                                       self.retrieval_labels, self.query.bits, ks, r_values, by_index, resolve_device(device))

        parts = []
        starts = range(0, len(self.query), QUERY_CHUNK)
        for start in tqdm(starts, desc="ranking", unit="chunk", disable=not progress or len(starts) < 2):
            rows = slice(start, start + QUERY_CHUNK)
            parts.append(scan_rankings(self.query.words[rows], self.retrieval.words, self.query_labels[rows],
                                       self.retrieval_labels, self.query.bits, ks, r_values, by_index))
        fields = RankStatistics.__dataclass_fields__
        return RankStatistics(**{name: None if getattr(parts[0], name) is None
                                 else np.concatenate([getattr(p, name) for p in parts]) for name in fields})


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r}: choose one of {', '.join(map(repr, allowed))}")


def _depth(k: int | None, n: int) -> int:
    if k is not None and int(k) < 1:
        raise ValueError(f"k must be a positive number of ranks or None (the whole list), got {k}")
    return n if k is None else min(int(k), n)


def _mean_over_queries(per_query: np.ndarray, stats: RankStatistics, no_relevant: str) -> float:
    """Mean of a per-query score under the chosen rule for queries with no relevant item."""
    _check_choice("no_relevant", no_relevant, NO_RELEVANT)
    if no_relevant == "skip":
        per_query = per_query[stats.relevant_at.sum(axis=1) > 0]
    return float(per_query.mean()) if len(per_query) else float("nan")


def average_precision_per_query(stats: RankStatistics, column: int, k: int, ties: str) -> np.ndarray:
    """AP of every query at depth k (column ``column`` of the ks the statistics were made with)."""
    _check_choice("ties", ties, TIES)
    if ties == "average":
        return expected_average_precision(stats.items_at, stats.relevant_at, np.array([k], dtype=np.int64))[:, 0]
    found = stats.relevant_in_top[:, column]
    return np.where(found > 0, stats.precision_sum[:, column] / np.maximum(found, 1), 0.0)


def dcmht_average_precision_per_query(stats: RankStatistics, column: int, k: int) -> np.ndarray:
    """AP of every query averaged at the first min(k, R) relevant items (DCMHT-refactor protocol)."""
    counted = np.minimum(stats.relevant_at.sum(axis=1), k)
    return np.where(counted > 0, stats.first_relevant_sum[:, column] / np.maximum(counted, 1), 0.0)


def mean_average_precision(query_codes, retrieval_codes, query_labels, retrieval_labels, k: int | None = None,
                           ties: str = "index", no_relevant: str = "zero", device: str = "cpu") -> float:
    """Mean average precision over the top ``k`` ranks (``k=None``: the whole retrieval set).

    ``AP@k = (1 / R_k) * sum_{i <= k, rel_i} P@i``, with ``R_k`` the relevant items in the top k and
    ``P@i`` the precision of the top i; AP = 0 when R_k = 0. With ``k=None`` this is mAP@all as in
    DCMH's ``calc_map`` (and DCMHT's, MESDCH's, UCCH's with ``no_relevant="skip"``); with ``k=50`` it
    is mAP@50 as in DJSRH's ``calculate_top_map`` (and JDSH, CFRH, UCMFH, CCAH), which divides by
    R_k, not by min(k, R). Equal to those codes' values whenever their sort puts ties in index order.
    """
    _check_choice("ties", ties, TIES)
    problem = RetrievalProblem.build(query_codes, retrieval_codes, query_labels, retrieval_labels)
    depth = _depth(k, len(problem.retrieval))
    stats = problem.statistics(ks=[depth], by_index=ties == "index", device=device)
    return _mean_over_queries(average_precision_per_query(stats, 0, depth, ties), stats, no_relevant)


def dcmht_mean_average_precision(query_codes, retrieval_codes, query_labels, retrieval_labels, k: int,
                                 no_relevant: str = "zero", device: str = "cpu") -> float:
    """The "mAP@k" of the DCMHT refactor: precision averaged at the first min(k, R) relevant items.

    ``AP = (1 / T) * sum_{t <= T} t / rank_t`` with R the relevant items of the query, T = min(k, R)
    and rank_t the rank of the t-th relevant item, wherever it is: not a truncation at rank k, so it
    is never below mAP@k-truncated's numerator and differs from both other definitions. Ties by
    retrieval index (the refactor's own tie order is that of an unstable sort).
    """
    problem = RetrievalProblem.build(query_codes, retrieval_codes, query_labels, retrieval_labels)
    depth = _depth(k, len(problem.retrieval))
    stats = problem.statistics(ks=[depth], device=device)
    return _mean_over_queries(dcmht_average_precision_per_query(stats, 0, depth), stats, no_relevant)


def precision_at_top_r_from(stats: RankStatistics, r_values: np.ndarray, ties: str) -> np.ndarray:
    """Mean precision of the top R for each R (already clipped to n), from rank statistics."""
    _check_choice("ties", ties, TIES)
    hits = stats.hits_at if ties == "index" else expected_hits_at(stats.items_at, stats.relevant_at, r_values)
    return (hits / r_values).mean(axis=0)


def _clip_ranks(r_values, n: int) -> np.ndarray:
    r_values = np.asarray(r_values, dtype=np.int64)
    if r_values.ndim != 1 or len(r_values) == 0 or (r_values < 1).any() or (np.diff(r_values) <= 0).any():
        raise ValueError(f"r_values must be increasing positive ranks, got {r_values.tolist()}")
    return np.minimum(r_values, n)


def precision_at_top_r(query_codes, retrieval_codes, query_labels, retrieval_labels, r_values,
                       ties: str = "index", device: str = "cpu") -> np.ndarray:
    """Mean over queries of the precision of the top R items, for each R in ``r_values``.

    ``P@R = (relevant items among the top R) / R``; R above the retrieval size is clipped to it.
    The precision@top-R curve of DCMH, DJSRH and DCMHT (R up to 5,000).
    """
    problem = RetrievalProblem.build(query_codes, retrieval_codes, query_labels, retrieval_labels)
    r_values = _clip_ranks(r_values, len(problem.retrieval))
    stats = problem.statistics(r_values=r_values, by_index=ties == "index", device=device)
    return precision_at_top_r_from(stats, r_values, ties)


def precision_recall_from(stats: RankStatistics) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall within Hamming radius r = 0..K, from the per-distance counts."""
    retrieved = np.cumsum(stats.items_at, axis=1)
    hits = np.cumsum(stats.relevant_at, axis=1)
    n_relevant = hits[:, -1]
    has_any = retrieved > 0
    precision = np.where(has_any, hits / np.maximum(retrieved, 1), 0.0).sum(axis=0) / np.maximum(has_any.sum(axis=0), 1)
    with_relevant = n_relevant > 0
    recall = (hits[with_relevant] / n_relevant[with_relevant, None]).sum(axis=0) / max(int(with_relevant.sum()), 1)
    return precision, recall


def precision_recall_by_radius(query_codes, retrieval_codes, query_labels, retrieval_labels,
                               device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall of "retrieve everything within Hamming radius r", for r = 0..K.

    At radius r, per query: precision = hits / retrieved and recall = hits / R. Precision is averaged
    over the queries that retrieve at least one item within r, recall over the queries with at least
    one relevant item (DCMH's ``pr_curve`` convention). Radius sets do not depend on tie order.
    """
    problem = RetrievalProblem.build(query_codes, retrieval_codes, query_labels, retrieval_labels)
    return precision_recall_from(problem.statistics(by_index=False, device=device))
