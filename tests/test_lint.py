"""The code passes the linter configured in pyproject.toml (ruff: pyflakes, pycodestyle, import order)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO


def test_ruff_finds_nothing():
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    if not Path(ruff).exists():
        pytest.fail("ruff is not installed: python -m pip install -e '.[dev]' installs it")
    result = subprocess.run([ruff, "check", "src", "tests", "flows", "bench"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
