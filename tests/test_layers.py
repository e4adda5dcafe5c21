"""The package's layers (see cmhash/__init__.py): the library stands alone, each layer imports only the
layers below it, and no unit of the package imports one that imports it back."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

PACKAGE = REPO / "src" / "cmhash"
# lowest first; a unit may import its own layer and those before it
LAYERS = ("library", "service", "pipeline", "orchestration")
APPLICATION_DEPENDENCIES = ("dvc", "prefect", "prefect_dask", "fastapi", "starlette", "uvicorn", "great_expectations")


def _unit(module: str) -> str:
    """The unit of a cmhash module: a subpackage (``cmhash.methods``) or a top-level module."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else module


def _layer(unit: str) -> str:
    name = unit.removeprefix("cmhash.")
    return name if name in LAYERS[1:] else "library"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """{module: the cmhash modules it imports anywhere in its text (functions included)}."""
    found: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        name = _module_name(path)
        found[name] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found[name] |= {alias.name for alias in node.names if alias.name.startswith("cmhash")}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.startswith("cmhash"):
                found[name].add(node.module)
    return found


def test_each_layer_imports_only_the_layers_below_it():
    wrong = sorted(f"{module} ({_layer(_unit(module))}) imports {target} ({_layer(_unit(target))})"
                   for module, targets in _imports().items() for target in targets
                   if LAYERS.index(_layer(_unit(target))) > LAYERS.index(_layer(_unit(module))))
    assert wrong == []


def test_no_import_cycles_between_the_units_of_the_package():
    graph: dict[str, set[str]] = {}
    for module, targets in _imports().items():
        graph.setdefault(_unit(module), set()).update(_unit(t) for t in targets if _unit(t) != _unit(module))
    # depth-first search for a back edge
    state: dict[str, str] = {}

    def visit(unit: str, path: list[str]) -> list[str] | None:
        state[unit] = "open"
        for target in sorted(graph.get(unit, ())):
            if state.get(target) == "open":
                return path[path.index(target):] + [unit, target] if target in path else [unit, target]
            if target not in state and (cycle := visit(target, path + [unit])):
                return cycle
        state[unit] = "done"
        return None

    cycles = [cycle for unit in sorted(graph) if unit not in state and (cycle := visit(unit, []))]
    assert cycles == []


# Imports every library module with the application dependencies made unimportable, then runs the
# library's path on tiny data: a dataset prepared, a method fitted, codes written and an index searched.
_STANDALONE = f"""
import importlib, pkgutil, sys, tempfile
from pathlib import Path

class Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {APPLICATION_DEPENDENCIES!r}:
            raise ImportError(f"{{name}} is blocked: the library must not need it")

sys.meta_path.insert(0, Blocked())
import cmhash
for info in pkgutil.walk_packages(cmhash.__path__, "cmhash."):
    if info.name.split(".")[1] not in ("service", "pipeline", "orchestration"):
        importlib.import_module(info.name)

import numpy as np
from cmhash.codes import SplitCodes, read_codes, write_codes
from cmhash.datasets import prepare_dataset
from cmhash.datasets.settings import DatasetSettings
from cmhash.datasets.prepared import PreparedData
from cmhash.methods import build_method
from cmhash.search import HammingIndex

out = Path(tempfile.mkdtemp())
dataset = DatasetSettings(name="builtin", split={{"query": 20, "train": 50}}, builtin={{"size": 120, "image_size": 64}})
prepare_dataset(dataset, out / "tiny.h5", progress=False)
with PreparedData(out / "tiny.h5") as data:
    labels, splits = data.labels, data.splits
rng = np.random.default_rng(0)
images, texts = rng.normal(size=(len(labels), 32)).astype("float32"), rng.normal(size=(len(labels), 32)).astype("float32")
model = build_method("lsh", 32, {{}}, seed=0, device="cpu").fit(images[splits["train"]], texts[splits["train"]])
codes = {{part: SplitCodes(index=splits[part], images=model.encode(images=images[splits[part]]),
                           texts=model.encode(texts=texts[splits[part]])) for part in ("query", "retrieval")}}
write_codes(out / "codes.h5", "lsh", 32, codes, "0" * 32)
retrieval = read_codes(out / "codes.h5")["retrieval"]
index = HammingIndex(retrieval.images)
distances, ids = index.search(codes["query"].texts[:3], 5)
assert ids.shape == (3, 5) and (distances >= 0).all()
blocked = sorted(name for name in sys.modules if name.split(".")[0] in {APPLICATION_DEPENDENCIES!r})
assert not blocked, blocked
print("ok")
"""


@pytest.mark.e2e  # a fresh interpreter importing the whole library
def test_the_library_stands_alone_without_the_application_dependencies():
    result = subprocess.run([sys.executable, "-c", _STANDALONE], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]
