"""The pieces of the scheduled pipeline, each on its own and fast: overrides, workspace checks and
locks, GPU leases, reading what DVC did, experiment names and the metrics diff."""

import json
import subprocess
import threading
import time

import pytest
import yaml
from conftest import run_command, scratch_project, tiny_params

from cmhash.errors import CmhashError
from cmhash.orchestration.devices import gpu_lease
from cmhash.orchestration.experiments import name_for_run
from cmhash.orchestration.stage_process import StageFailed, outcome_of, stage_error
from cmhash.orchestration.workspace import active_dvc_processes, check_clone, exclusive_workspace, override_arguments, params_for_run


@pytest.fixture
def project(tmp_path):
    return scratch_project(tmp_path / "project", tiny_params())


def test_overrides_are_written_as_dvc_exp_run_s_writes_them(project):
    assert override_arguments({"methods.djsrh.epochs": "3", "train.bits": [16, 32], "dataset.name": "builtin",
                               "methods.dcmht": {"lr": 0.1, "epochs": 1}}) == [
        "methods.djsrh.epochs=3", "train.bits=[16, 32]", "dataset.name=builtin", "methods.dcmht.lr=0.1",
        "methods.dcmht.epochs=1"]
    original = (project / "params.yaml").read_text()
    with params_for_run(project, "params.yaml", {"methods.djsrh.epochs": "3", "train.bits": [16]}) as path:
        params = yaml.safe_load(path.read_text())
        assert params["methods"]["djsrh"]["epochs"] == 3 and params["train"]["bits"] == [16]
    assert (project / "params.yaml").read_text() == original  # put back


@pytest.mark.parametrize("overrides, message", [
    ({"train.bits": "[16, '32;touch x']"}, "train.bits[1] is '32;touch x'; expected a whole number"),
    ({"methods.djsrh.epoch": 3}, "Could not override 'methods.djsrh.epoch'"),
    ({"train.methods": ["lsh", "nope"]}, "train.methods[1] is 'nope'; expected one of 'lsh'"),
])
def test_bad_overrides_are_refused_before_anything_runs(project, overrides, message):
    original = (project / "params.yaml").read_text()
    ran = False
    with pytest.raises(CmhashError, match=message.replace("[", r"\[")):
        with params_for_run(project, "params.yaml", overrides):
            ran = True
    assert not ran and (project / "params.yaml").read_text() == original


def test_params_left_by_a_killed_run_are_restored_first(project, capsys):
    original = (project / "params.yaml").read_text()
    backup = project / ".dvc" / "tmp" / "cmhash-before-run-params.yaml"
    backup.parent.mkdir(parents=True, exist_ok=True)
    backup.write_text(original)
    (project / "params.yaml").write_text(original.replace("seed: 0", "seed: 7"))  # the killed run's override
    with params_for_run(project) as path:
        assert yaml.safe_load(path.read_text()) == yaml.safe_load(original)
    assert "an earlier run ended before it could put the file back" in capsys.readouterr().out
    assert (project / "params.yaml").read_text() == original and not backup.exists()


def test_a_second_run_in_one_workspace_waits_then_refuses(project):
    with exclusive_workspace(project, timeout=5):
        with pytest.raises(CmhashError, match="is busy, so this run stopped before running anything: another cmhash "
                                              "flow run uses this workspace"):
            with exclusive_workspace(project, timeout=0.5, poll_seconds=0.1):
                pass
    with exclusive_workspace(project, timeout=0.5):  # free again
        pass


def test_dvc_processes_holding_files_are_found(project):
    holder = subprocess.Popen(["sleep", "30"])
    try:
        (project / ".dvc" / "tmp").mkdir(parents=True, exist_ok=True)
        (project / ".dvc" / "tmp" / "rwlock").write_text(json.dumps(  # what DVC writes while a stage runs
            {"write": {"data/prepared/builtin.h5": {"pid": holder.pid, "cmd": "dvc repro"}}, "read": {}}))
        assert active_dvc_processes(project) == [f"PID {holder.pid}: dvc repro"]
        with pytest.raises(CmhashError, match=f"PID {holder.pid}: dvc repro. Waited 0 s"):
            with exclusive_workspace(project, timeout=0.2, poll_seconds=0.1):
                pass
    finally:
        holder.kill()
        holder.wait()
    assert active_dvc_processes(project) == []  # a dead holder is no holder


def test_clone_checks_say_what_to_do(tmp_path, project, monkeypatch):
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", "/dev/null")  # only the clone's own identity counts here
    check_clone(project)
    shallow = tmp_path / "shallow"
    run_command(["git", "clone", "-q", "--depth", "1", f"file://{project}", str(shallow)], tmp_path)
    with pytest.raises(CmhashError, match="shallow clone.*git fetch --unshallow"):
        check_clone(shallow)
    with pytest.raises(CmhashError, match="push is set, but the clone has no git remote 'origin'"):
        check_clone(project, push=True)
    run_command(["git", "remote", "add", "origin", str(tmp_path / "nowhere")], project)
    with pytest.raises(CmhashError, match="no default DVC remote is configured"):
        check_clone(project, push=True)
    run_command(["git", "config", "--unset", "user.email"], project)
    with pytest.raises(CmhashError, match="needs a git identity.*git config user.email"):
        check_clone(project, push=False)


def test_gpu_leases_never_share_a_device():
    held, waited = [], []
    with gpu_lease(["0", "1"]) as first, gpu_lease(["0", "1"]) as second:
        assert {first, second} == {"0", "1"}

        def third():
            started = time.monotonic()
            with gpu_lease(["0", "1"], poll_seconds=0.05) as device:
                held.append(device)
                waited.append(time.monotonic() - started)

        thread = threading.Thread(target=third)
        thread.start()
        time.sleep(0.5)
        assert not held  # both devices are taken: the third stage waits
    thread.join(5)
    assert held and held[0] in ("0", "1") and waited[0] >= 0.4
    with gpu_lease([]) as none:
        assert none is None  # no GPU: no waiting


def test_what_dvc_did_is_read_from_its_output():
    assert outcome_of("train@lsh-16", ["Running stage 'train@lsh-16':", "> cmhash train"]) == "ran"
    assert outcome_of("prepare", ["Stage 'prepare' is cached - skipping run, checking out outputs"]) == "restored"
    assert outcome_of("report", ["Stage 'report' didn't change, skipping"]) == "skipped"
    with pytest.raises(StageFailed, match="neither that it ran"):
        outcome_of("report", ["something else"])
    lines = ["Running stage 'validate':", "> cmhash validate",
             "cmhash validate: error: data/prepared/builtin.h5: 1 of 30 expectations failed:",
             "- items: every item has at least one label (item 5)",
             "ERROR: failed to reproduce 'validate': failed to run: cmhash validate, exited with 1"]
    assert stage_error(lines) == ("data/prepared/builtin.h5: 1 of 30 expectations failed:\n"
                                  "- items: every item has at least one label (item 5)")
    assert stage_error(["ERROR: failed to reproduce 'x': output 'y' does not exist"]) == \
        "failed to reproduce 'x': output 'y' does not exist"


def test_experiments_are_named_after_the_flow_run():
    assert name_for_run("crimson-okapi", "0a1b2c3d-0000", set()) == "crimson-okapi"
    assert name_for_run("crimson-okapi", "0a1b2c3d-0000", {"crimson-okapi"}) == "crimson-okapi-0a1b2c3d"
    assert name_for_run("weird name/with:chars", "ff", set()) == "weird-name-with-chars"
