"""What the flow knows of DVC, read as data, never from the sentences DVC prints.

- :func:`read_pipeline`: the stages of ``dvc.yaml`` (``matrix`` expanded), their upstream stages,
  whether they want a GPU, and the paths they read and write;
- :func:`out_of_date`: the stages ``dvc status --json`` reports as changed, in one DVC process;
- :func:`lock_entries`: ``dvc.lock``, what DVC recorded of each stage's last run, read under DVC's
  repository lock (DVC rewrites the file in place);
- :func:`restorable`: whether DVC's run-cache held a stage's lock entry before the stage started,
  which tells a restore from a run;
- :func:`path_holders`: the live processes that hold DVC's per-path locks (``.dvc/tmp/rwlock``),
  and :func:`blockers`: those among them that DVC would refuse a stage for, which tells a busy file
  from a failed stage;
- :func:`repository_busy`: whether another DVC command holds the repository lock.

``dvc status --json``, ``dvc.lock``, the run-cache entries (``.dvc/cache/runs/*/*/*``, each a copy
of the lock entry of a run that DVC can restore) and ``rwlock`` are files and formats DVC writes
for its own reading. Reading the pipeline's graph and taking the repository lock has no public API:
those two use ``dvc.repo.Repo`` and are kept here, in one module, so that a DVC release that
changes them breaks one place, and ``tests/test_dvc_state.py`` (which runs real DVC commands in a
scratch repository, run against the lowest and the highest DVC release the project allows) says so.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cmhash.errors import CmhashError


def dvc_command(*args: str) -> list[str]:
    """``dvc ARGS`` from this Python environment (the one cmhash is installed in)."""
    return [sys.executable, "-m", "dvc", *args]


@dataclass(frozen=True)
class PipelineStage:
    name: str                   # DVC's name for it, e.g. ``train@djsrh-64``
    upstream: tuple[str, ...]   # the stages whose outputs it reads
    gpu: bool = False           # ``meta: {gpu: true}`` in dvc.yaml
    deps: tuple[str, ...] = ()  # absolute paths it reads (dependencies, parameter files included)
    outs: tuple[str, ...] = ()  # absolute paths it writes (outputs)


def read_pipeline(root: str | Path) -> list[PipelineStage]:
    """Every stage DVC would reproduce in ``root``, upstream stages first.

    Stages come in waves (``networkx.topological_generations``): all stages whose upstream is done
    come before any that waits for them, in dvc.yaml's order within a wave. Submitted in this order,
    a pool of N workers keeps N independent stages busy (all trains before any evaluate)."""
    import networkx as nx
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    root = Path(root).resolve()
    try:
        with Repo(str(root)) as repo:
            graph = repo.index.graph  # edges point from a stage to the stages it depends on
            position = {stage: i for i, stage in enumerate(repo.index.stages)}
            ordered = []
            for wave in nx.topological_generations(graph.reverse(copy=True)):
                ordered.extend(sorted(wave, key=lambda stage: position.get(stage, len(position))))
            return [PipelineStage(_address(stage, root), tuple(sorted(_address(dep, root) for dep in graph.successors(stage))),
                                  bool((getattr(stage, "meta", None) or {}).get("gpu", False)),
                                  tuple(sorted({str(dep.fs_path) for dep in stage.deps})),
                                  tuple(sorted({str(out.fs_path) for out in stage.outs})))
                    for stage in ordered]
    except DvcException as err:
        raise CmhashError(f"{root}: DVC cannot read the pipeline: {str(err).strip()}") from None


def _address(stage, root: Path) -> str:
    """The stage's name as ``dvc repro`` takes it in ``root`` (DVC's own ``addressing`` is relative
    to the current folder): ``train@djsrh-64``, ``sub/dvc.yaml:name`` or ``data.dvc``."""
    path = Path(stage.path).resolve().relative_to(root).as_posix()
    name = getattr(stage, "name", None)
    if name is None:  # a .dvc file
        return path
    return name if path == "dvc.yaml" else f"{path}:{name}"


def out_of_date(root: str | Path) -> set[str]:
    """The stages whose dependencies, parameters, command or outputs differ from what ``dvc.lock``
    records (``dvc status --json``: one DVC process for the whole pipeline)."""
    result = subprocess.run(dvc_command("status", "--json"), cwd=root, capture_output=True, text=True)
    try:
        report = json.loads(result.stdout) if result.returncode == 0 else None
    except json.JSONDecodeError:
        report = None
    if not isinstance(report, dict):
        said = (result.stderr or result.stdout).strip().splitlines()
        raise CmhashError(f"dvc status --json failed in {root}: {' '.join(said[-3:]) or f'exit {result.returncode}'}")
    return set(report)


@contextmanager
def repository_lock(root: str | Path) -> Iterator[None]:
    """Hold DVC's repository lock (``.dvc/tmp/lock``), waiting for it, as DVC does while it reads
    and writes ``dvc.lock``."""
    from dvc.lock import LockError
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        deadline = time.monotonic() + 600
        while True:
            try:
                repo.lock.lock()
                break
            except LockError:  # another DVC command holds it for a moment
                if time.monotonic() > deadline:
                    raise CmhashError(f"{root}: DVC's repository lock stayed taken for 10 minutes.") from None
                time.sleep(0.05)
        try:
            yield
        finally:
            repo.lock.unlock()


def repository_busy(root: str | Path) -> bool:
    """Whether another DVC command holds the repository lock of ``root`` now."""
    from dvc.lock import LockError
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        try:
            repo.lock.lock()
        except LockError:
            return True
        repo.lock.unlock()
        return False


def lock_entries(root: str | Path) -> dict[str, dict[str, Any]]:
    """``dvc.lock``'s ``stages``: each stage's command, dependencies, parameters and outputs with
    their hashes, as DVC recorded them after the stage's last run (empty before the first)."""
    from ruamel.yaml import YAML

    path = Path(root) / "dvc.lock"
    with repository_lock(root):
        if not path.is_file():
            return {}
        lock = YAML(typ="safe").load(path.read_text(encoding="utf-8")) or {}
    return dict(lock.get("stages") or {})


def _canonical(entry: dict[str, Any]) -> str:
    """A lock or run-cache entry, less what does not identify a run (sizes, file counts, key order)."""
    def files(items):
        return sorted((item.get("path"), item.get("md5") or item.get("hash")) for item in items or [])

    return json.dumps({"cmd": entry.get("cmd"), "deps": files(entry.get("deps")), "params": entry.get("params"),
                       "outs": files(entry.get("outs"))}, sort_keys=True, default=str)


_RUN_CACHE_SEEN: dict[str, tuple[float, str]] = {}  # run-cache file -> (mtime, canonical entry)


@functools.cache
def _cache_dir(root: Path) -> Path:
    """The DVC cache folder (``cache.dir`` in the repository's config, else ``.dvc/cache``)."""
    result = subprocess.run(dvc_command("cache", "dir"), cwd=root, capture_output=True, text=True)
    said = result.stdout.strip()
    return Path(said) if result.returncode == 0 and said else root / ".dvc" / "cache"


def restorable(root: str | Path, entry: dict[str, Any], before: float) -> bool:
    """Whether DVC's run-cache held ``entry`` (a stage's lock entry after it ran) before time
    ``before``: then DVC restored the stage's outputs from its cache instead of running it. A run
    adds its entry to the run-cache as it ends; a stage DVC cannot restore (an output with
    ``cache: false`` that is neither a metric nor a plot) never has one."""
    from ruamel.yaml import YAML

    root = Path(root).resolve()
    wanted = _canonical(entry)
    for path in (_cache_dir(root) / "runs").glob("*/*/*"):
        key = str(path)
        mtime = path.stat().st_mtime
        if key not in _RUN_CACHE_SEEN or _RUN_CACHE_SEEN[key][0] != mtime:
            try:
                _RUN_CACHE_SEEN[key] = (mtime, _canonical(YAML(typ="safe").load(path.read_text(encoding="utf-8")) or {}))
            except Exception:  # a half-written or foreign file: not an entry
                continue
        if _RUN_CACHE_SEEN[key][1] == wanted and mtime < before:
            return True
    return False


@dataclass(frozen=True)
class PathHolder:
    pid: int
    command: str
    path: str
    mode: str  # "read" or "write"


def path_holders(root: str | Path) -> list[PathHolder]:
    """The live processes that hold DVC's read or write lock on a path in ``root``
    (``.dvc/tmp/rwlock``; a dead holder's entry is left for DVC to clear, as DVC does)."""
    import psutil

    rwlock = Path(root) / ".dvc" / "tmp" / "rwlock"
    try:
        lock = json.loads(rwlock.read_text(encoding="utf-8") or "{}")
    except (FileNotFoundError, json.JSONDecodeError):
        return []
    held = [(path, info, "write") for path, info in (lock.get("write") or {}).items()]
    held += [(path, info, "read") for path, infos in (lock.get("read") or {}).items() for info in infos]
    return [PathHolder(int(info.get("pid", 0)), str(info.get("cmd", "")), path, mode)
            for path, info, mode in held if psutil.pid_exists(int(info.get("pid", 0)))]


def blockers(root: str | Path, stage: PipelineStage) -> list[PathHolder]:
    """The holders for whom DVC would refuse to run ``stage`` now: a write lock on a path it reads or
    writes, or a read lock on a path it writes (DVC's ``rwlock``). Readers share: every stage reads
    params.yaml and most read the features, and two of them run side by side, as DVC runs them."""
    return [holder for holder in path_holders(root)
            if any(_overlaps(holder.path, mine) for mine in (stage.deps + stage.outs if holder.mode == "write" else stage.outs))]


def _overlaps(a: str, b: str) -> bool:
    a, b = os.path.normpath(a), os.path.normpath(b)
    return a == b or a.startswith(b + os.sep) or b.startswith(a + os.sep)
