"""What the benchmarks record about the machine they ran on, so that results can be told apart."""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path


def cpu_model() -> str:
    """The processor's model name (Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_machine() -> dict:
    import numba
    import numpy

    return {"cpu": cpu_model(), "cpus": os.cpu_count(), "numba_threads": numba.get_num_threads(),
            "python": platform.python_version(), "numpy": numpy.__version__, "numba": numba.__version__}


def write_results(path: Path, **results) -> None:
    """``results`` as JSON at ``path``, with the command that made them and the machine they ran on."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"command": " ".join(["python", *sys.argv]), "machine": describe_machine(), **results},
                               indent=2) + "\n")
    print(f"wrote {path}")
