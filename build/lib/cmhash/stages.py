"""The pipeline's stages as plain functions: DVC (through the CLI), Prefect tasks and tests call these.

prepare -> validate -> encode -> train (per method and bit length) -> evaluate (likewise).
Each reads the parameters it needs, reads its inputs from the :class:`~cmhash.layout.Layout` paths
and writes its outputs there atomically.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cmhash.atomic import write_json, write_text
from cmhash.layout import Layout
from cmhash.params import method_params


def check_params(params: dict[str, Any], layout: Layout) -> Path:
    """Write the stamp that the prepare stage depends on, for ``params`` that :func:`load_params`
    has checked. The ``check-params`` stage runs upstream of every other stage and depends on every
    key of params.yaml, so a malformed value (a bit length ``"16;touch x"``, an unknown method, a
    wrong type) stops ``dvc repro`` before DVC removes or writes any output. The stamp's content
    never changes, so a changed parameter reruns this check without rerunning anything downstream."""
    out = layout.params_checked()
    write_text(out, "params.yaml passed cmhash check-params; every stage of dvc.yaml runs after this check.\n")
    return out


def prepare(params: dict[str, Any], layout: Layout, progress: bool = True) -> Path:
    from cmhash.datasets import prepare_dataset

    out = layout.prepared(params["dataset"]["name"])
    summary = prepare_dataset(params["dataset"], out, progress=progress)
    if progress:
        print(f"{out}: " + ", ".join(f"{key.replace('_', ' ')} {value:,}" for key, value in summary.items()))
    return out


def validate(params: dict[str, Any], layout: Layout) -> dict[str, Any]:
    from cmhash.validation import validate_prepared

    name = params["dataset"]["name"]
    return validate_prepared(layout.prepared(name), layout.validation_report(name), params["dataset"])


def encode(params: dict[str, Any], layout: Layout, progress: bool = True) -> Path:
    from cmhash.encoders import build_encoder
    from cmhash.encoding import encode_dataset

    name = params["dataset"]["name"]
    settings = params["encode"]
    encoder = build_encoder(settings)
    out = layout.features(name)
    encode_dataset(layout.prepared(name), out, encoder, batch_size=settings["batch_size"], progress=progress,
                   text=settings["text"], loaders=settings["loaders"], shard_items=settings["shard_items"],
                   workers=settings["workers"], scheduler=settings["scheduler"], settings=settings)
    return out


def train(params: dict[str, Any], layout: Layout, method: str, bits: int, progress: bool = True) -> Path:
    """Fit one method at one code length on the train split; write the model and the codes."""
    from cmhash.codes import collapse_warnings, write_codes
    from cmhash.datasets.prepared import PreparedData
    from cmhash.features import check_made_from, read_features
    from cmhash.methods import build_method, check_method_and_bits, save_model
    from cmhash.training import fit_end_to_end, fit_on_features

    check_method_and_bits(method, bits)  # before reading anything
    name = params["dataset"]["name"]
    seed = params["train"]["seed"]
    settings = method_params(params, method)
    model = build_method(method, bits, settings, seed, params["train"]["device"], progress=progress)
    features = read_features(layout.features(name))
    prepared_md5 = check_made_from(features, layout.features(name), layout.prepared(name))
    with PreparedData(layout.prepared(name)) as data:
        splits, labels = data.splits, data.labels
    train_idx = splits["train"]
    out_dir = layout.model_dir(method, bits)
    if model.end_to_end:  # trains the encoder towers too: reads pixels and captions
        codes, seconds = fit_end_to_end(model, layout.prepared(name), {**params["encode"], "device": params["train"]["device"]},
                                        seed, splits, labels)
    else:
        codes, seconds = fit_on_features(model, features, splits, labels)
    save_model(out_dir / "model.pt", method, model, settings, seed)
    write_codes(out_dir / "codes.h5", method, bits, codes, prepared_md5)
    # The fit time is printed, not written: the model folder is a DVC output, and its hash must
    # not change when the same fit runs again.
    warnings = collapse_warnings(codes)
    write_json(out_dir / "train.json", {"method": method, "bits": bits, "seed": seed, "settings": settings,
                                        "encoder": features.encoder, "train_items": int(len(train_idx)),
                                        "warnings": warnings})
    for warning in warnings:
        print(f"warning: {method} {bits} bits: {warning}")
    print(f"{method} {bits} bits: fitted on {len(train_idx):,} items in {seconds:.1f} s")
    return out_dir


def evaluate(params: dict[str, Any], layout: Layout, method: str, bits: int, progress: bool = True) -> dict[str, Any]:
    """I->T and T->I retrieval metrics and curves for one trained method and code length."""
    from cmhash.codes import check_codes_made_from, collapse_warnings, read_codes, retrieval_directions
    from cmhash.datasets.prepared import PreparedData
    from cmhash.methods import check_method_and_bits
    from cmhash.metrics import evaluate_retrieval

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


def items(params: dict[str, Any], layout: Layout, progress: bool = True) -> Path:
    """Write the items catalog that search results show (data/index/items/)."""
    from cmhash.search.index_files import build_items

    return build_items(layout.prepared(params["dataset"]["name"]), layout.items_dir(), progress)


def index(params: dict[str, Any], layout: Layout, method: str, bits: int) -> Path:
    """Write the search index of one trained method and length (data/index/<method>-<bits>/)."""
    from cmhash.methods import check_method_and_bits
    from cmhash.search.index_files import build_index

    check_method_and_bits(method, bits)
    model_dir = layout.model_dir(method, bits)
    return build_index(model_dir / "codes.h5", model_dir / "model.pt", layout.features(params["dataset"]["name"]),
                       layout.index_dir(method, bits))


def report(params: dict[str, Any], layout: Layout) -> Path:
    """Write the results table of every method and code length (reports/results.md)."""
    from cmhash.report import render_results

    out = layout.results_report()
    write_text(out, render_results(params, layout) + "\n")
    return out
