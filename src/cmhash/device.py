"""Choosing the compute device: CUDA when present, the CPU otherwise, the same code on both."""

from __future__ import annotations

import glob
import os
import sys

from cmhash.errors import CmhashError


def _no_gpu_here() -> bool:
    """True when this Linux machine surely has no CUDA device for us (no NVIDIA device files, or
    CUDA_VISIBLE_DEVICES hides them): then ``auto`` needs no torch import, which costs a second or
    more in every short stage. (WSL2 exposes its GPUs as /dev/dxg.)"""
    if os.environ.get("CUDA_VISIBLE_DEVICES", "unset").strip() in ("", "-1"):
        return True
    return sys.platform.startswith("linux") and not glob.glob("/dev/nvidia[0-9]*") and not os.path.exists("/dev/dxg")


def resolve_device(requested: str = "auto") -> str:
    """``auto`` gives ``cuda`` when a GPU is visible, else ``cpu``; explicit names are checked."""
    if requested in (None, "", "auto") and _no_gpu_here():
        return "cpu"
    import torch

    if requested in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise CmhashError(f"device {requested!r} was requested but no CUDA device is visible; use device: auto or cpu.")
    return requested
