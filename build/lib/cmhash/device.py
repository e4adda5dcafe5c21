"""Choosing the compute device: CUDA when present, the CPU otherwise, the same code on both."""

from __future__ import annotations

from cmhash.errors import CmhashError


def resolve_device(requested: str = "auto") -> str:
    """``auto`` gives ``cuda`` when a GPU is visible, else ``cpu``; explicit names are checked."""
    import torch

    if requested in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise CmhashError(f"device {requested!r} was requested but no CUDA device is visible; use device: auto or cpu.")
    return requested
