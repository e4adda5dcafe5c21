"""What the flow reads of DVC, checked against real DVC commands in a scratch repository: what each
stage did (ran, skipped, restored, failed, busy) comes from dvc.lock, the run-cache and DVC's
per-path locks, never from DVC's sentences. These tests fail if a DVC release changes any of them;
run them against the lowest and highest DVC the project allows (docs/orchestration.md)."""

import subprocess
import sys
import time

import pytest
import yaml
from conftest import COMMAND_ENV, run_command

from cmhash.orchestration.dvc_state import blockers, lock_entries, out_of_date, path_holders, read_pipeline
from cmhash.orchestration.stage_process import StageBusy, StageFailed, run_dvc_stage

pytestmark = pytest.mark.e2e  # real dvc commands and stage processes

WRITE = 'python -c "import yaml; n = yaml.safe_load(open(\'params.yaml\'))[\'n\']; open(\'{out}\', \'w\').write(str(n))"'
DVC_YAML = {"stages": {
    "make": {"cmd": WRITE.format(out="made.txt"), "params": ["n"], "outs": ["made.txt"]},
    "down": {"cmd": "cp made.txt down.txt", "deps": ["made.txt"], "outs": ["down.txt"]},
    "report": {"cmd": "cp made.txt report.txt", "deps": ["made.txt"], "outs": [{"report.txt": {"cache": False}}]},
    "broken": {"cmd": "echo 'cmhash broken: error: the input is wrong; fix it' && exit 3", "deps": ["made.txt"],
               "outs": ["never.txt"]},
    "slow": {"cmd": "sleep 4 && echo done > slow.txt", "outs": ["slow.txt"]},
    "reader": {"cmd": "cp slow.txt read.txt", "deps": ["slow.txt"], "outs": ["read.txt"]},
    # "hold" reads shared.txt and writes held.txt, and keeps its locks until the test creates "release"
    "hold": {"cmd": "while [ ! -f release ]; do sleep 0.05; done; cp shared.txt held.txt", "deps": ["shared.txt"],
             "outs": ["held.txt"]},
    "also-reads-shared": {"cmd": "cp shared.txt copy.txt", "deps": ["shared.txt"], "outs": ["copy.txt"]},
    "reads-held": {"cmd": "cp held.txt held-copy.txt", "deps": ["held.txt"], "outs": ["held-copy.txt"]},
    "writes-shared": {"cmd": "echo new > shared.txt", "outs": [{"shared.txt": {"cache": False}}]},
}}


@pytest.fixture
def repo(tmp_path, monkeypatch):
    for command in (["git", "init", "-q"], ["git", "config", "user.email", "t@example.com"], ["git", "config", "user.name", "t"],
                    ["dvc", "init", "-q"], ["dvc", "config", "core.analytics", "false"]):
        run_command(command, tmp_path)
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(DVC_YAML))
    (tmp_path / "params.yaml").write_text("n: 1\n")
    monkeypatch.setenv("PATH", COMMAND_ENV["PATH"])
    return tmp_path


def _stage(repo, name):
    return next(stage for stage in read_pipeline(repo) if stage.name == name)


def _set_n(repo, n):
    (repo / "params.yaml").write_text(f"n: {n}\n")


def test_ran_skipped_and_restored_are_read_from_dvc_lock_and_the_run_cache(repo):
    logged = []
    assert run_dvc_stage(repo, _stage(repo, "make"), log=logged.append).outcome == "ran"
    assert (repo / "made.txt").read_text() == "1" and any("made.txt" in line for line in logged)
    assert run_dvc_stage(repo, _stage(repo, "make")).outcome == "skipped"
    _set_n(repo, 2)
    assert run_dvc_stage(repo, _stage(repo, "make")).outcome == "ran"
    _set_n(repo, 1)  # a run the run-cache has seen
    assert run_dvc_stage(repo, _stage(repo, "make")).outcome == "restored"
    assert (repo / "made.txt").read_text() == "1"
    assert lock_entries(repo)["make"]["params"] == {"params.yaml": {"n": 1}}
    # an output with cache: false is never restored from the run-cache: it runs every time
    assert run_dvc_stage(repo, _stage(repo, "report")).outcome == "ran"
    _set_n(repo, 2)
    run_dvc_stage(repo, _stage(repo, "make"))
    assert run_dvc_stage(repo, _stage(repo, "report")).outcome == "ran"
    _set_n(repo, 1)
    run_dvc_stage(repo, _stage(repo, "make"))
    assert run_dvc_stage(repo, _stage(repo, "report")).outcome == "ran"


def test_a_failed_stage_carries_its_own_message(repo):
    run_dvc_stage(repo, _stage(repo, "make"))
    with pytest.raises(StageFailed, match="broken failed: the input is wrong; fix it") as error:
        run_dvc_stage(repo, _stage(repo, "broken"))
    assert not isinstance(error.value, StageBusy)
    assert "broken" not in lock_entries(repo)


@pytest.fixture
def holding(repo):
    """``dvc repro --single-item hold`` running, holding a read lock on shared.txt and a write lock on
    held.txt until the test creates ``release`` (no race: the locks stay until the test lets go)."""
    (repo / "shared.txt").write_text("shared\n")
    holder = subprocess.Popen([sys.executable, "-m", "dvc", "repro", "--single-item", "hold"], cwd=repo, env=COMMAND_ENV,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while {holder.mode for holder in path_holders(repo)} != {"read", "write"}:
            assert holder.poll() is None and time.monotonic() < deadline, "dvc repro hold never took its locks"
            time.sleep(0.05)
        yield holder
    finally:
        (repo / "release").touch()
        holder.wait(60)


def test_stages_that_only_read_the_same_file_run_side_by_side(repo, holding):
    """DVC lets two stages read one file at once (every stage of dvc.yaml reads params.yaml), so the
    flow must not call the second one busy: it runs while the first holds its locks."""
    sharer = _stage(repo, "also-reads-shared")
    assert blockers(repo, sharer) == []
    assert run_dvc_stage(repo, sharer).outcome == "ran"
    assert holding.poll() is None and not (repo / "held.txt").exists()  # the holder still runs: they overlapped
    assert (repo / "copy.txt").read_text() == "shared\n"


@pytest.mark.parametrize(("name", "mode", "path"), [("reads-held", "write", "held.txt"),  # reads what it writes
                                                     ("writes-shared", "read", "shared.txt")])  # writes what it reads
def test_a_stage_that_dvc_would_refuse_is_busy(repo, holding, name, mode, path):
    stage = _stage(repo, name)
    assert [(h.pid, h.mode, h.path) for h in blockers(repo, stage)] == [(holding.pid, mode, str(repo / path))]
    with pytest.raises(StageBusy, match=f"{name}: another DVC process holds a lock on its files: PID {holding.pid} .*{mode}s "):
        run_dvc_stage(repo, stage)
    assert (repo / "shared.txt").read_text() == "shared\n" and not (repo / "held-copy.txt").exists()
    (repo / "release").touch()
    holding.wait(60)
    assert blockers(repo, stage) == []  # released: the stage can run
    assert run_dvc_stage(repo, stage).outcome == "ran"


def test_out_of_date_is_what_dvc_status_reports(repo):
    (repo / "shared.txt").write_text("shared\n")
    (repo / "release").touch()
    everything = {"make", "down", "report", "broken", "slow", "reader", "hold", "also-reads-shared", "reads-held", "writes-shared"}
    assert out_of_date(repo) == everything
    for name in ("make", "down", "report", "slow", "reader", "writes-shared", "hold", "also-reads-shared", "reads-held"):
        run_dvc_stage(repo, _stage(repo, name))
    assert out_of_date(repo) == {"broken"}
    _set_n(repo, 5)
    assert out_of_date(repo) == {"make", "broken"}  # downstream stages change only once make has rerun
    (repo / "down.txt").unlink()
    assert out_of_date(repo) == {"make", "down", "broken"}


def test_stage_processes_end_with_the_process_that_started_them(repo):
    """kill -9 of the process that runs a stage ends the stage's dvc and its command within seconds."""
    import psutil

    code = (f"from cmhash.orchestration.dvc_state import read_pipeline\n"
            f"from cmhash.orchestration.stage_process import run_dvc_stage\n"
            f"stage = next(s for s in read_pipeline({str(repo)!r}) if s.name == 'slow')\n"
            f"run_dvc_stage({str(repo)!r}, stage)\n")
    runner = subprocess.Popen([sys.executable, "-c", code], cwd=repo, env=COMMAND_ENV, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)

    def stage_processes():
        """This stage's dvc, shell and sleep: the processes running in this repository (another
        ``sleep 4...`` on the machine is not one of them)."""
        found = []
        for process in psutil.process_iter(["cmdline", "status", "cwd"]):
            cmdline = " ".join(process.info["cmdline"] or [])
            if (process.info["status"] != psutil.STATUS_ZOMBIE and process.info["cwd"] == str(repo)
                    and ("sleep 4" in cmdline or "repro --single-item slow" in cmdline)):
                found.append(process.pid)
        return found

    deadline = time.monotonic() + 60
    while not any("sleep" in " ".join(psutil.Process(pid).cmdline()) for pid in stage_processes() if psutil.pid_exists(pid)):
        assert runner.poll() is None and time.monotonic() < deadline, "the stage never started"
        time.sleep(0.1)
    runner.kill()
    runner.wait()
    deadline = time.monotonic() + 5
    while stage_processes() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert stage_processes() == []
    time.sleep(4.5)
    assert not (repo / "slow.txt").exists()  # the killed stage wrote nothing
