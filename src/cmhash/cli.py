"""The ``cmhash`` command line: one subcommand per pipeline stage (what dvc.yaml calls), plus
``tune``, which chooses a method's settings on a validation split carved from the training split,
and ``plots-page``, which renders the DVC plots as an HTML page that works offline.

Heavy libraries are imported inside the stage functions, so ``cmhash --help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

STAGES = {
    "prepare": "build the dataset named by dataset.name (builtin, byo, mirflickr25k, nuswide, coco, dcmh_mat, "
               "dcmht_mat; see docs/data.md) into data/prepared/<name>.h5 and draw its split",
    "validate": "run the Great Expectations checks on the prepared file; exit 1 if any fails",
    "encode": "encode images and texts with the encoder of encode.backend into data/features/<name>.h5",
    "train": "fit one hashing method at one code length; write data/models/<method>-<bits>/",
    "evaluate": "compute mAP@all, mAP@k and curves for one method and length; write metrics/ and plots/",
    "report": "write the results table of every method and code length to reports/results.md",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cmhash",
        description="Reproducible cross-modal hashing pipeline. Usually run through `dvc repro`; "
        "each subcommand is one stage of dvc.yaml and reads its settings from params.yaml.",
    )
    from cmhash import __version__

    parser.add_argument("--version", action="version", version=f"cmhash {__version__}")
    sub = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    for name, help_text in STAGES.items():
        stage = sub.add_parser(name, help=help_text, description=help_text)
        stage.add_argument("--params", default="params.yaml", type=Path, help="parameter file (default: params.yaml)")
        stage.add_argument("--root", default=Path("."), type=Path, help="project folder that holds data/, metrics/ and plots/ (default: .)")
        if name in ("prepare", "encode", "train", "evaluate"):
            stage.add_argument("--quiet", action="store_true", help="no progress bars (they show only on a terminal anyway)")
        if name in ("train", "evaluate"):
            stage.add_argument("--method", required=True, help="hashing method, e.g. djsrh, lsh, itq")
            stage.add_argument("--bits", required=True, type=int, help="code length in bits, e.g. 64")
    tune_help = ("choose a method's settings on a validation split carved from the training split (never the query set): "
                 "fit every combination of --grid and write reports/tune/<method>-<bits>.md")
    tune = sub.add_parser("tune", help=tune_help, description=tune_help)
    tune.add_argument("--params", default="params.yaml", type=Path, help="parameter file (default: params.yaml)")
    tune.add_argument("--root", default=Path("."), type=Path, help="project folder that holds data/ (default: .)")
    tune.add_argument("--method", required=True, help="hashing method, e.g. dcmht")
    tune.add_argument("--bits", required=True, type=int, help="code length in bits, e.g. 64")
    tune.add_argument("--grid", action="append", default=[], metavar="NAME=V1,V2",
                      help="a setting of methods.<method> and the values to try; repeat for more settings "
                           "(every combination is fitted). Without --grid, scores the params.yaml settings.")
    tune.add_argument("--validation", type=float, default=0.2,
                      help="share of the training items held out as validation queries (default: 0.2)")
    tune.add_argument("--resume", action="store_true",
                      help="reuse the combinations an earlier, interrupted tune of this method and length finished "
                           "(same features, base settings, seed and validation share)")
    tune.add_argument("--quiet", action="store_true", help="no progress output")
    page_help = "render the DVC plots (dvc plots show) as an HTML page with vega inlined, so it opens with no network"
    page = sub.add_parser("plots-page", help=page_help, description=page_help)
    page.add_argument("--root", default=Path("."), type=Path, help="the DVC project (default: .)")
    page.add_argument("--out", default=Path("reports/plots"), type=Path, help="output folder for index.html (default: reports/plots)")
    page.add_argument("--cache-dir", default=None, type=Path,
                      help="where the offline template is kept after its first build (default: ~/.cache/cmhash)")
    page.add_argument("--scripts-dir", default=None, type=Path,
                      help="take vega.min.js, vega-lite.min.js and vega-embed.min.js from this folder instead of npm")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from cmhash import stages
    from cmhash.errors import CmhashError
    from cmhash.layout import Layout
    from cmhash.params import load_params

    try:
        if args.stage == "plots-page":
            from cmhash.plots_page import default_cache_dir, render_plots_page

            page = render_plots_page(args.root, args.root / args.out, args.cache_dir or default_cache_dir(), args.scripts_dir)
            print(f"wrote {page}")
            return 0
        params = load_params(args.params)
        layout = Layout(args.root)
        progress = sys.stderr.isatty() and not getattr(args, "quiet", False)  # no bar noise in logs
        if args.stage == "prepare":
            print(f"prepared {stages.prepare(params, layout, progress)}")
        elif args.stage == "validate":
            report = stages.validate(params, layout)
            print(f"validated {layout.prepared(params['dataset']['name'])}: all {report['evaluated']} expectations passed")
        elif args.stage == "encode":
            print(f"encoded {stages.encode(params, layout, progress)}")
        elif args.stage == "train":
            print(f"trained {stages.train(params, layout, args.method, args.bits, progress)}")
        elif args.stage == "evaluate":
            results = stages.evaluate(params, layout, args.method, args.bits, progress)
            summary = "  ".join(f"{d} " + " ".join(f"{k}={v:.4f}" for k, v in m.items() if k.startswith("map_"))
                                for d, m in results.items())
            print(f"{args.method} {args.bits} bits: {summary}")
        elif args.stage == "report":
            print(f"wrote {stages.report(params, layout)}")
        elif args.stage == "tune":
            from cmhash.tuning import parse_grid, render_table, tune

            result = tune(params, layout, args.method, args.bits, parse_grid(args.grid), args.validation, progress,
                          log=None if args.quiet else lambda line: print(line, flush=True), resume=args.resume)
            print(render_table(result))
            print(f"wrote {layout.tune_report(args.method, args.bits)}.md and .json")
    except CmhashError as err:
        print(f"cmhash {args.stage}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"cmhash {args.stage}: interrupted; outputs are written atomically, so rerun the stage to start again or resume.", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
