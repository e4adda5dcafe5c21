"""The ``evaluate`` stage: I->T and T->I retrieval metrics and curves of one trained method and length."""

from __future__ import annotations

from typing import Any

from cmhash.atomic import write_json, write_text
from cmhash.codes import check_codes_made_from, collapse_warnings, read_codes, retrieval_directions
from cmhash.datasets.prepared import PreparedData
from cmhash.methods import check_method_and_bits
from cmhash.metrics import evaluate_retrieval
from cmhash.pipeline.layout import Layout

SECTIONS = ("dataset", "evaluate")


def run(params: dict[str, Any], layout: Layout, method: str, bits: int, progress: bool = True) -> dict[str, Any]:
    check_method_and_bits(method, bits)
    settings = params["evaluate"]
    map_ks, top_r = settings["map_ks"], settings["top_r"]
    codes_path = layout.model_dir(method, bits) / "codes.h5"
    codes = read_codes(codes_path)
    check_codes_made_from(codes_path, layout.prepared(params["dataset"]["name"]))
    with PreparedData(layout.prepared(params["dataset"]["name"])) as data:
        labels = data.labels
    query_labels, retrieval_labels = labels[codes["query"].index], labels[codes["retrieval"].index]
    results: dict[str, Any] = {}
    plots = layout.plots_dir(method, bits)
    for direction, (query, retrieval) in retrieval_directions(codes["query"], codes["retrieval"]).items():
        report = evaluate_retrieval(query, retrieval, query_labels, retrieval_labels, map_ks, top_r, progress=progress,
                                    device=settings["device"])
        results[direction] = report.scores
        write_text(plots / "precision_at_top_r" / f"{direction}.csv",
                   "R,precision,precision_average_ties\n" + "".join(
                       f"{r},{p:.6f},{a:.6f}\n" for r, p, a in zip(report.top_r, report.precision_at_r, report.precision_at_r_average_ties)))
        write_text(plots / "precision_recall" / f"{direction}.csv",
                   "radius,recall,precision\n" + "".join(
                       f"{i},{r:.6f},{p:.6f}\n" for i, (p, r) in enumerate(zip(report.pr_precision, report.pr_recall))))
    if warnings := collapse_warnings(codes):
        results["warnings"] = warnings  # shown in the results table
    write_json(layout.metrics(method, bits), results)
    return results
