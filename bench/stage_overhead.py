"""Benchmark: what one short DVC stage costs, taken apart: the interpreter's start, the stage's imports,
its command, and DVC's own work around it.

In a project where `dvc repro` has run, for each stage named (default: one of each short kind, on
LSH at 16 bits), the median over ``--repeats`` runs of:

- ``python_start``: ``python -c pass``;
- ``imports``: importing the ``cmhash`` command and the stage's module, less ``python_start``;
- ``command``: the stage's command alone (``cmhash evaluate --method lsh --bits 16``);
- ``dvc_repro``: ``dvc repro --single-item --force STAGE``, which runs the same command; the
  difference, ``dvc_own``, is DVC's work for one stage (loading the pipeline, hashing, the run-cache,
  rewriting dvc.lock);
- ``dvc_status``: ``dvc status``, DVC loading and checking the whole pipeline once.

Rerunning a stage rewrites the same bytes (the stages are deterministic), so the project stays up to
date. The results file also holds the size of dvc.lock, which DVC parses and rewrites after every stage.

    python bench/stage_overhead.py --project /path/to/reproduced/clone   # -> bench/results/stage_overhead.json
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

from machine import write_results

DEFAULT_STAGES = ["evaluate", "index", "train@lsh-16", "items", "report"]


def wall(command: list[str], project: Path, repeats: int) -> float:
    """The median wall time of ``command`` in ``project``; a failure stops the bench with its output."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        result = subprocess.run(command, cwd=project, capture_output=True, text=True)
        times.append(time.perf_counter() - started)
        if result.returncode != 0:
            sys.exit(f"{' '.join(command)} failed in {project}:\n{result.stdout}{result.stderr}")
    return statistics.median(times)


def stage_command(stage: str) -> tuple[list[str], str]:
    """The ``cmhash`` command that stage ``stage`` runs, and the module of its stage."""
    kind, _, item = stage.partition("@")
    module = f"cmhash.pipeline.stages.{kind.replace('-', '_')}"
    if not item:
        return ["cmhash", kind], module
    method, _, bits = item.rpartition("-")
    return ["cmhash", kind, "--method", method, "--bits", bits], module


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--project", type=Path, default=Path("."), help="a DVC project where `dvc repro` has run")
    parser.add_argument("--stages", nargs="+", default=DEFAULT_STAGES, help="stage names as dvc.yaml's matrix names them")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "stage_overhead.json")
    args = parser.parse_args(argv)
    project = args.project.resolve()
    if not (project / "dvc.lock").is_file():
        sys.exit(f"{project}: no dvc.lock; run `dvc repro` there first")

    python_start = wall([sys.executable, "-c", "pass"], project, args.repeats)
    dvc_status = wall([sys.executable, "-m", "dvc", "status"], project, args.repeats)
    rows = []
    for stage in args.stages:
        command, module = stage_command(stage)
        imports = wall([sys.executable, "-c", f"import cmhash.pipeline.cli, {module}"], project, args.repeats) - python_start
        alone = wall(command, project, args.repeats)
        under_dvc = wall([sys.executable, "-m", "dvc", "repro", "--single-item", "--force", stage], project, args.repeats)
        row = {"stage": stage, "python_start": round(python_start, 3), "imports": round(imports, 3),
               "command": round(alone, 3), "dvc_repro": round(under_dvc, 3), "dvc_own": round(under_dvc - alone, 3)}
        rows.append(row)
        print(f"{stage:18} start {python_start:.2f} s, imports {imports:.2f} s, command {alone:.2f} s; "
              f"under dvc repro {under_dvc:.2f} s (DVC's own {under_dvc - alone:.2f} s)", flush=True)
    lock = (project / "dvc.lock").read_text()
    print(f"dvc status: {dvc_status:.2f} s; dvc.lock: {lock.count(chr(10)):,} lines")
    write_results(args.out, project=str(project), repeats=args.repeats, dvc_status=round(dvc_status, 3),
                  lock_lines=lock.count("\n"), stages=rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
