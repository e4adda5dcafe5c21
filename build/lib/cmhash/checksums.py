"""Content checksums: what a file was made from is recorded by the md5 of that file's content (not
its path or modification time), so that outputs can be checked against their inputs."""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_md5(path: str | Path, block: int = 1 << 24) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        while chunk := handle.read(block):
            digest.update(chunk)
    return digest.hexdigest()
