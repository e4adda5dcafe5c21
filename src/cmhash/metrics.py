"""Retrieval metrics for binary codes: mAP@all, truncated mAP@k, precision@top-R, precision-recall.

Conventions (METHODS.md section 3):

- Codes are {-1, +1} arrays of shape (n, K). Hamming distance ``d = (K - b . b') / 2``.
- An item is relevant to a query when they share at least one label (``l_q . l_r > 0``); for
  single-label (one-hot) data this is label equality.
- Equal distances are ordered by retrieval index, lower first (a stable sort), so every number is
  deterministic and does not depend on the sorting algorithm, the chunk size or the device.
- A query with no relevant item in its ranked list scores AP = 0 and still counts in the mean, as
  in DCMH's and DJSRH's public code.

Queries are processed in chunks so memory stays bounded for large retrieval sets.
"""

from __future__ import annotations

import numpy as np

DEFAULT_CHUNK = 256


def hamming_distances(query_codes: np.ndarray, retrieval_codes: np.ndarray) -> np.ndarray:
    """(q, n) int32 Hamming distances between {-1, +1} codes."""
    bits = query_codes.shape[1]
    inner = query_codes.astype(np.float32) @ retrieval_codes.astype(np.float32).T  # exact for K < 2**24
    return ((bits - inner) / 2).round().astype(np.int32)


def relevance(query_labels: np.ndarray, retrieval_labels: np.ndarray) -> np.ndarray:
    """(q, n) bool: True where the query and the item share at least one label."""
    return (query_labels.astype(np.float32) @ retrieval_labels.astype(np.float32).T) > 0


def _ranked_relevance(query_codes, retrieval_codes, query_labels, retrieval_labels, depth):
    """Relevance of the top ``depth`` ranked items of each query (stable: ties by retrieval index)."""
    distances = hamming_distances(query_codes, retrieval_codes)
    order = np.argsort(distances, axis=1, kind="stable")[:, :depth]
    return np.take_along_axis(relevance(query_labels, retrieval_labels), order, axis=1)


def _check(query_codes, retrieval_codes, query_labels, retrieval_labels) -> None:
    if query_codes.shape[1] != retrieval_codes.shape[1]:
        raise ValueError(f"query codes have {query_codes.shape[1]} bits, retrieval codes {retrieval_codes.shape[1]}")
    if len(query_codes) != len(query_labels) or len(retrieval_codes) != len(retrieval_labels):
        raise ValueError("codes and labels differ in number of items")


def mean_average_precision(
    query_codes: np.ndarray,
    retrieval_codes: np.ndarray,
    query_labels: np.ndarray,
    retrieval_labels: np.ndarray,
    k: int | None = None,
    chunk: int = DEFAULT_CHUNK,
) -> float:
    """Mean average precision over the top ``k`` items (``k=None``: the whole retrieval set).

    ``AP = (1 / R_k) * sum_{i <= k, rel_i} P@i`` with ``R_k`` the relevant items in the top k and
    ``P@i`` the precision at rank i; AP = 0 when ``R_k = 0``. With ``k=None`` this is mAP@all as in
    DCMH's ``calc_map``; with ``k=50`` it is mAP@50 as in DJSRH's ``calculate_top_map``.
    """
    _check(query_codes, retrieval_codes, query_labels, retrieval_labels)
    depth = retrieval_codes.shape[0] if k is None else min(int(k), retrieval_codes.shape[0])
    ranks = np.arange(1, depth + 1)
    total = 0.0
    for start in range(0, len(query_codes), chunk):
        stop = start + chunk
        rel = _ranked_relevance(query_codes[start:stop], retrieval_codes, query_labels[start:stop], retrieval_labels, depth)
        hits = np.cumsum(rel, axis=1)
        n_relevant = rel.sum(axis=1)
        precision_sum = (hits / ranks * rel).sum(axis=1)
        total += np.where(n_relevant > 0, precision_sum / np.maximum(n_relevant, 1), 0.0).sum()
    return float(total / len(query_codes))


def precision_at_top_r(
    query_codes, retrieval_codes, query_labels, retrieval_labels, r_values, chunk: int = DEFAULT_CHUNK
) -> np.ndarray:
    """Mean precision of the top R items for each R in ``r_values`` (values above n are clipped)."""
    _check(query_codes, retrieval_codes, query_labels, retrieval_labels)
    r_values = np.minimum(np.asarray(r_values, dtype=int), retrieval_codes.shape[0])
    depth = int(r_values.max())
    sums = np.zeros(len(r_values))
    for start in range(0, len(query_codes), chunk):
        stop = start + chunk
        rel = _ranked_relevance(query_codes[start:stop], retrieval_codes, query_labels[start:stop], retrieval_labels, depth)
        hits = np.cumsum(rel, axis=1)
        sums += (hits[:, r_values - 1] / r_values).sum(axis=0)
    return sums / len(query_codes)


def precision_recall_by_radius(
    query_codes, retrieval_codes, query_labels, retrieval_labels, chunk: int = DEFAULT_CHUNK
) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall of "retrieve everything within Hamming radius r", for r = 0..K.

    Precision at r is averaged over the queries that retrieve at least one item within r; recall
    over the queries that have at least one relevant item (DCMH's ``pr_curve`` convention).
    """
    _check(query_codes, retrieval_codes, query_labels, retrieval_labels)
    bits = query_codes.shape[1]
    precision_sum, precision_count = np.zeros(bits + 1), np.zeros(bits + 1)
    recall_sum, recall_count = np.zeros(bits + 1), 0
    for start in range(0, len(query_codes), chunk):
        stop = start + chunk
        distances = hamming_distances(query_codes[start:stop], retrieval_codes)
        rel = relevance(query_labels[start:stop], retrieval_labels)
        offsets = (np.arange(len(distances)) * (bits + 1))[:, None]
        size = len(distances) * (bits + 1)
        retrieved = np.bincount((distances + offsets).ravel(), minlength=size).reshape(-1, bits + 1).cumsum(axis=1)
        hits = np.bincount((distances + offsets)[rel], minlength=size).reshape(-1, bits + 1).cumsum(axis=1)
        has_any = retrieved > 0
        precision_sum += np.where(has_any, hits / np.maximum(retrieved, 1), 0.0).sum(axis=0)
        precision_count += has_any.sum(axis=0)
        n_relevant = rel.sum(axis=1)
        with_relevant = n_relevant > 0
        recall_sum += (hits[with_relevant] / n_relevant[with_relevant, None]).sum(axis=0)
        recall_count += int(with_relevant.sum())
    precision = precision_sum / np.maximum(precision_count, 1)
    recall = recall_sum / max(recall_count, 1)
    return precision, recall
