"""Each corruption of a prepared file makes validate fail with a message naming the problem and the rows."""

import h5py
import numpy as np
import pytest

from cmhash.errors import ValidationFailed
from cmhash.pipeline import stages


def _corrupt(path, edit):
    with h5py.File(path, "r+") as f:
        edit(f)


def _replace(f, name, values):
    del f[name]
    f.create_dataset(name, data=values)


def _set_label_row_zero(f):
    f["labels"][5] = 0


def _set_label_value(f):
    f["labels"][7, 0] = 2


def _empty_text(f):
    texts = f["texts"][()]
    texts[3] = b"   "
    _replace(f, "texts", np.array(texts, dtype=object).astype(h5py.string_dtype()))


def _blank_image(f):
    f["images"][4] = 0


def _index_out_of_range(f):
    q = f["splits/query"][()]
    q[0] = 10_000
    _replace(f, "splits/query", q)


def _duplicate_index(f):
    t = f["splits/train"][()]
    t[1] = t[0]
    _replace(f, "splits/train", t)


def _query_in_retrieval(f):
    r = f["splits/retrieval"][()]
    r[0] = f["splits/query"][0]
    _replace(f, "splits/retrieval", r)


def _train_outside_retrieval(f):
    t = f["splits/train"][()]
    t[0] = f["splits/query"][0]
    _replace(f, "splits/train", t)


def _short_split(f):
    _replace(f, "splits/query", f["splits/query"][:-1])


def _label_missing_from_train(f):
    train = f["splits/train"][()]
    labels = f["labels"][()]
    labels[train, 0] = 0
    labels[train, 1] = 1  # keep every item labelled
    _replace(f, "labels", labels)


CASES = [
    (_set_label_row_zero, "every item has at least one label", "item 5"),
    (_set_label_value, "labels are 0 or 1", "item 7"),
    (_empty_text, "no text is empty or blank", "text_id 3"),
    (_blank_image, "every item has an image", "item 4"),
    (_index_out_of_range, "query indices are within", "index 10000"),
    (_duplicate_index, "train indices are unique", "index"),
    (_query_in_retrieval, "query and retrieval splits are disjoint", "item"),
    (_train_outside_retrieval, "train split lies inside the retrieval split", "item"),
    (_short_split, "the query split has 20 items", "observed 19"),
    (_label_missing_from_train, "every label occurs in the train split", "label circle"),
]


@pytest.mark.parametrize("corrupt, expectation, offender", CASES, ids=[c[0].__name__.strip("_") for c in CASES])
def test_corruption_fails_with_named_expectation(project, corrupt, expectation, offender):
    params, layout = project
    path = layout.prepared("builtin")
    _corrupt(path, corrupt)
    with pytest.raises(ValidationFailed) as info:
        stages.validate.run(params, layout)
    message = str(info.value)
    assert expectation in message and offender in message
    assert str(path) in message
    report = layout.validation_report("builtin")
    assert report.is_file()  # the report is written even when validation fails


def test_clean_file_passes(project):
    params, layout = project
    report = stages.validate.run(params, layout)
    assert report["success"] and report["failed"] == 0 and report["evaluated"] >= 20


def test_cli_exits_nonzero_before_training(project, capsys):
    import yaml

    from cmhash.pipeline.cli import main

    params, layout = project
    _corrupt(layout.prepared("builtin"), _set_label_row_zero)
    params_file = layout.root / "params.yaml"
    params_file.write_text(yaml.safe_dump(params))
    assert main(["validate", "--params", str(params_file), "--root", str(layout.root)]) == 1
    assert "every item has at least one label" in capsys.readouterr().err


def test_label_names_are_printed_escaped(project, capsys):
    """A label name from users' data that holds an ANSI escape sequence is shown, not obeyed."""
    import yaml

    from cmhash.pipeline.cli import main

    params, layout = project

    def evil_label_missing_from_train(f):
        _label_missing_from_train(f)
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in f.attrs["label_names"]]
        names[0] = "\x1b[2J\x1b[31mcircle"
        f.attrs["label_names"] = np.array(names, dtype=object).astype(h5py.string_dtype())

    _corrupt(layout.prepared("builtin"), evil_label_missing_from_train)
    params_file = layout.root / "params.yaml"
    params_file.write_text(yaml.safe_dump(params))
    assert main(["validate", "--params", str(params_file), "--root", str(layout.root)]) == 1
    err = capsys.readouterr().err
    assert "label \\x1b[2J\\x1b[31mcircle" in err and "\x1b" not in err
