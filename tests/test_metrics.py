"""Every metric against a plain per-query reference written here, and against hand-worked examples.

The references are deliberately naive: Python's sort (stable) for ties by index, enumeration of
every order of the tied items for the "average" tie rule, and loops over ranks.
"""

import itertools
import math

import numpy as np
import pytest

from cmhash import metrics
from cmhash.metrics import retrieval

# ----------------------------------------------------------------------------- references

def _distances(code, retrieval):
    return [(len(code) - int(np.dot(code, r))) // 2 for r in retrieval]


def _is_relevant(labels, item_labels):
    return bool(np.dot(labels, item_labels) > 0)


def _orders(dist, ties):
    """Rankings of the retrieval set: the stable one, or every order of the tied items."""
    if ties == "index":
        yield sorted(range(len(dist)), key=lambda j: dist[j])
        return
    buckets = [[j for j in range(len(dist)) if dist[j] == d] for d in sorted(set(dist))]
    for parts in itertools.product(*(itertools.permutations(b) for b in buckets)):
        yield [j for part in parts for j in part]


def _ap_of_ranking(relevant, k=None, dcmht_k=None):
    hits, precisions = 0, []
    for rank, rel in enumerate(relevant, start=1):
        if rel:
            hits += 1
            precisions.append(hits / rank)
    if dcmht_k is not None:
        total = min(dcmht_k, hits)
        return sum(precisions[:total]) / total if total else 0.0
    if k is not None:
        kept = [p for p, rank in zip(precisions, [i + 1 for i, r in enumerate(relevant) if r]) if rank <= k]
        return sum(kept) / len(kept) if kept else 0.0
    return sum(precisions) / hits if hits else 0.0


def _reference_map(query, retrieval_codes, q_labels, r_labels, k=None, ties="index", no_relevant="zero", dcmht_k=None):
    aps = []
    for code, labels in zip(query, q_labels):
        dist = _distances(code, retrieval_codes)
        relevant = [_is_relevant(labels, item) for item in r_labels]
        if no_relevant == "skip" and not any(relevant):
            continue
        values = [_ap_of_ranking([relevant[j] for j in order], k, dcmht_k) for order in _orders(dist, ties)]
        aps.append(sum(values) / len(values))
    return float(np.mean(aps))


def _reference_precision_at(query, retrieval_codes, q_labels, r_labels, r_values, ties="index"):
    out = []
    for R in r_values:
        per_query = []
        for code, labels in zip(query, q_labels):
            dist = _distances(code, retrieval_codes)
            values = [sum(_is_relevant(labels, r_labels[j]) for j in order[:R]) / min(R, len(order))
                      for order in _orders(dist, ties)]
            per_query.append(sum(values) / len(values))
        out.append(np.mean(per_query))
    return out


def _random_problem(seed, n_query=12, n_retrieval=60, bits=8, n_labels=5):
    rng = np.random.default_rng(seed)
    codes = lambda n: np.where(rng.random((n, bits)) < 0.5, -1, 1).astype(np.int8)  # noqa: E731
    labels = lambda n: (rng.random((n, n_labels)) < 0.25).astype(np.uint8)  # noqa: E731
    return codes(n_query), codes(n_retrieval), labels(n_query), labels(n_retrieval)


def _tiny_problem(seed):
    """Few items and few distances, so every order of the tied items can be enumerated."""
    return _random_problem(seed, n_query=6, n_retrieval=7, bits=3, n_labels=3)


# ----------------------------------------------------------------------------- exactness

@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("k", [None, 1, 10, 50])
@pytest.mark.parametrize("no_relevant", ["zero", "skip"])
def test_map_index_ties_matches_reference(seed, k, no_relevant):
    problem = _random_problem(seed)
    expected = _reference_map(*problem, k=k, no_relevant=no_relevant)
    assert metrics.mean_average_precision(*problem, k=k, no_relevant=no_relevant) == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("k", [1, 3, 10, 50])
def test_dcmht_map_matches_reference(seed, k):
    problem = _random_problem(seed)
    assert metrics.dcmht_mean_average_precision(*problem, k=k) == pytest.approx(_reference_map(*problem, dcmht_k=k), abs=1e-9)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("k", [None, 1, 2, 3, 5])
def test_map_average_ties_matches_enumeration_of_all_orders(seed, k):
    problem = _tiny_problem(seed)
    expected = _reference_map(*problem, k=k, ties="average")
    assert metrics.mean_average_precision(*problem, k=k, ties="average") == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("ties", ["index", "average"])
def test_precision_at_top_r_matches_reference(seed, ties):
    problem = _tiny_problem(seed) if ties == "average" else _random_problem(seed)
    r_values = [1, 2, 4, 7, 60]
    expected = _reference_precision_at(*problem, r_values, ties)
    assert metrics.precision_at_top_r(*problem, r_values, ties=ties) == pytest.approx(expected, abs=1e-9)


def test_precision_recall_by_radius_matches_reference():
    q, r, ql, rl = _random_problem(5)
    precision, recall = metrics.precision_recall_by_radius(q, r, ql, rl)
    for radius in range(q.shape[1] + 1):
        p_values, r_values = [], []
        for code, labels in zip(q, ql):
            within = [j for j, d in enumerate(_distances(code, r)) if d <= radius]
            relevant = [_is_relevant(labels, item) for item in rl]
            hits = sum(relevant[j] for j in within)
            if within:
                p_values.append(hits / len(within))
            if any(relevant):
                r_values.append(hits / sum(relevant))
        assert precision[radius] == pytest.approx(np.mean(p_values) if p_values else 0.0, abs=1e-12)
        assert recall[radius] == pytest.approx(np.mean(r_values), abs=1e-12)


def test_larger_problem_with_long_codes_matches_reference():
    # 100 bits span two 64-bit words; 3000 items exceed one query chunk's worth of structure
    problem = _random_problem(9, n_query=5, n_retrieval=3000, bits=100, n_labels=24)
    for k in (None, 50, 1000):
        assert metrics.mean_average_precision(*problem, k=k) == pytest.approx(_reference_map(*problem, k=k), abs=1e-9)


def test_buckets_with_thousands_of_items_and_relevant_items():
    # 4-bit codes and two labels: each distance bucket holds hundreds to thousands of items, most of
    # them relevant, so the per-bucket counters in the kernel's packed words go well past 8 bits
    problem = _random_problem(11, n_query=5, n_retrieval=6000, bits=4, n_labels=2)
    assert metrics.mean_average_precision(*problem) == pytest.approx(_reference_map(*problem), abs=1e-9)


def test_average_ties_at_scale_agree_with_sampled_orders():
    # no enumeration possible here: the exact expectation must sit inside the spread of random orders
    q, r, ql, rl = _random_problem(3, n_query=4, n_retrieval=400, bits=6)
    exact = metrics.mean_average_precision(q, r, ql, rl, k=50, ties="average")
    rng = np.random.default_rng(0)
    samples = []
    for _ in range(300):
        perm = rng.permutation(len(r))
        samples.append(metrics.mean_average_precision(q, r[perm], ql, rl[perm], k=50))
    assert abs(exact - np.mean(samples)) < 4 * np.std(samples) / math.sqrt(len(samples))


# ----------------------------------------------------------------------------- hand-worked examples

def _hand_problem():
    # distances from the query: item0 -> 1, item1 -> 0, item2 -> 1, item3 -> 2
    query = np.array([[1, 1]])
    retrieval_codes = np.array([[1, -1], [1, 1], [-1, 1], [-1, -1]])
    q_labels = np.array([[1, 0]])
    r_labels = np.array([[1, 0], [0, 1], [1, 1], [0, 1]])
    return query, retrieval_codes, q_labels, r_labels


def test_hand_worked_index_ties():
    problem = _hand_problem()
    # ranking (ties by index): item1 (irrelevant), item0 (rel), item2 (rel), item3 (irrelevant)
    assert metrics.mean_average_precision(*problem) == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert metrics.mean_average_precision(*problem, k=2) == pytest.approx(1 / 2)  # divides by R_2 = 1
    assert metrics.dcmht_mean_average_precision(*problem, k=1) == pytest.approx(1 / 2)  # first min(1, 2) relevant
    assert metrics.precision_at_top_r(*problem, [1, 2, 3, 4]).tolist() == pytest.approx([0, 1 / 2, 2 / 3, 1 / 2])
    precision, recall = metrics.precision_recall_by_radius(*problem)
    assert precision.tolist() == pytest.approx([0.0, 2 / 3, 1 / 2])
    assert recall.tolist() == pytest.approx([0.0, 1.0, 1.0])


def test_hand_worked_average_ties():
    # one relevant and one irrelevant item tied at distance 0: relevant first (AP 1) or second (AP 1/2)
    query = np.array([[1, 1]])
    retrieval_codes = np.array([[1, 1], [1, 1]])
    q_labels, r_labels = np.array([[1, 0]]), np.array([[0, 1], [1, 0]])
    assert metrics.mean_average_precision(query, retrieval_codes, q_labels, r_labels) == pytest.approx(1 / 2)
    assert metrics.mean_average_precision(query, retrieval_codes, q_labels, r_labels, ties="average") == pytest.approx(3 / 4)
    # at k = 1 the relevant item is in the top 1 half the time (AP 1), otherwise AP@1 = 0
    assert metrics.mean_average_precision(query, retrieval_codes, q_labels, r_labels, k=1, ties="average") == pytest.approx(1 / 2)
    assert metrics.precision_at_top_r(query, retrieval_codes, q_labels, r_labels, [1], ties="average").tolist() == [0.5]


def test_query_without_relevant_items_zero_or_skipped():
    query = np.array([[1, 1], [1, -1]])
    retrieval_codes = np.array([[1, 1], [-1, -1]])
    q_labels = np.array([[1, 0], [0, 1]])
    r_labels = np.array([[1, 0], [1, 0]])
    assert metrics.mean_average_precision(query, retrieval_codes, q_labels, r_labels) == pytest.approx(0.5)
    assert metrics.mean_average_precision(query, retrieval_codes, q_labels, r_labels, no_relevant="skip") == pytest.approx(1.0)


# ----------------------------------------------------------------------------- inputs

def test_packed_bits_and_class_ids_give_the_same_numbers():
    q, r, ql, rl = _random_problem(2, bits=12)
    expected = metrics.mean_average_precision(q, r, ql, rl, k=10)
    packed = metrics.mean_average_precision(np.packbits(q > 0, axis=1), np.packbits(r > 0, axis=1), ql, rl, k=10)
    assert packed == expected
    classes_q, classes_r = np.arange(len(q)) % 3, np.arange(len(r)) % 4
    one_hot = lambda c: np.eye(4, dtype=int)[c]  # noqa: E731
    assert metrics.mean_average_precision(q, r, classes_q, classes_r) == metrics.mean_average_precision(q, r, one_hot(classes_q), one_hot(classes_r))


def test_results_do_not_depend_on_chunks_or_threads(monkeypatch):
    problem = _random_problem(4, n_query=40)
    expected = metrics.evaluate_retrieval(*problem).scores
    monkeypatch.setattr(retrieval, "QUERY_CHUNK", 7)
    assert metrics.evaluate_retrieval(*problem).scores == expected
    import numba
    threads = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        assert metrics.evaluate_retrieval(*problem).scores == expected
    finally:
        numba.set_num_threads(threads)


def test_evaluate_retrieval_reports_every_protocol():
    problem = _random_problem(6)
    report = metrics.evaluate_retrieval(*problem, map_ks=(5, 50), top_r=(1, 10))
    scores = report.scores
    assert scores["map_all"] == round(metrics.mean_average_precision(*problem), 6)
    assert scores["map_5"] == round(metrics.mean_average_precision(*problem, k=5), 6)
    assert scores["ties_average"]["map_50"] == round(metrics.mean_average_precision(*problem, k=50, ties="average"), 6)
    assert scores["dcmht_refactor"]["map_5"] == round(metrics.dcmht_mean_average_precision(*problem, k=5), 6)
    assert scores["skip_no_relevant"]["map_all"] == round(metrics.mean_average_precision(*problem, no_relevant="skip"), 6)
    assert report.precision_at_r.tolist() == pytest.approx(metrics.precision_at_top_r(*problem, [1, 10]).tolist())
    assert len(report.pr_precision) == problem[0].shape[1] + 1


@pytest.mark.parametrize("call, message", [
    (lambda q, r, ql, rl: metrics.mean_average_precision(q[:, :4], r, ql, rl), "bits"),
    (lambda q, r, ql, rl: metrics.mean_average_precision(q, r, ql[:3], rl), "number of items"),
    (lambda q, r, ql, rl: metrics.mean_average_precision(q * 0, r, ql, rl), "-1/\\+1"),
    (lambda q, r, ql, rl: metrics.mean_average_precision(q, r, ql, rl, ties="random"), "ties"),
    (lambda q, r, ql, rl: metrics.mean_average_precision(q, r, ql, rl, no_relevant="drop"), "no_relevant"),
    (lambda q, r, ql, rl: metrics.mean_average_precision(q, r, ql, rl, k=0), "positive"),
    (lambda q, r, ql, rl: metrics.precision_at_top_r(q, r, ql, rl, [10, 5]), "increasing"),
])
def test_bad_input_is_a_clear_error(call, message):
    with pytest.raises(ValueError, match=message):
        call(*_random_problem(0))


# ----------------------------------------------------------------------------- the torch (GPU) path

def _torch_statistics(problem, device, ks, r_values, by_index=True):
    from cmhash.metrics.torch_kernel import scan_rankings_torch

    return scan_rankings_torch(problem.query.words, problem.retrieval.words, problem.query_labels,
                               problem.retrieval_labels, problem.query.bits, ks, r_values, by_index, device)


@pytest.mark.parametrize("bits", [8, 100, 255])
def test_torch_path_gives_the_kernel_statistics(bits, monkeypatch):
    from cmhash.metrics import torch_kernel

    problem = retrieval.RetrievalProblem.build(*_random_problem(7, n_query=30, n_retrieval=200, bits=bits))
    ks, r_values = [1, 10, 200], [1, 5, 50]
    expected = problem.statistics(ks=ks, r_values=r_values)
    monkeypatch.setattr(torch_kernel, "ELEMENTS_PER_CHUNK", 1000)  # several query chunks
    got = _torch_statistics(problem, "cpu", ks, r_values)
    for name in ("items_at", "relevant_at", "relevant_in_top", "hits_at"):
        assert np.array_equal(getattr(got, name), getattr(expected, name)), name
    for name in ("precision_sum", "first_relevant_sum"):
        assert np.allclose(getattr(got, name), getattr(expected, name), rtol=0, atol=1e-12), name
    counts_only = _torch_statistics(problem, "cpu", ks, r_values, by_index=False)
    assert np.array_equal(counts_only.items_at, expected.items_at)
    assert np.array_equal(counts_only.relevant_at, expected.relevant_at)
    assert counts_only.precision_sum is None


def test_torch_path_rejects_codes_longer_than_its_distances_hold():
    problem = retrieval.RetrievalProblem.build(*_random_problem(7, n_query=3, n_retrieval=20, bits=256))
    with pytest.raises(ValueError, match="codes of up to 255 bits"):
        _torch_statistics(problem, "cpu", [20], [])


@pytest.mark.gpu
def test_cuda_gives_the_cpu_numbers():
    problem = _random_problem(8, n_query=300, n_retrieval=5000, bits=64, n_labels=21)
    on_cpu = metrics.evaluate_retrieval(*problem, device="cpu")
    on_gpu = metrics.evaluate_retrieval(*problem, device="cuda")
    flat = lambda scores: {f"{key}.{sub}": v for key, value in scores.items()  # noqa: E731
                           for sub, v in (value.items() if isinstance(value, dict) else [("", value)])}
    assert flat(on_gpu.scores) == pytest.approx(flat(on_cpu.scores), abs=2e-6)  # scores are rounded to 6 places
    assert np.allclose(on_gpu.precision_at_r, on_cpu.precision_at_r, atol=1e-12)


def test_kernel_limits_are_clear_errors():
    from cmhash.metrics.kernel import MAX_RETRIEVAL, scan_rankings

    one = np.zeros((1, 1), np.uint64)
    too_many = np.broadcast_to(one, (MAX_RETRIEVAL + 1, 1))  # a view: no memory for 16.7M items
    with pytest.raises(ValueError, match="retrieval sets of up to 16,777,215 items"):
        scan_rankings(one, too_many, one, too_many, 64, [1], [])
    with pytest.raises(ValueError, match="up to 255 bits"):
        scan_rankings(np.zeros((1, 4), np.uint64), np.zeros((3, 4), np.uint64), one, np.zeros((3, 1), np.uint64), 256, [1], [])
