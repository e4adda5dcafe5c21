"""The pieces of the scheduled pipeline, each on its own and fast: overrides, workspace checks and
locks, GPU leases, reading what DVC did, experiment names and the metrics diff."""

import json
import subprocess
import sys
import threading
import time

import pytest
import yaml
from conftest import REPO, run_command, scratch_project, tiny_params

from cmhash.errors import CmhashError
from cmhash.orchestration.devices import gpu_lease
from cmhash.orchestration.experiments import name_for_run
from cmhash.orchestration.stage_process import stage_error
from cmhash.orchestration.workspace import (
    RECORDS,
    active_processes,
    check_clone,
    exclusive_workspace,
    params_for_run,
    recover_params,
    remove_leftover_temporaries,
)
from cmhash.pipeline.params import load_params
from cmhash.pipeline.params_file import parse_overrides

pytestmark = pytest.mark.e2e  # real git and DVC projects, and processes killed half-way


@pytest.fixture
def project(tmp_path):
    return scratch_project(tmp_path / "project", tiny_params())


def test_overrides_are_written_as_dvc_exp_run_s_writes_them(project):
    assert parse_overrides({"methods.djsrh.epochs": "3", "train.bits": [16, 32], "dataset.name": "builtin",
                            "methods.dcmht": {"lr": 0.1, "epochs": 1}, "methods.djsrh.lr_image": "1e-3",
                            "methods.jdsh.lr": 1e-9}) == {
        "methods.djsrh.epochs": 3, "train.bits": [16, 32], "dataset.name": "builtin", "methods.dcmht.lr": 0.1,
        "methods.dcmht.epochs": 1, "methods.djsrh.lr_image": 0.001, "methods.jdsh.lr": 1e-9}
    (project / "params.yaml").write_text("# Every knob of every stage\n" + (project / "params.yaml").read_text())
    original = (project / "params.yaml").read_text()
    with params_for_run(project, {"methods.djsrh.epochs": "3", "train.bits": [16],
                                                 "methods.jdsh.lr": 1e-9}) as path:
        params = load_params(path)  # read back as the stages read it: 1e-09 is a number (YAML 1.2)
        assert params["methods"]["djsrh"]["epochs"] == 3 and params["train"]["bits"] == [16]
        assert params["methods"]["jdsh"]["lr"] == 1e-9
        assert "# Every knob of every stage" in path.read_text()  # comments kept
    assert (project / "params.yaml").read_text() == original  # put back
    assert not list((project / RECORDS).glob("*"))


@pytest.mark.parametrize("overrides, message", [
    ({"train.bits": "[16, '32;touch x']"}, "train.bits[1] is '32;touch x'; expected a whole number"),
    ({"methods.djsrh.epoch": 3}, "unknown key methods.djsrh.epoch; did you mean methods.djsrh.epochs?"),
    ({"methods.nope.epochs": 3}, "override methods.nope.epochs: .* has no mapping methods.nope"),
    ({"train.methods": ["lsh", "nope"]}, "train.methods[1] is 'nope'; expected one of 'lsh'"),
    ({"dataset.root": "${oc.env:SECRET_TOKEN}"}, "override dataset.root: interpolations such as ${...}"),
    ({"dataset.root": "a${b}"}, "override dataset.root: interpolations"),
    ({"train.methods": ["lsh", "${x}"]}, "override train.methods: interpolations"),
    ({"${oc.env:X}": 1}, "override key '${oc.env:X}': expected dotted names"),
    ({"train.seed": "&a [1, *a]"}, "override train.seed line 1: YAML anchors and aliases"),
    ({"train.seed": "[" * 100 + "]" * 100}, "override train.seed line 1: nested more than 32 levels"),
    ({"train.seed": 2 ** 40}, "train.seed is 1099511627776; expected at most 4294967295"),
])
def test_bad_overrides_are_refused_before_anything_is_written(project, monkeypatch, overrides, message):
    monkeypatch.setenv("SECRET_TOKEN", "hunter2-very-secret")
    original = (project / "params.yaml").read_text()
    ran = False
    with pytest.raises(CmhashError, match=message.replace("[", r"\[").replace("$", r"\$").replace("{", r"\{")) as error:
        with params_for_run(project, overrides):
            ran = True
    assert not ran and (project / "params.yaml").read_text() == original
    assert "hunter2" not in str(error.value) and "\n" not in str(error.value)
    assert not (project / RECORDS).exists() or not list((project / RECORDS).glob("*"))


def _killed_run(project, overrides=None):
    """A run killed (SIGKILL) while its overrides are in the parameter file."""
    code = ("import os, sys; from cmhash.orchestration.workspace import params_for_run\n"
            f"with params_for_run({str(project)!r}, {overrides or {'train.seed': 7}!r}, run='killed-run'):\n"
            "    os.kill(os.getpid(), 9)\n")
    assert subprocess.run([sys.executable, "-c", code]).returncode == -9


def test_params_left_by_a_killed_run_are_restored_first(project):
    original = (project / "params.yaml").read_bytes()
    _killed_run(project)
    assert yaml.safe_load((project / "params.yaml").read_text())["train"]["seed"] == 7  # the killed run's override
    assert recover_params(project) == [f"restored {project / 'params.yaml'} as it was before run killed-run, which "
                                       "ended before it could put the file back"]
    assert (project / "params.yaml").read_bytes() == original and not list((project / RECORDS).glob("*"))
    assert recover_params(project) == []


def test_an_edit_made_after_a_killed_run_is_never_overwritten(project):
    _killed_run(project)
    edited = (project / "params.yaml").read_text().replace("bits:\n  - 16", "bits:\n  - 64")
    (project / "params.yaml").write_text(edited)  # the user's edit, made after the crash
    for attempt in range(2):  # refused, and again next time, until the user decides
        with pytest.raises(CmhashError, match="has been edited since, so this run touched neither it nor the copy") as error:
            recover_params(project)
        assert (project / "params.yaml").read_text() == edited
        copy = next((project / RECORDS).glob("*.before"))
        assert str(copy) in str(error.value) and "then delete" in str(error.value)
        assert yaml.safe_load(copy.read_text())["train"]["seed"] == 0  # the file from before the killed run


def test_a_parameter_file_that_is_not_utf8_is_one_line_with_or_without_overrides(project):
    data = (project / "params.yaml").read_bytes().replace(b"seed: 0", b"seed: 0 # caf\xe9", 1)
    (project / "params.yaml").write_bytes(data)
    line = data[:data.index(b"\xe9")].count(b"\n") + 1
    for overrides in (None, {"train.seed": 3}):
        with pytest.raises(CmhashError, match=f"params.yaml line {line}: byte 0xe9 is not UTF-8; save the file as UTF-8"):
            with params_for_run(project, overrides):
                pass
        assert (project / "params.yaml").read_bytes() == data and not list((project / RECORDS).glob("*"))


def test_the_flow_has_no_parameter_file_other_than_params_yaml():
    """Every stage reads params.yaml (dvc.yaml names no other file), so a flow parameter naming
    another file would write overrides that no stage reads; there is none."""
    import inspect

    sys.path.insert(0, str(REPO / "flows"))
    try:
        from pipeline import main, pipeline
    finally:
        sys.path.remove(str(REPO / "flows"))
    assert "params_path" not in inspect.signature(pipeline.fn).parameters
    with pytest.raises(SystemExit):
        main(["--params", "other.yaml"])


def test_an_edit_during_the_run_is_kept_and_named(project):
    with pytest.raises(CmhashError, match="changed while the run used it, so it was not put back"):
        with params_for_run(project, {"train.seed": 3}) as path:
            path.write_text(path.read_text() + "\n# my note\n")
    assert (project / "params.yaml").read_text().endswith("# my note\n")


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
        assert active_processes(project) == [f"PID {holder.pid}: dvc repro"]
        with pytest.raises(CmhashError, match=f"PID {holder.pid}: dvc repro. Waited 0 s"):
            with exclusive_workspace(project, timeout=0.2, poll_seconds=0.1):
                pass
    finally:
        holder.kill()
        holder.wait()
    assert active_processes(project) == []  # a dead holder is no holder


def test_a_cmhash_command_run_by_hand_is_seen_by_the_flow_and_refuses_beside_it(project):
    """`cmhash prepare` run by hand in the clone: the flow waits for it and names it (so it never
    removes its temporary files as a killed stage's), and while a flow run holds the clone, the same
    command run by hand refuses at once, while the run's own stages go ahead."""
    import os
    import signal

    from cmhash.pipeline.workspace_users import COMMANDS

    params = yaml.safe_load((project / "params.yaml").read_text())
    params["dataset"]["builtin"]["size"] = 3000  # seconds of work, so that it is caught while it runs
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    by_hand = subprocess.Popen(["cmhash", "prepare"], cwd=project, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not list((project / COMMANDS).glob("*.json")):
            assert by_hand.poll() is None and time.monotonic() < deadline, "cmhash prepare never announced itself"
            time.sleep(0.01)
        by_hand.send_signal(signal.SIGSTOP)  # held still, so that the checks below see it running
        assert active_processes(project) == [f"PID {by_hand.pid}: cmhash prepare"]
        with pytest.raises(CmhashError, match=f"PID {by_hand.pid}: cmhash prepare. Waited 0 s"):
            with exclusive_workspace(project, timeout=0.2, poll_seconds=0.1):
                pass
    finally:
        by_hand.send_signal(signal.SIGCONT)
    assert by_hand.wait(120) == 0
    assert active_processes(project) == [] and not list((project / COMMANDS).glob("*"))

    with exclusive_workspace(project, timeout=1):
        refused = subprocess.run(["cmhash", "prepare"], cwd=project, capture_output=True, text=True)
        assert refused.returncode == 1 and refused.stderr.count("\n") == 1, refused.stderr
        assert "a scheduled flow run uses" in refused.stderr and "run it when the flow run has ended" in refused.stderr
        from cmhash.orchestration.stage_process import stage_environment

        own_stage = subprocess.run(["cmhash", "check-params"], cwd=project, env=stage_environment(), capture_output=True, text=True)
        assert own_stage.returncode == 0, own_stage.stderr

    killed = subprocess.Popen(["cmhash", "prepare"], cwd=project, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not list((project / COMMANDS).glob("*.json")):
        assert killed.poll() is None and time.monotonic() < deadline, "cmhash prepare never announced itself"
        time.sleep(0.01)
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    assert active_processes(project) == []  # a killed command is no user: its file is removed, nothing stays stale
    assert not list((project / COMMANDS).glob("*.json"))


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


def test_the_gpu_lease_folder_is_private_and_never_another_users(tmp_path, monkeypatch):
    import os
    import stat

    from cmhash.orchestration.devices import lock_folder

    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    folder = tmp_path / f"cmhash-gpu-locks-{os.getuid()}"
    assert lock_folder() == folder and stat.S_IMODE(folder.stat().st_mode) == 0o700
    folder.chmod(0o755)  # made by an older cmhash: this user's own, so it is made private
    assert lock_folder() == folder and stat.S_IMODE(folder.stat().st_mode) == 0o700
    folder.rmdir()
    (tmp_path / "elsewhere").mkdir()
    folder.symlink_to(tmp_path / "elsewhere")  # another user's trap: a link to a folder they hold
    with pytest.raises(CmhashError, match="must be a private folder of this user's own .* not a folder"):
        lock_folder()
    folder.unlink()
    folder.mkdir(mode=0o700)
    if os.getuid() == 0:  # only root can give a folder away; elsewhere the owner check is the same line
        os.chown(folder, 65534, 65534)
        with pytest.raises(CmhashError, match="it is a folder of uid 65534; remove it"):
            with gpu_lease(["0"]):
                pass


def test_the_stage_error_is_the_commands_own_message():
    lines = ["Running stage 'validate':", "> cmhash validate",
             "cmhash validate: error: data/prepared/builtin.h5: 1 of 30 expectations failed:",
             "- items: every item has at least one label (item 5)",
             "ERROR: failed to reproduce 'validate': failed to run: cmhash validate, exited with 1"]
    assert stage_error(lines) == ("data/prepared/builtin.h5: 1 of 30 expectations failed:\n"
                                  "- items: every item has at least one label (item 5)")
    assert stage_error(["ERROR: failed to reproduce 'x': output 'y' does not exist"]) == \
        "failed to reproduce 'x': output 'y' does not exist"


def test_files_half_written_by_killed_stages_are_removed(project):
    from cmhash.atomic import atomic_directory, atomic_path

    kept = project / "data" / "models" / "lsh-16" / "codes.h5"
    kept.parent.mkdir(parents=True)
    kept.write_text("a finished output")
    code = ("import os; from cmhash.atomic import atomic_path, atomic_directory\n"
            f"with atomic_directory({str(project / 'data' / 'index' / 'lsh-16')!r}) as folder:\n"
            "    (folder / 'ids.npy').write_text('half')\n"
            f"    with atomic_path({str(project / 'metrics' / 'lsh-16.json')!r}) as tmp:\n"
            "        tmp.write_text('half'); os.kill(os.getpid(), 9)\n")
    assert subprocess.run([sys.executable, "-c", code]).returncode == -9
    partial = project / "data" / "features" / "builtin.h5.partial"  # an interrupted encode: resumable, kept
    partial.parent.mkdir(parents=True)
    partial.write_text("resume me")
    removed = remove_leftover_temporaries(project, ["data", "metrics", "plots"])
    assert sorted(path.parent.name for path in removed) == ["index", "metrics"]
    assert all(path.name.endswith(".tmp") for path in removed) and not any(path.exists() for path in removed)
    assert kept.read_text() == "a finished output" and partial.exists()
    assert atomic_path and atomic_directory


def test_experiments_are_named_after_the_flow_run():
    assert name_for_run("crimson-okapi", "0a1b2c3d-0000", set()) == "crimson-okapi"
    assert name_for_run("crimson-okapi", "0a1b2c3d-0000", {"crimson-okapi"}) == "crimson-okapi-0a1b2c3d"
    assert name_for_run("weird name/with:chars", "ff", set()) == "weird-name-with-chars"
