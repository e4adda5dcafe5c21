"""Every metric of the evaluate stage from one scan: the numbers behind ``metrics/M-K.json``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from cmhash.metrics.retrieval import (
    RetrievalProblem,
    _clip_ranks,
    _mean_over_queries,
    average_precision_per_query,
    dcmht_average_precision_per_query,
    precision_at_top_r_from,
    precision_recall_from,
)

# The defaults of the evaluate stage too (params.yaml's evaluate section takes them from here).
# mAP@5000 is what later supervised CLIP hashing papers report, beside mAP@all.
DEFAULT_MAP_KS = (50, 1000, 5000)
DEFAULT_TOP_R = (1, 10, 50, 100, 200, 500, 1000, 2000, 5000)


@dataclass(frozen=True)
class RetrievalReport:
    """Scores (a JSON-ready nested dict) and curves of one retrieval direction."""

    scores: dict[str, Any]
    top_r: np.ndarray
    precision_at_r: np.ndarray
    precision_at_r_average_ties: np.ndarray
    pr_precision: np.ndarray
    pr_recall: np.ndarray


def _map_key(k: int | None) -> str:
    return "map_all" if k is None else f"map_{k}"


def evaluate_retrieval(query_codes, retrieval_codes, query_labels, retrieval_labels,
                       map_ks=DEFAULT_MAP_KS, top_r=DEFAULT_TOP_R, progress: bool = False,
                       device: str = "cpu") -> RetrievalReport:
    """mAP@all and mAP@k for each k in ``map_ks`` under both tie rules, the DCMHT-refactor mAP@k,
    mAP@all skipping queries without relevant items, precision@R for ``top_r`` and the
    precision-recall curve by Hamming radius. The headline keys ``map_all``/``map_<k>`` use the
    defaults (ties by index, queries without relevant items scored 0)."""
    problem = RetrievalProblem.build(query_codes, retrieval_codes, query_labels, retrieval_labels)
    n = len(problem.retrieval)
    depths = sorted({min(int(k), n) for k in map_ks} | {n})
    r_values = _clip_ranks(sorted(set(int(r) for r in top_r)), n)
    stats = problem.statistics(ks=depths, r_values=r_values, progress=progress, device=device)
    column = {depth: i for i, depth in enumerate(depths)}
    rounded = lambda value: round(value, 6)  # noqa: E731

    def mean_ap(k: int | None, ties: str, no_relevant: str = "zero") -> float:
        depth = n if k is None else min(int(k), n)
        return rounded(_mean_over_queries(average_precision_per_query(stats, column[depth], depth, ties), stats, no_relevant))

    ks = [None, *map_ks]
    scores: dict[str, Any] = {_map_key(k): mean_ap(k, "index") for k in ks}
    scores["ties_average"] = {_map_key(k): mean_ap(k, "average") for k in ks}
    scores["dcmht_refactor"] = {
        _map_key(k): rounded(_mean_over_queries(dcmht_average_precision_per_query(stats, column[min(k, n)], min(k, n)), stats, "zero"))
        for k in map_ks
    }
    scores["skip_no_relevant"] = {"map_all": mean_ap(None, "index", "skip")}
    scores["queries_without_relevant"] = int((stats.relevant_at.sum(axis=1) == 0).sum())
    pr_precision, pr_recall = precision_recall_from(stats)
    return RetrievalReport(scores, r_values, precision_at_top_r_from(stats, r_values, "index"),
                           precision_at_top_r_from(stats, r_values, "average"), pr_precision, pr_recall)
