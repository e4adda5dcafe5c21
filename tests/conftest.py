"""Shared fixtures: tiny parameters, a tiny open_clip architecture and a tiny prepared dataset."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]

TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def pytest_collection_modifyitems(config, items):
    """The tiers: unit tests (no mark) and ``e2e`` tests run by default; ``slow`` and ``gpu`` tests
    run only when the ``-m`` expression names their mark (``-m slow``, ``-m "gpu or e2e"``), so that
    ``-m "not e2e"`` is the unit tier alone. ``gpu`` tests skip, saying why, where CUDA is not
    available."""
    expression = config.getoption("markexpr") or ""
    left_out = [mark for mark in ("slow", "gpu") if mark not in expression]
    kept, dropped = [], []
    for item in items:
        (dropped if any(item.get_closest_marker(mark) for mark in left_out) else kept).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept
    gpu = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu:
        return
    import torch

    if not torch.cuda.is_available():
        for item in gpu:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device (torch.cuda.is_available() is False here)"))


def tiny_params(clip_config: Path | None = None) -> dict:
    """The project's params.yaml shrunk to seconds: 120 items, short training, two code lengths."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["dataset"]["builtin"] = {"size": 120, "image_size": 64}
    params["dataset"]["split"] = {"query": 20, "train": 60}
    params["encode"]["batch_size"] = 32
    params["encode"]["offline"] = {"image_size": 64}
    if clip_config is not None:
        params["encode"]["backend"] = "open_clip"
        params["encode"]["open_clip"] = {"model": "tiny-clip-test", "pretrained": None, "model_config": str(clip_config)}
    params["train"]["bits"] = [16, 32]
    params["train"]["device"] = "cpu"
    for settings in params["methods"].values():  # every deep method: a few small steps
        for key, tiny in (("hidden", 32), ("width", 16), ("epochs", 2), ("batch_size", 16)):
            if key in settings:
                settings[key] = tiny
    params["evaluate"]["top_r"] = [1, 5, 10, 50]
    from cmhash.pipeline.params import validate_params

    return validate_params(params)  # complete, as the stages get it from load_params


def params_for_dataset(dataset: dict) -> dict:
    """tiny_params() with another ``dataset`` section, checked and completed as load_params does."""
    from cmhash.pipeline.params import validate_params

    return validate_params({**tiny_params(), "dataset": dataset})


@pytest.fixture(scope="session")
def clip_config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("clip") / "tiny-clip-test.json"
    path.write_text(json.dumps(TINY_CLIP))
    return path


@pytest.fixture(scope="session")
def prepared_tiny(tmp_path_factory) -> tuple[dict, Path]:
    """A tiny built-in prepared file, made once; tests that corrupt it work on copies."""
    from cmhash.pipeline import stages
    from cmhash.pipeline.layout import Layout

    root = tmp_path_factory.mktemp("prepared")
    params = tiny_params()
    path = stages.prepare.run(params, Layout(root), progress=False)
    return params, path


@pytest.fixture
def project(tmp_path, prepared_tiny) -> tuple[dict, "Layout"]:  # noqa: F821
    """A fresh project folder holding a copy of the tiny prepared file."""
    from cmhash.pipeline.layout import Layout

    params, source = prepared_tiny
    layout = Layout(tmp_path)
    target = layout.prepared(params["dataset"]["name"])
    target.parent.mkdir(parents=True)
    shutil.copy(source, target)
    return copy.deepcopy(params), layout


# The environment of the dvc, prefect and cmhash commands the tests start: this venv's bin first.
COMMAND_ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               "DVC_NO_ANALYTICS": "1", "DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}


def run_command(args: list[str], cwd: Path, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Run a command; with ``check``, fail the test with its output when it fails."""
    result = subprocess.run(args, cwd=cwd, env=env or COMMAND_ENV, capture_output=True, text=True)
    if check:
        assert result.returncode == 0, f"{' '.join(map(str, args))} failed:\n{result.stdout}\n{result.stderr}"
    return result


def scratch_project(root: Path, params: dict, commit: bool = True) -> Path:
    """A git + DVC repository holding the project's pipeline (dvc.yaml, sources, flows,
    prefect.yaml) and ``params``; committed unless ``commit`` is False."""
    import yaml

    root.mkdir(parents=True, exist_ok=True)
    for name in ("dvc.yaml", "prefect.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(REPO / name, root)
    for folder in ("src", "flows"):
        shutil.copytree(REPO / folder, root / folder, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    run_command(["git", "init", "-q", "-b", "main"], root)
    run_command(["git", "config", "user.email", "test@example.com"], root)
    run_command(["git", "config", "user.name", "test"], root)
    run_command(["dvc", "init", "-q"], root)
    run_command(["dvc", "config", "core.analytics", "false"], root)
    if commit:
        run_command(["git", "add", "-A"], root)
        run_command(["git", "commit", "-qm", "scratch project"], root)
    return root
