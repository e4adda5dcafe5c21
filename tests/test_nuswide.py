"""NUS-WIDE from a miniature of the raw release's exact layout, built here."""

import numpy as np
import pytest
from PIL import Image

from cmhash.datasets.prepared import PreparedData
from cmhash.errors import CmhashError
from cmhash.pipeline import stages
from cmhash.pipeline.layout import Layout

N = 150
CONCEPTS = [f"concept{i:02d}" for i in range(81)]
TAGS = [f"tag{i:04d}" for i in range(1000)]
FOLDERS = ["actor", "airport", "animal"]


def _release(root, seed=0):
    """ImageList, Groundtruth/AllLabels (81 files), NUS_WID_Tags (AllTags1k, TagList1k) and Flickr/."""
    rng = np.random.default_rng(seed)
    for folder in ("ImageList", "Groundtruth/AllLabels", "NUS_WID_Tags", *[f"Flickr/{f}" for f in FOLDERS]):
        (root / folder).mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(N):
        folder = FOLDERS[i % 3]
        names.append((folder, f"{i:04d}_{1000000 + i}.jpg"))
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(root / "Flickr" / folder / names[-1][1])
    # Windows paths with CRLF, as in the release
    (root / "ImageList/Imagelist.txt").write_bytes("".join(f"C:\\ImageData\\Flickr\\{f}\\{n}\r\n" for f, n in names).encode())
    frequency = np.linspace(0.6, 0.01, 81)  # concept00 most frequent
    labels = (rng.random((N, 81)) < frequency).astype(np.uint8)
    for c, name in enumerate(CONCEPTS):
        (root / f"Groundtruth/AllLabels/Labels_{name}.txt").write_text("".join(f"{v}\n" for v in labels[:, c]))
    bow = (rng.random((N, 1000)) < 0.004).astype(np.uint8)
    bow[::11] = 0  # some images have no tag of the 1k list
    (root / "NUS_WID_Tags/AllTags1k.txt").write_text("".join("\t".join(map(str, row)) + "\t\n" for row in bow))
    (root / "NUS_WID_Tags/TagList1k.txt").write_text("\n".join(TAGS) + "\n")
    return names, labels, bow


def _params(root, concepts=10):
    from conftest import params_for_dataset

    return params_for_dataset({"name": "nuswide", "root": str(root), "seed": 0, "split": {"query": 10, "train": 30},
                               "nuswide": {"concepts": concepts}})


@pytest.mark.parametrize("concepts", [10, 21])
def test_top_concepts_tags_and_images(tmp_path, concepts):
    names, labels, bow = _release(tmp_path / "raw")
    params, layout = _params(tmp_path / "raw", concepts), Layout(tmp_path / "project")
    path = stages.prepare.run(params, layout, progress=False)
    # expected, computed independently: the most frequent concepts, items with one of them and a tag
    top = sorted(np.argsort(-labels.sum(axis=0).astype(int), kind="stable")[:concepts])
    kept = [i for i in range(N) if labels[i, top].any() and bow[i].any()]
    with PreparedData(path) as data:
        assert data.label_names == [CONCEPTS[c] for c in top]
        assert data.n_items == len(kept)
        np.testing.assert_array_equal(data.labels, labels[kept][:, top])
        assert data.image_paths == [f"Flickr/{names[i][0]}/{names[i][1]}" for i in kept]
        stored, words = data.bag_of_words
        np.testing.assert_array_equal(stored, bow[kept])
        assert words == TAGS
        assert data.texts[0] == " ".join(TAGS[j] for j in np.flatnonzero(bow[kept[0]]))
        skipped_no_label = int((~labels[:, top].any(axis=1)).sum())
        assert data.summary == {"images": N, "items": len(kept), "skipped_no_label": skipped_no_label,
                                "skipped_no_tag": N - len(kept) - skipped_no_label}
    report = stages.validate.run(params, layout)
    assert report["failed"] == 0
    # the vocabulary size is checked only on the whole release (269,648 images)
    assert "the dataset has %d labels" % concepts in {o["description"] for o in report["expectations"]}


def test_bad_release_files_name_the_file_and_line(tmp_path):
    root = tmp_path / "raw"
    names, labels, bow = _release(root)
    tags = root / "NUS_WID_Tags/AllTags1k.txt"
    lines = tags.read_text().splitlines(keepends=True)
    tags.write_text("".join(lines[:40] + ["\t".join(["0"] * 999) + "\n"] + lines[41:]))
    with pytest.raises(CmhashError, match=r"AllTags1k.txt:41: expected 1000 values of 0 or 1, got 999 value"):
        stages.prepare.run(_params(root), Layout(tmp_path / "p"), progress=False)
    tags.write_text("".join(lines[:7] + ["2\t" + lines[7][2:]] + lines[8:]))
    with pytest.raises(CmhashError, match=r"AllTags1k.txt:8: expected 1000 values of 0 or 1"):
        stages.prepare.run(_params(root), Layout(tmp_path / "p"), progress=False)
    tags.write_text("".join(lines[:-1]))
    with pytest.raises(CmhashError, match=rf"AllTags1k.txt has {N - 1} rows but the image list \(ImageList/Imagelist.txt\) has {N} images"):
        stages.prepare.run(_params(root), Layout(tmp_path / "p"), progress=False)
    tags.write_text("".join(lines))
    label_file = root / "Groundtruth/AllLabels/Labels_concept00.txt"
    label_file.write_text(label_file.read_text() + "1\n")
    with pytest.raises(CmhashError, match=rf"Labels_concept00.txt has {N + 1} rows but the image list .* has {N} images"):
        stages.prepare.run(_params(root), Layout(tmp_path / "p"), progress=False)
    for path in sorted((root / "Groundtruth/AllLabels").glob("*.txt"))[:72]:
        path.unlink()
    with pytest.raises(CmhashError, match="has 9 Labels_<concept>.txt files, fewer than the 10 concepts asked for"):
        stages.prepare.run(_params(root), Layout(tmp_path / "p"), progress=False)


def test_missing_image_names_the_image_list_line(tmp_path):
    root = tmp_path / "raw"
    names, labels, bow = _release(root)
    top = sorted(np.argsort(-labels.sum(axis=0).astype(int), kind="stable")[:10])
    first = next(i for i in range(N) if labels[i, top].any() and bow[i].any())
    (root / "Flickr" / names[first][0] / names[first][1]).unlink()
    with pytest.raises(CmhashError, match=rf"Imagelist.txt:{first + 1}: image .*{names[first][1]} does not exist"):
        stages.prepare.run(_params(root), Layout(tmp_path / "p"), progress=False)
