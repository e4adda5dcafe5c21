"""``cmhash tune``: settings chosen on a validation split carved from the training split."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from cmhash.checksums import file_md5
from cmhash.errors import CmhashError
from cmhash.pipeline import stages
from cmhash.pipeline.cli import main
from cmhash.pipeline.tuning import carve_validation, parse_grid, tune


def test_grid_values_keep_their_types():
    grid = parse_grid(["lr=0.001, 3e-3", "hidden=128,512", "mode=frozen", "standardize=true"])
    assert grid == {"lr": [0.001, 0.003], "hidden": [128, 512], "mode": ["frozen"], "standardize": [True]}
    for bad in (["lr"], ["=1"], ["lr="]):
        with pytest.raises(CmhashError, match="NAME=VALUE"):
            parse_grid(bad)
    with pytest.raises(CmhashError, match="given twice"):
        parse_grid(["lr=1", "lr=2"])


def test_validation_is_a_seeded_partition_of_the_training_rows():
    train = np.arange(10, 110, 2)
    fit, validation = carve_validation(train, 0.2, seed=3)
    assert len(validation) == 10 and len(fit) == 40
    assert np.array_equal(np.sort(np.concatenate([fit, validation])), train)
    assert np.array_equal(carve_validation(train, 0.2, seed=3)[1], validation)
    assert not np.array_equal(carve_validation(train, 0.2, seed=4)[1], validation)
    for share in (0.0, 1.0, 0.001):
        with pytest.raises(CmhashError, match="--validation"):
            carve_validation(train, share, seed=0)


@pytest.fixture
def encoded(project):
    params, layout = project
    stages.encode.run(params, layout, progress=False)
    return params, layout


def test_tune_scores_every_combination_and_never_reads_the_query_split(encoded):
    params, layout = encoded
    grid = {"iterations": [1, 20]}
    result = tune(params, layout, "itq", 16, grid)
    assert sorted(run["settings"]["iterations"] for run in result["runs"]) == [1, 20]
    means = [run["mean_map_all"] for run in result["runs"]]
    assert means == sorted(means, reverse=True)
    assert all(0 < run["map_all"][d] <= 1 for run in result["runs"] for d in ("i2t", "t2i"))
    assert result["fit_items"] + result["validation_items"] == len(h5py.File(layout.prepared("builtin"))["splits/train"])
    assert "prepared_md5" in result["features"]  # the features' identity, which --resume compares

    # Scrambling the labels and features of every item outside the training split changes nothing.
    with h5py.File(layout.prepared("builtin"), "r+") as f:
        outside = np.setdiff1d(np.arange(len(f["labels"])), f["splits/train"][()])
        labels = f["labels"][()]
        labels[outside] = 1 - labels[outside]
        f["labels"][...] = labels
    with h5py.File(layout.features("builtin"), "r+") as f:
        for name in ("images", "texts"):
            values = f[name][()]
            values[outside] = np.random.default_rng(0).standard_normal(values[outside].shape)
            f[name][...] = values
        # as if encoded from the scrambled file (tune checks the features came from the prepared file)
        made = json.loads(f.attrs["fingerprint"])
        f.attrs["fingerprint"] = json.dumps({**made, "prepared_md5": file_md5(layout.prepared("builtin"))}, sort_keys=True)
    scores = lambda runs: [(run["settings"], run["map_all"]) for run in runs]  # noqa: E731
    assert scores(tune(params, layout, "itq", 16, grid)["runs"]) == scores(result["runs"])


def test_tune_command_writes_the_table(encoded, capsys):
    params, layout = encoded
    import yaml

    params_file = layout.root / "params.yaml"
    params_file.write_text(yaml.safe_dump(params))
    assert main(["tune", "--params", str(params_file), "--root", str(layout.root), "--method", "lsh", "--bits", "16",
                 "--grid", "seed_offset=0", "--quiet"]) == 1  # not a setting of lsh: the error names it
    assert "seed_offset" in capsys.readouterr().err
    assert main(["tune", "--params", str(params_file), "--root", str(layout.root), "--method", "dcmht", "--bits", "16",
                 "--grid", "lr=0.001,0.01", "--validation", "0.25", "--quiet"]) == 0
    table = (layout.root / "reports" / "tune" / "dcmht-16.md").read_text()
    assert "lr=0.001" in table and "lr=0.01" in table and "15 held-out training items" in table
    saved = json.loads((layout.root / "reports" / "tune" / "dcmht-16.json").read_text())
    assert saved["grid"] == {"lr": [0.001, 0.01]} and len(saved["runs"]) == 2


def test_unknown_method_fails_before_reading_any_data(project):
    params, layout = project  # no features file: the method name is checked first
    with pytest.raises(CmhashError, match="unknown hashing method 'nosuch'"):
        tune(params, layout, "nosuch", 16, {})


def test_fine_tuning_cannot_be_tuned_on_features(encoded):
    params, layout = encoded
    with pytest.raises(CmhashError, match="mode=frozen"):
        tune(params, layout, "dcmht", 16, {"mode": ["frozen", "finetune"]})


def test_an_interrupted_grid_keeps_its_finished_runs_and_resume_reuses_them(encoded, monkeypatch):
    from cmhash.pipeline import tuning

    params, layout = encoded
    grid = {"iterations": [1, 5, 20]}
    real = tuning._fit_and_score
    fitted = []

    def interrupted_after_two(model, *args):
        if len(fitted) == 2:
            raise KeyboardInterrupt
        fitted.append(model.iterations)
        return real(model, *args)

    monkeypatch.setattr(tuning, "_fit_and_score", interrupted_after_two)
    with pytest.raises(KeyboardInterrupt):
        tune(params, layout, "itq", 16, grid)
    saved = json.loads((layout.root / "reports" / "tune" / "itq-16.json").read_text())
    assert sorted(run["settings"]["iterations"] for run in saved["runs"]) == [1, 5]

    fitted.clear()
    monkeypatch.setattr(tuning, "_fit_and_score", lambda model, *args: fitted.append(model.iterations) or real(model, *args))
    result = tune(params, layout, "itq", 16, grid, resume=True)
    assert fitted == [20] and len(result["runs"]) == 3
    # a different base setting is another experiment: nothing is reused
    params["methods"]["itq"]["iterations"] = 7
    fitted.clear()
    tune(params, layout, "itq", 16, {"iterations": [1]}, resume=True)
    assert fitted == [1]
