"""Split protocols: sizes, per-label draws, the record in the prepared file and validate's redraw."""

import shutil

import h5py
import numpy as np
import pytest

from cmhash.datasets.prepared import PreparedData
from cmhash.datasets.splits import parse_split
from cmhash.errors import CmhashError, ValidationFailed
from cmhash.pipeline import stages
from cmhash.pipeline.layout import Layout


def _labels(n=400, c=6, seed=1):
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, c)) < 0.3).astype(np.uint8)
    labels[np.arange(n), rng.integers(0, c, n)] = 1
    return labels


def _check_partition(split, n):
    assert not set(split["query"]) & set(split["retrieval"])
    assert sorted([*split["query"], *split["retrieval"]]) == list(range(n))
    assert set(split["train"]) <= set(split["retrieval"])
    for name in split:
        assert list(split[name]) == sorted(set(split[name]))


def test_named_protocols_and_their_sizes():
    assert parse_split("dcmh", 0).sizes == {"query": 2000, "train": 10000}
    assert parse_split("dcmht", 0).sizes == {"query": 5000, "train": 10000}
    assert parse_split({"protocol": "dcmh", "train": 5000}, 3).record() == {"protocol": "dcmh", "seed": 3, "sizes": {"query": 2000, "train": 5000}}
    assert parse_split(None, 0, default={"query": 5, "train": 7}).sizes == {"query": 5, "train": 7}
    assert parse_split({"protocol": "djsrh"}, 0).expected_sizes(21) == {"query": 2100, "train": 10500}


@pytest.mark.parametrize("value, message", [
    ("dcmhh", "known protocols: dcmh, dcmht, djsrh, random, ucch"),
    ({"query": 10}, "must give train"),
    ({"query": 10, "train": 0}, r"dataset.split.train must be a whole number from 1 to 10\^9"),
    ({"protocol": "djsrh", "query": 10}, "has query, which protocol 'djsrh' does not use; it takes query_per_label, train_per_label"),
    (12, "must be a protocol name"),
])
def test_bad_split_parameters(value, message):
    with pytest.raises(CmhashError, match=message):
        parse_split(value, 0)


def test_random_protocol_is_a_seeded_permutation():
    labels = _labels()
    split = parse_split({"query": 50, "train": 100}, 7).draw(labels)
    order = np.random.default_rng(7).permutation(len(labels))  # the documented draw, computed here
    assert list(split["query"]) == sorted(order[:50]) and list(split["train"]) == sorted(order[50:150])
    _check_partition(split, len(labels))
    assert parse_split({"query": 50, "train": 100}, 8).draw(labels)["query"].tolist() != split["query"].tolist()


def test_ucch_takes_the_last_rows_as_query():
    labels = _labels()
    split = parse_split({"protocol": "ucch", "query": 30, "train": 100}, 0).draw(labels)
    assert list(split["query"]) == list(range(370, 400)) and len(split["train"]) == 100
    _check_partition(split, len(labels))


def test_djsrh_draws_per_label():
    labels = _labels()
    split = parse_split({"protocol": "djsrh", "query_per_label": 5, "train_per_label": 20}, 0).draw(labels)
    assert len(split["query"]) == 30 and len(split["train"]) == 120
    assert (labels[split["query"]].sum(axis=0) >= 5).all() and (labels[split["train"]].sum(axis=0) >= 20).all()
    _check_partition(split, len(labels))
    with pytest.raises(CmhashError, match=r"only \d+ items left with label \d for the train split, which needs 200"):
        parse_split({"protocol": "djsrh", "query_per_label": 5, "train_per_label": 200}, 0).draw(labels)


def test_protocol_is_recorded_and_validate_redraws_it(tmp_path, prepared_tiny):
    params, prepared = prepared_tiny
    layout = Layout(tmp_path)
    layout.prepared("builtin").parent.mkdir(parents=True)
    path = shutil.copy(prepared, layout.prepared("builtin"))
    with PreparedData(path) as data:
        assert data.split_record == {"protocol": "random", "seed": 0, "sizes": {"query": 20, "train": 60}}
    assert stages.validate.run(params, layout)["failed"] == 0
    asked = {**params, "dataset": {**params["dataset"], "seed": 1}}  # the file was drawn with seed 0
    with pytest.raises(ValidationFailed, match=r"every item is in the splits that protocol 'random' with seed 1 draws: \d+ bad row"):
        stages.validate.run(asked, layout)
    with h5py.File(path, "r+") as f:  # move one query item into retrieval and train
        query, retrieval = f["splits/query"][()], f["splits/retrieval"][()]
        moved = query[0]
        del f["splits/query"], f["splits/retrieval"]
        f["splits/query"] = np.append(query[1:], retrieval[0])
        f["splits/retrieval"] = np.sort(np.append(retrieval[1:], moved))
    with pytest.raises(ValidationFailed, match=rf"with seed 0 draws: 2 bad row\(s\), e.g. item {min(moved, retrieval[0])}"):
        stages.validate.run(params, layout)


def test_djsrh_protocol_through_prepare_and_validate(tmp_path):
    from conftest import tiny_params

    params = tiny_params()
    params["dataset"]["split"] = {"protocol": "djsrh", "query_per_label": 1, "train_per_label": 2}
    layout = Layout(tmp_path)
    with PreparedData(stages.prepare.run(params, layout, progress=False)) as data:
        assert len(data.splits["query"]) == 26 and len(data.splits["train"]) == 52
    report = stages.validate.run(params, layout)
    assert report["failed"] == 0 and report["split"]["protocol"] == "djsrh"
