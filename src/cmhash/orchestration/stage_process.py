"""One DVC stage, run by ``dvc repro --single-item STAGE`` in a process of its own.

DVC is not thread-safe, so every stage gets its own ``dvc`` process, and DVC decides: an unchanged
stage is skipped, a stage whose inputs the run-cache has seen gets its outputs restored, any other
runs; ``dvc.lock`` is updated either way. ``--wait-for-lock`` waits for the repository lock, which
concurrent stages hold briefly while they read and write ``dvc.lock``. The process runs under a
:mod:`~cmhash.orchestration.lifeline`, so it and its commands end when the flow's process ends.

What DVC did is read from what it wrote (:mod:`~cmhash.orchestration.dvc_state`), not from what it
printed: ``dvc.lock``'s entry for the stage unchanged means skipped; changed, and already in the
run-cache before the stage started, means restored; otherwise ran. A stage that DVC would refuse
because another DVC process writes what it reads, or reads or writes what it writes (DVC's per-path
locks fail at once), raises :class:`StageBusy`, which the task retries; stages that only read the
same files (params.yaml, the features) run side by side.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from cmhash.orchestration import lifeline
from cmhash.orchestration.dvc_state import PathHolder, PipelineStage, blockers, dvc_command, lock_entries, restorable
from cmhash.pipeline.workspace_users import FLOW_RUN_VARIABLE

OUTCOMES = ("ran", "skipped", "restored")


class StageFailed(Exception):
    """The stage's command failed; the message is the stage's own error."""


class StageBusy(StageFailed):
    """Another DVC process holds a lock on the stage's files that DVC would refuse it for; retry later."""


@dataclass(frozen=True)
class StageOutcome:
    stage: str
    outcome: str          # one of OUTCOMES
    started: float        # time.time() at start and end, to see what overlapped
    finished: float
    device: str | None = None  # the GPU it was given (CUDA_VISIBLE_DEVICES), if any

    def as_dict(self) -> dict:
        """What the task returns and the run's ``stage-outcomes`` table shows; times of day (UTC) to
        the millisecond, so that the table shows which stages ran at the same time."""
        clock = lambda t: datetime.fromtimestamp(t, timezone.utc).strftime("%H:%M:%S.%f")[:12]  # noqa: E731
        return {"stage": self.stage, "outcome": self.outcome, "started": clock(self.started),
                "finished": clock(self.finished), "seconds": round(self.finished - self.started, 1), "gpu": self.device or ""}


def stage_environment(device: str | None = None) -> dict[str, str]:
    """The environment of a stage's process: this one's, with this environment's ``bin`` first on the
    PATH (dvc.yaml's commands are ``cmhash ...``), unbuffered output, the GPU it was given, and the mark
    of a flow run's stage (a ``cmhash`` command without it refuses while a flow run holds the clone)."""
    env = dict(os.environ)
    env[FLOW_RUN_VARIABLE] = "1"
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    if device is not None:
        env["CUDA_VISIBLE_DEVICES"] = device
    return env


def _holders_text(holders: list[PathHolder]) -> str:
    return "; ".join(sorted({f"PID {holder.pid} ({holder.command}) {holder.mode}s {holder.path}" for holder in holders}))


# The stage processes this process started and that still run, so that a run stopped by a signal or
# a cancellation can end them at once instead of waiting for them (see end_running_stages).
_running: set[subprocess.Popen] = set()
_running_lock = threading.Lock()


def end_running_stages() -> int:
    """Ask every stage process that this process started and that still runs to end: its lifeline
    then ends the stage's whole process group (``dvc``, the stage's command and what it started),
    SIGTERM first, SIGKILL after the lifeline's grace. Returns how many were asked. Called when the
    run is stopped (SIGTERM, Ctrl-C, a cancellation), so that no stage outlives the run by more than
    seconds and none writes ``dvc.lock`` after the run gave up; the next run settles what is left."""
    with _running_lock:
        running = [process for process in _running if process.poll() is None]
    for process in running:
        try:
            process.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            pass
    return len(running)


def run_dvc_stage(root: str | Path, stage: PipelineStage, device: str | None = None,
                  log: Callable[[str], None] | None = None) -> StageOutcome:
    """Reproduce one stage in ``root``; every line DVC and the stage print goes to ``log`` (default:
    print)."""
    log = log or print
    if holders := blockers(root, stage):
        raise StageBusy(f"{stage.name}: another DVC process holds a lock on its files: {_holders_text(holders)}")
    before = lock_entries(root).get(stage.name)
    started = time.time()
    process = subprocess.Popen(lifeline.command(os.getpid(), dvc_command("--wait-for-lock", "repro", "--single-item", stage.name)),
                               cwd=root, env=stage_environment(device), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, errors="replace")
    with _running_lock:
        _running.add(process)
    lines = []
    try:
        for line in process.stdout:
            line = line.rstrip("\n")
            lines.append(line)
            log(line)
        status = process.wait()
    finally:
        with _running_lock:
            _running.discard(process)
    if status != 0:
        if holders := blockers(root, stage):
            raise StageBusy(f"{stage.name}: another DVC process held its files: {_holders_text(holders)}")
        raise StageFailed(f"{stage.name} failed: {stage_error(lines)}")
    after = lock_entries(root).get(stage.name)
    if after is None:
        raise StageFailed(f"{stage.name}: DVC ended without an error but recorded no entry for it in dvc.lock.")
    if after == before:
        outcome = "skipped"
    else:
        outcome = "restored" if restorable(root, after, started) else "ran"
    return StageOutcome(stage.name, outcome, started, time.time(), device)


_STAGE_ERROR = re.compile(r"^cmhash [\w-]+: error: ")


def stage_error(lines: list[str]) -> str:
    """The stage's own error, for the run's message: what a ``cmhash`` command printed after
    ``cmhash STAGE: error:`` (a validation failure lists every failed expectation), else DVC's
    ``ERROR`` lines, else the tail. (Only the message is taken from the output; what happened is
    read from DVC's files.)"""
    for i, line in enumerate(lines):
        if _STAGE_ERROR.match(line):
            own = [_STAGE_ERROR.sub("", line)]
            for later in lines[i + 1:]:
                if later.startswith("ERROR: "):  # DVC's own summary follows the command's output
                    break
                own.append(later)
            return "\n".join(own).strip()
    dvc_errors = [line.removeprefix("ERROR: ") for line in lines if line.startswith("ERROR: ")]
    return "\n".join(dvc_errors or lines[-20:]).strip()
