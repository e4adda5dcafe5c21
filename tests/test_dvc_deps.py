"""dvc.yaml's code dependencies match the code each stage runs.

Each stage runs once on tiny data with a profiler hook that records every cmhash source file whose
functions execute; the files those import at module level are added, transitively. That closure
must be covered by the stage's declared deps (so an edit there reruns the stage), and every source
file declared must be in the closure of some item of the stage (so an edit elsewhere does not).
"""

import ast
import functools
import importlib
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, scratch_project, tiny_params

from cmhash.pipeline.layout import Layout
from cmhash.pipeline.params import validate_params

pytestmark = pytest.mark.e2e  # every stage run under a profiler, and the schema imported in fresh interpreters

SRC = REPO / "src"
# Modules that cannot change what a stage writes: the exceptions and how their messages print.
NO_EFFECT_ON_OUTPUTS = {"src/cmhash/errors.py"}
METHODS = ["lsh", "djsrh", "dcmht", "clipmh"]  # a projection, a network, a supervised and a fused method


def _executed(function, *args) -> set[str]:
    """The cmhash source files whose code runs during ``function(*args)``."""
    seen: set[str] = set()
    root = str(SRC / "cmhash")

    def hook(frame, event, arg):
        if event == "call" and frame.f_code.co_filename.startswith(root):
            seen.add(frame.f_code.co_filename)

    sys.setprofile(hook)
    try:
        function(*args)
    finally:
        sys.setprofile(None)
    return {Path(path).relative_to(REPO).as_posix() for path in seen}


def _module_file(module: str) -> str | None:
    parts = module.split(".")
    for candidate in (SRC.joinpath(*parts).with_suffix(".py"), SRC.joinpath(*parts, "__init__.py")):
        if candidate.is_file():
            return candidate.relative_to(REPO).as_posix()
    return None


def _top_level_imports(path: str) -> set[str]:
    """The cmhash files ``path`` imports when it is imported (module-level statements, not those
    inside functions or ``if TYPE_CHECKING``), packages' __init__ files included."""
    found = set()
    for node in ast.parse((REPO / path).read_text()).body:
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            if name == "cmhash" or name.startswith("cmhash."):
                parts = name.split(".")
                found |= {file for i in range(1, len(parts) + 1) if (file := _module_file(".".join(parts[:i])))}
    return found


def _packages(path: str) -> set[str]:
    """The __init__ files Python runs before the module at ``path``: its packages'."""
    parents = Path(path).parents
    return {(parent / "__init__.py").as_posix() for parent in parents if (REPO / parent / "__init__.py").is_file()}


def _closure(files: set[str]) -> set[str]:
    todo, done = list(files), set()
    while todo:
        path = todo.pop()
        if path not in done:
            done.add(path)
            todo += sorted((_top_level_imports(path) | _packages(path)) - done)
    return done - NO_EFFECT_ON_OUTPUTS


@functools.cache
def _schema_files(sections: tuple[str, ...]) -> frozenset[str]:
    """The cmhash files that checking ``sections`` of params.yaml imports, in a fresh interpreter (the
    schema is built once per process and imports what it needs inside functions)."""
    code = ("import sys\nfrom cmhash.pipeline.params import validate_params\n"
            f"validate_params({{'dataset': {{'name': 'builtin'}}}}, sections={sections!r})\n"
            "print('\\n'.join(m.__file__ for n, m in list(sys.modules.items()) if n.startswith('cmhash')))")
    files = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    return frozenset(Path(path).relative_to(REPO).as_posix() for path in files)


def _stage(name: str, raw: dict, *args) -> set[str]:
    """The closure of one run of stage ``name`` as its command runs it: params.yaml checked (the
    sections the stage reads), then the stage's module run."""
    module = importlib.import_module(f"cmhash.pipeline.stages.{name}")
    ran = _executed(lambda: module.run(validate_params(raw, sections=module.SECTIONS), *args))
    return _closure(ran | _schema_files(module.SECTIONS) | {Path(module.__file__).relative_to(REPO).as_posix()})


@pytest.fixture(scope="module")
def closures(tmp_path_factory, clip_config):
    """{stage name as in dvc.yaml: closure} for a run of every stage on tiny data (encode with
    either backend)."""
    params = tiny_params()
    params["train"]["methods"], params["train"]["bits"] = METHODS, [16]
    layout = Layout(tmp_path_factory.mktemp("closures"))
    runs = {"check-params": _stage("check_params", params, layout),
            "prepare": _stage("prepare", params, layout, False),
            "validate": _stage("validate", params, layout)}
    runs["encode"] = _stage("encode", tiny_params(clip_config), layout, False) | _stage("encode", params, layout, False)
    for method in METHODS:
        runs[f"train@{method}-16"] = _stage("train", params, layout, method, 16, False)
    runs["evaluate"] = _stage("evaluate", params, layout, None, False)
    runs["items"] = _stage("items", params, layout, False)
    runs["index"] = _stage("index", params, layout)  # after items: each index records the catalog it was built with
    runs["report"] = _stage("report", params, layout)
    return runs


@pytest.fixture(scope="module")
def declared(tmp_path_factory):
    """{stage: its declared source deps}, as DVC expands dvc.yaml for the same methods."""
    from dvc.repo import Repo

    params = tiny_params()
    params["train"]["methods"], params["train"]["bits"] = METHODS, [16]
    project = scratch_project(tmp_path_factory.mktemp("declared"), params)
    with Repo(str(project)) as repo:
        return {stage.addressing.rpartition(":")[2]: {dep.def_path for dep in stage.deps if dep.def_path.startswith("src/")}
                for stage in repo.index.stages}


def _covered(path: str, deps: set[str]) -> bool:
    return any(path == dep or path.startswith(dep.rstrip("/") + "/") for dep in deps)


def test_every_file_a_stage_runs_is_a_declared_dependency(closures, declared):
    missing = {stage: sorted(path for path in files if not _covered(path, declared[stage]))
               for stage, files in closures.items()}
    assert {stage: paths for stage, paths in missing.items() if paths} == {}


def test_no_stage_declares_code_it_does_not_run(closures, declared):
    """A dependency of a matrix stage (train@*, ...) counts when some item of the matrix runs it."""
    by_kind: dict[str, set[str]] = {}
    for stage, files in closures.items():
        by_kind.setdefault(stage.split("@")[0], set()).update(files)
    unused = {}
    for stage, deps in declared.items():
        ran = by_kind[stage.split("@")[0]]
        extra = [dep for dep in deps if not any(path == dep or path.startswith(dep.rstrip("/") + "/") for path in ran)]
        if extra:
            unused[stage] = extra
    assert unused == {}


def test_a_stage_module_is_a_dependency_of_its_own_stage_only(declared):
    """An edit to one stage's module makes only that stage's entries stale."""
    for stage, deps in declared.items():
        kind = stage.split("@")[0].replace("-", "_")
        modules = {dep for dep in deps if dep.startswith("src/cmhash/pipeline/stages/") and not dep.endswith("__init__.py")}
        assert modules == {f"src/cmhash/pipeline/stages/{kind}.py"}, stage
