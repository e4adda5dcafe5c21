"""MS-COCO from a miniature of the official layout (annotations JSON and image folders), built here."""

import json

import numpy as np
import pytest
from PIL import Image

from cmhash.datasets.prepared import PreparedData
from cmhash.errors import CmhashError
from cmhash.pipeline import stages
from cmhash.pipeline.layout import Layout

# COCO's category ids have gaps (1..90 for 80 categories); order is by id
CATEGORY_IDS = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]


def _release(root, year=2017, seed=0):
    rng = np.random.default_rng(seed)
    (root / "annotations").mkdir(parents=True)
    categories = [{"id": cid, "name": f"category{cid}", "supercategory": "thing"} for cid in reversed(CATEGORY_IDS)]
    truth = {}
    annotation_id = 1000
    for subset, first_id, count in (("train", 1, 60), ("val", 500, 20)):
        (root / f"{subset}{year}").mkdir()
        images, instances, captions = [], [], []
        for image_id in rng.permutation(np.arange(first_id, first_id + count)).tolist():  # files list images unsorted
            name = f"{image_id:012d}.jpg"
            Image.fromarray(rng.integers(0, 255, (10, 12, 3), dtype=np.uint8)).save(root / f"{subset}{year}" / name)
            images.append({"id": image_id, "file_name": name, "height": 10, "width": 12, "license": 1})
            # 3-4 categories, cycling through all 80 so that each occurs a few times
            cats = [] if image_id % 7 == 0 else sorted({CATEGORY_IDS[(3 * image_id + k) % 80] for k in range(3 + image_id % 2)})
            for cid in cats + cats[:1]:  # two instances of the first category
                annotation_id += 1
                instances.append({"id": annotation_id, "image_id": image_id, "category_id": cid, "iscrowd": 0,
                                  "area": 4.0, "bbox": [0, 0, 2, 2], "segmentation": [[0, 0, 2, 0, 2, 2]]})
            texts = [f"A  photo {k} of image {image_id}.\n" for k in range(5 + image_id % 3)]
            for text in texts:
                annotation_id += 1
                captions.append({"id": annotation_id, "image_id": image_id, "caption": text})
            truth[(subset, image_id)] = (cats, [" ".join(t.split()) for t in texts])
        info = {"info": {"year": year}, "licenses": [], "images": images}
        (root / f"annotations/instances_{subset}{year}.json").write_text(json.dumps({**info, "annotations": instances, "categories": categories}))
        (root / f"annotations/captions_{subset}{year}.json").write_text(json.dumps({**info, "annotations": captions}))
    return truth


def _params(root, **options):
    from conftest import params_for_dataset

    return params_for_dataset({"name": "coco", "root": str(root), "seed": 0, "split": {"query": 5, "train": 60}, "coco": options})


@pytest.mark.parametrize("year", [2014, 2017])
def test_categories_captions_and_images(tmp_path, year):
    truth = _release(tmp_path / "raw", year)
    params, layout = _params(tmp_path / "raw", year=year), Layout(tmp_path / "project")
    path = stages.prepare.run(params, layout, progress=False)
    kept = [(s, i) for s, i in sorted(truth, key=lambda k: (k[0] != "train", k[1])) if truth[(s, i)][0]]
    with PreparedData(path) as data:
        assert data.label_names == [f"category{cid}" for cid in CATEGORY_IDS]  # 80, in id order
        assert data.image_paths == [f"{s}{year}/{i:012d}.jpg" for s, i in kept]
        for row, key in enumerate(kept):
            cats, texts = truth[key]
            assert [CATEGORY_IDS[c] for c in np.flatnonzero(data.labels[row])] == cats
            assert data.texts_by_item()[row] == texts
        assert data.summary["skipped_no_instance"] == len(truth) - len(kept)
        assert data.summary["images"] == len(truth) and data.summary["captions"] == len(data.texts)
    report = stages.validate.run(params, layout)
    assert report["failed"] == 0 and "the dataset has 80 labels" in {o["description"] for o in report["expectations"]}


def test_only_the_train_subset(tmp_path):
    truth = _release(tmp_path / "raw")
    params = _params(tmp_path / "raw", subsets=["train"])
    params["dataset"]["split"] = {"query": 5, "train": 30}
    path = stages.prepare.run(params, Layout(tmp_path / "p"), progress=False)
    with PreparedData(path) as data:
        assert data.n_items == sum(1 for (s, _), (cats, _) in truth.items() if s == "train" and cats)


def test_bad_input_names_the_file_and_item(tmp_path):
    root = tmp_path / "raw"
    _release(root)
    captions = root / "annotations/captions_val2017.json"
    data = json.loads(captions.read_text())
    data["annotations"][3]["caption"] = "   "
    captions.write_text(json.dumps(data))
    bad = data["annotations"][3]
    with pytest.raises(CmhashError, match=rf"captions_val2017.json: caption annotation {bad['id']} of image {bad['image_id']} is blank"):
        stages.prepare.run(_params(root), Layout(tmp_path / "p"), progress=False)
    captions.write_text("{not json")
    with pytest.raises(CmhashError, match="captions_val2017.json: not valid JSON"):
        stages.prepare.run(_params(root), Layout(tmp_path / "p"), progress=False)
    with pytest.raises(CmhashError, match="instances_train2014.json not found"):
        stages.prepare.run(_params(root, year=2014), Layout(tmp_path / "p"), progress=False)
    (root / "train2017/000000000001.jpg").unlink()
    with pytest.raises(CmhashError, match=r"item 0: image .*train2017/000000000001.jpg does not exist"):
        stages.prepare.run(_params(root, subsets=["train"]), Layout(tmp_path / "p"), progress=False)
    with pytest.raises(CmhashError, match=r"unknown key dataset.coco.subset; did you mean dataset.coco.subsets\?"):
        stages.prepare.run(_params(root, subset=["train"]), Layout(tmp_path / "p"), progress=False)
