"""Benchmark: where the time of a whole `dvc repro` goes, stage by stage and by kind of stage.

Runs `dvc repro` (with any extra arguments) in a project folder, stamps every line it prints with
the seconds since the start, and takes each stage's time as the span from its "Running stage" line
to the next stage's (so DVC's own work for a stage, hashing, the lock file and the run-cache, is
counted with that stage; a stage restored from the run-cache or skipped prints no such line and
adds to the stage before it). Kinds are the part of the name before '@' (train@djsrh-64 -> train).

    python bench/repro_times.py --project /path/to/fresh/clone            # -> bench/results/repro_times.json
    python bench/repro_times.py --project . --out times.json -- --force   # arguments after -- go to dvc repro
    python bench/repro_times.py --from-log stamped.log                   # summarise a log that --log wrote

The results file holds the command, the machine, the total, every stage's seconds, the totals by
kind (and by method for train), and the last lines of the output.
"""

from __future__ import annotations

import argparse
import re
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

from machine import write_results

_RUNNING = re.compile(r"^Running stage '([^']+)'")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--project", type=Path, default=Path("."), help="the DVC project (default: .)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "repro_times.json")
    parser.add_argument("--log", type=Path, help="also write every stamped line of the output here")
    parser.add_argument("--from-log", type=Path,
                        help="run nothing: summarise a stamped log that --log wrote (the exit status is then unknown)")
    parser.add_argument("dvc_args", nargs="*", help="extra arguments for dvc repro (after --)")
    args = parser.parse_args(argv)
    if args.from_log:
        stamped = args.from_log.read_text().splitlines()
        marks = [(match[1], float(seconds)) for seconds, _, line in (entry.strip().partition(" ") for entry in stamped)
                 if (match := _RUNNING.match(line))]
        total = float(stamped[-1].split()[0]) if stamped else 0.0
        return summarise(args, stamped, marks, total, returncode=None, interrupted=False)

    def stop(signum, frame):  # a time limit (SIGTERM): keep what was measured
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "dvc", "repro", *args.dvc_args], cwd=args.project,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
    stamped, marks = [], []
    log = open(args.log, "w") if args.log else None
    interrupted = False
    try:
        for line in process.stdout:
            seconds = time.perf_counter() - started
            stamped.append(f"{seconds:9.2f} {line.rstrip()}")
            if log:
                log.write(stamped[-1] + "\n")
                log.flush()
            if match := _RUNNING.match(line):
                marks.append((match[1], seconds))
        returncode = process.wait()
    except KeyboardInterrupt:
        interrupted = True
        process.terminate()
        returncode = process.wait()
    total = time.perf_counter() - started
    if log:
        log.close()
    return summarise(args, stamped, marks, total, returncode, interrupted)


def summarise(args, stamped: list[str], marks: list[tuple[str, float]], total: float, returncode: int | None,
              interrupted: bool) -> int:
    """Each stage's seconds (from its start mark to the next), totals by kind and by method; written to ``args.out``."""
    stages = {name: round(end - start, 2) for (name, start), (_, end) in zip(marks, marks[1:] + [("", total)])}
    by_kind: dict[str, float] = defaultdict(float)
    train_by_method: dict[str, float] = defaultdict(float)
    for name, seconds in stages.items():
        kind, _, item = name.partition("@")
        by_kind[kind] += seconds
        if kind == "train":
            train_by_method[item.rpartition("-")[0]] += seconds
    print(f"dvc repro exit {returncode} in {total:.1f} s; by kind: " +
          ", ".join(f"{kind} {seconds:.1f} s" for kind, seconds in sorted(by_kind.items(), key=lambda kv: -kv[1])))
    write_results(args.out, project=str(args.project.resolve()), returncode=returncode, interrupted=interrupted,
                  total_seconds=round(total, 1),
                  stages_run=len(stages), before_first_stage=round(marks[0][1], 2) if marks else None,
                  by_kind={kind: round(seconds, 1) for kind, seconds in by_kind.items()},
                  train_by_method={method: round(seconds, 1) for method, seconds in train_by_method.items()},
                  stages=stages, tail=stamped[-40:])
    return returncode or 0


if __name__ == "__main__":
    sys.exit(main())
