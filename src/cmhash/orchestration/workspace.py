"""The workspace a flow run drives: a full git clone with DVC, used by one run at a time.

- :func:`check_clone`: what experiments need (a full, not shallow, clone with a commit and a git
  identity; for ``push``, a git remote and a DVC remote), checked before anything runs.
- :func:`exclusive_workspace`: one flow run at a time, and none while another DVC process (a
  ``dvc repro`` started by hand, say) works here: the run waits, then refuses with a message naming
  the process, and never rewrites a file under it.
- :func:`params_for_run`: the run's overrides written into params.yaml as ``dvc exp run -S`` writes
  them, checked before any stage runs, and the file put back as it was when the run ends.
"""

from __future__ import annotations

import fcntl
import json
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cmhash.errors import CmhashError


def _git(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)


def check_clone(root: str | Path, push: bool = False, git_remote: str = "origin") -> None:
    root = Path(root)
    if not (root / ".dvc").is_dir() or _git(root, "rev-parse", "--show-toplevel").returncode != 0:
        raise CmhashError(f"{root} is not a clone of a cmhash project (a git repository with DVC): run the flow "
                          "from the root of a full clone (`git clone URL`), or set CMHASH_WORKSPACE to one.")
    if _git(root, "rev-parse", "--is-shallow-repository").stdout.strip() == "true":
        raise CmhashError(f"{root} is a shallow clone, and DVC experiments need the whole history: run "
                          "`git fetch --unshallow` there (and clone without --depth next time).")
    if _git(root, "rev-parse", "--verify", "-q", "HEAD").returncode != 0:
        raise CmhashError(f"{root} has no commit yet; experiments are saved on top of one: commit the project first.")
    for key in ("user.name", "user.email"):
        if not _git(root, "config", key).stdout.strip():
            raise CmhashError(f"{root}: every run is saved as an experiment commit, which needs a git identity; "
                              f"set it in the clone: git config {key} ...")
    if push:
        if _git(root, "remote", "get-url", git_remote).returncode != 0:
            raise CmhashError(f"{root}: push is set, but the clone has no git remote {git_remote!r}: "
                              f"git remote add {git_remote} URL")
        from cmhash.orchestration.stage_process import dvc_command

        default = subprocess.run(dvc_command("remote", "default"), cwd=root, capture_output=True, text=True)
        if default.returncode != 0 or not default.stdout.strip():
            raise CmhashError(f"{root}: push is set, but no default DVC remote is configured, so outputs could not "
                              "be pushed: dvc remote add -d NAME URL")


def active_dvc_processes(root: str | Path) -> list[str]:
    """What other DVC processes are doing in ``root`` now: a holder of the repository lock (DVC
    holds it between a ``dvc repro``'s stages) and the live entries of DVC's per-file locks (held
    while a stage's command runs). Empty when DVC is idle here."""
    from dvc.lock import LockError
    from dvc.repo import Repo

    root = Path(root)
    busy = []
    with Repo(str(root)) as repo:
        try:
            repo.lock.lock()
            repo.lock.unlock()
        except LockError:
            busy.append(f"a DVC command holds the repository lock ({root / '.dvc' / 'tmp' / 'lock'})")
    rwlock = root / ".dvc" / "tmp" / "rwlock"
    if rwlock.is_file():
        import psutil

        try:
            entries = json.loads(rwlock.read_text() or "{}")
        except json.JSONDecodeError:
            entries = {}
        holders = list(entries.get("write", {}).values()) + [info for infos in entries.get("read", {}).values() for info in infos]
        busy += sorted({f"PID {info['pid']}: {info['cmd']}" for info in holders if psutil.pid_exists(int(info["pid"]))})
    return busy


@contextmanager
def exclusive_workspace(root: str | Path, timeout: float = 600, poll_seconds: float = 2.0) -> Iterator[None]:
    """Hold the workspace for one flow run: wait up to ``timeout`` seconds for another flow run and
    for other DVC processes to finish, then refuse with a message naming what is running."""
    root = Path(root)
    deadline = time.monotonic() + timeout
    lock_path = root / ".dvc" / "tmp" / "cmhash-flow.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        said = False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                busy = active_dvc_processes(root)
                if not busy:
                    break
                fcntl.flock(handle, fcntl.LOCK_UN)
            except BlockingIOError:
                busy = [f"another cmhash flow run uses this workspace ({lock_path} is locked)"]
            if time.monotonic() >= deadline:
                raise CmhashError(f"{root} is busy, so this run stopped before running anything: " + "; ".join(busy) +
                                  f". Waited {timeout:.0f} s. Let that finish (or stop it), then start the run again.")
            if not said:
                print(f"waiting for {root} to be free (up to {timeout:.0f} s): " + "; ".join(busy))
                said = True
            time.sleep(poll_seconds)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def override_arguments(overrides: dict[str, Any] | None) -> list[str]:
    """``KEY=VALUE`` arguments as ``dvc exp run -S`` takes them. A string value is passed as written
    (``"3"`` is the number 3, ``"[16,32]"`` a list, as on the command line); any other value is
    written as JSON; a mapping is spread over dotted keys (``{"methods.djsrh": {"epochs": 1}}`` sets
    ``methods.djsrh.epochs``)."""
    arguments = []
    for key, value in (overrides or {}).items():
        if isinstance(value, dict):
            arguments += override_arguments({f"{key}.{inner}": v for inner, v in value.items()})
        else:
            arguments.append(f"{key}={value if isinstance(value, str) else json.dumps(value)}")
    return arguments


@contextmanager
def params_for_run(root: str | Path, params_path: str = "params.yaml",
                   overrides: dict[str, Any] | None = None) -> Iterator[Path]:
    """Apply ``overrides`` to the parameter file for the duration of the run, check the result
    before anything runs, and put the file back as it was afterwards (even on failure), so that one
    run's overrides never leak into the next. A copy of the original is kept in ``.dvc/tmp`` while
    the run lasts; a run that was killed leaves it there, and the next run restores it first."""
    from dvc.exceptions import InvalidArgumentError
    from dvc.utils.hydra import apply_overrides

    from cmhash.params import load_params

    root = Path(root)
    path = root / params_path
    if not path.is_file():
        raise CmhashError(f"{path}: parameter file not found (flow parameter params_path is relative to {root}).")
    backup = root / ".dvc" / "tmp" / f"cmhash-before-run-{Path(params_path).name}"
    if backup.is_file():
        print(f"restoring {path} from {backup}: an earlier run ended before it could put the file back")
        path.write_bytes(backup.read_bytes())
    original = path.read_bytes()
    backup.parent.mkdir(parents=True, exist_ok=True)
    backup.write_bytes(original)
    try:
        arguments = override_arguments(overrides)
        if arguments:
            try:
                apply_overrides(str(path), arguments)
            except InvalidArgumentError as err:
                cause = str(err.__cause__ or err).strip().splitlines()
                raise CmhashError(f"overrides {arguments}: {' '.join(cause)}") from None
            print(f"{params_path} for this run: " + ", ".join(arguments))
        load_params(path)  # every key checked before any stage runs
        yield path
    finally:
        path.write_bytes(original)
        backup.unlink()
