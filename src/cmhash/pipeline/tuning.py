"""Choosing a method's settings without looking at the query set.

``cmhash tune --method M --bits K --grid NAME=V1,V2 ...`` carves a validation split out of the
training split, fits every combination of the grid on the rest of the training items, and scores
each combination by mAP@all of the validation items (as queries) against the items it was fitted
on (as the database), in both directions (pair-to-pair for fused codes); combinations are ranked by
the mean mAP@all over the directions, and mAP@k (each k of ``evaluate.map_ks``) is reported beside it. The query and retrieval
splits are never read, so a setting chosen here can be put in params.yaml without biasing the
numbers that `dvc repro` reports. The split is seeded (``train.seed``), so reruns agree.

Settings not in the grid are the method's params.yaml settings, dataset overrides included. The
validation items' labels are used only to score; the fit sees the labels of its own items.
Results go to ``reports/tune/M-K.json`` (every combination, its scores and fit time) and a
Markdown table ``reports/tune/M-K.md``, best first. Both are rewritten (atomically) after every
combination, so an interrupted grid keeps what it finished; ``resume=True`` (``--resume``) then
reuses the finished combinations of that earlier run when it was made on the same features with
the same base settings, seed and validation share (not after a change to the method's code: that
is what a plain rerun is for).
"""

from __future__ import annotations

import itertools
import json
from typing import Any

import numpy as np

from cmhash.errors import CmhashError
from cmhash.pipeline.params_file import read_yaml_text

DEFAULT_VALIDATION_SHARE = 0.2


def parse_grid(entries: list[str]) -> dict[str, list[Any]]:
    """``["lr=0.001,3e-3", "hidden=128"]`` -> ``{"lr": [0.001, 0.003], "hidden": [128]}``: numbers,
    booleans and strings keep their types."""
    grid: dict[str, list[Any]] = {}
    for entry in entries:
        name, sep, values = entry.partition("=")
        name = name.strip()
        if not sep or not name or not values.strip():
            raise CmhashError(f"--grid {entry!r}: write NAME=VALUE[,VALUE...], e.g. --grid lr=0.001,0.003")
        if name in grid:
            raise CmhashError(f"--grid: {name!r} is given twice; list all its values in one --grid {name}=V1,V2")
        # each value read as params.yaml reads it (YAML 1.2, as DVC: 3e-3 is a number)
        grid[name] = [read_yaml_text(value.strip(), f"--grid {name}") for value in values.split(",")]
    return grid


def carve_validation(train_rows: np.ndarray, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split the training rows into (fit rows, validation rows), both sorted; seeded."""
    if not 0 < share < 1:
        raise CmhashError(f"--validation {share}: the validation share must be between 0 and 1 (e.g. 0.2)")
    n_validation = int(round(share * len(train_rows)))
    if n_validation < 1 or n_validation >= len(train_rows):
        raise CmhashError(f"--validation {share} of {len(train_rows)} training items leaves an empty side; "
                          "pick a share that keeps at least one item on each side")
    order = np.random.default_rng(seed).permutation(len(train_rows))
    return np.sort(train_rows[order[n_validation:]]), np.sort(train_rows[order[:n_validation]])


def tune(params: dict[str, Any], layout, method: str, bits: int, grid: dict[str, list[Any]],
         share: float = DEFAULT_VALIDATION_SHARE, progress: bool = False, log=None, resume: bool = False) -> dict[str, Any]:
    """Fit and score every combination of ``grid``; write and return the results (best first).
    ``progress`` shows the methods' progress bars; ``log`` (e.g. ``print``) is told each combination."""
    from cmhash.datasets.prepared import PreparedData
    from cmhash.features import check_made_from, read_features
    from cmhash.methods import build_method, method_class
    from cmhash.pipeline.params import method_params

    method_class(method)  # an unknown method fails here, before any data is read
    name = params["dataset"]["name"]
    seed = params["train"]["seed"]
    base = method_params(params, method)
    combinations = [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
    if any({**base, **changes}.get("mode") == "finetune" for changes in combinations):
        raise CmhashError(f"cmhash tune fits on the encode stage's features and cannot tune fine-tuning "
                          f"(methods.{method}.mode: finetune); add --grid mode=frozen.")
    features = read_features(layout.features(name))
    check_made_from(features, layout.features(name), layout.prepared(name))
    with PreparedData(layout.prepared(name)) as data:
        train_rows, labels = data.splits["train"], data.labels
    fit_rows, validation_rows = carve_validation(train_rows, share, seed)

    out = layout.tune_report(method, bits)
    result = {"method": method, "bits": bits, "dataset": name, "seed": seed, "validation_share": share,
              "features": features.fingerprint, "fit_items": int(len(fit_rows)),
              "validation_items": int(len(validation_rows)), "base_settings": base, "grid": grid,
              "map_ks": list(params["evaluate"]["map_ks"]), "runs": []}
    finished = _finished_runs(out.with_suffix(".json"), result) if resume else {}
    for number, changes in enumerate(combinations, 1):
        run = finished.get(_key(changes))
        if log:
            log(f"[{number}/{len(combinations)}] {method} {bits} bits: {_describe(changes)}"
                + (" (kept from the earlier run)" if run else ""))
        if run is None:
            model = build_method(method, bits, {**base, **changes}, seed, params["train"]["device"], progress=progress)
            run = {"settings": changes, **_fit_and_score(model, features, labels, fit_rows, validation_rows, result["map_ks"])}
        result["runs"].append(run)
        result["runs"].sort(key=lambda run: -run["mean_map_all"])  # best first; stable, so ties keep the grid's order
        _write(out, result)
    return result


def _fit_and_score(model, features, labels, fit_rows, validation_rows, map_ks: list[int]) -> dict[str, Any]:
    """Fit on ``fit_rows``; mAP@all and mAP@k (each of ``map_ks``) of the validation items against
    the fitted items."""
    from cmhash.codes import retrieval_directions
    from cmhash.methods.fitting import fit_on_features
    from cmhash.metrics import evaluate_retrieval

    codes, seconds = fit_on_features(model, features, {"train": fit_rows, "query": validation_rows, "retrieval": fit_rows}, labels)
    directions = retrieval_directions(codes["query"], codes["retrieval"])
    scores = {direction: evaluate_retrieval(query, database, labels[validation_rows], labels[fit_rows], map_ks=map_ks).scores
              for direction, (query, database) in directions.items()}
    return {**{key: {direction: score[key] for direction, score in scores.items()} for key in _keys(map_ks)},
            "mean_map_all": round(float(np.mean([score["map_all"] for score in scores.values()])), 6),
            "fit_seconds": round(seconds, 2)}


def _write(out, result: dict[str, Any]) -> None:
    """Write the results so far (JSON and the Markdown table)."""
    from cmhash.atomic import write_json, write_text

    write_json(out.with_suffix(".json"), result)
    write_text(out.with_suffix(".md"), render_table(result) + "\n")


def _key(changes: dict[str, Any]) -> str:
    return json.dumps(changes, sort_keys=True)


def _finished_runs(path, result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The runs of an earlier tune written to ``path`` with the same identity as ``result``, by settings."""
    try:
        earlier = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    identity = ("method", "bits", "dataset", "seed", "validation_share", "features", "base_settings", "map_ks")
    if any(earlier.get(field) != result[field] for field in identity):
        return {}
    return {_key(run["settings"]): run for run in earlier.get("runs", [])}


def _keys(map_ks: list[int]) -> list[str]:
    """The scores of a run: mAP@all and mAP@k for each k of ``evaluate.map_ks``."""
    return ["map_all", *(f"map_{k}" for k in map_ks)]


def _describe(changes: dict[str, Any]) -> str:
    return ", ".join(f"{key}={value}" for key, value in changes.items()) or "params.yaml settings"


def render_table(result: dict[str, Any]) -> str:
    """The tuning results as Markdown, best combination first."""
    directions = list(result["runs"][0]["map_all"])
    at_k = _keys(result["map_ks"])[1:]
    lines = [
        f"# Tuning {result['method']} at {result['bits']} bits on `{result['dataset']}`",
        "",
        f"Generated by `cmhash tune`. Fitted on {result['fit_items']:,} training items; scored by mAP@all of "
        f"{result['validation_items']:,} held-out training items (seed {result['seed']}) against them. "
        "The query and retrieval splits were not used.",
        "",
        "| settings | " + " | ".join(f"mAP@all {d}" for d in directions) + " | mean mAP@all | "
        + "".join(f"mAP@{key.removeprefix('map_')} {d} | " for key in at_k for d in directions) + "fit seconds |",
        "|---|" + "---|" * ((1 + len(at_k)) * len(directions) + 2),
    ]
    for run in result["runs"]:
        cells = [f"{run['map_all'][d]:.4f}" for d in directions] + [f"{run['mean_map_all']:.4f}"]
        cells += [f"{run[key][d]:.4f}" for key in at_k for d in directions]
        lines.append(f"| {_describe(run['settings'])} | " + " | ".join(cells) + f" | {run['fit_seconds']} |")
    return "\n".join(lines)
