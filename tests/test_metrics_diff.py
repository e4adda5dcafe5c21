"""`cmhash diff`: the metrics of two versions, one row per method, length and direction."""

import json

from conftest import run_command

from cmhash.cli import main
from cmhash.metrics_diff import diff_metrics, regressions

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


def test_cmhash_diff_compares_two_versions(tmp_path, capsys):
    for command in (["git", "init", "-q"], ["git", "config", "user.email", "t@example.com"], ["git", "config", "user.name", "t"],
                    ["dvc", "init", "-q"]):
        run_command(command, tmp_path)
    (tmp_path / "dvc.yaml").write_text(DVC_YAML)
    _metrics(tmp_path, djsrh_i2t=0.70, clipmh=0.80)
    run_command(["git", "add", "-A"], tmp_path)
    run_command(["git", "commit", "-qm", "v1"], tmp_path)
    _metrics(tmp_path, djsrh_i2t=0.65, clipmh=0.805)

    assert main(["diff", "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "metrics: HEAD (old) -> workspace (new); regression: a drop of more than 0.01" in out
    lines = {tuple(line.split()[:3]): line for line in out.splitlines()[3:]}
    assert lines["djsrh", "16", "I→T"].split()[3:10] == ["0.700", "0.650", "-0.050", "0.800", "0.750", "-0.050", "mAP@all,"]
    assert lines["djsrh", "16", "I→T"].endswith("<<") and not lines["djsrh", "16", "T→I"].endswith("<<")
    assert lines["clipmh", "16", "pair→pair"].split()[3:6] == ["0.800", "0.805", "+0.005"]

    assert main(["diff", "--root", str(tmp_path), "--json", "HEAD", "workspace"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert len(records) == 3 and records[1]["mAP@all Δ"] == -0.05 and records[1]["regression"] == "mAP@all, mAP@50"

    assert main(["diff", "--root", str(tmp_path), "v0", "HEAD"]) == 1
    assert "'v0' is neither a commit, a branch, a tag nor an experiment" in capsys.readouterr().err


def test_regressions_name_the_cells():
    old = {("dcmht", 64, "i2t"): {"map_all": 0.711, "map_50": 0.9}, ("lsh", 64, "i2t"): {"map_all": 0.5, "map_50": 0.5}}
    new = {("dcmht", 64, "i2t"): {"map_all": 0.684, "map_50": 0.895}, ("lsh", 64, "i2t"): {"map_all": 0.49, "map_50": 0.5},
           ("itq", 64, "i2t"): {"map_all": 0.3, "map_50": 0.3}}
    rows = diff_metrics(old, new, threshold=0.01)
    assert regressions(rows) == ["dcmht 64 bits I→T mAP@all 0.711 -> 0.684 (-0.027)"]  # -0.01 is not beyond 0.01
    assert [row.method for row in rows] == ["dcmht", "itq", "lsh"] and rows[1].old == {}  # new in this version
