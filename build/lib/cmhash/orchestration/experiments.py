"""Every flow run ends as a DVC experiment, named after the flow run.

Why a DVC experiment rather than a commit on a branch: ``dvc exp show`` lists scheduled runs beside
the workspace with their params and metrics, ``dvc exp diff`` / ``cmhash diff`` compare them,
``dvc exp apply`` brings one back, and ``dvc exp push`` / ``dvc exp pull`` move an experiment and
its cached outputs between clones in one command each, all without touching the branches people
work on. An experiment is a git ref (``refs/exps/...``) holding a commit of params.yaml,
``dvc.lock``, the metrics, the plots and the report, on top of the commit the run started from.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from cmhash.errors import CmhashError
from cmhash.orchestration.dvc_state import dvc_command


def experiment_names(root: str | Path) -> set[str]:
    """The names of the experiments this clone holds (any baseline commit)."""
    refs = subprocess.run(["git", "for-each-ref", "--format=%(refname)", "refs/exps"], cwd=root,
                          capture_output=True, text=True, check=True).stdout.split()
    return {ref.rsplit("/", 1)[-1] for ref in refs if ref.count("/") >= 4}  # refs/exps/ab/cdef.../NAME


def name_for_run(flow_run_name: str, flow_run_id: str, taken: set[str]) -> str:
    """The flow run's name; with its id's first 8 characters appended if that name is taken."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", flow_run_name).strip("-.") or "run"
    return name if name not in taken else f"{name}-{flow_run_id.replace('-', '')[:8]}"


def save_experiment(root: str | Path, name: str) -> str:
    """Save the workspace (params, ``dvc.lock``, metrics, plots, report; outputs to the DVC cache)
    as experiment ``name``. ``dvc exp save`` takes the files git tracks; the new ones a run wrote
    are added by name: outputs that ``dvc.lock`` records (metrics, plots and the report live in git,
    not in the DVC cache) and the ``.gitignore`` files DVC writes beside each new cached output."""
    from cmhash.orchestration.dvc_state import lock_entries

    root = Path(root)
    untracked = subprocess.run(["git", "ls-files", "--others", "--exclude-standard", "-z"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.split("\0")
    outputs = {out["path"] for entry in lock_entries(root).values() for out in entry.get("outs") or []}
    paths = sorted(path for path in untracked if path and (Path(path).name == ".gitignore" or path in outputs
                                                           or any(path.startswith(out.rstrip("/") + "/") for out in outputs)))
    include = [argument for path in paths for argument in ("-I", path)]
    result = subprocess.run(dvc_command("exp", "save", "--name", name, *include), cwd=root, capture_output=True, text=True)
    if result.returncode != 0:
        raise CmhashError(f"dvc exp save --name {name} failed in {root}:\n{(result.stdout + result.stderr).strip()}")
    return name


def push_experiment(root: str | Path, name: str, git_remote: str = "origin") -> None:
    """Push the experiment's ref to ``git_remote`` and its outputs and run-cache to the default DVC
    remote, so that another clone can ``dvc exp pull`` it instead of recomputing."""
    result = subprocess.run(dvc_command("exp", "push", "--run-cache", git_remote, name), cwd=root,
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise CmhashError(f"dvc exp push {git_remote} {name} failed in {root}:\n{(result.stdout + result.stderr).strip()}")


def previous_experiments(root: str | Path) -> list[str]:
    """The experiments of this deployment's earlier completed runs that this clone holds, newest
    first: those with the same ``overrides`` as this run first (so that a schedule with overrides is
    compared with its own previous run), then the others. Empty outside a deployment (a run of
    ``python flows/pipeline.py``) or before any run completed."""
    from prefect import runtime
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId, FlowRunFilter, FlowRunFilterId, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort

    deployment_id = runtime.deployment.id
    if not deployment_id:
        return []
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.COMPLETED])),
                                          id=FlowRunFilterId(not_any_=[runtime.flow_run.id])),
            sort=FlowRunSort.END_TIME_DESC, limit=200)
    overrides = runtime.flow_run.parameters.get("overrides")
    same_overrides = [run for run in runs if (run.parameters or {}).get("overrides") == overrides]
    taken = experiment_names(root)
    found = []
    for run in same_overrides + [run for run in runs if run not in same_overrides]:
        plain = name_for_run(run.name, str(run.id), set())
        for name in (name_for_run(run.name, str(run.id), {plain}), plain):  # the suffixed name is this run's if it exists
            if name in taken and name not in found:
                found.append(name)
                break
    return found
