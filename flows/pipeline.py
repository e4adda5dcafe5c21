"""The cmhash pipeline as a Prefect flow: Prefect schedules, DVC decides what runs.

One run of ``cmhash-pipeline``:

1. checks the clone (full history, a git identity; for ``push`` the remotes) and takes the
   workspace, waiting while a ``dvc repro`` or another run works in it;
2. writes the run's ``overrides`` into params.yaml as ``dvc exp run -S`` does, and checks them;
3. runs every stage of dvc.yaml as a task named as DVC names it (``train@djsrh-64``), upstream
   first and ``max_parallel`` at a time (or on a Dask cluster), each by ``dvc repro --single-item``
   in its own process: DVC skips what is up to date and restores what its run-cache has seen;
4. saves the workspace as a DVC experiment named after the flow run (``dvc exp show`` lists it),
   puts params.yaml back as it was, and with ``push`` pushes the experiment and its outputs;
5. publishes the ``metrics-diff`` table against ``baseline`` (default: the experiment of the
   deployment's last completed run, else HEAD) and fails if a cell dropped by more than
   ``regression_threshold``, naming the cells.

Run it once, in Prefect's ephemeral mode, from the project root:  python flows/pipeline.py --help
Deploy it on a schedule:  prefect.yaml and docs/orchestration.md
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Literal

from prefect import flow, runtime
from prefect.artifacts import create_table_artifact
from prefect.futures import wait

from cmhash.errors import CmhashError
from cmhash.metrics_diff import diff_metrics, metrics_at, regressions, render_diff, table_records
from cmhash.orchestration.experiments import experiment_names, name_for_run, previous_experiment, push_experiment, save_experiment
from cmhash.orchestration.graph import read_pipeline
from cmhash.orchestration.tasks import run_stage, stage_task_runner
from cmhash.orchestration.workspace import check_clone, exclusive_workspace, params_for_run


@flow(name="dvc-stages", log_prints=True)
def run_dvc_stages(root: str) -> list[dict[str, Any]]:
    """Every stage of dvc.yaml, each as soon as its upstream stages completed; a failed stage's
    dependents do not run, independent branches finish, and then this flow fails."""
    futures = {}
    for stage in read_pipeline(root):
        futures[stage.name] = run_stage.with_options(task_run_name=stage.name).submit(
            root, stage.name, stage.gpu, wait_for=[futures[name] for name in stage.upstream])
    wait(list(futures.values()))
    outcomes, failures, not_run = [], [], []
    for name, future in futures.items():
        if future.state.is_completed():
            outcomes.append(future.result())
        elif future.state.is_failed():
            failures.append(str(future.result(raise_on_failure=False)))
            outcomes.append({"stage": name, "outcome": "failed"})
        else:
            not_run.append(name)
            outcomes.append({"stage": name, "outcome": "not run (upstream failed)"})
    rows = [{key: outcome.get(key, "") for key in ("stage", "outcome", "started", "finished", "seconds", "gpu")} for outcome in outcomes]
    create_table_artifact(rows, key="stage-outcomes", description="What DVC did with each stage of dvc.yaml in this run.")
    print("stages: " + ", ".join(f"{row['stage']} {row['outcome']}" for row in rows))
    if failures:
        raise CmhashError("\n".join(failures) + (f"\nnot run, as they depend on a failed stage: {', '.join(not_run)}" if not_run else ""))
    return outcomes


@flow(name="cmhash-pipeline", log_prints=True)
def pipeline(
    params_path: str = "params.yaml",
    overrides: dict[str, Any] | None = None,
    max_parallel: int = 2,
    baseline: str | None = None,
    regression_threshold: float = 0.01,
    push: bool = False,
    task_runner: Literal["threads", "dask"] = "threads",
    dask_address: str | None = None,
    workspace_timeout: float = 600,
) -> dict[str, Any]:
    """Reproduce the DVC pipeline of the clone the run starts in and save it as an experiment.

    Args:
        params_path: the parameter file the overrides apply to (relative to the clone).
        overrides: dotted keys and values, applied as `dvc exp run -S KEY=VALUE` applies them.
        max_parallel: independent stages run at the same time (threads, or local Dask workers).
        baseline: the version the metrics are compared with; default: the deployment's last completed run, else HEAD.
        regression_threshold: the run fails if any mAP@all or mAP@50 cell drops by more than this.
        push: push the experiment to the git remote `origin` and its outputs to the default DVC remote.
        task_runner: `threads` on this machine, or `dask` (a local cluster, or the one at dask_address).
        dask_address: the scheduler of an existing Dask cluster whose workers share this workspace.
        workspace_timeout: seconds to wait for another run or `dvc repro` in this workspace before refusing.
    """
    if max_parallel < 1 or regression_threshold < 0:
        raise CmhashError(f"max_parallel must be at least 1 (got {max_parallel}) and regression_threshold at least 0 "
                          f"(got {regression_threshold}).")
    root = Path.cwd()
    check_clone(root, push)
    runner = stage_task_runner(task_runner, max_parallel, dask_address)
    with exclusive_workspace(root, workspace_timeout), params_for_run(root, params_path, overrides):
        outcomes = run_dvc_stages.with_options(task_runner=runner)(str(root))
        name = save_experiment(root, name_for_run(runtime.flow_run.name, str(runtime.flow_run.id), experiment_names(root)))
    print(f"saved as experiment {name} (dvc exp show lists it)")
    if push:
        push_experiment(root, name)
        print(f"pushed experiment {name} to origin and its outputs to the default DVC remote")
    compared_with = baseline or previous_experiment(root) or "HEAD"
    rows = diff_metrics(metrics_at(root, compared_with), metrics_at(root, name), regression_threshold)
    create_table_artifact(table_records(rows), key="metrics-diff",
                          description=f"mAP of experiment {name} against {compared_with}; regression: a drop of more "
                                      f"than {regression_threshold:g}.")
    print(render_diff(rows, compared_with, name, regression_threshold))
    if regressed := regressions(rows):
        raise CmhashError(f"experiment {name} regressed against {compared_with} by more than {regression_threshold:g}: "
                          + "; ".join(regressed))
    return {"experiment": name, "baseline": compared_with, "stages": outcomes}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the cmhash pipeline once as a Prefect flow (ephemeral mode "
                                                 "unless PREFECT_API_URL names a server), from the project root.")
    parser.add_argument("--params", default="params.yaml", help="parameter file the overrides apply to")
    parser.add_argument("-S", "--set-param", action="append", default=[], metavar="KEY=VALUE",
                        help="override a parameter for this run, as `dvc exp run -S` does (repeatable)")
    parser.add_argument("--max-parallel", type=int, default=2, help="stages run at the same time (default: 2)")
    parser.add_argument("--baseline", help="version to compare the metrics with (default: HEAD)")
    parser.add_argument("--regression-threshold", type=float, default=0.01, help="fail on a larger mAP drop (default: 0.01)")
    parser.add_argument("--push", action="store_true", help="push the experiment and its outputs")
    parser.add_argument("--task-runner", choices=("threads", "dask"), default="threads")
    parser.add_argument("--dask-address", help="scheduler address of an existing Dask cluster")
    parser.add_argument("--workspace-timeout", type=float, default=600,
                        help="seconds to wait for a dvc repro or another run in this clone before refusing (default: 600)")
    args = parser.parse_args(argv)
    if bad := [item for item in args.set_param if "=" not in item]:
        parser.error(f"-S takes KEY=VALUE, got {', '.join(bad)}")
    overrides = dict(item.split("=", 1) for item in args.set_param)
    state = pipeline(args.params, overrides, args.max_parallel, args.baseline, args.regression_threshold, args.push,
                     args.task_runner, args.dask_address, args.workspace_timeout, return_state=True)
    if not state.is_completed():
        print(f"cmhash-pipeline: {state.message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
