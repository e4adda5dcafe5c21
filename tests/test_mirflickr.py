"""MIRFlickr-25K from a miniature of the raw release's exact layout, built here."""

import numpy as np
import pytest
from PIL import Image

from cmhash.datasets.prepared import PreparedData
from cmhash.errors import CmhashError
from cmhash.pipeline import stages
from cmhash.pipeline.layout import Layout

CONCEPTS = ["animals", "baby", "bird", "car", "clouds", "dog", "female", "flower", "food", "indoor", "lake", "male",
            "night", "people", "plant_life", "portrait", "river", "sea", "sky", "structures", "sunset", "transport",
            "tree", "water"]
COMMON = ["sky", "nikon", "blue", "canon", "nature"]  # frequent tags: kept at min_tag_count 3


def _release(root, n=120, seed=0):
    """im1..imN.jpg, meta/tags/tags<N>.txt, annotations with _r1 files and a README, as in the zips."""
    rng = np.random.default_rng(seed)
    (root / "mirflickr/meta/tags").mkdir(parents=True)
    annotations = root / "mirflickr25k_annotations_v080"
    annotations.mkdir()
    members = {c: [] for c in CONCEPTS}
    truth = {}
    for number in range(1, n + 1):
        Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(root / f"mirflickr/im{number}.jpg")
        tags = [] if number % 7 == 0 else [COMMON[number % 5], COMMON[(number + 1) % 5], f"rare{number}"]
        if number == 4:
            tags.append("café")  # a non-ASCII tag, UTF-8 encoded as in the release
        (root / f"mirflickr/meta/tags/tags{number}.txt").write_bytes(("\r\n".join(tags) + ("\r\n" if tags else "")).encode())
        labels = [] if number % 5 == 0 else [CONCEPTS[number % 24], CONCEPTS[(3 * number) % 24]]
        for concept in labels:
            members[concept].append(number)
        truth[number] = (sorted(set(labels)), tags)
    for concept in CONCEPTS:
        (annotations / f"{concept}.txt").write_text("".join(f"{m}\n" for m in members[concept]))
        (annotations / f"{concept}_r1.txt").write_text("".join(f"{m}\n" for m in members[concept][:1]))
    (annotations / "README.txt").write_text("MIRFLICKR-25000 annotations\n")
    return truth


def _params(root, min_tag_count=3):
    from conftest import params_for_dataset

    return params_for_dataset({"name": "mirflickr25k", "root": str(root), "seed": 0, "split": {"query": 10, "train": 70},
                               "mirflickr25k": {"min_tag_count": min_tag_count}})


def test_classic_filter_labels_tags_and_bag_of_words(tmp_path):
    truth = _release(tmp_path / "raw")
    params, layout = _params(tmp_path / "raw"), Layout(tmp_path / "project")
    path = stages.prepare.run(params, layout, progress=False)
    # expected, computed independently: keep images with a label and a tag used by >= 3 images
    counts = {}
    for _, tags in truth.values():
        for tag in set(tags):
            counts[tag] = counts.get(tag, 0) + 1
    vocabulary = sorted(t for t, c in counts.items() if c >= 3)
    kept = [n for n, (labels, tags) in truth.items() if labels and any(t in vocabulary for t in tags)]
    with PreparedData(path) as data:
        assert data.n_items == len(kept) and data.label_names == CONCEPTS  # 24 concepts, _r1 and README ignored
        assert data.image_paths[0] == f"mirflickr/im{kept[0]}.jpg"
        for row, number in enumerate(kept):
            labels, tags = truth[number]
            assert [CONCEPTS[i] for i in np.flatnonzero(data.labels[row])] == labels
            assert data.texts[row] == " ".join(t for t in tags if t in vocabulary)
        bow, words = data.bag_of_words
        assert words == vocabulary and bow.shape == (len(kept), len(vocabulary))
        assert [words[i] for i in np.flatnonzero(bow[0])] == sorted(data.texts[0].split())
        assert "café" not in words  # used once: filtered out
    assert stages.validate.run(params, layout)["failed"] == 0


def test_annotation_for_a_missing_image_is_a_clear_error(tmp_path):
    _release(tmp_path / "raw")
    (tmp_path / "raw/mirflickr25k_annotations_v080/dog.txt").write_text("3\n121\n")
    with pytest.raises(CmhashError, match=r"dog.txt:2: image 121 is not in .*annotations do not match the image list"):
        stages.prepare.run(_params(tmp_path / "raw"), Layout(tmp_path / "project"), progress=False)


def test_missing_parts_of_the_release_are_clear_errors(tmp_path):
    _release(tmp_path / "raw")
    (tmp_path / "raw/mirflickr/meta/tags/tags9.txt").unlink()
    with pytest.raises(CmhashError, match=r"tags9.txt is missing"):
        stages.prepare.run(_params(tmp_path / "raw"), Layout(tmp_path / "project"), progress=False)
    (tmp_path / "raw/mirflickr25k_annotations_v080/sky.txt").unlink()
    with pytest.raises(CmhashError, match=r"has 23 concept files"):
        stages.prepare.run(_params(tmp_path / "raw"), Layout(tmp_path / "project"), progress=False)
    with pytest.raises(CmhashError, match=r"elsewhere is not a folder; set dataset.root"):
        stages.prepare.run(_params(tmp_path / "elsewhere"), Layout(tmp_path / "project"), progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CmhashError, match=r"unpack mirflickr25k.zip"):
        stages.prepare.run(_params(tmp_path / "empty"), Layout(tmp_path / "project"), progress=False)
