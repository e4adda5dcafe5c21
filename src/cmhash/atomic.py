"""Atomic file writes: a stage's output appears whole or not at all.

Every file a stage writes goes through :func:`atomic_path`: the content is written to a temporary
file in the same folder and renamed over the target only when writing succeeded, so a crash or an
interrupt never leaves a half-written file that a later stage (or DVC) would trust. The temporary
file is created with the mode any new file gets (0666 less the umask), so outputs stay readable by a
server, a shared DVC cache or a colleague, as the umask allows.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it to ``path`` if the block succeeds."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_temporary_file(target)
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def _new_temporary_file(target: Path) -> Path:
    """Create an empty, uniquely named file next to ``target``. Unlike ``tempfile.mkstemp`` (always
    0600), ``os.open`` with mode 0666 lets the umask decide, as for any other new file."""
    return _create_next_to(target, lambda tmp: os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)))


# The names of the temporaries: ".NAME.<12 hex digits>.tmp" for a file or a folder being written,
# ".NAME.<12 hex digits>.old" for a folder's previous version being removed.
_TEMPORARY = re.compile(r"^\..+\.[0-9a-f]{12}\.(tmp|old)$")


def _create_next_to(target: Path, create) -> Path:
    while True:
        tmp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
        try:
            create(tmp)
            return tmp
        except FileExistsError:  # another writer drew the same name: draw again
            continue


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8), atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data``, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


@contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder next to ``path``; when the block succeeds it replaces
    ``path`` (an earlier version is removed only after the new one is complete)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create_next_to(target, os.mkdir)  # 0777 less the umask
    old = None
    try:
        yield tmp
        if target.exists():
            old = target.with_name(f".{target.name}.{secrets.token_hex(6)}.old")
            os.replace(target, old)
        os.replace(tmp, target)
    finally:
        for leftover in (tmp, old):
            if leftover is not None and leftover.exists():
                shutil.rmtree(leftover)


def ensure_free_space(folder: str | os.PathLike, needed: int, what: str) -> None:
    """Stop before writing ``what`` when ``folder``'s file system has less than ``needed`` bytes
    free: a write that runs out of space midway fails inside HDF5, which cannot always recover."""
    from cmhash.errors import CmhashError

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise CmhashError(f"{what} needs about {needed / 2**20:,.0f} MB and {folder} has {free / 2**20:,.0f} MB free; "
                          "free some space (or move the project) and run the stage again.")


def remove_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove, anywhere under ``folder``, the temporary files and folders that writes interrupted by
    a kill left behind (named as this module names them); returns what was removed. Only for a
    folder that no writer is using now."""
    removed = []
    for parent, folders, files in os.walk(folder):
        for name in [*folders, *files]:
            if _TEMPORARY.match(name):
                path = Path(parent) / name
                shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
                removed.append(path)
        folders[:] = [name for name in folders if not _TEMPORARY.match(name)]
    return removed
