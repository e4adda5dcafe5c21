"""Who works in a project's clone now: ``cmhash`` commands and flow runs see each other.

A scheduled flow run takes the clone for itself (``cmhash.orchestration.workspace``): it waits for
DVC processes to finish and removes the half-written files that killed stages left. A ``cmhash``
command run by hand is no DVC process, so the flow would not see it, and could remove its
temporary files as a killed stage's leftovers. So every command that writes into the clone says
that it is there, and the two sides meet in ``.dvc/tmp``:

- a command holds an exclusive ``flock`` on ``.dvc/tmp/cmhash-commands/<pid>.json`` (which names it)
  while it runs: :func:`announced_command`. The kernel drops the lock when the process dies, however
  it dies, so a file whose lock can be taken belongs to a dead command and is removed
  (:func:`running_commands`): nothing is ever left stale;
- a flow run holds an exclusive ``flock`` on :data:`FLOW_LOCK` for its whole run; a command started
  by hand while it is held refuses, naming it. The run's own stages carry :data:`FLOW_RUN_VARIABLE`
  in their environment and go ahead.

Outside a DVC project (no ``.dvc`` folder) there is no flow to meet, and nothing is written.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cmhash.errors import CmhashError

FLOW_LOCK = Path(".dvc") / "tmp" / "cmhash-flow.lock"
COMMANDS = Path(".dvc") / "tmp" / "cmhash-commands"
FLOW_RUN_VARIABLE = "CMHASH_FLOW_RUN"  # set in the environment of a flow run's stage processes


def flow_holds(root: str | Path) -> bool:
    """Whether a flow run holds the clone at ``root`` now (its lock is taken)."""
    path = Path(root) / FLOW_LOCK
    if not path.is_file():
        return False
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False


@contextmanager
def announced_command(root: str | Path, command: str) -> Iterator[None]:
    """Run a command that writes into the clone at ``root`` as one the flow can see; refuse it while a
    flow run holds the clone, unless it is one of that run's stages."""
    root = Path(root)
    if not (root / ".dvc").is_dir():
        yield
        return
    if FLOW_RUN_VARIABLE not in os.environ and flow_holds(root):
        raise CmhashError(f"a scheduled flow run uses {root.resolve()} now ({root / FLOW_LOCK} is locked), and a command "
                          "run by hand beside it could mix its outputs into the run's experiment; run it when the flow "
                          "run has ended, or in another clone.")
    folder = root / COMMANDS
    folder.mkdir(parents=True, exist_ok=True)
    path, unnamed = folder / f"{os.getpid()}.json", folder / f"{os.getpid()}.starting"
    with open(unnamed, "w") as handle:
        # Locked and written before it takes its name, so that running_commands never finds it unlocked
        # (which would read as a dead command's file) or empty; the lock stays with the file as it is renamed.
        fcntl.flock(handle, fcntl.LOCK_EX)
        handle.write(json.dumps({"pid": os.getpid(), "command": command}))
        handle.flush()
        os.replace(unnamed, path)
        try:
            yield
        finally:
            path.unlink(missing_ok=True)


def running_commands(root: str | Path) -> list[str]:
    """``PID N: COMMAND`` for every ``cmhash`` command that runs in the clone at ``root`` now; the
    files of commands that died are removed on the way."""
    found = []
    for path in sorted((Path(root) / COMMANDS).glob("*.json")):
        try:
            handle = open(path)
        except FileNotFoundError:  # it ended meanwhile
            continue
        with handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # held: the command runs
                try:
                    said = json.loads(handle.read() or "{}")
                except ValueError:
                    said = {}
                found.append(f"PID {said.get('pid', path.stem)}: {said.get('command', 'a cmhash command')}")
                continue
            path.unlink(missing_ok=True)  # nobody holds it: its command died without removing it
    return found
