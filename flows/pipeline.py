"""The cmhash pipeline as a Prefect flow: Prefect schedules, DVC decides what runs.

One run of ``cmhash-pipeline``:

1. checks the clone (full history, a git identity; for ``push`` the remotes) and takes the
   workspace, waiting while a ``dvc repro`` or another run works in it; puts back what a killed
   run left in a parameter file (or refuses, if it was edited since) and removes the half-written
   files of killed stages;
2. writes the run's ``overrides`` into params.yaml as ``dvc exp run -S`` does, and checks them;
3. asks DVC once (``dvc status``) which stages are out of date, and runs those and their downstream
   stages as tasks named as DVC names them (``train@djsrh-64``), upstream first and
   ``max_parallel`` at a time (or on a Dask cluster), each by ``dvc repro --single-item`` in its
   own process: DVC skips what is up to date and restores what its run-cache has seen; every
   other stage is recorded as skipped without starting a process;
4. saves the workspace as a DVC experiment named after the flow run (``dvc exp show`` lists it),
   puts params.yaml back as it was, and with ``push`` pushes the experiment and its outputs;
5. publishes the ``metrics-diff`` table against ``baseline`` (default: the experiment of the
   deployment's last completed run with the same data and evaluation settings, else HEAD) and
   fails if a cell dropped by more than ``regression_threshold``, naming the cells.

Every stage process, and the temporary Prefect server of ``python flows/pipeline.py``, runs under a
lifeline (``cmhash.orchestration.lifeline``): when this process ends, however it ends, they end too.

Run it once, in Prefect's ephemeral mode, from the project root:  python flows/pipeline.py --help
Deploy it on a schedule:  prefect.yaml and docs/orchestration.md
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any, Literal

from prefect import flow, runtime
from prefect.artifacts import create_table_artifact
from prefect.futures import wait
from prefect.states import Failed, State

from cmhash.errors import CmhashError, quote
from cmhash.orchestration.dvc_state import out_of_date, read_pipeline
from cmhash.orchestration.experiments import experiment_names, name_for_run, previous_experiments, push_experiment, save_experiment
from cmhash.orchestration.refusals import refused
from cmhash.orchestration.stage_process import end_running_stages
from cmhash.orchestration.tasks import run_stage, stage_task_runner
from cmhash.orchestration.workspace import check_clone, exclusive_workspace, params_for_run, recover_params, remove_leftover_temporaries
from cmhash.pipeline.metrics_diff import (
    FEATURES_DIFFER,
    check_threshold,
    diff_metrics,
    header_lines,
    metrics_at,
    regressions,
    render_diff,
    settings_differences,
    table_records,
)
from cmhash.pipeline.params_file import parse_overrides

OUTCOME_COLUMNS = ("stage", "outcome", "started", "finished", "seconds", "gpu")


def _publish_outcomes(rows: list[dict[str, Any]]) -> None:
    rows = [{key: row.get(key, "") for key in OUTCOME_COLUMNS} for row in rows]
    create_table_artifact(rows, key="stage-outcomes", description="What DVC did with each stage of dvc.yaml in this run "
                          "(skipped with no time: up to date by dvc status, no process started).")
    print("stages: " + ", ".join(f"{row['stage']} {row['outcome']}" for row in rows))


@flow(name="dvc-stages", log_prints=True)
def run_dvc_stages(root: str, to_run: list[str], out_of_date: list[str]) -> list[dict[str, Any]] | State:
    """The stages named in ``to_run`` (those ``dvc status`` found ``out_of_date`` and their downstream
    stages; the others are recorded as skipped), each as soon as its upstream stages completed; a
    failed stage's dependents do not run, independent branches finish, and then this flow fails with
    their messages (a Failed state, not an exception: the stage tasks logged their own errors)."""
    futures, outcomes, failures, not_run = {}, [], [], []
    stages = read_pipeline(root)  # read again here, not passed: a flow's parameters are stored by the API
    for stage in stages:
        if stage.name in to_run:
            futures[stage.name] = run_stage.with_options(task_run_name=stage.name).submit(
                root, stage, stage.name in out_of_date, [futures[name] for name in stage.upstream if name in futures])
    try:
        wait(list(futures.values()))
    except BaseException:  # SIGTERM (Prefect raises it here), Ctrl-C, a cancellation: end the stages now,
        end_running_stages()  # instead of letting the task runner wait for them to finish
        raise
    for stage in stages:
        future = futures.get(stage.name)
        if future is None:
            outcomes.append({"stage": stage.name, "outcome": "skipped"})
        elif future.state.is_completed():
            outcomes.append(future.result())
        elif future.state.is_failed():
            failures.append(str(future.result(raise_on_failure=False)))
            outcomes.append({"stage": stage.name, "outcome": "failed"})
        else:
            not_run.append(stage.name)
            outcomes.append({"stage": stage.name, "outcome": "not run (upstream failed)"})
    _publish_outcomes(outcomes)
    if failures:
        return Failed(message="\n".join(failures) + (f"\nnot run, as they depend on a failed stage: {', '.join(not_run)}" if not_run else ""))
    return outcomes


def _with_downstream(stages, names: set[str]) -> set[str]:
    """``names`` and every stage downstream of one of them (stages come upstream first)."""
    selected = set(names)
    for stage in stages:
        if any(upstream in selected for upstream in stage.upstream):
            selected.add(stage.name)
    return selected


def _output_folders(root: Path, stages) -> list[str]:
    """The top folders of the stages' outputs (data, metrics, plots, reports), relative to the clone."""
    root = root.resolve()
    folders = set()
    for stage in stages:
        for path in stage.outs:
            try:
                folders.add(Path(path).resolve().relative_to(root).parts[0])
            except (ValueError, IndexError):
                continue
    return sorted(folders)


def _comparable_baseline(root: Path, candidates: list[str], new) -> tuple[str, Any]:
    """The first candidate version with the new version's data and evaluation settings, and its
    metrics; the first candidate when none has them (its diff then says it is not comparable)."""
    first = None
    for candidate in candidates:
        old = metrics_at(root, candidate)
        first = first or (candidate, old)
        if not settings_differences(old.settings, new.settings):
            return candidate, old
    return first


@flow(name="cmhash-pipeline", log_prints=True)
def pipeline(
    overrides: dict[str, Any] | None = None,
    max_parallel: int = 2,
    baseline: str | None = None,
    regression_threshold: float = 0.01,
    push: bool = False,
    task_runner: Literal["threads", "dask"] = "threads",
    dask_address: str | None = None,
    workspace_timeout: float = 600,
) -> dict[str, Any] | State:
    """Reproduce the DVC pipeline of the clone the run starts in and save it as an experiment.

    Args:
        overrides: dotted keys and plain values, written into params.yaml (the file every stage reads) as
            `dvc exp run -S KEY=VALUE` writes them (no `${...}`).
        max_parallel: independent stages run at the same time (threads, or local Dask workers).
        baseline: the version the metrics are compared with; default: the deployment's last completed run with
            the same data and evaluation settings, else HEAD.
        regression_threshold: the run fails if any mAP@all or mAP@k cell (each k of evaluate.map_ks) drops by more than this (finite, at least 0).
        push: push the experiment to the git remote `origin` and its outputs to the default DVC remote.
        task_runner: `threads` on this machine, or `dask` (a local cluster, or the one at dask_address).
        dask_address: the scheduler of an existing Dask cluster whose workers share this workspace.
        workspace_timeout: seconds to wait for another run or `dvc repro` in this workspace before refusing.
    """
    try:
        return _reproduce_and_compare(overrides, max_parallel, baseline, regression_threshold, push, task_runner,
                                      dask_address, workspace_timeout)
    except CmhashError as refusal:  # an expected refusal: Failed, with its message alone (unexpected errors keep their traceback)
        return refused(refusal)


def _reproduce_and_compare(overrides: dict[str, Any] | None, max_parallel: int, baseline: str | None,
                           regression_threshold: float, push: bool, task_runner: str, dask_address: str | None,
                           workspace_timeout: float) -> dict[str, Any]:
    """The run of :func:`pipeline`, whose docstring says what each argument means."""
    if isinstance(max_parallel, bool) or not isinstance(max_parallel, int) or not 1 <= max_parallel <= 1024:
        raise CmhashError(f"max_parallel is {quote(max_parallel)}; expected a whole number from 1 to 1024.")
    regression_threshold = check_threshold(regression_threshold)
    if isinstance(workspace_timeout, bool) or not isinstance(workspace_timeout, (int, float)) or not (
            math.isfinite(workspace_timeout) and workspace_timeout >= 0):
        raise CmhashError(f"workspace_timeout is {quote(workspace_timeout)}; expected a finite number of seconds, at least 0.")
    root = Path.cwd()
    check_clone(root, push)
    runner = stage_task_runner(task_runner, max_parallel, dask_address)
    with exclusive_workspace(root, workspace_timeout):
        for done in recover_params(root):
            print(done)
        with params_for_run(root, overrides, run=runtime.flow_run.name or ""):
            stages = read_pipeline(root)
            for leftover in remove_leftover_temporaries(root, _output_folders(root, stages)):
                print(f"removed {leftover}: left half-written by a stage that was killed")
            stale = out_of_date(root)
            to_run = _with_downstream(stages, stale)
            print(f"dvc status: {len(stale)} of {len(stages)} stages out of date, {len(to_run) - len(stale)} downstream of them")
            if to_run:
                state = run_dvc_stages.with_options(task_runner=runner)(str(root), sorted(to_run), sorted(stale), return_state=True)
                if not state.is_completed():
                    raise CmhashError(state.message or "the stages did not complete")
                outcomes = state.result()
            else:
                outcomes = [{"stage": stage.name, "outcome": "skipped"} for stage in stages]
                _publish_outcomes(outcomes)
            name = save_experiment(root, name_for_run(runtime.flow_run.name, str(runtime.flow_run.id), experiment_names(root)))
    print(f"saved as experiment {name} (dvc exp show lists it)")
    if push:
        push_experiment(root, name)
        print(f"pushed experiment {name} to origin and its outputs to the default DVC remote")
    new = metrics_at(root, name)
    compared_with, old = _comparable_baseline(root, [baseline] if baseline else [*previous_experiments(root)[:20], "HEAD"], new)
    diff = diff_metrics(old, new, regression_threshold)
    create_table_artifact(table_records(diff), key="metrics-diff", description=" ".join(header_lines(diff)))
    print(render_diff(diff))
    if diff.unreadable:
        raise CmhashError(f"experiment {name}: metrics file(s) could not be read: " + "; ".join(diff.unreadable))
    if regressed := regressions(diff):
        raise CmhashError(f"experiment {name} regressed against {compared_with} by more than {regression_threshold:g}: "
                          + "; ".join(regressed) + (f" ({FEATURES_DIFFER})" if diff.features_differ else ""))
    return {"experiment": name, "baseline": compared_with, "comparable": not diff.not_comparable, "stages": outcomes}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the cmhash pipeline once as a Prefect flow, from the project root: "
                                                 "against the server of PREFECT_API_URL, or else a temporary one started "
                                                 "here (and stopped with this process).")
    parser.add_argument("-S", "--set-param", action="append", default=[], metavar="KEY=VALUE",
                        help="override a parameter of params.yaml for this run, as `dvc exp run -S` does (repeatable)")
    parser.add_argument("--max-parallel", type=int, default=2, help="stages run at the same time (default: 2)")
    parser.add_argument("--baseline", help="version to compare the metrics with (default: HEAD)")
    parser.add_argument("--regression-threshold", type=float, default=0.01,
                        help="fail on a larger mAP drop: a finite number of at least 0 (default: 0.01)")
    parser.add_argument("--push", action="store_true", help="push the experiment and its outputs")
    parser.add_argument("--task-runner", choices=("threads", "dask"), default="threads")
    parser.add_argument("--dask-address", help="scheduler address of an existing Dask cluster")
    parser.add_argument("--workspace-timeout", type=float, default=600,
                        help="seconds to wait for a dvc repro or another run in this clone before refusing (default: 600)")
    args = parser.parse_args(argv)
    overrides: dict[str, str] = {}
    for item in args.set_param:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"-S takes KEY=VALUE, got {quote(item)}")
        if key in overrides:
            parser.error(f"-S {quote(key)} is given twice")
        overrides[key] = value
    try:
        check_threshold(args.regression_threshold, "--regression-threshold")
        parse_overrides(overrides)  # a bad -S is refused here, before a server starts; the flow checks them again
    except CmhashError as err:
        parser.error(str(err))
    from cmhash.orchestration.prefect_server import api_for_this_process

    with api_for_this_process():
        state = pipeline(overrides, args.max_parallel, args.baseline, args.regression_threshold, args.push,
                         args.task_runner, args.dask_address, args.workspace_timeout, return_state=True)
    if not state.is_completed():
        print(f"cmhash-pipeline: {state.message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
