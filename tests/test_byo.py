"""Bring-your-own data: a folder of real image files with pairs.jsonl or pairs.csv, built by the tests."""

import csv
import json

import numpy as np
import pytest
from conftest import tiny_params
from PIL import Image

from cmhash.datasets.prepared import PreparedData
from cmhash.errors import CmhashError
from cmhash.pipeline import stages
from cmhash.pipeline.layout import Layout

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 60, 220)}


def _pairs(n=40, seed=0):
    """n photos-with-captions stand-ins: a coloured square on a noisy background, in sub-folders."""
    rng = np.random.default_rng(seed)
    pairs = []
    for i in range(n):
        colour = list(COLOURS)[i % 3]
        shape = "square" if i % 2 else "disc"
        texts = [f"a {colour} {shape}"] if i % 4 else [f"a {colour} {shape}", f"something {colour}"]
        pairs.append({"image": f"{'ab'[i % 2]}/img_{i:03d}.{'jpg' if i % 3 else 'png'}", "text": texts if len(texts) > 1 else texts[0],
                      "labels": [colour, shape], "_pixels": rng.integers(0, 60, (48, 48, 3)), "_colour": COLOURS[colour]})
    return pairs


def _write_folder(root, pairs, fmt="jsonl"):
    for pair in pairs:
        pixels = pair["_pixels"].astype(np.uint8)
        pixels[12:36, 12:36] = pair["_colour"]
        (root / pair["image"]).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(root / pair["image"])
    records = [{k: v for k, v in p.items() if not k.startswith("_")} for p in pairs]
    if fmt == "jsonl":
        (root / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    else:
        with (root / "pairs.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["image", "text", "labels"])
            for r in records:
                writer.writerow([r["image"], r["text"] if isinstance(r["text"], str) else r["text"][0], "|".join(r["labels"])])
    return root


def _byo_params(root, clip_config=None):
    from cmhash.pipeline.params import validate_params

    dataset = {"name": "byo", "root": str(root), "seed": 0, "split": {"query": 8, "train": 24}}
    return validate_params({**tiny_params(clip_config), "dataset": dataset})


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_byo_folder_is_prepared_and_validated(tmp_path, fmt):
    root = _write_folder(tmp_path / "photos", _pairs(), fmt)
    params, layout = _byo_params(root), Layout(tmp_path / "project")
    path = stages.prepare.run(params, layout, progress=False)
    with PreparedData(path) as data:
        assert data.n_items == 40 and data.source == "byo"
        assert data.label_names == ["blue", "disc", "green", "red", "square"]  # sorted vocabulary
        assert data.labels.sum(axis=1).tolist() == [2] * 40
        assert data.image_paths[1] == "b/img_001.jpg"
        n_texts = 40 + (10 if fmt == "jsonl" else 0)  # every 4th jsonl pair has two captions
        assert len(data.texts) == n_texts and data.texts_by_item()[0][:1] == ["a red disc"]
        assert {k: len(v) for k, v in data.splits.items()} == {"query": 8, "retrieval": 32, "train": 24}
        first = next(data.iter_images(4))
        assert first[0].size == (48, 48) and first[0].getpixel((20, 20)) == COLOURS["red"]
    assert stages.validate.run(params, layout)["failed"] == 0


def test_byo_runs_through_the_whole_pipeline(tmp_path, clip_config):
    root = _write_folder(tmp_path / "photos", _pairs(60))
    params, layout = _byo_params(root, clip_config), Layout(tmp_path / "project")
    params["dataset"]["split"] = {"query": 10, "train": 40}
    params["train"]["bits"] = [16]
    stages.prepare.run(params, layout, progress=False)
    stages.validate.run(params, layout)
    stages.encode.run(params, layout, progress=False)
    for method in ("lsh", "djsrh", "dcmht"):
        stages.train.run(params, layout, method, 16, progress=False)
        scores = stages.evaluate.run(params, layout, [(method, 16)], progress=False)[method, 16]
        assert 0 < scores["i2t"]["map_all"] <= 1


def _broken(tmp_path, edit):
    pairs = _pairs(12)
    edit(pairs)
    return _write_folder(tmp_path / "photos", pairs)


@pytest.mark.parametrize("edit, message", [
    (lambda p: p[3].update(text="  "), r"pairs.jsonl:4: 'text' must be a non-empty caption"),
    (lambda p: p[5].update(labels=[]), r"pairs.jsonl:6: the pair has no label"),
    (lambda p: p[2].update(image="../outside.png"), r"pairs.jsonl:3: image '../outside.png' is outside dataset.root"),
])
def test_bad_pairs_stop_prepare_naming_file_and_line(tmp_path, edit, message):
    root = _broken(tmp_path, edit)
    with pytest.raises(CmhashError, match=message):
        stages.prepare.run(_byo_params(root), Layout(tmp_path / "project"), progress=False)


def test_missing_and_undecodable_images_and_bad_json_are_clear_errors(tmp_path):
    root = _write_folder(tmp_path / "photos", _pairs(12))
    params, layout = _byo_params(root), Layout(tmp_path / "project")
    params["dataset"]["split"] = {"query": 2, "train": 5}
    (root / "a/img_004.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(CmhashError, match=r"pairs.jsonl:5: image 'a/img_004.jpg' cannot be decoded"):
        stages.prepare.run(params, layout, progress=False)
    (root / "a/img_004.jpg").unlink()
    with pytest.raises(CmhashError, match=r"pairs.jsonl:5: image 'a/img_004.jpg' does not exist"):
        stages.prepare.run(params, layout, progress=False)
    (root / "pairs.jsonl").write_text('{"image": "b/img_001.jpg", "text": "x", "labels": ["a"]}\n{oops\n')
    with pytest.raises(CmhashError, match=r"pairs.jsonl:2: not valid JSON"):
        stages.prepare.run(params, layout, progress=False)


def test_pairs_file_must_be_exactly_one_and_split_explicit(tmp_path):
    root = _write_folder(tmp_path / "photos", _pairs(12))
    (root / "pairs.csv").write_text("image,text,labels\n")
    with pytest.raises(CmhashError, match="has both of pairs.jsonl and pairs.csv"):
        stages.prepare.run(_byo_params(root), Layout(tmp_path / "project"), progress=False)
    (root / "pairs.jsonl").unlink()
    (root / "pairs.csv").write_text("picture,caption\n")
    with pytest.raises(CmhashError, match="header must name the columns image,text,labels"):
        stages.prepare.run(_byo_params(root), Layout(tmp_path / "project"), progress=False)
    params = _byo_params(root)
    params["dataset"]["split"] = {"query": 3}
    with pytest.raises(CmhashError, match=r"dataset.split must give train \(e.g. split: \{query: 2000, train: 5000\}\) or name a protocol"):
        stages.prepare.run(params, Layout(tmp_path / "project"), progress=False)


def test_duplicate_pairs_are_counted_warned_about_and_can_be_dropped(tmp_path, capsys):
    from cmhash.pipeline.params import validate_params

    pairs = _pairs(40)
    root = _write_folder(tmp_path / "raw", pairs + pairs)  # every pair twice
    params = _byo_params(root)
    layout = Layout(tmp_path / "project")
    stages.prepare.run(params, layout, progress=False)
    with PreparedData(layout.prepared("byo")) as data:
        assert data.summary["duplicate_pairs"] == 40 and data.n_items == 80
        queries = set(data.splits["query"].tolist())
    report = stages.validate.run(params, layout)
    twins = sum(1 for q in queries if (q + 40) % 80 not in queries)  # the query's twin is a retrieval item
    assert report["success"] and report["warnings"] == [
        f"{twins} of the 8 queries have an exact duplicate (same image, same captions) in the retrieval set, e.g. item "
        f"{min(q for q in queries if (q + 40) % 80 not in queries)}; each finds itself, which inflates mAP (for your own "
        "data, dataset.byo.deduplicate: true drops duplicates)"]
    assert "warning: " in capsys.readouterr().out
    deduplicated = validate_params({**params, "dataset": {**params["dataset"], "byo": {"deduplicate": True}}})
    stages.prepare.run(deduplicated, layout, progress=False)
    with PreparedData(layout.prepared("byo")) as data:
        assert data.summary["duplicate_pairs_dropped"] == 40 and data.n_items == 40
    assert stages.validate.run(deduplicated, layout)["warnings"] == []
