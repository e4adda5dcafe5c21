import subprocess
import sys

import pytest

from cmhash.pipeline.cli import main


def test_help_lists_every_stage_without_heavy_imports():
    result = subprocess.run([sys.executable, "-m", "cmhash.pipeline.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for stage in ("prepare", "validate", "encode", "train", "evaluate"):
        assert stage in result.stdout
    # --help must not import torch, open_clip, great_expectations or prefect
    probe = subprocess.run([sys.executable, "-c", "import sys, cmhash.pipeline.cli; cmhash.pipeline.cli.build_parser();"
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
    assert main(["evaluate", "--method", "lsh", "--params", str(tmp_path / "params.yaml"), "--root", str(tmp_path)]) == 1
    assert "give both --method and --bits (one model), or neither" in capsys.readouterr().err
    assert main(["evaluate", "--params", str(tmp_path / "params.yaml"), "--root", str(tmp_path)]) == 1  # nothing prepared
    assert "data/prepared/builtin.h5" in capsys.readouterr().err


def test_every_command_keeps_openmp_threads_from_spinning_for_long(monkeypatch):
    """libgomp's default spin made training 12-40x slower beside a busy process (bench/README.md);
    the CLI sets a short spin before torch loads, unless the user chose one."""
    import os

    from cmhash.pipeline.cli import main

    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    with pytest.raises(SystemExit):
        main(["--version"])
    assert os.environ["GOMP_SPINCOUNT"] == "5000"
    monkeypatch.setenv("GOMP_SPINCOUNT", "123")
    with pytest.raises(SystemExit):
        main(["--version"])
    assert os.environ["GOMP_SPINCOUNT"] == "123"


@pytest.mark.parametrize("stage", ["prepare", "validate", "evaluate", "items", "index", "report"])
def test_stages_that_read_no_method_settings_do_not_import_torch(stage):
    """The schema of the methods' settings comes from their classes, which import torch (a second or
    more); the short stages check the sections they read only, and on a machine without an NVIDIA
    device `device: auto` is answered without torch too."""
    from conftest import REPO

    code = ("import sys\nfrom cmhash.pipeline.params import load_params\n"
            f"from cmhash.pipeline.stages.{stage} import SECTIONS\nfrom cmhash.device import resolve_device\n"
            f"load_params({str(REPO / 'params.yaml')!r}, SECTIONS)\n"
            "assert resolve_device('auto') == 'cpu'\nassert 'torch' not in sys.modules, 'torch was imported'\n")
    result = subprocess.run([sys.executable, "-c", code], env={"CUDA_VISIBLE_DEVICES": "", "PATH": "/usr/bin:/bin"},
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_a_missing_extra_is_named_with_the_install_line():
    """`cmhash serve` on an install without the service extra says which extra to install."""
    from conftest import REPO

    code = ("import sys\nclass Blocked:\n    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] == 'fastapi':\n            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
            "sys.meta_path.insert(0, Blocked())\nfrom cmhash.pipeline.cli import main\n"
            f"sys.exit(main(['serve', '--params', {str(REPO / 'params.yaml')!r}, '--root', {str(REPO)!r}]))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert "fastapi is not installed; `cmhash serve` needs the service extra: python -m pip install 'cmhash[service]'" in result.stderr


def test_evaluate_and_index_name_the_model_that_was_not_trained(tmp_path, capsys):
    """`cmhash evaluate` / `index` cover every model of train.methods x train.bits; one not trained
    yet is named with the stage that makes it, not a traceback."""
    import yaml
    from conftest import tiny_params

    from cmhash.pipeline import stages
    from cmhash.pipeline.layout import Layout

    params = tiny_params()
    params["train"]["methods"], params["train"]["bits"] = ["lsh"], [16]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    stages.prepare.run(params, Layout(tmp_path), progress=False)
    for stage in ("evaluate", "index"):
        assert main([stage, "--params", str(tmp_path / "params.yaml"), "--root", str(tmp_path)]) == 1
        err = capsys.readouterr().err
        assert "data/models/lsh-16/codes.h5: codes not found" in err and "Traceback" not in err
    assert main(["index", "--method", "lsh", "--bits", "300", "--params", str(tmp_path / "params.yaml"),
                 "--root", str(tmp_path)]) == 1
    assert "bits is 300" in capsys.readouterr().err
