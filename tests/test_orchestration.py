"""The scheduled pipeline: the Prefect flow drives the DVC pipeline, on a real Prefect server and a
`process` worker started here on 127.0.0.1, in scratch clones of the project."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml
from conftest import COMMAND_ENV, REPO, run_command, scratch_project, tiny_params

pytestmark = pytest.mark.e2e  # a real Prefect server and process worker, deployments and flow runs

# The deployment tests run the project's own params.yaml with these overrides, as a team would
# schedule a quick run: 400 items, three methods (baseline, unsupervised, supervised) at 16 bits.
METHODS = ["lsh", "djsrh", "dcmht"]


def tiny_overrides(methods=METHODS, bits=(16,)) -> dict:
    """Dotted keys and values that turn the project's params.yaml into a run of seconds."""
    params = tiny_params()
    params["dataset"]["builtin"] = {"size": 400, "image_size": 64}
    params["dataset"]["split"] = {"query": 80, "train": 200}
    params["train"]["methods"], params["train"]["bits"] = list(methods), list(bits)
    params["methods"]["dcmht"]["epochs"] = 30  # enough for a score that one epoch clearly falls below
    project = yaml.safe_load((REPO / "params.yaml").read_text())

    def differences(new, old, prefix=""):
        for key, value in new.items():
            if isinstance(value, dict) and isinstance(old.get(key), dict):
                yield from differences(value, old[key], f"{prefix}{key}.")
            elif value != old.get(key):
                yield f"{prefix}{key}", value

    return {key: value for key, value in differences(params, project)
            if not key.startswith("methods.") or key.split(".")[1] in methods}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    """`prefect server start` on a free port of 127.0.0.1 with its own PREFECT_HOME; yields the
    environment that points prefect commands (and flows) at it."""
    home = tmp_path_factory.mktemp("prefect-home")
    port = _free_port()
    env = {**COMMAND_ENV, "PREFECT_HOME": str(home), "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
           "HF_HUB_OFFLINE": "1", "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90"}
    with open(home / "server.log", "w") as log:
        server = subprocess.Popen(["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)], env=env,
                                  stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"prefect server did not start:\n{(home / 'server.log').read_text()[-3000:]}")
            time.sleep(1)
        yield env
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(60)


def _api(env, method, path, **kwargs):
    response = httpx.request(method, env["PREFECT_API_URL"] + path, timeout=30, **kwargs)
    response.raise_for_status()
    return response.json()


def _flow_run(env, run_id) -> dict:
    return _api(env, "GET", f"/flow_runs/{run_id}")


def _latest_artifact(env, key, flow_run_id=None) -> list[dict]:
    filters = {"key": {"any_": [key]}}
    if flow_run_id:
        filters["flow_run_id"] = {"any_": [flow_run_id]}
    found = _api(env, "POST", "/artifacts/filter", json={"artifacts": filters, "sort": "CREATED_DESC", "limit": 1})
    assert found, f"no {key} artifact"
    return json.loads(found[0]["data"])


class Deployment:
    """The project deployed from prefect.yaml out of a full clone (the worker's workspace)."""

    def __init__(self, workspace: Path, env: dict, elsewhere: Path):
        self.workspace, self.env, self.elsewhere = workspace, env, elsewhere

    def run(self, parameters: dict, env: dict | None = None) -> dict:
        """Trigger cmhash-pipeline/nightly, let one worker execute it (started outside the clone:
        the deployment's pull step finds the workspace), return the finished flow run."""
        triggered = run_command(["prefect", "deployment", "run", "cmhash-pipeline/nightly", "--params",
                                 json.dumps(parameters)], self.workspace, self.env).stdout
        run_id = re.search(r"flow-run/([0-9a-f-]{36})", triggered)[1]
        worker = run_command(["prefect", "worker", "start", "--pool", "gpu", "--run-once"], self.elsewhere,
                             {**self.env, **(env or {})}, check=False)
        run = _flow_run(self.env, run_id)
        run["worker_output"] = worker.stdout + worker.stderr
        return run

    def stage_outcomes(self) -> dict[str, str]:
        return {row["stage"]: row["outcome"] for row in _latest_artifact(self.env, "stage-outcomes")}


def _worker_clone(origin: Path, workspace: Path, prefect_env: dict, pool: str) -> dict:
    """A worker's full clone of ``origin`` with a git identity, and a `process` work pool; returns
    the environment a worker for that clone runs in."""
    run_command(["git", "clone", "-q", str(origin), str(workspace)], workspace.parent)
    run_command(["git", "config", "user.email", "worker@example.com"], workspace)
    run_command(["git", "config", "user.name", "worker"], workspace)
    env = {**prefect_env, "CMHASH_WORKSPACE": str(workspace)}
    run_command(["prefect", "work-pool", "create", pool, "--type", "process"], workspace, env)
    return env


@pytest.fixture(scope="module")
def deployment(prefect_server, tmp_path_factory):
    base = tmp_path_factory.mktemp("deployment")
    origin = scratch_project(base / "origin", yaml.safe_load((REPO / "params.yaml").read_text()))
    workspace = base / "workspace"
    env = _worker_clone(origin, workspace, prefect_server, "gpu")
    run_command(["prefect", "--no-prompt", "deploy", "--all"], workspace, env)
    return Deployment(workspace, env, base)


@pytest.fixture(scope="module")
def first_run(deployment):
    """A scheduled run of the project's params.yaml with tiny overrides."""
    return deployment.run({"overrides": tiny_overrides()}), deployment.stage_outcomes()


def test_a_scheduled_run_is_a_versioned_experiment_with_a_metrics_diff(deployment, first_run):
    first, first_outcomes = first_run
    assert first["state"]["type"] == "COMPLETED", first["state"]["message"] + first["worker_output"][-3000:]
    assert first_outcomes == {stage: "ran" for stage in ["check-params", "prepare", "validate", "encode", "evaluate", "items",
                                                         "index", "report"] + [f"train@{method}-16" for method in METHODS]}
    assert first["name"] in run_command(["dvc", "exp", "show", "--json"], deployment.workspace).stdout
    rows = _latest_artifact(deployment.env, "metrics-diff", first["id"])
    assert sorted((row["method"], row["bits"], row["direction"]) for row in rows) == sorted(
        (method, 16, direction) for method in METHODS for direction in ("I→T", "T→I"))
    assert all(row["mAP@all old"] is None and 0 < row["mAP@all new"] < 1 for row in rows)  # HEAD has no metrics yet
    # params.yaml is back as committed, so the next run starts from it
    assert run_command(["git", "status", "--porcelain", "params.yaml"], deployment.workspace).stdout == ""


def _counting_stage_processes(tmp_path) -> tuple[dict, Path]:
    """An environment in which every Python process logs its arguments (a sitecustomize module), and
    the log: `python -m dvc --wait-for-lock repro ...` lines are the stage processes a run started."""
    folder = tmp_path / "count-processes"
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(
        "import os, sys\n"
        "if os.environ.get('CMHASH_TEST_PROCESS_LOG'):\n"
        "    with open(os.environ['CMHASH_TEST_PROCESS_LOG'], 'a') as log:\n"
        "        log.write(' '.join(sys.argv) + '\\n')\n")
    log = tmp_path / "processes.log"
    return {"PYTHONPATH": str(folder), "CMHASH_TEST_PROCESS_LOG": str(log)}, log


def _stage_processes_started(log: Path) -> list[str]:
    return [line for line in log.read_text().splitlines() if line.startswith("-m --wait-for-lock repro")] if log.exists() else []


def test_the_same_run_again_starts_no_stage_process(deployment, first_run, tmp_path):
    env, log = _counting_stage_processes(tmp_path)
    second = deployment.run({"overrides": tiny_overrides()}, env)
    assert second["state"]["type"] == "COMPLETED", second["state"]["message"]
    assert log.exists() and "-m" in log.read_text()  # the counter works: the flow's own processes are in it
    assert _stage_processes_started(log) == []
    assert deployment.stage_outcomes() == {name: "skipped" for name in first_run[1]}
    rows = _latest_artifact(deployment.env, "metrics-diff", second["id"])
    assert all(row["mAP@all Δ"] == 0 and row["mAP@50 Δ"] == 0 for row in rows)  # compared with the first run
    assert second["name"] in run_command(["dvc", "exp", "show", "--json"], deployment.workspace).stdout


def test_an_override_that_reads_a_secret_is_refused_and_nothing_is_saved(deployment, first_run):
    secret = "hunter2-very-secret-token"
    run = deployment.run({"overrides": {**tiny_overrides(), "dataset.root": "${oc.env:SECRET_TOKEN}"}},
                         {"SECRET_TOKEN": secret})
    assert run["state"]["type"] == "FAILED"
    assert "override dataset.root: interpolations such as ${...}" in run["state"]["message"]
    assert secret not in run["state"]["message"] + run["worker_output"]
    assert "Traceback" not in run["worker_output"], run["worker_output"][-4000:]  # a refusal is its message alone
    refs = run_command(["git", "for-each-ref", "--format=%(refname)", "refs/exps"], deployment.workspace).stdout.split()
    assert run["name"] not in " ".join(refs)
    for ref in refs:  # no experiment, nor any file of the workspace, holds the secret
        assert run_command(["git", "grep", "-q", secret, ref], deployment.workspace, check=False).returncode == 1
    assert run_command(["grep", "-rq", "--exclude-dir=.git", secret, "."], deployment.workspace, check=False).returncode == 1
    assert run_command(["git", "status", "--porcelain", "params.yaml"], deployment.workspace).stdout == ""


@pytest.mark.slow
def test_scheduled_runs_rerun_what_changed_and_fail_on_a_regression(deployment, first_run):
    overrides = tiny_overrides()
    # (DJSRH learns little from 200 tiny items: another epoch moves its scores by a few hundredths)
    third = deployment.run({"overrides": {**overrides, "methods.djsrh.epochs": 3}, "regression_threshold": 0.1})
    assert third["state"]["type"] == "COMPLETED", third["state"]["message"]
    ran = {stage for stage, outcome in deployment.stage_outcomes().items() if outcome == "ran"}
    # check-params reruns on any parameter change (it checks the whole file; its output stays the same)
    assert ran == {"check-params", "train@djsrh-16", "evaluate", "index", "report"}

    notifications = _notification_receiver(deployment)
    worse = deployment.run({"overrides": {**overrides, "methods.dcmht.epochs": 1}})
    assert worse["state"]["type"] == "FAILED"
    assert "Traceback" not in worse["worker_output"], worse["worker_output"][-4000:]  # the regression is its message alone
    message = worse["state"]["message"]
    assert f"regressed against {third['name']} by more than 0.01" in message
    assert "dcmht 16 bits I→T mAP@all" in message and "djsrh" not in message and "lsh" not in message
    rows = _latest_artifact(deployment.env, "metrics-diff", worse["id"])
    assert {row["method"] for row in rows if row["regression"]} == {"dcmht"}
    assert worse["name"] in run_command(["dvc", "exp", "show", "--json"], deployment.workspace).stdout  # still recorded
    # the automation of docs/orchestration.md told the team, naming the cells
    deadline = time.monotonic() + 120
    while not notifications and time.monotonic() < deadline:
        time.sleep(1)
    assert len(notifications) == 1, notifications
    assert f"cmhash run {worse['name']} failed" in notifications[0] and "dcmht 16 bits I→T mAP@all" in notifications[0]


def _notification_receiver(deployment) -> list[str]:
    """A webhook on 127.0.0.1 that records what it receives, a notification block that calls it, and
    the automation of flows/notify-on-failure.yaml pointed at that block."""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from prefect.blocks.notifications import CustomWebhookNotificationBlock
    from prefect.settings import PREFECT_API_URL, temporary_settings

    received: list[str] = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self):
            received.append(self.rfile.read(int(self.headers["Content-Length"])).decode())
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    webhook = HTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=webhook.serve_forever, daemon=True).start()
    with temporary_settings({PREFECT_API_URL: deployment.env["PREFECT_API_URL"]}):
        block = CustomWebhookNotificationBlock(name="team", url=f"http://127.0.0.1:{webhook.server_port}/",
                                               json_data={"text": "{{subject}}: {{body}}"})
        block_id = block.save("cmhash-team", overwrite=True)
    automation = yaml.safe_load((REPO / "flows" / "notify-on-failure.yaml").read_text())
    automation["actions"][0]["block_document_id"] = str(block_id)
    spec = deployment.elsewhere / "automation.yaml"
    spec.write_text(yaml.safe_dump(automation))
    run_command(["prefect", "automation", "create", "--from-file", str(spec)], deployment.elsewhere, deployment.env)
    return received


def test_flow_stages_are_dvcs_own(tmp_path):
    """The flow's tasks are the stages of `dvc dag`, upstream first; a stage added to dvc.yaml is one
    more task with no edit of the flow."""
    params = tiny_params()
    params["train"]["methods"], params["train"]["bits"] = ["lsh", "dcmht"], [16, 32]
    project = scratch_project(tmp_path, params)
    with open(project / "dvc.yaml", "a") as dvc_yaml:
        dvc_yaml.write("\n  summary:\n    cmd: cat reports/results.md\n    deps: [reports/results.md]\n")
    from cmhash.orchestration.dvc_state import read_pipeline

    stages = read_pipeline(project)
    dot = run_command(["dvc", "dag", "--dot"], project).stdout
    edges = {(a, b) for a, b in re.findall(r'"([^"]+)" -> "([^"]+)"', dot)}
    nodes = set(re.findall(r'"([^"]+)";', dot)) | {name for edge in edges for name in edge}
    assert {stage.name for stage in stages} == nodes and "summary" in nodes
    assert {(up, stage.name) for stage in stages for up in stage.upstream} == edges
    position = {stage.name: i for i, stage in enumerate(stages)}
    assert all(position[up] < position[down] for up, down in edges)
    assert [s.name for s in stages if s.gpu] == ["encode", "train@lsh-16", "train@lsh-32", "train@dcmht-16",
                                                 "train@dcmht-32", "evaluate"]


def _flow_project(root: Path, methods=("lsh", "itq"), bits=(16,)) -> Path:
    params = tiny_params()
    params["train"]["methods"], params["train"]["bits"] = list(methods), list(bits)
    return scratch_project(root, params)


def _run_flow(project: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    """`python flows/pipeline.py ARGS` in the project, as a user runs it."""
    return subprocess.run([sys.executable, "flows/pipeline.py", *args], cwd=project, env=env, capture_output=True, text=True)


def _experiment_saved(result: subprocess.CompletedProcess) -> str:
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    return re.search(r"saved as experiment (\S+)", output)[1]


def test_an_expected_refusal_is_one_line_without_a_traceback(prefect_server, tmp_path):
    """A bad override and a busy workspace end the run Failed with their message and no traceback
    (Prefect logs a raised exception with one); nothing ran and params.yaml is as it was."""
    import fcntl

    project = _flow_project(tmp_path / "project")
    original = (project / "params.yaml").read_bytes()
    refused = _run_flow(project, prefect_server, "-S", "train.sede=3")
    output = refused.stdout + refused.stderr
    assert refused.returncode == 1 and "Traceback" not in output, output[-4000:]
    assert "cmhash-pipeline: " in output and "train.sede" in output and "train.seed" in output  # the closest valid key
    lock_path = project / ".dvc" / "tmp" / "cmhash-flow.lock"
    with open(lock_path, "a") as held:  # another run holds the workspace
        fcntl.flock(held, fcntl.LOCK_EX)
        refused = _run_flow(project, prefect_server, "--workspace-timeout", "0")
    output = refused.stdout + refused.stderr
    assert refused.returncode == 1 and "Traceback" not in output, output[-4000:]
    assert "is busy, so this run stopped before running anything" in output
    assert (project / "params.yaml").read_bytes() == original and not (project / "data").exists()


@pytest.mark.slow
def test_python_flows_pipeline_runs_once_in_ephemeral_mode(tmp_path):
    project = _flow_project(tmp_path / "project")
    env = {key: value for key, value in COMMAND_ENV.items() if key != "PREFECT_API_URL"}
    env.update({"PREFECT_HOME": str(tmp_path / "prefect-home"), "HF_HUB_OFFLINE": "1",
                "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90"})
    name = _experiment_saved(_run_flow(project, env, "-S", "train.seed=1"))
    assert name in run_command(["dvc", "exp", "show", "--json"], project).stdout
    assert run_command(["git", "status", "--porcelain", "params.yaml"], project).stdout == ""  # put back


@pytest.mark.slow
def test_parallel_stages_overlap_each_on_a_gpu_of_its_own(prefect_server, tmp_path):
    project = _flow_project(tmp_path / "project", methods=("lsh", "itq", "cca_itq"))
    # Two GPUs as far as the flow can tell; each stage's torch then finds no CUDA and uses the CPU.
    env = {**prefect_server, "CUDA_VISIBLE_DEVICES": "0,1"}
    _experiment_saved(_run_flow(project, env, "--max-parallel", "2"))
    rows = _latest_artifact(env, "stage-outcomes")

    def interval(row):
        return tuple(int(hours) * 3600 + int(minutes) * 60 + float(seconds)
                     for hours, minutes, seconds in (row[key].split(":") for key in ("started", "finished")))

    overlapping = [(a, b) for i, a in enumerate(rows) for b in rows[i + 1:]
                   if interval(a)[0] < interval(b)[1] and interval(b)[0] < interval(a)[1]]
    assert overlapping, rows
    assert all(a["gpu"] != b["gpu"] for a, b in overlapping if a["gpu"] and b["gpu"])
    from cmhash.orchestration.dvc_state import read_pipeline

    stages = read_pipeline(project)
    assert {row["stage"]: row["gpu"] in ("0", "1") for row in rows} == {stage.name: stage.gpu for stage in stages}
    assert json.loads(run_command(["dvc", "status", "--json"], project).stdout) == {}
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    assert set(lock["stages"]) == {stage.name for stage in stages}


def test_long_fits_that_read_the_same_files_overlap_and_the_run_completes(prefect_server, tmp_path):
    """Two fits of the default dvc.yaml read params.yaml, the features and the same code: DVC runs them
    side by side, and so must the flow (it once called the second busy and retried it until the first
    had ended, and a fit longer than the retries failed the run)."""
    # lsh's fit ends at once, so jdsh's starts (the third of two parallel slots) while djsrh's holds its locks
    project = _flow_project(tmp_path / "project", methods=("lsh", "djsrh", "jdsh"))
    epochs = ["-S", "methods.djsrh.epochs=400", "-S", "methods.jdsh.epochs=400"]  # seconds each, on 2 cores
    _experiment_saved(_run_flow(project, prefect_server, "--max-parallel", "2", *epochs))
    rows = {row["stage"]: row for row in _latest_artifact(prefect_server, "stage-outcomes")}
    first, second = sorted((rows["train@djsrh-16"], rows["train@jdsh-16"]), key=lambda row: row["started"])
    assert first["outcome"] == second["outcome"] == rows["train@lsh-16"]["outcome"] == "ran"
    assert rows["train@lsh-16"]["finished"] < second["started"]  # the third fit of two slots
    assert min(float(first["seconds"]), float(second["seconds"])) > 3, (first, second)  # long enough to tell
    assert second["started"] < first["finished"], (first, second)  # the later one started while the first held its locks


@pytest.mark.slow
def test_the_dask_task_runner_runs_the_pipeline(prefect_server, tmp_path):
    project = _flow_project(tmp_path / "project")
    _experiment_saved(_run_flow(project, prefect_server, "--task-runner", "dask", "--max-parallel", "2"))
    assert {row["outcome"] for row in _latest_artifact(prefect_server, "stage-outcomes")} == {"ran"}
    assert json.loads(run_command(["dvc", "status", "--json"], project).stdout) == {}


@pytest.mark.slow
def test_a_flow_started_during_dvc_repro_waits_or_refuses_and_harms_nothing(prefect_server, tmp_path):
    from cmhash.orchestration.workspace import active_processes

    project = _flow_project(tmp_path / "project")
    repro = subprocess.Popen(["dvc", "repro"], cwd=project, env={**COMMAND_ENV, "HF_HUB_OFFLINE": "1"},
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 60
    while not active_processes(project):
        assert repro.poll() is None and time.monotonic() < deadline, "dvc repro did not start"
        time.sleep(0.2)
    refused = _run_flow(project, prefect_server, "--workspace-timeout", "3")
    output = refused.stdout + refused.stderr
    assert refused.returncode == 1
    assert "is busy, so this run stopped before running anything" in output and "dvc repro" in output
    assert "dvc-stages" not in output  # no stage task was started
    waiting = subprocess.Popen([sys.executable, "flows/pipeline.py"], cwd=project, env=prefect_server,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    repro_output = repro.communicate(timeout=600)[0]
    assert repro.returncode == 0, repro_output  # the run started by hand finished undisturbed
    waited = waiting.communicate(timeout=600)[0]
    assert waiting.returncode == 0 and "waiting for" in waited, waited[-4000:]
    assert set(row["outcome"] for row in _latest_artifact(prefect_server, "stage-outcomes")) == {"skipped"}
    assert json.loads(run_command(["dvc", "status", "--json"], project).stdout) == {}


@pytest.mark.slow
def test_a_pushed_run_is_pulled_by_another_clone(prefect_server, tmp_path):
    project = _flow_project(tmp_path / "project")
    origin, storage = tmp_path / "origin.git", tmp_path / "dvc-storage"
    run_command(["git", "init", "-q", "--bare", "-b", "main", str(origin)], tmp_path)
    run_command(["git", "remote", "add", "origin", str(origin)], project)
    run_command(["dvc", "remote", "add", "-d", "storage", str(storage)], project)
    run_command(["git", "commit", "-qam", "DVC remote"], project)
    run_command(["git", "push", "-q", "origin", "main"], project)
    name = _experiment_saved(_run_flow(project, prefect_server, "--push"))

    other = tmp_path / "other"
    run_command(["git", "clone", "-q", str(origin), str(other)], tmp_path)
    run_command(["dvc", "exp", "pull", "origin", name], other)
    run_command(["dvc", "exp", "apply", name], other)
    assert json.loads(run_command(["dvc", "status", "--json"], other).stdout) == {}
    for metrics in (project / "metrics").glob("*.json"):
        assert (other / "metrics" / metrics.name).read_text() == metrics.read_text()
    assert (other / "data" / "models" / "itq-16" / "model.pt").read_bytes() == \
        (project / "data" / "models" / "itq-16" / "model.pt").read_bytes()


@pytest.mark.slow
def test_a_failed_stage_stops_its_dependents_and_independent_stages_finish(prefect_server, tmp_path):
    import h5py

    project = _flow_project(tmp_path / "project")
    with open(project / "dvc.yaml", "a") as dvc_yaml:  # a stage beside validate: it reads only the prepared file
        dvc_yaml.write("\n  inventory:\n    cmd: wc -c data/prepared/builtin.h5 > inventory.txt\n"
                       "    deps: [data/prepared/builtin.h5]\n    outs: [inventory.txt]\n")
    run_command(["git", "commit", "-qam", "inventory stage"], project)
    run_command(["dvc", "repro", "prepare"], project)
    with h5py.File(project / "data/prepared/builtin.h5", "r+") as f:
        f["labels"][0] = 0
    run_command(["dvc", "commit", "-f", "prepare"], project)  # as if the converter had made this file

    result = _run_flow(project, prefect_server)
    output = result.stdout + result.stderr
    assert result.returncode == 1
    assert "validate failed: " in output and "every item has at least one label" in output
    outcomes = {row["stage"]: row["outcome"] for row in _latest_artifact(prefect_server, "stage-outcomes")}
    assert outcomes["validate"] == "failed" and outcomes["inventory"] == "ran" and outcomes["prepare"] == "skipped"
    downstream = [stage for stage in outcomes if stage.split("@")[0] in ("encode", "train", "evaluate", "index", "items", "report")]
    assert sorted(downstream) == ["encode", "evaluate", "index", "items", "report", "train@itq-16", "train@lsh-16"]
    assert all(outcomes[stage] == "not run (upstream failed)" for stage in downstream)
    assert not (project / "data" / "features").exists()


SLOW_STAGE = "\n  slow:\n    cmd: python -c \"import time; time.sleep(300)\" && echo done > slow.txt\n    outs: [slow.txt]\n"


def _processes_in(folder: Path) -> list[str]:
    """The live processes (not zombies) working in ``folder``: a run's dvc, stages and server."""
    import psutil

    found = []
    for process in psutil.process_iter(["pid", "cmdline", "status"]):
        try:
            if process.pid != os.getpid() and process.info["status"] != psutil.STATUS_ZOMBIE and \
                    Path(process.cwd()).is_relative_to(folder):
                found.append(f"{process.pid}: {' '.join(process.info['cmdline'] or [])}")
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def _wait_for_slow_stage(project: Path, owner: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not any("time.sleep(300)" in process for process in _processes_in(project)):
        assert owner.poll() is None and time.monotonic() < deadline, "the slow stage never started"
        time.sleep(0.5)


def _gone_within(project: Path, seconds: float) -> list[str]:
    deadline = time.monotonic() + seconds
    while (left := _processes_in(project)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


@pytest.mark.parametrize("sent", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT], ids=lambda sent: sent.name)
def test_a_signal_to_the_flow_ends_its_stages_within_seconds(tmp_path, sent):
    """`python flows/pipeline.py` sent SIGKILL, SIGTERM or SIGINT while a 300 s stage runs: within 10
    seconds no dvc, stage command or temporary Prefect server of that run is left (Prefect turns
    SIGTERM into an exception and would wait for the stage), and the next run settles it."""
    project = _flow_project(tmp_path / "project")
    with open(project / "dvc.yaml", "a") as dvc_yaml:
        dvc_yaml.write(SLOW_STAGE)
    run_command(["git", "commit", "-qam", "a slow stage"], project)
    env = {key: value for key, value in COMMAND_ENV.items() if key != "PREFECT_API_URL"}
    env.update({"PREFECT_HOME": str(tmp_path / "prefect-home"), "HF_HUB_OFFLINE": "1"})
    flow_process = subprocess.Popen([sys.executable, "flows/pipeline.py", "-S", "train.seed=3"], cwd=project, env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _wait_for_slow_stage(project, flow_process)
    assert any("server start" in process for process in _processes_in(project))  # its temporary Prefect server
    flow_process.send_signal(sent)
    assert _gone_within(project, 10) == []
    output = flow_process.communicate(timeout=60)[0]
    assert flow_process.returncode != 0, output[-3000:]
    assert not (project / "slow.txt").exists()
    lock = project / "dvc.lock"  # the slow stage ran first, alone: DVC recorded nothing of it
    assert not lock.exists() or "slow" not in (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    assert yaml.safe_load((project / "params.yaml").read_text())["train"]["seed"] in (3, 0)  # put back, or left...
    from cmhash.orchestration.workspace import recover_params

    recover_params(project)  # ...for the next run to put back, before anything else
    assert run_command(["git", "status", "--porcelain", "params.yaml"], project).stdout == ""


@pytest.mark.slow
def test_a_cancelled_run_stops_its_stages(prefect_server, tmp_path):
    """A deployment run cancelled through the API while a stage runs: the worker ends the flow's
    process, and the stage's processes end with it."""
    base = tmp_path
    origin = _flow_project(base / "origin")
    with open(origin / "dvc.yaml", "a") as dvc_yaml:
        dvc_yaml.write(SLOW_STAGE)
    run_command(["git", "commit", "-qam", "a slow stage"], origin)
    workspace = base / "workspace"
    env = _worker_clone(origin, workspace, prefect_server, "cancel-pool")
    deployed = yaml.safe_load((workspace / "prefect.yaml").read_text())
    deployed["deployments"][0].update({"name": "cancel-me", "schedules": [], "work_pool": {"name": "cancel-pool"}})
    (base / "prefect-cancel.yaml").write_text(yaml.safe_dump(deployed))
    run_command(["prefect", "--no-prompt", "deploy", "--all", "--prefect-file", str(base / "prefect-cancel.yaml")], workspace, env)
    triggered = run_command(["prefect", "deployment", "run", "cmhash-pipeline/cancel-me"], workspace, env).stdout
    run_id = re.search(r"flow-run/([0-9a-f-]{36})", triggered)[1]
    worker = subprocess.Popen(["prefect", "worker", "start", "--pool", "cancel-pool"], cwd=base, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        _wait_for_slow_stage(workspace, worker)
        _api(env, "POST", f"/flow_runs/{run_id}/set_state", json={"state": {"type": "CANCELLING"}, "force": True})
        assert _gone_within(workspace, 10) == []
        deadline = time.monotonic() + 60
        while _flow_run(env, run_id)["state"]["type"] != "CANCELLED" and time.monotonic() < deadline:
            time.sleep(1)
        assert _flow_run(env, run_id)["state"]["type"] == "CANCELLED"
        assert not (workspace / "slow.txt").exists()
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(60)
