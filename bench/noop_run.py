"""Benchmark: a scheduled run that has nothing to do, through a real Prefect server and worker.

Run it in a full clone after a complete `dvc repro` (`dvc status` clean). It starts a Prefect
server on a free port of 127.0.0.1 (its own PREFECT_HOME, in a temporary folder), creates a
`process` work pool, deploys prefect.yaml, triggers `cmhash-pipeline/nightly` with the deployment's
parameters and lets one worker (`--run-once`) execute it in this clone, as a GPU machine's worker
would. It records the flow run's own time (Prefect's start and end of the run), the worker's wall
time, the stage outcomes, and how many `dvc repro` stage processes the run started (every Python
process started under the bench logs its arguments through a sitecustomize module).

    python bench/noop_run.py                  # -> bench/results/noop_run.json
    python bench/noop_run.py --runs 3

The run saves an experiment (`dvc exp show` lists it), as every scheduled run does.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from machine import write_results

ROOT = Path(__file__).resolve().parents[1]


def _run(args: list[str], env: dict, cwd: Path) -> str:
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", type=Path, default=ROOT, help="the clone to run in (default: this one)")
    parser.add_argument("--runs", type=int, default=1, help="no-op runs to time (default: 1)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "noop_run.json")
    args = parser.parse_args(argv)
    workspace = args.workspace.resolve()
    status = subprocess.run([sys.executable, "-m", "dvc", "status", "--json"], cwd=workspace, capture_output=True, text=True)
    if status.returncode != 0 or json.loads(status.stdout or "{}") != {}:
        sys.exit(f"{workspace}: dvc status is not clean; run `dvc repro` there first.")
    stages = len(json.loads(subprocess.run([sys.executable, "-c", "import json, sys; from cmhash.orchestration.dvc_state import "
                                            "read_pipeline; print(json.dumps([s.name for s in read_pipeline(sys.argv[1])]))",
                                            str(workspace)], capture_output=True, text=True, check=True).stdout))

    from cmhash.orchestration.prefect_server import temporary_server

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        counter = scratch / "sitecustomize"
        counter.mkdir()
        (counter / "sitecustomize.py").write_text(
            "import os, sys\nif os.environ.get('BENCH_PROCESS_LOG'):\n"
            "    with open(os.environ['BENCH_PROCESS_LOG'], 'a') as log:\n        log.write(' '.join(sys.argv) + '\\n')\n")
        env = {**os.environ, "PREFECT_HOME": str(scratch / "prefect-home"), "DO_NOT_TRACK": "1",
               "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "HF_HUB_OFFLINE": "1", "CMHASH_WORKSPACE": str(workspace),
               "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
        os.environ["PREFECT_HOME"] = env["PREFECT_HOME"]
        with temporary_server() as url:
            env["PREFECT_API_URL"] = url
            _run(["prefect", "work-pool", "create", "bench-pool", "--type", "process"], env, workspace)
            import yaml

            spec = yaml.safe_load((workspace / "prefect.yaml").read_text())
            for deployment in spec["deployments"]:
                deployment["work_pool"]["name"] = "bench-pool"
            deployed = scratch / "prefect.yaml"
            deployed.write_text(yaml.safe_dump(spec))
            _run(["prefect", "--no-prompt", "deploy", "--all", "--prefect-file", str(deployed)], env, workspace)
            import httpx

            runs = []
            for _ in range(args.runs):
                log = scratch / f"processes-{len(runs)}.log"
                triggered = _run(["prefect", "deployment", "run", "cmhash-pipeline/nightly"], env, workspace)
                run_id = re.search(r"flow-run/([0-9a-f-]{36})", triggered)[1]
                started = time.perf_counter()
                subprocess.run(["prefect", "worker", "start", "--pool", "bench-pool", "--run-once"], cwd=scratch,
                               env={**env, "PYTHONPATH": str(counter), "BENCH_PROCESS_LOG": str(log)}, capture_output=True)
                worker_seconds = time.perf_counter() - started
                run = httpx.get(f"{url}/flow_runs/{run_id}", timeout=30).json()
                artifacts = httpx.post(f"{url}/artifacts/filter", timeout=30, json={
                    "artifacts": {"key": {"any_": ["stage-outcomes"]}, "flow_run_id": {"any_": [run_id]}}}).json()
                outcomes = json.loads(artifacts[0]["data"]) if artifacts else []
                processes = [line for line in log.read_text().splitlines()
                             if line.startswith("-m --wait-for-lock repro")] if log.exists() else []
                flow_seconds = (datetime.fromisoformat(run["end_time"]) - datetime.fromisoformat(run["start_time"])).total_seconds()
                runs.append({"state": run["state"]["type"], "flow_seconds": round(flow_seconds, 1),
                             "worker_seconds": round(worker_seconds, 1), "stage_processes": len(processes),
                             "outcomes": {kind: sum(row["outcome"] == kind for row in outcomes)
                                          for kind in sorted({row["outcome"] for row in outcomes})}})
                print(json.dumps(runs[-1]))
    write_results(args.out, stages=stages, runs=runs)
    return 0 if all(run["state"] == "COMPLETED" for run in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
