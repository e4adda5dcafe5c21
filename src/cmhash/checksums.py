"""Content checksums: what a file was made from is recorded by the md5 of that file's content (not
its path or modification time), so that outputs can be checked against their inputs."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import BinaryIO


def file_md5(path: str | Path, block: int = 1 << 24) -> str:
    with open(path, "rb") as handle:
        return open_file_md5(handle, block)


def open_file_md5(handle: BinaryIO, block: int = 1 << 24) -> str:
    """The md5 of a file already open for binary reading, read from its start (so that what is
    checked is what is then read through the same handle)."""
    digest = hashlib.md5()
    handle.seek(0)
    while chunk := handle.read(block):
        digest.update(chunk)
    return digest.hexdigest()
