"""Bad files and bad circumstances end in one clear message, never a traceback or a crash."""

import json
import shutil
from collections import namedtuple

import h5py
import pytest
import yaml
from conftest import params_for_dataset

from cmhash.errors import CmhashError
from cmhash.pipeline import stages
from cmhash.pipeline.cli import main
from cmhash.pipeline.layout import Layout


def test_a_truncated_prepared_features_or_codes_file_names_the_file_and_the_stage(project, tmp_path, capsys):
    params, layout = project
    stages.encode.run(params, layout, progress=False)
    stages.train.run(params, layout, "lsh", 16, progress=False)
    (layout.root / "params.yaml").write_text(yaml.safe_dump(params))
    for path, stage, command in [
        (layout.features("builtin"), "dvc repro encode", ["train", "--method", "lsh", "--bits", "16"]),
        (layout.model_dir("lsh", 16) / "codes.h5", "the train stage", ["evaluate", "--method", "lsh", "--bits", "16"]),
        (layout.prepared("builtin"), "dvc repro prepare", ["validate"]),
    ]:
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])  # as a copy cut short
        assert main([*command, "--params", str(layout.root / "params.yaml"), "--root", str(layout.root)]) == 1
        err = capsys.readouterr().err
        assert str(path) in err and stage in err and "Traceback" not in err
        path.write_bytes(data)


@pytest.mark.parametrize("name", ["pairs.jsonl", "pairs.csv"])
def test_pairs_files_that_are_not_utf8_name_the_line(tmp_path, name):
    root = tmp_path / "raw"
    root.mkdir()
    good = '{"image": "a.png", "text": "a cat", "labels": ["cat"]}\n' if name.endswith("jsonl") else "image,text,labels\n"
    (root / name).write_bytes(good.encode() + b'{"image": "b.png", "text": "caf\xe9", "labels": ["x"]}\n')
    with pytest.raises(CmhashError, match=rf"{name}:2: not UTF-8 text \(byte 0xe9 at column 32\); save the file as UTF-8"):
        stages.prepare.run(params_for_dataset({"name": "byo", "root": str(root), "split": {"query": 1, "train": 1}}),
                       Layout(tmp_path / "p"), progress=False)


def test_an_image_over_the_pixel_limit_names_the_file_and_how_to_raise_it(tmp_path):
    from PIL import Image

    root = tmp_path / "raw"
    root.mkdir()
    for i in range(4):
        Image.new("RGB", (120, 100), (40 * i, 0, 0)).save(root / f"{i}.png")
    (root / "pairs.jsonl").write_text("".join(json.dumps({"image": f"{i}.png", "text": "a red thing", "labels": ["red"]}) + "\n"
                                              for i in range(4)))
    dataset = {"name": "byo", "root": str(root), "split": {"query": 1, "train": 2}, "max_image_pixels": 5000}
    with pytest.raises(CmhashError, match=r"pairs.jsonl:1: image .*0.png has 12,000 pixels, more than "
                                          r"dataset.max_image_pixels \(5,000\).*raise dataset.max_image_pixels in params.yaml"):
        stages.prepare.run(params_for_dataset(dataset), Layout(tmp_path / "p"), progress=False)
    # between once and twice the limit, where PIL itself only warns
    with pytest.raises(CmhashError, match=r"has 12,000 pixels, more than dataset.max_image_pixels \(10,000\)"):
        stages.prepare.run(params_for_dataset({**dataset, "max_image_pixels": 10_000}), Layout(tmp_path / "p"), progress=False)
    stages.prepare.run(params_for_dataset({**dataset, "max_image_pixels": 20_000}), Layout(tmp_path / "p"), progress=False)


def test_too_little_disk_space_stops_prepare_before_it_writes(project, tmp_path, monkeypatch):
    """A write that runs out of space inside HDF5 can end the process (it did: a segfault); so
    prepare measures first. Here the file system reports 1 MB free."""
    params, _ = project
    Usage = namedtuple("Usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(2**30, 2**30 - 2**20, 2**20))
    layout = Layout(tmp_path / "full")
    with pytest.raises(CmhashError, match=r"builtin.h5 needs about \d+ MB and .*prepared has 1 MB free; free some space"):
        stages.prepare.run(params, layout, progress=False)
    assert not list(layout.prepared("builtin").parent.iterdir())  # nothing written


def test_train_after_the_prepared_file_changed_says_which_stage_to_rerun(project):
    params, layout = project
    stages.encode.run(params, layout, progress=False)
    with h5py.File(layout.prepared("builtin"), "r+") as f:  # as after prepare ran again with another seed
        f["splits/train"][0] = f["splits/train"][1]
    with pytest.raises(CmhashError, match=r"builtin.h5 changed after .*features/builtin.h5 was encoded from it; run "
                                          r"`dvc repro encode` \(or cmhash encode\) first"):
        stages.train.run(params, layout, "lsh", 16, progress=False)
