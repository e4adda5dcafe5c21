"""The ``evaluate`` stage: I->T and T->I retrieval metrics and curves of every trained method and
length (``train.methods`` x ``train.bits``), in one process.

One stage for all of them, not one per model: each model's evaluation is a fraction of a second,
and as 40 stages they cost 40 process starts, 40 reads and checksums of the same prepared file and
40 rewrites of dvc.lock (bench/README.md, *Where the default dvc repro's time goes*). A changed
model reruns all of them, which takes seconds.
"""

from __future__ import annotations

from typing import Any

from cmhash.atomic import write_json, write_text
from cmhash.checksums import file_md5
from cmhash.codes import check_codes_made_from, collapse_warnings, read_codes, retrieval_directions
from cmhash.datasets.prepared import PreparedData
from cmhash.metrics import evaluate_retrieval
from cmhash.pipeline.layout import Layout
from cmhash.pipeline.params import trained_models

SECTIONS = ("dataset", "train", "evaluate")


def run(params: dict[str, Any], layout: Layout, chosen: list[tuple[str, int]] | None = None, progress: bool = True,
        log=print) -> dict[tuple[str, int], dict[str, Any]]:
    """Evaluate ``chosen`` models (default: every model of params.yaml); ``{(method, bits): scores}``."""
    chosen = trained_models(params, chosen)
    prepared = layout.prepared(params["dataset"]["name"])
    with PreparedData(prepared) as data:  # a missing or damaged file is refused here, by name
        labels = data.labels
    prepared_md5 = file_md5(prepared)
    return {(method, bits): _evaluate_one(params["evaluate"], layout, method, bits, labels, prepared, prepared_md5, progress, log)
            for method, bits in chosen}


def _evaluate_one(settings, layout: Layout, method: str, bits: int, labels, prepared, prepared_md5: str, progress: bool,
                  log) -> dict[str, Any]:
    codes_path = layout.model_dir(method, bits) / "codes.h5"
    codes = read_codes(codes_path)
    check_codes_made_from(codes_path, prepared, prepared_md5)
    query_labels, retrieval_labels = labels[codes["query"].index], labels[codes["retrieval"].index]
    results: dict[str, Any] = {}
    for direction, (query, retrieval) in retrieval_directions(codes["query"], codes["retrieval"]).items():
        report = evaluate_retrieval(query, retrieval, query_labels, retrieval_labels, settings["map_ks"], settings["top_r"],
                                    progress=progress, device=settings["device"])
        results[direction] = report.scores
        write_text(layout.plots_dir("precision_at_top_r", method, bits) / f"{direction}.csv",
                   "R,precision,precision_average_ties\n" + "".join(
                       f"{r},{p:.6f},{a:.6f}\n" for r, p, a in zip(report.top_r, report.precision_at_r, report.precision_at_r_average_ties)))
        write_text(layout.plots_dir("precision_recall", method, bits) / f"{direction}.csv",
                   "radius,recall,precision\n" + "".join(
                       f"{i},{r:.6f},{p:.6f}\n" for i, (p, r) in enumerate(zip(report.pr_precision, report.pr_recall))))
    if warnings := collapse_warnings(codes):
        results["warnings"] = warnings  # shown in the results table
    write_json(layout.metrics(method, bits), results)
    summary = "  ".join(f"{d} " + " ".join(f"{k}={v:.4f}" for k, v in m.items() if k.startswith("map_"))
                        for d, m in results.items() if isinstance(m, dict))
    log(f"{method} {bits} bits: {summary}")
    return results
