"""Retrieval metrics for binary hash codes (see ``retrieval`` for the conventions).

Public API: ``mean_average_precision`` (mAP@all and truncated mAP@k, ties by index or averaged,
queries without relevant items counted as 0 or skipped), ``dcmht_mean_average_precision``,
``precision_at_top_r``, ``precision_recall_by_radius``, ``evaluate_retrieval`` (everything at once
for the evaluate stage) and ``pack_codes`` for packed-bit input.
"""

from cmhash.bitcodes import PackedCodes, pack_codes
from cmhash.metrics.report import evaluate_retrieval
from cmhash.metrics.retrieval import (
    NO_RELEVANT,
    TIES,
    dcmht_mean_average_precision,
    mean_average_precision,
    precision_at_top_r,
    precision_recall_by_radius,
)

__all__ = [
    "NO_RELEVANT", "TIES", "PackedCodes", "dcmht_mean_average_precision", "evaluate_retrieval",
    "mean_average_precision", "pack_codes", "precision_at_top_r", "precision_recall_by_radius",
]
