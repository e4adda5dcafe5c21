"""Metrics against a plain per-query reference (stable sort, loop over ranks) and hand-worked examples."""

import numpy as np
import pytest

from cmhash import metrics


def _reference_ap(query, retrieval, q_labels, r_labels, k=None):
    """DJSRH / DCMH style AP, one query at a time, written as plainly as possible."""
    aps = []
    for code, labels in zip(query, q_labels):
        dist = [(len(code) - int(code @ r)) // 2 for r in retrieval]
        order = sorted(range(len(retrieval)), key=lambda j: dist[j])  # Python's sort is stable
        order = order if k is None else order[:k]
        hits, precisions = 0, []
        for rank, j in enumerate(order, start=1):
            if labels @ r_labels[j] > 0:
                hits += 1
                precisions.append(hits / rank)
        aps.append(sum(precisions) / hits if hits else 0.0)
    return float(np.mean(aps))


def _random_problem(seed, n_query=15, n_retrieval=60, bits=8, n_labels=5):
    rng = np.random.default_rng(seed)
    codes = lambda n: np.where(rng.random((n, bits)) < 0.5, -1, 1).astype(np.int8)  # noqa: E731
    labels = lambda n: (rng.random((n, n_labels)) < 0.25).astype(np.uint8)  # noqa: E731
    return codes(n_query), codes(n_retrieval), labels(n_query), labels(n_retrieval)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("k", [None, 1, 10, 50])
def test_map_matches_reference_with_heavy_ties(seed, k):
    problem = _random_problem(seed)
    assert metrics.mean_average_precision(*problem, k=k, chunk=4) == pytest.approx(_reference_ap(*problem, k=k), abs=1e-9)


def test_hand_worked_example():
    # retrieval distances from the query: item0 -> 1, item1 -> 0, item2 -> 1, item3 -> 2
    query = np.array([[1, 1]])
    retrieval = np.array([[1, -1], [1, 1], [-1, 1], [-1, -1]])
    q_labels = np.array([[1, 0]])
    r_labels = np.array([[1, 0], [0, 1], [1, 1], [0, 1]])
    # ranking (ties by index): item1 (irrelevant), item0 (rel), item2 (rel), item3 (irrelevant)
    # AP@all = (1/2 + 2/3) / 2 ; AP@2 = (1/2) / 1
    assert metrics.mean_average_precision(query, retrieval, q_labels, r_labels) == pytest.approx((0.5 + 2 / 3) / 2)
    assert metrics.mean_average_precision(query, retrieval, q_labels, r_labels, k=2) == pytest.approx(0.5)
    assert metrics.precision_at_top_r(query, retrieval, q_labels, r_labels, [1, 2, 3, 4]).tolist() == pytest.approx([0, 0.5, 2 / 3, 0.5])
    precision, recall = metrics.precision_recall_by_radius(query, retrieval, q_labels, r_labels)
    assert precision.tolist() == pytest.approx([0.0, 2 / 3, 0.5])
    assert recall.tolist() == pytest.approx([0.0, 1.0, 1.0])


def test_query_without_relevant_items_counts_as_zero():
    query = np.array([[1, 1], [1, -1]])
    retrieval = np.array([[1, 1], [-1, -1]])
    q_labels = np.array([[1, 0], [0, 1]])
    r_labels = np.array([[1, 0], [1, 0]])
    assert metrics.mean_average_precision(query, retrieval, q_labels, r_labels) == pytest.approx(0.5)


def test_precision_at_top_r_matches_reference():
    q, r, ql, rl = _random_problem(11)
    dist = metrics.hamming_distances(q, r)
    rel = metrics.relevance(ql, rl)
    expected = [np.mean([rel[i, np.argsort(dist[i], kind="stable")[:R]].mean() for i in range(len(q))]) for R in (1, 7, 60)]
    assert metrics.precision_at_top_r(q, r, ql, rl, [1, 7, 60], chunk=3) == pytest.approx(expected, abs=1e-12)


def test_shape_mismatch_is_an_error():
    q, r, ql, rl = _random_problem(0)
    with pytest.raises(ValueError):
        metrics.mean_average_precision(q[:, :4], r, ql, rl)
