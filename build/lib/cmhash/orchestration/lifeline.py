"""A command that dies with the process that started it, children included.

    python -m cmhash.orchestration.lifeline PARENT_PID -- COMMAND [ARGS...]

Killing a process leaves its children running: after ``kill -9`` of a flow run, its ``dvc repro``
stages and their ``cmhash train`` commands would go on writing ``dvc.lock``, and the flow's
temporary Prefect server would stay up. The flow therefore starts every such command through this
small wrapper, which

1. asks the kernel to send it SIGTERM when its parent dies, however it dies (Linux's
   ``PR_SET_PDEATHSIG``), and stops at once if the parent is already gone; and to become the
   parent of its descendants that lose theirs (``PR_SET_CHILD_SUBREAPER``), so that it can reap
   them (a container's first process may reap nothing, and a zombie would keep the group alive);
2. runs COMMAND in a process group of its own, so that the command and everything it starts
   (a shell, ``cmhash``, Dask workers) can be ended together;
3. on SIGTERM, SIGINT or SIGHUP (a dead parent, a cancelled run, Ctrl-C) ends that whole group:
   SIGTERM, then SIGKILL after :data:`GRACE_SECONDS`, and exits;
4. when COMMAND ends by itself, ends whatever it left running in its group, and exits with
   COMMAND's exit status (128 + N for a command killed by signal N, as a shell reports it).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

GRACE_SECONDS = 10.0
_PR_SET_PDEATHSIG, _PR_SET_CHILD_SUBREAPER = 1, 36  # linux/prctl.h


def command(parent_pid: int, args: list[str]) -> list[str]:
    """``args`` wrapped in a lifeline tied to ``parent_pid`` (the process that will start it)."""
    return [sys.executable, "-m", "cmhash.orchestration.lifeline", str(parent_pid), "--", *args]


def _die_with_parent(parent_pid: int) -> None:
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        libc.prctl(_PR_SET_CHILD_SUBREAPER, 1)
    if os.getppid() != parent_pid:  # the parent died before the request took effect
        sys.exit(128 + signal.SIGTERM)


def _reap_children() -> None:
    """Collect every child that has ended (ours, and orphans handed to us as their subreaper)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def end_group(group: int, grace: float = GRACE_SECONDS) -> None:
    """End every process of process group ``group``: SIGTERM, then SIGKILL after ``grace`` seconds,
    reaping the ones that end, so that no zombie keeps the group alive."""
    deadline = time.monotonic() + grace
    sent = signal.SIGTERM
    while True:
        try:
            os.killpg(group, sent)
        except ProcessLookupError:
            return
        _reap_children()
        time.sleep(0.05)
        if sent == signal.SIGTERM and time.monotonic() > deadline:
            sent = signal.SIGKILL


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--" or not argv[0].isdigit():
        print("usage: python -m cmhash.orchestration.lifeline PARENT_PID -- COMMAND [ARGS...]", file=sys.stderr)
        return 2
    child: subprocess.Popen | None = None

    def stop(signum, frame):
        if child is not None:
            end_group(child.pid)
        os._exit(128 + signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, stop)
    _die_with_parent(int(argv[0]))
    try:
        child = subprocess.Popen(argv[2:], start_new_session=True)
    except OSError as err:
        print(f"lifeline: cannot run {argv[2]!r}: {err.strerror}", file=sys.stderr)
        return 127
    status = child.wait()
    end_group(child.pid, grace=1.0)  # what the command left behind
    return status if status >= 0 else 128 - status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
