"""The benchmarks run (on tiny sizes), so that they do not rot: the slow tier, and the e2e tier for the quick ones."""

import json
import subprocess
import sys

import pytest
from conftest import COMMAND_ENV, REPO, run_command, scratch_project, tiny_params


@pytest.mark.slow
def test_train_step_bench_times_each_method_against_its_own_networks(tmp_path):
    out = tmp_path / "train_step.json"
    result = subprocess.run([sys.executable, "bench/train_step.py", "--items", "96", "--steps", "2", "--warmup", "1",
                             "--bits", "16", "--out", str(out)], cwd=REPO, env=COMMAND_ENV, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = {row["method"]: row for row in json.loads(out.read_text())["results"]}
    assert sorted(rows) == sorted(["djsrh", "jdsh", "cfrh", "ucmfh", "dcmht", "mesdch", "clipmh"])
    assert all(row["method_ms"] > 0 and row["bare_ms"] > 0 for row in rows.values())
    # the bare step runs the method's own networks: their shapes are the method's settings'
    assert rows["djsrh"]["parameters"]["image"][0] == [1024, 1280] and rows["djsrh"]["parameters"]["image"][-1] == [16]
    assert rows["cfrh"]["parameters"]["image_decoder"][-1] == [1664]


@pytest.mark.e2e  # a real dvc repro of a two-stage project
def test_repro_times_bench_times_every_stage(tmp_path):
    (tmp_path / "dvc.yaml").write_text("stages:\n  a:\n    cmd: echo a > a.txt\n    outs: [a.txt]\n"
                                       "  b:\n    cmd: cp a.txt b.txt\n    deps: [a.txt]\n    outs: [b.txt]\n")
    for command in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"]):
        subprocess.run(command, cwd=tmp_path, env=COMMAND_ENV, check=True)
    out = tmp_path / "times.json"
    result = subprocess.run([sys.executable, str(REPO / "bench" / "repro_times.py"), "--project", str(tmp_path), "--out", str(out)],
                            cwd=REPO, env=COMMAND_ENV, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    times = json.loads(out.read_text())
    assert times["returncode"] == 0 and sorted(times["stages"]) == ["a", "b"] and times["total_seconds"] > 0
    # the same summary, from the stamped log alone
    log, again = tmp_path / "stamped.log", tmp_path / "again.json"
    log.write_text("\n".join(times["tail"]) + "\n")
    subprocess.run([sys.executable, str(REPO / "bench" / "repro_times.py"), "--from-log", str(log), "--out", str(again)],
                   cwd=REPO, env=COMMAND_ENV, check=True, capture_output=True)
    # (the log's stamps are rounded to 10 ms; the last stage ends at the last line rather than at the exit)
    summary = json.loads(again.read_text())
    assert sorted(summary["stages"]) == ["a", "b"] and abs(summary["stages"]["a"] - times["stages"]["a"]) <= 0.02


@pytest.mark.e2e  # dvc repro of one stage of a scratch project, then the bench around it
def test_stage_overhead_bench_takes_a_stage_apart(tmp_path):
    project = scratch_project(tmp_path / "project", tiny_params())
    run_command(["dvc", "repro", "check-params"], project)
    out = tmp_path / "overhead.json"
    result = subprocess.run([sys.executable, str(REPO / "bench" / "stage_overhead.py"), "--project", str(project),
                             "--stages", "check-params", "--repeats", "1", "--out", str(out)],
                            cwd=REPO, env=COMMAND_ENV, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    (row,) = json.loads(out.read_text())["stages"]
    # (separate runs: under load the command alone can take longer than dvc repro did, so only their presence is checked)
    assert row["stage"] == "check-params" and row["dvc_repro"] > 0 and row["command"] > 0 and row["imports"] > 0
