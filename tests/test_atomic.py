"""Atomic writes: whole files or none, created with the mode the umask gives any new file."""

import os
import stat

import pytest

from cmhash.atomic import atomic_path, write_text


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_outputs_honour_the_umask(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        write_text(tmp_path / "out.txt", "hello")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "out.txt").stat().st_mode) == mode


def test_a_failed_write_leaves_nothing(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["out.txt"]
