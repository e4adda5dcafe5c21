import numpy as np

from cmhash.datasets.builtin import COLOURS, LABEL_NAMES, SCENES, SHAPES, generate_builtin
from cmhash.datasets.prepared import PreparedData


def test_generation_is_deterministic_and_seed_dependent():
    a = generate_builtin(30, 64, seed=3, progress=False)
    b = generate_builtin(30, 64, seed=3, progress=False)
    c = generate_builtin(30, 64, seed=4, progress=False)
    assert np.array_equal(a["images"], b["images"]) and a["captions"] == b["captions"]
    assert not np.array_equal(a["images"], c["images"])


def test_labels_families_and_variety():
    data = generate_builtin(400, 64, seed=0, progress=False)
    labels = data["labels"]
    assert len(LABEL_NAMES) >= 20 and labels.shape == (400, len(LABEL_NAMES))
    assert data["images"].shape == (400, 64, 64, 3) and data["images"].dtype == np.uint8
    shapes = labels[:, : len(SHAPES)].sum(1)
    colours = labels[:, len(SHAPES) : len(SHAPES) + len(COLOURS)].sum(1)
    assert shapes.min() >= 1 and colours.min() >= 1  # every item shows at least one object
    assert len(set(labels.sum(1))) >= 4  # the number of labels per item varies
    assert labels[:, -len(SCENES) :].sum(1).max() == 1  # at most one scene
    assert (labels.sum(0) > 0).all()


def test_captions_mention_only_part_of_the_labels():
    data = generate_builtin(300, 64, seed=1, progress=False)
    words = {name: {name, *syn} for name, syn in SHAPES.items()}
    missed = 0
    for caption, row in zip(data["captions"], data["labels"]):
        assert caption.strip()
        present = [LABEL_NAMES[i] for i in np.flatnonzero(row) if LABEL_NAMES[i] in SHAPES]
        missed += any(not any(w in caption for w in words[s]) for s in present)
    assert missed > 30  # captions are partial views, not label lists


def test_prepared_file_layout(prepared_tiny):
    params, path = prepared_tiny
    with PreparedData(path) as data:
        assert data.n_items == 120 and data.stores_pixels
        assert data.labels.dtype == np.uint8 and set(np.unique(data.labels)) <= {0, 1}
        assert len(data.label_names) == data.labels.shape[1]
        assert data.source == "builtin" and data.params["name"] == "builtin"
        q, r, t = data.splits["query"], data.splits["retrieval"], data.splits["train"]
        assert (len(q), len(r), len(t)) == (20, 100, 60)
        assert not set(q) & set(r) and set(t) <= set(r)


def test_load_images_gives_the_items_asked_for_in_their_order(prepared_tiny):
    _, path = prepared_tiny
    with PreparedData(path) as data:
        items = np.array([7, 3, 99, 3, 0])  # unsorted, with a repeat
        images = data.load_images(items)
        assert data.images.chunks[0] == 1  # one image per chunk: random reads decompress only their item
        for item, image in zip(items, images):
            np.testing.assert_array_equal(np.asarray(image), data.images[item])
