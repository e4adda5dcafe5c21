"""The ``cmhash`` command line: one subcommand per pipeline stage (what dvc.yaml calls), plus
``tune``, which chooses a method's settings on a validation split carved from the training split,
``plots-page``, which renders the DVC plots as an HTML page that works offline, ``diff``, which
compares the metrics of two versions, and ``search`` and ``serve``, which find items with the codes.

Heavy libraries are imported inside the stage functions, so ``cmhash --help`` stays fast.
"""

from __future__ import annotations

import argparse
import errno
import sys
from pathlib import Path

STAGES = {
    "check-params": "check every key of params.yaml against its schema before any other stage runs (a malformed "
                    "value, say a method or length that would become a stage name, stops dvc repro); write "
                    "data/params.checked",
    "prepare": "build the dataset named by dataset.name (builtin, byo, mirflickr25k, nuswide, coco, dcmh_mat, "
               "dcmht_mat; see docs/data.md) into data/prepared/<name>.h5 and draw its split",
    "validate": "run the Great Expectations checks on the prepared file; exit 1 if any fails",
    "encode": "encode images and texts with the encoder of encode.backend into data/features/<name>.h5",
    "train": "fit one hashing method at one code length; write data/models/<method>-<bits>/",
    "evaluate": "compute mAP@all, mAP@k and curves of every trained method and length (or of the one --method and "
                "--bits name); write metrics/ and plots/",
    "report": "write the results table of every method and code length to reports/results.md",
    "items": "write the catalog that search results show (captions, labels and a thumbnail of every item) "
             "to data/items/",
    "index": "write the search index of every trained method and length (or of the one --method and --bits name: "
             "packed codes, item ids, the model that encodes queries) to data/index/<method>-<bits>/",
}


# The sections of params.yaml that the commands beyond the stages read (a stage's module names its
# own). A command checks only what it reads, so that it imports only what it needs: the methods'
# settings come from their classes, and importing those imports torch (a second or more in every
# short stage). check-params, which dvc.yaml runs before every other stage, checks all of them.
COMMAND_SECTIONS = {"search": ("dataset", "encode", "evaluate"), "serve": ("dataset", "encode", "evaluate")}


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
        if name in ("prepare", "encode", "train", "evaluate", "items"):
            stage.add_argument("--quiet", action="store_true", help="no progress bars (they show only on a terminal anyway)")
        if name in ("train", "evaluate", "index"):
            stage.add_argument("--method", help="hashing method, e.g. djsrh, lsh, itq")
            stage.add_argument("--bits", type=int, help="code length in bits, e.g. 64")
        if name == "train":
            stage.add_argument("--from-dvc-stage", action="store_true",
                               help="take the method and length from the name of the DVC stage being run "
                                    f"({name}@djsrh-64, in $DVC_STAGE), as dvc.yaml does: no parameter value "
                                    "is written into a shell command")
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
    search_help = ("find the retrieval items nearest to a text (its images) or an image (its texts) by Hamming "
                   "distance, with the index of one method and length (after dvc repro)")
    search = sub.add_parser("search", help=search_help, description=search_help)
    search.add_argument("--method", required=True, help="hashing method of the index, e.g. djsrh")
    search.add_argument("--bits", required=True, help="code length of the index, e.g. 64")
    search.add_argument("--text", help="search the images with this text")
    search.add_argument("--image", type=Path, help="search the texts with this image file (with --text too for fused "
                                                     "methods such as clipmh, whose codes are of image-text pairs)")
    search.add_argument("--k", default=10, help="how many results (default: 10)")
    search.add_argument("--json", action="store_true", help="print the results as JSON")
    search.add_argument("--params", default="params.yaml", type=Path, help="parameter file (its encode section "
                        "encodes the query; default: params.yaml)")
    search.add_argument("--root", default=Path("."), type=Path, help="project folder that holds data/ (default: .)")
    serve_help = ("serve the search API and its web page (/) over the indexes of data/index; "
                  "binds 127.0.0.1 unless --host says otherwise")
    serve = sub.add_parser("serve", help=serve_help, description=serve_help)
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only; "
                       "0.0.0.0 exposes the API and every indexed item's captions, labels and images to the network)")
    serve.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    serve.add_argument("--params", default="params.yaml", type=Path, help="parameter file (default: params.yaml)")
    serve.add_argument("--root", default=Path("."), type=Path, help="project folder that holds data/ (default: .)")
    diff_help = ("compare mAP@all and mAP@k (each k of evaluate.map_ks) of two versions (commits, branches, tags, experiments by name, or the "
                 "workspace): one row per method, code length and direction, drops beyond --threshold marked; versions "
                 "whose data or evaluation settings differ are shown as not comparable; exit 1 if a metrics file is unreadable")
    diff = sub.add_parser("diff", help=diff_help, description=diff_help)
    diff.add_argument("old", nargs="?", default="HEAD", help="the version compared with (default: HEAD)")
    diff.add_argument("new", nargs="?", default="workspace", help="the version compared (default: workspace)")
    diff.add_argument("--root", default=Path("."), type=Path, help="the DVC project (default: .)")
    diff.add_argument("--threshold", type=float, default=0.01,
                      help="mark a drop larger than this as a regression: a finite number of at least 0 (default: 0.01)")
    diff.add_argument("--json", action="store_true", help="print the rows as JSON records")
    return parser


# How long an idle OpenMP thread (torch's, through libgomp) spins before it sleeps. libgomp's default
# spins for so long that, on a 2-core machine with another busy process, a training step took 12-40x
# its time alone (threads spinning for a core the neighbour holds); 5,000 costs nothing alone and
# brings a CFRH fit beside a CPU-bound neighbour from 8.1x to 2.5-2.7x its time alone
# (bench/README.md, *Training steps*). Set before torch is imported; a user's own setting wins.
GOMP_SPINCOUNT = "5000"


# The dependency -> the extra of pyproject.toml that installs it (the library itself needs none).
_EXTRA_OF = {"dvc": "pipeline", "ruamel": "pipeline", "great_expectations": "pipeline", "pandas": "pipeline",
             "distributed": "pipeline", "fastapi": "service", "starlette": "service", "uvicorn": "service"}


def main(argv: list[str] | None = None) -> int:
    import os

    os.environ.setdefault("GOMP_SPINCOUNT", GOMP_SPINCOUNT)
    args = build_parser().parse_args(argv)
    from cmhash.errors import CmhashError, for_terminal

    try:
        from cmhash.pipeline.layout import Layout
        from cmhash.pipeline.params import SECTIONS, load_params
        from cmhash.pipeline.workspace_users import announced_command

        if args.stage == "diff":
            from cmhash.pipeline.metrics_diff import check_threshold, diff_metrics, metrics_at, render_diff, table_records

            threshold = check_threshold(args.threshold, "--threshold")
            diff = diff_metrics(metrics_at(args.root, args.old), metrics_at(args.root, args.new), threshold)
            if args.json:
                import json

                print(json.dumps(table_records(diff), indent=2, ensure_ascii=False))
            else:
                print(for_terminal(render_diff(diff)))
            if diff.unreadable:
                print(f"cmhash diff: error: {len(diff.unreadable)} metrics file(s) could not be read: " + "; ".join(diff.unreadable),
                      file=sys.stderr)
                return 1
            return 0
        if args.stage == "plots-page":
            from cmhash.pipeline.plots_page import default_cache_dir, render_plots_page

            page = render_plots_page(args.root, args.root / args.out, args.cache_dir or default_cache_dir(), args.scripts_dir)
            print(f"wrote {page}")
            return 0
        stage = _stage_module(args.stage)
        params = load_params(args.params, stage.SECTIONS if stage else COMMAND_SECTIONS.get(args.stage, SECTIONS))
        layout = Layout(args.root)
        if args.stage == "search":
            from cmhash.service.cli import run_search

            return run_search(args, search_service(params, layout))
        if args.stage == "serve":
            from cmhash.service.server import serve

            serve(search_service(params, layout), args.host, args.port)
            return 0
        # Every other command writes into the clone, and says so while it runs, so that a flow run sees it (and it
        # refuses while a flow run holds the clone): cmhash.pipeline.workspace_users.
        with announced_command(args.root, "cmhash " + " ".join(sys.argv[1:] if argv is None else argv)):
            if args.stage == "check-params":
                print(f"checked {args.params}: wrote {stage.run(params, layout)}")
                return 0
            progress = sys.stderr.isatty() and not getattr(args, "quiet", False)  # no bar noise in logs
            if args.stage == "prepare":
                print(f"prepared {stage.run(params, layout, progress)}")
            elif args.stage == "validate":
                report = stage.run(params, layout)
                print(f"validated {layout.prepared(params['dataset']['name'])}: all {report['evaluated']} expectations passed")
            elif args.stage == "encode":
                print(f"encoded {stage.run(params, layout, progress)}")
            elif args.stage == "train":
                method, bits = _method_and_bits(args)
                print(f"trained {stage.run(params, layout, method, bits, progress)}")
            elif args.stage == "evaluate":
                stage.run(params, layout, _one_model_or_all(args), progress)
            elif args.stage == "report":
                print(f"wrote {stage.run(params, layout)}")
            elif args.stage == "items":
                print(f"wrote {stage.run(params, layout, progress)}")
            elif args.stage == "index":
                stage.run(params, layout, _one_model_or_all(args))
            elif args.stage == "tune":
                from cmhash.pipeline.tuning import parse_grid, render_table, tune

                result = tune(params, layout, args.method, args.bits, parse_grid(args.grid), args.validation, progress,
                              log=None if args.quiet else lambda line: print(line, flush=True), resume=args.resume)
                print(render_table(result))
                print(f"wrote {layout.tune_report(args.method, args.bits)}.md and .json")
    except CmhashError as err:
        print(f"cmhash {args.stage}: error: {for_terminal(str(err))}", file=sys.stderr)
        return 1
    except OSError as err:
        if err.errno != errno.ENOSPC and "No space left on device" not in str(err):
            raise
        print(f"cmhash {args.stage}: error: no space left on the device ({_written_file(err)}); free some space and run "
              "the stage again (outputs are written atomically: nothing half-written was left behind).", file=sys.stderr)
        return 1
    except ModuleNotFoundError as err:
        extra = _EXTRA_OF.get((err.name or "").split(".")[0])
        if extra is None:
            raise
        print(f"cmhash {args.stage}: error: {err.name} is not installed; `cmhash {args.stage}` needs the {extra} extra: "
              f"python -m pip install 'cmhash[{extra}]' (the README's install line, '.[dev]', has every extra).", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"cmhash {args.stage}: interrupted; outputs are written atomically, so rerun the stage to start again or resume.", file=sys.stderr)
        return 130
    return 0


def search_service(params: dict, layout):
    """The search service over the indexes of ``layout``, encoding queries as ``params`` encoded the
    features."""
    from cmhash.pipeline.params import encoder_spec
    from cmhash.service.search_service import SearchService, ServiceSettings

    return SearchService(ServiceSettings(
        index_root=layout.index_root(), items_root=layout.items_dir(), metrics_root=layout.metrics_root(),
        encoder=encoder_spec(params["encode"]),
        max_image_pixels=params["dataset"]["max_image_pixels"], map_ks=tuple(params["evaluate"]["map_ks"])))


def _stage_module(command: str):
    """The module of the dvc.yaml stage that ``command`` runs (``check-params`` ->
    ``cmhash.pipeline.stages.check_params``), or None for the commands that are not stages. Only that
    module is imported, so a stage's process runs only its own code."""
    if command not in STAGES:
        return None
    import importlib

    return importlib.import_module(f"cmhash.pipeline.stages.{command.replace('-', '_')}")


def _written_file(err: OSError) -> str:
    """The file a failed write was writing, from the error (h5py names it in its message)."""
    import re

    named = err.filename or (re.search(r"filename = '([^']+)'", str(err)) or [None, None])[1]
    return f"while writing {named}" if named else "while writing an output"


def _one_model_or_all(args: argparse.Namespace) -> list[tuple[str, int]] | None:
    """``[(method, bits)]`` of ``--method`` and ``--bits``, or None (every model of params.yaml)
    when neither is given."""
    from cmhash.errors import CmhashError

    if (args.method is None) != (args.bits is None):
        raise CmhashError("give both --method and --bits (one model), or neither (every model of train.methods x train.bits).")
    return None if args.method is None else [(args.method, args.bits)]


def _method_and_bits(args: argparse.Namespace) -> tuple[str, int]:
    """``--method`` and ``--bits``, or with ``--from-dvc-stage`` the matrix item in the name DVC gives
    the stage it runs (``$DVC_STAGE``: ``train@djsrh-64``, or ``dvc.yaml:train@djsrh-64``). The name
    is read here rather than interpolated into dvc.yaml's command, so no value of params.yaml ever
    reaches a shell; it is checked like any other input."""
    import os

    from cmhash.errors import CmhashError

    if not args.from_dvc_stage:
        if args.method is None or args.bits is None:
            raise CmhashError("give --method and --bits (or --from-dvc-stage under dvc repro).")
        return args.method, args.bits
    if args.method is not None or args.bits is not None:
        raise CmhashError("--from-dvc-stage takes the method and length from the stage name; drop --method and --bits.")
    addressing = os.environ.get("DVC_STAGE", "")
    stage, _, item = addressing.rpartition(":")[2].partition("@")
    method, _, bits = item.rpartition("-")
    if stage != args.stage or not method or not bits.isdigit():
        raise CmhashError(f"--from-dvc-stage: the stage name is {addressing!r}, not {args.stage}@METHOD-BITS "
                          "(DVC sets DVC_STAGE when it runs a stage of dvc.yaml; outside DVC give --method and --bits).")
    return method, int(bits)


if __name__ == "__main__":
    sys.exit(main())
