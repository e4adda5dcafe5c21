"""`cmhash diff`: the metrics of two versions, one row per method, length and direction; unreadable
files, thresholds that would switch the gate off, and versions that are not comparable."""

import json

import pytest
import yaml
from conftest import run_command

from cmhash.errors import CmhashError
from cmhash.pipeline.cli import main
from cmhash.pipeline.metrics_diff import VersionMetrics, check_threshold, diff_metrics, regressions

DVC_YAML = """stages:
  evaluate:
    matrix:
      run: [djsrh-16, clipmh-16]
    cmd: python -c "print('written by the test')"
    metrics:
      - metrics/${item.run}.json:
          cache: false
"""


def _metrics(root, djsrh_i2t: float, clipmh: float) -> None:
    scores = lambda value: {"map_all": value, "map_50": value + 0.1, "map_1000": value}  # noqa: E731
    (root / "metrics").mkdir(exist_ok=True)
    (root / "metrics" / "djsrh-16.json").write_text(json.dumps({"i2t": scores(djsrh_i2t), "t2i": scores(0.6)}))
    (root / "metrics" / "clipmh-16.json").write_text(json.dumps({"p2p": scores(clipmh)}))


@pytest.fixture
def versions(tmp_path):
    """A DVC project with metrics committed at HEAD (0.70 / 0.80) and changed in the workspace."""
    for command in (["git", "init", "-q"], ["git", "config", "user.email", "t@example.com"], ["git", "config", "user.name", "t"],
                    ["dvc", "init", "-q"]):
        run_command(command, tmp_path)
    (tmp_path / "dvc.yaml").write_text(DVC_YAML)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"dataset": {"name": "builtin", "builtin": {"size": 6000}},
                                                          "train": {"methods": ["djsrh", "clipmh"], "bits": [16]},
                                                          "evaluate": {"device": "auto", "map_ks": [50]}}))
    _metrics(tmp_path, djsrh_i2t=0.70, clipmh=0.80)
    run_command(["git", "add", "-A"], tmp_path)
    run_command(["git", "commit", "-qm", "v1"], tmp_path)
    _metrics(tmp_path, djsrh_i2t=0.65, clipmh=0.805)
    return tmp_path


def test_cmhash_diff_compares_two_versions(versions, capsys):
    assert main(["diff", "--root", str(versions)]) == 0
    out = capsys.readouterr().out
    assert "metrics: HEAD (old) -> workspace (new); regression: a drop of more than 0.01" in out
    assert "not comparable" not in out
    lines = {tuple(line.split()[:3]): line for line in out.splitlines()[3:]}
    assert lines["djsrh", "16", "I→T"].split()[3:10] == ["0.700", "0.650", "-0.050", "0.800", "0.750", "-0.050", "mAP@all,"]
    assert lines["djsrh", "16", "I→T"].endswith("<<") and not lines["djsrh", "16", "T→I"].endswith("<<")
    assert lines["clipmh", "16", "pair→pair"].split()[3:6] == ["0.800", "0.805", "+0.005"]

    assert main(["diff", "--root", str(versions), "--json", "HEAD", "workspace"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert len(records) == 3 and records[1]["mAP@all Δ"] == -0.05 and records[1]["regression"] == "mAP@all, mAP@50"

    assert main(["diff", "--root", str(versions), "v0", "HEAD"]) == 1
    assert "'v0' is neither a commit, a branch, a tag nor an experiment" in capsys.readouterr().err


@pytest.mark.parametrize("threshold", ["nan", "-0.01", "inf", "-inf"])
def test_a_threshold_that_would_switch_the_gate_off_is_refused(versions, capsys, threshold):
    assert main(["diff", "--root", str(versions), f"--threshold={threshold}"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("cmhash diff: error: --threshold is") and "expected a finite number of at least 0" in err
    assert len(err.splitlines()) == 1
    for value in (float("nan"), -1e-9, float("inf"), True, "0.01"):
        with pytest.raises(CmhashError, match="regression_threshold is .*; expected a finite number of at least 0"):
            check_threshold(value)
    assert check_threshold(0) == 0.0


@pytest.mark.parametrize("content, problem", [
    ("{not json", "not JSON"),
    ('{"i2t": {"map_all": "abc", "map_50": 0.5}}', "i2t.map_all is 'abc', not a number"),
    ('{"i2t": {"map_all": NaN}}', "i2t.map_all is nan, not a number"),
    ('{"i2t": {"map_50": 0.5}}', "'i2t' holds no map_all"),
    ('[1, 2]', "not a mapping of directions to scores"),
    (None, "missing"),
])
def test_an_unreadable_metrics_file_is_a_row_that_says_why_and_exit_1(versions, capsys, content, problem):
    path = versions / "metrics" / "djsrh-16.json"
    if content is None:
        path.unlink()
    else:
        path.write_text(content)
    assert main(["diff", "--root", str(versions)]) == 1
    captured = capsys.readouterr()
    assert f"djsrh  16  unreadable: metrics/djsrh-16.json at workspace: {problem}" in captured.out
    assert "cmhash diff: error: 1 metrics file(s) could not be read: metrics/djsrh-16.json at workspace" in captured.err
    assert "Traceback" not in captured.out + captured.err
    assert "clipmh" in captured.out  # the readable cells are still compared


def test_outside_a_dvc_project_is_one_line(tmp_path, capsys):
    assert main(["diff", "--root", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err == (f"cmhash diff: error: {tmp_path} is not a DVC project in a git repository (no .dvc folder or no git); "
                   "run cmhash diff in the project's clone or pass --root.")


def test_versions_with_other_data_or_evaluation_settings_are_not_comparable(versions, capsys):
    params = yaml.safe_load((versions / "params.yaml").read_text())
    params["dataset"]["builtin"]["size"] = 600
    params["evaluate"]["device"] = "cpu"  # the device changes no number: not named
    (versions / "params.yaml").write_text(yaml.safe_dump(params))
    assert main(["diff", "--root", str(versions)]) == 0
    out = capsys.readouterr().out
    assert ("not comparable: the two versions differ in data or evaluation settings (dataset.builtin.size 6000 -> 600), "
            "so no change is a regression") in out
    assert "<<" not in out and "0.650" in out


def test_regressions_name_the_cells():
    old = VersionMetrics("a", {("dcmht", 64, "i2t"): {"map_all": 0.711, "map_50": 0.9}, ("lsh", 64, "i2t"): {"map_all": 0.5, "map_50": 0.5}})
    new = VersionMetrics("b", {("dcmht", 64, "i2t"): {"map_all": 0.684, "map_50": 0.895}, ("lsh", 64, "i2t"): {"map_all": 0.49, "map_50": 0.5},
                               ("itq", 64, "i2t"): {"map_all": 0.3, "map_50": 0.3}})
    diff = diff_metrics(old, new, threshold=0.01)
    assert regressions(diff) == ["dcmht 64 bits I→T mAP@all 0.711 -> 0.684 (-0.027)"]  # -0.01 is not beyond 0.01
    assert [row.method for row in diff.rows] == ["dcmht", "itq", "lsh"] and diff.rows[1].old == {}  # new in this version


def test_the_columns_are_the_cells_evaluate_map_ks_computes():
    from cmhash.pipeline.metrics_diff import _read_scores, metric_columns

    assert metric_columns([10, 100]) == {"map_all": "mAP@all", "map_10": "mAP@10", "map_100": "mAP@100"}
    assert list(metric_columns(None)) == ["map_all", "map_50", "map_1000", "map_5000"]  # the schema's default
    columns = metric_columns([1000])  # 50 dropped from map_ks: no mAP@50 column, nothing asks for it
    assert _read_scores(b'{"i2t": {"map_all": 0.5, "map_1000": 0.4}}', columns) == (None, {"i2t": {"map_all": 0.5, "map_1000": 0.4}})
    problem, _ = _read_scores(b'{"i2t": {"map_all": 0.5, "map_50": 0.4}}', columns)  # a cell map_ks asks for and the file lacks
    assert problem == "'i2t' holds no map_1000 (evaluate.map_ks asks for it)"


def _commit_params(root, params: dict, message: str) -> None:
    (root / "params.yaml").write_text(params if isinstance(params, str) else yaml.safe_dump(params))
    run_command(["git", "add", "params.yaml", "metrics"], root)
    run_command(["git", "commit", "-qm", message], root)


def test_a_key_left_out_and_the_same_key_set_to_its_default_are_the_same_setting(versions, capsys):
    """HEAD's params.yaml leaves out dataset.seed, dataset.split, dataset.builtin.image_size and
    evaluate.top_r; the next commit sets each to its default (as the project's params.yaml does).
    The stages ran with the same settings, so the versions are comparable and the drop is flagged."""
    from cmhash.pipeline.params import validate_params

    defaults = validate_params({"dataset": {"name": "builtin"}}, sections=("dataset", "evaluate"))
    params = yaml.safe_load((versions / "params.yaml").read_text())
    params["dataset"].update(seed=defaults["dataset"]["seed"], split=defaults["dataset"]["split"])
    params["dataset"]["builtin"]["image_size"] = defaults["dataset"]["builtin"]["image_size"]
    params["dataset"]["coco"] = defaults["dataset"]["coco"]  # another source's options: not compared either way
    params["evaluate"]["top_r"] = defaults["evaluate"]["top_r"]
    _commit_params(versions, params, "v2: the defaults written out")  # with the workspace's lower scores

    for old, new in (("HEAD~1", "HEAD"), ("HEAD~1", "workspace")):
        assert main(["diff", "--root", str(versions), old, new]) == 0
        out = capsys.readouterr().out
        assert "not comparable" not in out
        lines = {tuple(line.split()[:3]): line for line in out.splitlines()[3:]}
        assert lines["djsrh", "16", "I→T"].endswith("<<") and not lines["clipmh", "16", "pair→pair"].endswith("<<")

    from cmhash.pipeline.metrics_diff import metrics_at, settings_differences

    assert settings_differences(metrics_at(versions, "HEAD~1").settings, metrics_at(versions, "HEAD").settings) == []
    params["dataset"]["seed"] = 1  # a setting that does differ still does
    _commit_params(versions, params, "v3: another seed")
    assert main(["diff", "--root", str(versions), "HEAD~2", "HEAD"]) == 0
    out = capsys.readouterr().out
    assert "not comparable: the two versions differ in data or evaluation settings (dataset.seed 0 -> 1)" in out
    assert "<<" not in out


@pytest.mark.parametrize("old_params, why", [
    ({"dataset": {"name": "builtin", "builtin": {"size": 6000}}, "evaluate": {"map_k": [50]}},
     "params.yaml at HEAD: unknown key evaluate.map_k; did you mean evaluate.map_ks?"),
    ({"dataset": {"name": "builtin", "sample_size": 6000}},
     "params.yaml at HEAD: unknown key dataset.sample_size"),
    ({"dataset": {"builtin": {"size": 6000}}}, "params.yaml at HEAD: dataset.name is missing"),
    ("dataset: {name: builtin}\nevaluate: {map_ks: [50]}\nstarted: 2024-01-01\n",
     "params.yaml at HEAD line 3, key started: '2024-01-01' reads as a date"),
    ("dataset: [unclosed\n", "params.yaml at HEAD line 2: not valid YAML"),
    ("- a list\n", "params.yaml at HEAD: not a mapping of stage names to settings"),
    (None, "params.yaml at HEAD: missing"),
])
def test_a_version_whose_params_do_not_pass_todays_schema_is_comparable_with_none(versions, capsys, old_params, why):
    """An old commit written for another schema (or with no readable params.yaml): which of its keys
    mean what today is a guess, so its settings are unknown; the table still shows the numbers, the
    header says why, and nothing is a regression. One line, no traceback."""
    if old_params is None:
        run_command(["git", "rm", "-q", "params.yaml"], versions)
        run_command(["git", "commit", "-qm", "no params.yaml"], versions)
        (versions / "params.yaml").write_text(yaml.safe_dump({"dataset": {"name": "builtin", "builtin": {"size": 6000}},
                                                              "train": {"methods": ["djsrh", "clipmh"], "bits": [16]},
                                                              "evaluate": {"map_ks": [50]}}))
    else:
        current = (versions / "params.yaml").read_text()
        metrics = {path: path.read_text() for path in (versions / "metrics").glob("*.json")}
        run_command(["git", "checkout", "-q", "HEAD", "--", "metrics"], versions)  # the old scores, with the old params
        _commit_params(versions, old_params, "a version with another schema")
        (versions / "params.yaml").write_text(current)
        for path, text in metrics.items():
            path.write_text(text)
    assert main(["diff", "--root", str(versions)]) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err and captured.err == ""
    header = captured.out.splitlines()[1]
    assert header.startswith("not comparable: the data and evaluation settings of a version are unknown (")
    assert why in header and header.endswith("), so no change is a regression")
    assert "<<" not in captured.out and "0.650" in captured.out  # the numbers are still shown

    from cmhash.pipeline.metrics_diff import diff_metrics, metrics_at, settings_differences

    old, new = metrics_at(versions, "HEAD"), metrics_at(versions, "workspace")
    assert old.unchecked.startswith(why) and not new.unchecked
    assert settings_differences(old.settings, new.settings) != []  # the flow's baseline search skips it
    diff = diff_metrics(old, new, 0.01)
    assert diff.not_comparable and regressions(diff) == []


def test_a_section_the_comparison_does_not_read_cannot_make_a_version_unknown(versions, capsys):
    """An old commit with settings today's schema lacks outside the data and evaluation (a method since
    renamed, a train key since removed): its data and evaluation settings pass, so it is compared."""
    params = yaml.safe_load((versions / "params.yaml").read_text())
    params["train"]["old_knob"] = 1
    params["methods"] = {"old_method": {"epochs": 3}}
    metrics = {path: path.read_text() for path in (versions / "metrics").glob("*.json")}
    run_command(["git", "checkout", "-q", "HEAD", "--", "metrics"], versions)
    _commit_params(versions, params, "train with a key since removed")
    del params["train"]["old_knob"], params["methods"]
    (versions / "params.yaml").write_text(yaml.safe_dump(params))
    for path, text in metrics.items():
        path.write_text(text)
    assert main(["diff", "--root", str(versions)]) == 0
    out = capsys.readouterr().out
    assert "not comparable" not in out and "<<" in out


def _encode_lock(root, features_md5: str, code_md5: str = "c0de") -> None:
    """dvc.lock as DVC writes it, with an encode stage: its inputs (command, code, prepared data,
    params) and the md5 of the features it wrote."""
    (root / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": {"encode": {
        "cmd": "cmhash encode",
        "deps": [{"path": "data/prepared/builtin.h5", "md5": "9a7a", "size": 10},
                 {"path": "src/cmhash/encoders/offline.py", "md5": code_md5, "size": 5}],
        "params": {"params.yaml": {"encode": {"backend": "offline"}}},
        "outs": [{"path": "data/features/builtin.h5", "md5": features_md5, "size": 20}]}}}))


@pytest.mark.parametrize(("code_md5", "said"), [("c0de", True), ("edited", False)])
def test_features_that_differ_with_the_same_encoding_inputs_are_said_to_differ_by_machine(versions, capsys, code_md5, said):
    """The same data, code and params encoded on another machine: the diff says the features differ
    by machine; where the encoder's code changed, the change is the version's, and it says nothing."""
    _encode_lock(versions, "f1")
    run_command(["git", "add", "dvc.lock"], versions)
    run_command(["git", "commit", "-qm", "encoded here"], versions)
    _encode_lock(versions, "f2", code_md5)  # the workspace: encoded elsewhere (or with edited code)
    assert main(["diff", "--root", str(versions)]) == 0
    out = capsys.readouterr().out
    assert ("features differ by machine: both versions encoded the same data with the same code" in out) is said
    _encode_lock(versions, "f1", code_md5)  # the same features: nothing to say
    assert main(["diff", "--root", str(versions)]) == 0
    assert "features differ by machine" not in capsys.readouterr().out
