"""The whole pipeline on tiny data through `dvc repro` in a scratch repository (the Prefect flow: test_orchestration.py)."""

import json
import subprocess

import pytest
import yaml
from conftest import COMMAND_ENV, run_command, scratch_project, tiny_params

pytestmark = pytest.mark.e2e  # real `dvc repro`, `dvc status` and `dvc exp run` in scratch projects

ENV = COMMAND_ENV


def _run(args, cwd):
    return run_command(args, cwd).stdout


@pytest.fixture
def dvc_project(tmp_path, clip_config):
    """A scratch git + DVC repository with the project's dvc.yaml and sources and tiny params."""
    params = tiny_params(clip_config)
    params["train"]["methods"] = ["djsrh", "clipmh"]  # a method per modality, a fused one (more: test_orchestration)
    return scratch_project(tmp_path, params, commit=False)


def test_dvc_repro_end_to_end(dvc_project):
    _run(["dvc", "repro"], dvc_project)
    shown = json.loads(_run(["dvc", "metrics", "show", "--json"], dvc_project))
    metrics = next(iter(shown.values()))["data"]
    for method in ("djsrh", "clipmh"):
        for bits in (16, 32):
            values = metrics[f"metrics/{method}-{bits}.json"]["data"]
            directions = ["p2p"] if method == "clipmh" else ["i2t", "t2i"]
            assert sorted(values) == sorted(directions)
            for direction in directions:
                scores = values[direction]
                for key in ("map_all", "map_50", "map_1000", "map_5000"):
                    assert 0 <= scores[key] <= 1 and 0 <= scores["ties_average"][key] <= 1
                assert set(scores["dcmht_refactor"]) == {"map_50", "map_1000", "map_5000"}
    results = (dvc_project / "reports/results.md").read_text()
    assert "| djsrh |" in results and "pair→pair 32" in results and "## mAP@50, cross-modal retrieval" in results
    fake_vega = dvc_project / "fake_vega"
    fake_vega.mkdir()
    for name in ("vega", "vega-lite", "vega-embed"):
        (fake_vega / f"{name}.min.js").write_text(f"/* {name} stand-in */")
    _run(["cmhash", "plots-page", "--scripts-dir", str(fake_vega), "--cache-dir", str(dvc_project / "cache")], dvc_project)
    page = (dvc_project / "reports/plots/index.html").read_text()
    assert "/* vega-embed stand-in */" in page and "cdn.jsdelivr" not in page
    assert "plots/precision_at_top_r/djsrh-16/i2t.csv" in page
    second = _run(["dvc", "repro"], dvc_project)
    assert "Running stage" not in second  # nothing reruns
    assert json.loads(_run(["dvc", "status", "--json"], dvc_project)) == {}

    params = yaml.safe_load((dvc_project / "params.yaml").read_text())
    params["methods"]["djsrh"]["epochs"] = 3
    (dvc_project / "params.yaml").write_text(yaml.safe_dump(params))
    stale = set(json.loads(_run(["dvc", "status", "--json"], dvc_project)))
    # evaluate follows through the codes it reads; check-params checks every change (its output stays the same)
    assert stale == {"check-params", "train@djsrh-16", "train@djsrh-32"}

    with open(dvc_project / "src" / "cmhash" / "pipeline" / "stages" / "train.py", "a") as source:  # the train stage's module
        source.write("\n# an edit\n")
    stale = set(json.loads(_run(["dvc", "status", "--json"], dvc_project)))
    # only the train stage's entries (and check-params, for the params edit above, not yet reproduced)
    assert stale == {"check-params"} | {f"train@{method}-{bits}" for method in ("djsrh", "clipmh") for bits in (16, 32)}


def test_validate_failure_stops_dvc_before_encode(dvc_project):
    import h5py

    _run(["dvc", "repro", "validate"], dvc_project)
    with h5py.File(dvc_project / "data/prepared/builtin.h5", "r+") as f:
        f["labels"][0] = 0
    _run(["dvc", "commit", "-f", "prepare"], dvc_project)  # as if the converter had produced this file
    result = subprocess.run(["dvc", "repro"], cwd=dvc_project, env=ENV, capture_output=True, text=True)
    assert result.returncode != 0
    assert "every item has at least one label" in result.stdout + result.stderr
    assert not (dvc_project / "data/features").exists()


def test_no_params_value_reaches_a_shell(dvc_project):
    """A malicious train.bits or train.methods value is refused before DVC runs or removes anything."""
    marker = dvc_project / "executed"
    params = yaml.safe_load((dvc_project / "params.yaml").read_text())
    params["train"]["bits"] = [16, f"32;touch {marker}"]
    (dvc_project / "params.yaml").write_text(yaml.safe_dump(params))
    result = subprocess.run(["dvc", "repro"], cwd=dvc_project, env=ENV, capture_output=True, text=True)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "train.bits[1] is '32;touch " in output and "; expected a whole number" in output  # (a long value is cut short)
    assert not marker.exists() and not (dvc_project / "data").exists()

    params["train"]["bits"] = [16]
    (dvc_project / "params.yaml").write_text(yaml.safe_dump(params))
    _run(["git", "add", "-A"], dvc_project)
    _run(["git", "commit", "-qm", "tiny project"], dvc_project)
    result = subprocess.run(["dvc", "exp", "run", "-S", f"train.methods=[lsh, 'djsrh;touch {marker}']"],
                            cwd=dvc_project, env=ENV, capture_output=True, text=True)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "train.methods[1] is 'djsrh;touch " in output and "; expected one of 'lsh', 'itq', 'cca_itq'" in output
    assert not marker.exists()
    assert not [path for path in (dvc_project / "data").rglob("*") if path.is_file()]  # (dvc exp run makes empty folders)


def test_an_unknown_method_is_refused_with_the_known_ones(dvc_project):
    params = yaml.safe_load((dvc_project / "params.yaml").read_text())
    params["train"]["methods"] = ["lsh", "foo"]
    (dvc_project / "params.yaml").write_text(yaml.safe_dump(params))
    result = subprocess.run(["dvc", "repro"], cwd=dvc_project, env=ENV, capture_output=True, text=True)
    assert result.returncode != 0
    assert "train.methods[1] is 'foo'; expected one of 'lsh', 'itq', 'cca_itq', 'djsrh'" in result.stdout + result.stderr
