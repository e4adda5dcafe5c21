"""The cmhash pipeline as a Prefect flow: the same stages as dvc.yaml, for scheduled GPU workers.

Each task calls the same library function (``cmhash.stages``) that the DVC stage's ``cmhash``
command calls, and writes to the same paths. We call the functions rather than shelling out to
``dvc repro <stage>`` so that a worker needs neither a git checkout nor a DVC cache, each
train/evaluate pair is its own task with its own retries and logs, and the flow runs in Prefect's
test harness on tiny data. DVC stays the record of versions: in a checkout, `dvc commit` after a
flow run (or a plain `dvc repro`) records what the flow produced.

Run it once, in Prefect's ephemeral mode:   python flows/pipeline.py
Deploy it on a schedule:                     see prefect.yaml and docs/orchestration.md
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from prefect import flow, task

from cmhash import stages
from cmhash.layout import Layout
from cmhash.params import load_params


@task(name="prepare")
def prepare(params: dict[str, Any], root: str) -> str:
    return str(stages.prepare(params, Layout(Path(root)), progress=False))


@task(name="validate")
def validate(params: dict[str, Any], root: str) -> dict[str, Any]:
    report = stages.validate(params, Layout(Path(root)))  # raises ValidationFailed: the flow stops here
    return {"evaluated": report["evaluated"], "failed": report["failed"]}


@task(name="encode")
def encode(params: dict[str, Any], root: str) -> str:
    return str(stages.encode(params, Layout(Path(root)), progress=False))


@task(name="train", task_run_name="train {method}-{bits}", retries=1)
def train(params: dict[str, Any], root: str, method: str, bits: int) -> str:
    return str(stages.train(params, Layout(Path(root)), method, bits, progress=False))


@task(name="evaluate", task_run_name="evaluate {method}-{bits}")
def evaluate(params: dict[str, Any], root: str, method: str, bits: int) -> dict[str, Any]:
    return stages.evaluate(params, Layout(Path(root)), method, bits)


@task(name="report")
def report(params: dict[str, Any], root: str) -> str:
    return str(stages.report(params, Layout(Path(root))))


@flow(name="cmhash-pipeline", log_prints=True)
def pipeline(params_path: str = "params.yaml", root: str = ".") -> dict[str, Any]:
    """prepare -> validate -> encode -> train and evaluate every method at every code length -> report."""
    params = load_params(params_path)
    prepare(params, root)
    validate(params, root)
    encode(params, root)
    results = {}
    for method in params["train"]["methods"]:
        for bits in params["train"]["bits"]:
            train(params, root, method, int(bits))
            results[f"{method}-{bits}"] = evaluate(params, root, method, int(bits))
            print(f"{method}-{bits}: {results[f'{method}-{bits}']}")
    print(f"results table: {report(params, root)}")
    return results


if __name__ == "__main__":
    pipeline(*sys.argv[1:3])
