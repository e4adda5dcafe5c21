"""The workspace a flow run drives: a full git clone with DVC, used by one run at a time.

- :func:`check_clone`: what experiments need (a full, not shallow, clone with a commit and a git
  identity; for ``push``, a git remote and a DVC remote), checked before anything runs.
- :func:`exclusive_workspace`: one flow run at a time, and none while another DVC process (a
  ``dvc repro`` started by hand, say) or a ``cmhash`` command run by hand works here: the run
  waits, then refuses with a message naming the process, and never rewrites a file under it.
- :func:`params_for_run`: the run's overrides written into params.yaml (the file every stage's
  ``params`` in dvc.yaml name, so the one whose values the stages and the experiment record) as
  ``dvc exp run -S`` writes them, checked before any stage runs, and the file put back as it was
  when the run ends, but only if it is still exactly what the run wrote: a file the user edited
  meanwhile is never overwritten.
- :func:`recover_params`: what a killed run left (its overrides still in the file) put back, or a
  refusal that says what to do, before the next run touches anything.
- :func:`remove_leftover_temporaries`: the half-written files of stages killed mid-write.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
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
        from cmhash.orchestration.dvc_state import dvc_command

        default = subprocess.run(dvc_command("remote", "default"), cwd=root, capture_output=True, text=True)
        if default.returncode != 0 or not default.stdout.strip():
            raise CmhashError(f"{root}: push is set, but no default DVC remote is configured, so outputs could not "
                              "be pushed: dvc remote add -d NAME URL")


def active_processes(root: str | Path) -> list[str]:
    """What other processes are doing in ``root`` now: a holder of DVC's repository lock (DVC holds
    it between a ``dvc repro``'s stages), the live holders of DVC's per-path locks (held while a
    stage's command runs), and ``cmhash`` commands run by hand (``cmhash.pipeline.workspace_users``).
    Empty when nothing works here."""
    from cmhash.orchestration.dvc_state import path_holders, repository_busy
    from cmhash.pipeline.workspace_users import running_commands

    root = Path(root)
    busy = [f"a DVC command holds the repository lock ({root / '.dvc' / 'tmp' / 'lock'})"] if repository_busy(root) else []
    return busy + sorted({f"PID {holder.pid}: {holder.command}" for holder in path_holders(root)}) + running_commands(root)


@contextmanager
def exclusive_workspace(root: str | Path, timeout: float = 600, poll_seconds: float = 2.0) -> Iterator[None]:
    """Hold the workspace for one flow run: wait up to ``timeout`` seconds for another flow run, other
    DVC processes and ``cmhash`` commands run by hand to finish, then refuse with a message naming what
    is running. While it is held, a ``cmhash`` command started by hand refuses."""
    from cmhash.pipeline.workspace_users import FLOW_LOCK

    root = Path(root)
    deadline = time.monotonic() + timeout
    lock_path = root / FLOW_LOCK
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        said = False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                busy = active_processes(root)
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


# ---- the run's overrides of the parameter file, and what a killed run left of them
#
# Before writing its overrides, a run records, in .dvc/tmp/cmhash-params-records/, the file's path
# (relative to the clone), a copy of its bytes, and the checksums of what was there and of what the
# run writes. The file is put back only while its checksum is still the one the run wrote.

RECORDS = Path(".dvc") / "tmp" / "cmhash-params-records"


def _sha256(data: bytes | None) -> str | None:
    return None if data is None else hashlib.sha256(data).hexdigest()


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _record_paths(root: Path, relative: str) -> tuple[Path, Path]:
    """The record and the copy of the file as it was, for the file ``relative`` to the clone."""
    key = hashlib.sha256(relative.encode()).hexdigest()[:16]
    folder = root / RECORDS
    return folder / f"{key}.json", folder / f"{key}.before"


PARAMS_FILE = "params.yaml"  # DVC's parameter file: the one every stage of dvc.yaml reads its params from


def recover_params(root: str | Path) -> list[str]:
    """Settle what earlier runs left: for each parameter file a killed run had changed, put the file
    back as it was before that run if it still holds exactly what the run wrote, forget the record if
    the file is already back, and otherwise refuse, touching neither the file nor the copy. Returns
    what it did, one sentence each."""
    from cmhash.atomic import write_bytes

    root = Path(root)
    done = []
    for record_path in sorted((root / RECORDS).glob("*.json")):
        copy_path = record_path.with_suffix(".before")
        try:
            record = json.loads(record_path.read_text(encoding="utf-8"))
            target, before = root / record["file"], _read(copy_path)
            before_sha, written_sha = record["before_sha256"], record["written_sha256"]
        except (OSError, ValueError, KeyError, TypeError):
            raise CmhashError(f"{record_path}: an earlier run's record of the parameter file it changed is unreadable, "
                              f"so nothing was touched; compare {copy_path} (the file before that run) with your "
                              "parameter file, keep what you want, then delete both and start the run again.") from None
        current_sha = _sha256(_read(target))
        if current_sha == before_sha:
            done.append(f"{target} is as it was before run {record.get('run')}; nothing to put back")
        elif current_sha == written_sha and _sha256(before) == before_sha:
            write_bytes(target, before)
            done.append(f"restored {target} as it was before run {record.get('run')}, which ended before it could "
                        "put the file back")
        else:
            raise CmhashError(
                f"{target} was changed by run {record.get('run')} (which ended before it could put the file back) and "
                f"has been edited since, so this run touched neither it nor the copy from before that run, {copy_path}. "
                f"Keep what you want in {target}, then delete {record_path} and {copy_path}, and start the run again.")
        record_path.unlink()
        copy_path.unlink(missing_ok=True)
    return done


@contextmanager
def params_for_run(root: str | Path, overrides: dict[str, Any] | None = None, run: str = "") -> Iterator[Path]:
    """Apply ``overrides`` to params.yaml for the duration of the run, check the result
    before anything is written, and put the file back as it was afterwards (even on failure), so
    that one run's overrides never leak into the next; but only if the file is still exactly what
    the run wrote: a file edited meanwhile is left alone, with a message naming the copy from
    before. ``run`` names the run in the record."""
    from cmhash.atomic import write_bytes, write_json
    from cmhash.pipeline.params import validate_params
    from cmhash.pipeline.params_file import apply_overrides, parse_overrides, read_yaml_file, read_yaml_text

    root = Path(root)
    path, relative = root / PARAMS_FILE, PARAMS_FILE
    if not path.is_file():
        raise CmhashError(f"{path}: parameter file not found; every stage of dvc.yaml reads its params from it.")
    parsed = parse_overrides(overrides)  # interpolations and malformed values refused before anything is written
    original = path.read_bytes()
    params = read_yaml_file(path)  # bytes that are not UTF-8 and malformed YAML refused, one line each
    if not parsed:
        validate_params(params, path)  # every key checked before any stage runs
        yield path
        return
    updated = apply_overrides(original.decode("utf-8"), parsed, str(path)).encode("utf-8")
    validate_params(read_yaml_text(updated.decode("utf-8"), str(path)), path)
    record_path, copy_path = _record_paths(root, relative)
    write_bytes(copy_path, original)
    write_json(record_path, {"file": relative, "before_sha256": _sha256(original), "written_sha256": _sha256(updated),
                             "run": run or "(unnamed)", "written": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    write_bytes(path, updated)
    print(f"{relative} for this run: " + ", ".join(f"{key}={value!r}" for key, value in parsed.items()))
    failed = False
    try:
        yield path
    except BaseException:
        failed = True
        raise
    finally:
        if _sha256(_read(path)) == _sha256(updated):
            write_bytes(path, original)
            record_path.unlink()
            copy_path.unlink()
        else:
            message = (f"{path} changed while the run used it, so it was not put back: it keeps your edit, and the file "
                       f"as it was before the run is {copy_path}. Keep what you want in {path}, then delete {record_path} "
                       f"and {copy_path}.")
            if failed:
                print(message)  # the run's own error is the answer; the record stays for the next run
            else:
                raise CmhashError(message)


def remove_leftover_temporaries(root: str | Path, folders: list[str]) -> list[Path]:
    """Remove what stages killed mid-write left under ``folders`` (relative to the clone): the
    temporary files and folders of :mod:`cmhash.atomic`. Call it while holding the workspace, when no
    stage runs. (An interrupted encode's ``.partial`` shards are kept: the next encode resumes them.)"""
    from cmhash.atomic import remove_temporaries

    root = Path(root)
    removed = []
    for folder in folders:
        if (root / folder).is_dir():
            removed += remove_temporaries(root / folder)
    return removed
