import subprocess
import sys

import pytest

from cmhash.cli import main


def test_help_lists_every_stage_without_heavy_imports():
    result = subprocess.run([sys.executable, "-m", "cmhash.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for stage in ("prepare", "validate", "encode", "train", "evaluate"):
        assert stage in result.stdout
    # --help must not import torch, open_clip, great_expectations or prefect
    probe = subprocess.run([sys.executable, "-c", "import sys, cmhash.cli; cmhash.cli.build_parser();"
                            "print([m for m in ('torch','open_clip','great_expectations','prefect') if m in sys.modules])"],
                           capture_output=True, text=True)
    assert probe.stdout.strip() == "[]"


def test_missing_params_file_is_a_clear_error(tmp_path, capsys):
    assert main(["prepare", "--params", str(tmp_path / "nope.yaml"), "--root", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "nope.yaml" in err and "parameter file not found" in err


def test_unknown_dataset_is_a_clear_error(tmp_path, capsys):
    import yaml
    from conftest import tiny_params

    params = tiny_params()
    params["dataset"]["name"] = "mirflickr99"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    assert main(["prepare", "--params", str(tmp_path / "params.yaml"), "--root", str(tmp_path)]) == 1
    assert "dataset.name is 'mirflickr99'; expected one of 'builtin', 'byo'" in capsys.readouterr().err


def test_from_dvc_stage_checks_the_stage_name(tmp_path, capsys, monkeypatch):
    import yaml
    from conftest import tiny_params

    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params()))
    args = ["train", "--from-dvc-stage", "--params", str(tmp_path / "params.yaml"), "--root", str(tmp_path)]
    monkeypatch.setenv("DVC_STAGE", "train@lsh-16;touch x")
    assert main(args) == 1
    assert "the stage name is 'train@lsh-16;touch x', not train@METHOD-BITS" in capsys.readouterr().err
    monkeypatch.setenv("DVC_STAGE", "dvc.yaml:train@foo-16")
    assert main(args) == 1
    assert "unknown hashing method 'foo'" in capsys.readouterr().err
    monkeypatch.setenv("DVC_STAGE", "train@lsh-300")
    assert main(args) == 1
    assert "bits is 300: a code length is a whole number of bits from 1 to 255" in capsys.readouterr().err
    monkeypatch.delenv("DVC_STAGE")
    assert main(["evaluate", "--params", str(tmp_path / "params.yaml"), "--root", str(tmp_path)]) == 1
    assert "give --method and --bits" in capsys.readouterr().err


def test_every_command_keeps_openmp_threads_from_spinning_for_long(monkeypatch):
    """libgomp's default spin made training 12-40x slower beside a busy process (bench/README.md);
    the CLI sets a short spin before torch loads, unless the user chose one."""
    import os

    from cmhash.cli import main

    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    with pytest.raises(SystemExit):
        main(["--version"])
    assert os.environ["GOMP_SPINCOUNT"] == "5000"
    monkeypatch.setenv("GOMP_SPINCOUNT", "123")
    with pytest.raises(SystemExit):
        main(["--version"])
    assert os.environ["GOMP_SPINCOUNT"] == "123"


def test_commands_that_read_no_method_settings_do_not_import_torch(tmp_path):
    """The schema of the methods' settings comes from their classes, which import torch (a second or
    more); evaluate, items, report and the like check the other sections only, and on a machine
    without an NVIDIA device `device: auto` is answered without torch too."""
    from conftest import REPO

    code = ("import sys\nfrom cmhash.params import load_params\nfrom cmhash.cli import WITHOUT_METHOD_SETTINGS\n"
            "from cmhash.device import resolve_device\n"
            f"load_params({str(REPO / 'params.yaml')!r}, WITHOUT_METHOD_SETTINGS)\n"
            "assert resolve_device('auto') == 'cpu'\nassert 'torch' not in sys.modules, 'torch was imported'\n")
    result = subprocess.run([sys.executable, "-c", code], env={"CUDA_VISIBLE_DEVICES": "", "PATH": "/usr/bin:/bin"},
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
