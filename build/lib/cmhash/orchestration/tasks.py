"""The Prefect task that runs one DVC stage (it lives in the package, not in ``flows/``, so that
Dask workers can import it by name)."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task

from cmhash.orchestration.devices import gpu_lease, visible_gpus
from cmhash.orchestration.dvc_state import PipelineStage
from cmhash.orchestration.stage_process import StageBusy, run_dvc_stage


def _only_when_busy(task, task_run, state) -> bool:
    """Retry a stage whose files another DVC process held (DVC's per-file locks fail at once);
    a stage that failed on its own is not retried: its error is the run's answer."""
    try:
        state.result()
    except StageBusy:
        return True
    except Exception:
        return False
    return False


@task(retries=6, retry_delay_seconds=[2, 5, 10, 20, 40, 60], retry_condition_fn=_only_when_busy)
def run_stage(root: str, stage: PipelineStage, out_of_date: bool = True,
              upstream: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """``dvc repro --single-item STAGE`` in ``root``, on a GPU of its own when it is a GPU stage and
    GPUs are visible. Returns what DVC did (``ran``, ``skipped`` or ``restored``), when, and where.

    A stage that ``dvc status`` found up to date (``out_of_date`` false) and whose ``upstream``
    stages (their results) all skipped reads nothing new: it is recorded as skipped and no process
    is started."""
    logger = get_run_logger()
    if not out_of_date and all(result["outcome"] == "skipped" for result in upstream or []):
        logger.info("%s: skipped (up to date, and nothing it reads changed in this run)", stage.name)
        return {"stage": stage.name, "outcome": "skipped"}
    with gpu_lease(visible_gpus() if stage.gpu else []) as device:
        if device is not None:
            logger.info("%s runs with CUDA_VISIBLE_DEVICES=%s", stage.name, device)
        outcome = run_dvc_stage(root, stage, device, log=logger.info)
    logger.info("%s: %s in %.1f s", stage.name, outcome.outcome, outcome.finished - outcome.started)
    return outcome.as_dict()


def stage_task_runner(kind: str, max_parallel: int, dask_address: str | None = None):
    """Where stage tasks run: ``threads`` (default), ``max_parallel`` at a time on this machine; or
    ``dask``: a Dask cluster at ``dask_address`` (its workers share the workspace, see
    docs/orchestration.md), or without an address a local cluster of ``max_parallel`` one-thread
    worker processes."""
    from cmhash.errors import CmhashError

    if kind == "threads":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=max_parallel)
    if kind == "dask":
        from prefect_dask import DaskTaskRunner

        if dask_address:
            return DaskTaskRunner(address=dask_address)
        return DaskTaskRunner(cluster_kwargs={"n_workers": max_parallel, "threads_per_worker": 1, "processes": True,
                                              "dashboard_address": None})
    raise CmhashError(f"task_runner is {kind!r}; choose threads or dask.")
