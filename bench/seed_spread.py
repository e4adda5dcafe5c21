"""Benchmark: how far a method's scores move when only the seed changes, the yardstick of issue 23's
"same results" (a change that moves a cell less than a seed change does is within the noise).

For one method and length it fits the method on a finished project's features (after `dvc repro`)
once per seed, with params.yaml's settings, and writes mAP@all and mAP@50 per direction for each
seed and their range.

    python bench/seed_spread.py --project . --method ucmfh --bits 64 --seeds 0 1 2 3
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from machine import write_results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--project", type=Path, default=Path("."), help="a project after dvc repro (its data/ and params.yaml)")
    parser.add_argument("--method", required=True)
    parser.add_argument("--bits", type=int, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "seed_spread.json")
    args = parser.parse_args(argv)

    from cmhash.codes import retrieval_directions
    from cmhash.datasets.prepared import PreparedData
    from cmhash.features import read_features
    from cmhash.methods import build_method
    from cmhash.methods.fitting import fit_on_features
    from cmhash.metrics import evaluate_retrieval
    from cmhash.pipeline.layout import Layout
    from cmhash.pipeline.params import load_params, method_params

    params = load_params(args.project / "params.yaml")
    layout, name = Layout(args.project), params["dataset"]["name"]
    features = read_features(layout.features(name))
    with PreparedData(layout.prepared(name)) as data:
        splits, labels = data.splits, data.labels
    runs = []
    for seed in args.seeds:
        model = build_method(args.method, args.bits, method_params(params, args.method), seed, "cpu", progress=False)
        codes, seconds = fit_on_features(model, features, splits, labels)
        scores = {}
        for direction, (query, retrieval) in retrieval_directions(codes["query"], codes["retrieval"]).items():
            report = evaluate_retrieval(query, retrieval, labels[codes["query"].index], labels[codes["retrieval"].index],
                                        [50], [1], progress=False)
            scores[direction] = {"map_all": round(report.scores["map_all"], 6), "map_50": round(report.scores["map_50"], 6)}
        runs.append({"seed": seed, "fit_seconds": round(seconds, 1), "scores": scores})
        print(f"seed {seed}: {scores}", flush=True)
    spread = {direction: {key: round(max(r["scores"][direction][key] for r in runs) - min(r["scores"][direction][key] for r in runs), 6)
                          for key in ("map_all", "map_50")} for direction in runs[0]["scores"]}
    print(f"range over seeds: {spread}")
    write_results(args.out, method=args.method, bits=args.bits, runs=runs, range=spread)
    return 0


if __name__ == "__main__":
    sys.exit(main())
