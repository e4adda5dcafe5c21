"""The stages of dvc.yaml, one module each: a thin read-call-write of the library.

Each module reads its settings from the checked params.yaml (only the sections named by its
``SECTIONS``), reads its inputs from the :class:`~cmhash.pipeline.layout.Layout` paths, calls the
library and writes its outputs there atomically. dvc.yaml lists, for each stage, its module and the
library files it runs, so an edit to one stage's module reruns only that stage
(tests/test_dvc_deps.py measures this).
"""

import importlib

NAMES = ("check_params", "prepare", "validate", "encode", "train", "evaluate", "items", "index", "report")


def __getattr__(name: str):
    # ``stages.prepare`` imports that stage's module on first use: importing this package imports
    # no stage, so a stage's process runs only its own module
    if name in NAMES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
