"""The DCMH-style and DCMHT-style .mat sources, on fixtures of both MATLAB formats built here."""

import numpy as np
import pytest
from matlab_files import save_v5, save_v73
from PIL import Image

from cmhash.datasets.prepared import PreparedData
from cmhash.errors import CmhashError
from cmhash.features import read_features
from cmhash.pipeline import stages
from cmhash.pipeline.layout import Layout

N, C, V = 60, 5, 30


def _data(seed=0):
    rng = np.random.default_rng(seed)
    labels = (rng.random((N, C)) < 0.3).astype(np.uint8)
    labels[np.arange(N), rng.integers(0, C, N)] = 1  # every item has a label
    bow = (rng.random((N, V)) < 0.2).astype(np.uint8)
    bow[np.arange(N), rng.integers(0, V, N)] = 1
    images = rng.integers(0, 255, (N, 12, 10, 3), dtype=np.uint8)  # (N, H, W, 3), H != W to catch a swap
    return labels, bow, images


def _dcmh_files(root, save, prefix="mydata"):
    """As the DCMH release: IAll (H, W, 3, N) in MATLAB, LAll (N, C), YAll (N, V) doubles, FAll names."""
    labels, bow, images = _data()
    root.mkdir(parents=True, exist_ok=True)
    save(root / f"{prefix}-iall.mat", {"IAll": np.transpose(images, (1, 2, 3, 0))})
    save(root / f"{prefix}-lall.mat", {"LAll": labels.astype(np.float64)})
    save(root / f"{prefix}-yall.mat", {"YAll": bow.astype(np.float64)})
    save(root / f"{prefix}-fall.mat", {"FAll": [f"im{i + 1}.jpg" for i in range(N)]})
    return labels, bow, images


def _params(name, root, **options):
    from conftest import params_for_dataset

    dataset = {"name": name, "root": str(root), "seed": 0, "split": {"query": 10, "train": 40}}
    if options:
        dataset[name] = options
    return params_for_dataset(dataset)


@pytest.mark.parametrize("save", [save_v5, save_v73], ids=["v5", "v7.3"])
def test_dcmh_files_in_either_format(tmp_path, save):
    labels, bow, images = _dcmh_files(tmp_path / "raw", save)
    params, layout = _params("dcmh_mat", tmp_path / "raw"), Layout(tmp_path / "project")
    path = stages.prepare.run(params, layout, progress=False)
    with PreparedData(path) as data:
        assert data.n_items == N and data.stores_pixels and data.texts == []
        np.testing.assert_array_equal(data.images[()], images)  # (N, 3, W, H) in h5py -> (N, H, W, 3)
        np.testing.assert_array_equal(data.labels, labels)
        stored_bow, words = data.bag_of_words
        np.testing.assert_array_equal(stored_bow, bow)
        assert words == [] and data.label_names == [f"label{i}" for i in range(1, C + 1)]
        assert data.summary == {"items": N, "vocabulary": V, "image_size": 12, "items_without_words": 0}
    report = stages.validate.run(params, layout)
    assert report["failed"] == 0 and report["source_summary"]["items"] == N


def test_items_without_words_are_kept_and_counted(tmp_path):
    from cmhash.errors import ValidationFailed

    root = tmp_path / "raw"
    _, bow, _ = _dcmh_files(root, save_v5)
    bow = bow.astype(np.float64)
    bow[7] = 0  # one of 60 items: more than the 1 % validate allows
    save_v5(root / "mydata-yall.mat", {"YAll": bow})
    params, layout = _params("dcmh_mat", root), Layout(tmp_path / "project")
    with PreparedData(stages.prepare.run(params, layout, progress=False)) as data:
        assert data.n_items == N and data.summary["items_without_words"] == 1
    with pytest.raises(ValidationFailed, match=r"at most 1% of items have an empty bag of words .*: 1 bad row\(s\), e.g. item 7"):
        stages.validate.run(params, layout)


def test_known_prefix_expects_the_published_counts(tmp_path):
    """nus-wide-tc10 files must hold DCMH's 186,577 items and 10 labels; these fixtures do not."""
    from cmhash.errors import ValidationFailed

    _dcmh_files(tmp_path / "raw", save_v5, prefix="nus-wide-tc10")
    params, layout = _params("dcmh_mat", tmp_path / "raw"), Layout(tmp_path / "project")
    stages.prepare.run(params, layout, progress=False)
    with pytest.raises(ValidationFailed, match=r"the dataset has 186577 items.*\n.*\n.*the dataset has 10 labels"):
        stages.validate.run(params, layout)


@pytest.mark.parametrize("save, stored_as", [
    (save_v5, (0, 3, 2, 1)),   # a Python script's (N, 3, W, H) saved with scipy
    (save_v5, (0, 1, 2, 3)),   # (N, H, W, 3) saved with scipy
    (save_v73, (0, 1, 2, 3)),  # MATLAB N x H x W x 3, v7.3
])
def test_other_image_stack_layouts(tmp_path, save, stored_as):
    from cmhash.datasets.matfile import MatPixels

    _, _, images = _data()
    save(tmp_path / "x.mat", {"IAll": np.transpose(images, stored_as)})
    pixels = MatPixels(tmp_path / "x.mat", "IAll", N)
    assert pixels.shape == images.shape
    np.testing.assert_array_equal(pixels[5:17], images[5:17])


def test_bag_of_words_becomes_the_text_features(tmp_path):
    _, bow, _ = _dcmh_files(tmp_path / "raw", save_v73)
    params, layout = _params("dcmh_mat", tmp_path / "raw"), Layout(tmp_path / "project")
    stages.prepare.run(params, layout, progress=False)
    stages.validate.run(params, layout)
    features = read_features(stages.encode.run(params, layout, progress=False))
    expected = bow / np.linalg.norm(bow, axis=1, keepdims=True)
    np.testing.assert_allclose(features.texts, expected, atol=1e-6)
    assert not features.aligned and "bag-of-words" in features.encoder
    params["encode"]["text"] = "captions"
    with pytest.raises(CmhashError, match="has no captions, only a bag of words; set encode.text: bag_of_words"):
        stages.encode.run(params, layout, progress=False)


def test_dcmh_files_that_do_not_belong_together(tmp_path):
    root = tmp_path / "raw"
    _dcmh_files(root, save_v5)
    save_v5(root / "mydata-yall.mat", {"YAll": np.ones((N + 1, V))})
    with pytest.raises(CmhashError, match=r"yall.mat: 'YAll' has shape \(61, 30\) but the labels list 60 items"):
        stages.prepare.run(_params("dcmh_mat", root), Layout(tmp_path / "p"), progress=False)
    _dcmh_files(root, save_v5)
    save_v73(root / "mydata-iall.mat", {"IAll": np.zeros((12, 10, 3, N - 1), dtype=np.uint8)})
    with pytest.raises(CmhashError, match=r"iall.mat: 'IAll' has shape \(59, 3, 10, 12\); expected 60 RGB images laid out as one of \(N, 3, W, H\)"):
        stages.prepare.run(_params("dcmh_mat", root), Layout(tmp_path / "p"), progress=False)
    _dcmh_files(root, save_v5)
    save_v5(root / "mydata-fall.mat", {"FAll": ["a.jpg"] * 3})
    with pytest.raises(CmhashError, match="'FAll' names 3 images but the labels list 60"):
        stages.prepare.run(_params("dcmh_mat", root), Layout(tmp_path / "p"), progress=False)
    _dcmh_files(root, save_v5, prefix="nus-wide-tc10")
    with pytest.raises(CmhashError, match=r"holds 2 label files \*-lall.mat \(mydata, nus-wide-tc10\); set dataset.dcmh_mat.prefix"):
        stages.prepare.run(_params("dcmh_mat", root), Layout(tmp_path / "p"), progress=False)
    (root / "nus-wide-tc10-yall.mat").write_bytes(b"not a mat file at all" * 10)
    with pytest.raises(CmhashError, match="yall.mat is neither a MATLAB v5-v7 nor a v7.3"):
        stages.prepare.run(_params("dcmh_mat", root, prefix="nus-wide-tc10"), Layout(tmp_path / "p"), progress=False)
    with pytest.raises(CmhashError, match="unknown key dataset.dcmh_mat.prefx; did you mean dataset.dcmh_mat.prefix"):
        stages.prepare.run(_params("dcmh_mat", root, prefx="x"), Layout(tmp_path / "p"), progress=False)


def _dcmht_files(root, save, captions_per_image=1, machine="/home/author/datasets/mirflickr"):
    """As DCMHT's scripts write them: absolute paths of the author's machine, captions, category."""
    labels, _, images = _data()
    (root / "mirflickr").mkdir(parents=True)
    for i in range(N):
        Image.fromarray(images[i]).save(root / f"mirflickr/im{i + 1}.jpg")
    sep = "\\" if "\\" in machine else "/"
    index = [f"{machine}{sep}im{i + 1}.jpg" for i in range(N)]
    if captions_per_image == 1:
        captions = [f"tag{i} sky  " for i in range(N)]
    else:
        captions = [[f"caption {j} of image {i}" for j in range(captions_per_image)] for i in range(N)]
    save(root / "index.mat", {"index": index})
    save(root / "caption.mat", {"caption": captions})
    save(root / "label.mat", {"category": labels.astype(np.float64)})
    return labels, captions


@pytest.mark.parametrize("save", [save_v5, save_v73], ids=["v5", "v7.3"])
@pytest.mark.parametrize("machine", ["/home/author/datasets/mirflickr", "D:\\data\\mirflickr"])
def test_dcmht_paths_are_rewritten_against_the_root(tmp_path, save, machine):
    labels, captions = _dcmht_files(tmp_path / "raw", save, machine=machine)
    params, layout = _params("dcmht_mat", tmp_path / "raw"), Layout(tmp_path / "project")
    path = stages.prepare.run(params, layout, progress=False)
    with PreparedData(path) as data:
        assert data.image_paths == [f"mirflickr/im{i + 1}.jpg" for i in range(N)]
        assert data.texts == [c.strip() for c in captions]
        np.testing.assert_array_equal(data.labels, labels)
    assert stages.validate.run(params, layout)["failed"] == 0


@pytest.mark.parametrize("save", [save_v5, save_v73], ids=["v5", "v7.3"])
def test_dcmht_several_captions_per_image(tmp_path, save):
    _, captions = _dcmht_files(tmp_path / "raw", save, captions_per_image=3)
    path = stages.prepare.run(_params("dcmht_mat", tmp_path / "raw"), Layout(tmp_path / "project"), progress=False)
    with PreparedData(path) as data:
        assert data.texts_by_item() == captions
        assert data.summary == {"items": N, "captions": 3 * N}


def test_dcmht_captions_as_a_string_array(tmp_path):
    """Five captions per image saved as one (N, 5) string array (np.array of lists), as scripts do."""
    root = tmp_path / "raw"
    _dcmht_files(root, save_v5)
    captions = [[f"caption {j} of image {i}" for j in range(5)] for i in range(N)]
    save_v5(root / "caption.mat", {"caption": np.array(captions)})
    with PreparedData(stages.prepare.run(_params("dcmht_mat", root), Layout(tmp_path / "p"), progress=False)) as data:
        assert data.texts_by_item() == captions


def test_dcmht_errors_name_the_file_and_item(tmp_path):
    root = tmp_path / "raw"
    _dcmht_files(root, save_v5)
    (root / "mirflickr/im7.jpg").unlink()
    with pytest.raises(CmhashError, match=r"index.mat: item 6 \(/home/author/datasets/mirflickr/im7.jpg\): image .*im7.jpg does not exist"):
        stages.prepare.run(_params("dcmht_mat", root), Layout(tmp_path / "p"), progress=False)
    save_v5(root / "index.mat", {"index": [f"/elsewhere/img{i}.png" for i in range(N)]})
    with pytest.raises(CmhashError, match=r"item 0: no tail of the stored path '/elsewhere/img0.png' is a file under dataset.root"):
        stages.prepare.run(_params("dcmht_mat", root), Layout(tmp_path / "p"), progress=False)
    save_v5(root / "index.mat", {"index": [f"/x/mirflickr/im{i + 1}.jpg" for i in range(N - 2)]})
    with pytest.raises(CmhashError, match=r"index.mat has 58 entries but .*label.mat labels 60 items"):
        stages.prepare.run(_params("dcmht_mat", root), Layout(tmp_path / "p"), progress=False)
    save_v5(root / "index.mat", {"index": [f"/x/mirflickr/im{i + 1}.jpg" for i in range(N)]})
    save_v5(root / "caption.mat", {"caption": ["a"] * 3 + [" "] + ["b"] * (N - 4)})
    with pytest.raises(CmhashError, match=r"caption.mat: item 3 \(/x/mirflickr/im4.jpg\) has an empty caption"):
        stages.prepare.run(_params("dcmht_mat", root), Layout(tmp_path / "p"), progress=False)
    save_v5(root / "caption.mat", {"words": ["a"] * N})
    with pytest.raises(CmhashError, match=r"caption.mat has no variable 'caption' or 'tags' \(it has words\)"):
        stages.prepare.run(_params("dcmht_mat", root), Layout(tmp_path / "p"), progress=False)
