"""params.yaml: one schema, checked once at load; every mistake is one line naming the key."""

import copy

import pytest
import yaml
from conftest import REPO

from cmhash.errors import CmhashError
from cmhash.pipeline.params import load_params, validate_params

PROJECT = yaml.safe_load((REPO / "params.yaml").read_text())


def _with(change: tuple[str, object]) -> dict:
    """The project's params with one dotted key set (a trailing + adds a key that is not there)."""
    key, value = change
    params = copy.deepcopy(PROJECT)
    *path, last = key.split(".")
    node = params
    for part in path:
        node = node[part]
    node[last] = value
    return params


@pytest.mark.parametrize("change, message", [
    (("dataset.seeed", 1), "unknown key dataset.seeed; did you mean dataset.seed?"),
    (("evaluate.map_k", [5]), "unknown key evaluate.map_k; did you mean evaluate.map_ks?"),
    (("encode.offline.imagesize", 64), "unknown key encode.offline.imagesize; did you mean encode.offline.image_size?"),
    (("methods.djsrhh", {}), "unknown key methods.djsrhh; did you mean methods.djsrh?"),
    (("methods.djsrh.epochs", "ten"), "methods.djsrh.epochs is 'ten'; expected a whole number"),
    (("methods.dcmht.lr", "0.001"), "methods.dcmht.lr is '0.001'; expected a number"),
    (("train.seed", "abc"), "train.seed is 'abc'; expected a whole number"),
    (("evaluate.map_ks", "fifty"), "evaluate.map_ks is 'fifty'; expected a list"),
    (("methods.djsrh.epochs", 0), "methods.djsrh.epochs is 0; expected at least 1"),
    (("methods.mesdch.epochs", -3), "methods.mesdch.epochs is -3; expected at least 1"),
    (("methods.djsrh.batch_size", 0), "methods.djsrh.batch_size is 0; expected at least 2"),
    (("methods.dcmht.lr", float("nan")), "methods.dcmht.lr is nan; expected a finite number"),
    (("methods.dcmht.lr", float("inf")), "methods.dcmht.lr is inf; expected a finite number"),
    (("methods.jdsh.lr", 0), "methods.jdsh.lr is 0; expected more than 0"),
    (("train.bits", [16, 300]), "train.bits[1] is 300; expected at most 255"),
    (("train.bits", [16, "32;touch x"]), "train.bits[1] is '32;touch x'; expected a whole number"),
    (("train.methods", ["lsh", "foo"]), "train.methods[1] is 'foo'; expected one of 'lsh', 'itq', 'cca_itq', 'djsrh'"),
    (("evaluate.map_ks", [0]), "evaluate.map_ks[0] is 0; expected at least 1"),
    (("evaluate.top_r", [10, -1]), "evaluate.top_r[1] is -1; expected at least 1"),
    (("dataset.name", "mirflickr99"), "dataset.name is 'mirflickr99'; expected one of 'builtin', 'byo'"),
    (("dataset.split.query", -5), "dataset.split.query must be a whole number from 1 to 10^9, got -5."),
    (("encode.batch_size", "big"), "encode.batch_size is 'big'; expected auto or a whole number from 1 to 65536"),
    (("encode.batch_size", 0), "encode.batch_size is 0; expected auto or a whole number from 1 to 65536"),
    (("encode.device", "gpu"), "encode.device is 'gpu'; expected auto, cpu, cuda or cuda:N"),
    (("dataset_overrides.nuswide.djsrh.beta", "x"), "dataset_overrides.nuswide.djsrh.beta is 'x'; expected a number"),
    (("dataset.coco.year", 2015), "dataset.coco.year is 2015; expected one of 2014 or 2017"),
])
def test_every_mistake_is_one_line_naming_the_key(tmp_path, change, message):
    with pytest.raises(CmhashError) as error:
        validate_params(_with(change))
    assert str(error.value) == f"params.yaml: {message}" or str(error.value).startswith(f"params.yaml: {message}")
    assert "\n" not in str(error.value)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(_with(change)))
    from cmhash.pipeline.cli import main

    assert main(["check-params", "--params", str(tmp_path / "params.yaml"), "--root", str(tmp_path)]) == 1  # no traceback
    # a stage checks the sections it reads: the first stage of dvc.yaml that reads the changed one
    reader = {"dataset": "prepare", "encode": "encode", "train": "report", "evaluate": "report"}.get(change[0].split(".")[0])
    if reader:
        assert main([reader, "--params", str(tmp_path / "params.yaml"), "--root", str(tmp_path)]) == 1


def test_defaults_fill_what_the_file_leaves_out():
    params = validate_params({"dataset": {"name": "builtin"}})
    assert params["dataset"]["builtin"] == {"size": 6000, "image_size": 96} and params["dataset"]["seed"] == 0
    assert params["evaluate"]["map_ks"] == [50, 1000, 5000] and params["train"]["bits"] == [16, 32, 64, 128]
    assert params["methods"]["djsrh"]["beta"] == 0.9  # a method's defaults are its class's
    assert params["encode"]["open_clip"] == {"model": "ViT-B-32", "pretrained": None, "model_config": None}


def test_every_key_is_in_params_yaml_so_dvc_exp_run_s_can_set_it(tmp_path):
    """`dvc exp run -S KEY=VALUE` refuses a key that params.yaml lacks ("Could not override")."""
    from dvc.utils.hydra import apply_overrides

    complete = load_params(REPO / "params.yaml")

    def leaves(node, prefix=""):
        for key, value in node.items():
            if isinstance(value, dict) and value:
                yield from leaves(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}"

    missing = [key for key in leaves({k: v for k, v in complete.items() if k != "dataset_overrides"})
               if not _present(PROJECT, key)]
    assert missing == []
    copy_of_params = tmp_path / "params.yaml"
    copy_of_params.write_text((REPO / "params.yaml").read_text())
    apply_overrides(str(copy_of_params), ["dataset.root=/data/mirflickr", "dataset.mirflickr25k.min_tag_count=10"])
    assert load_params(copy_of_params)["dataset"]["root"] == "/data/mirflickr"


def _present(params: dict, dotted: str) -> bool:
    node = params
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def _bomb(levels: int = 9) -> str:
    """A few hundred bytes of YAML aliases that expand to 9**levels values."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return "\n".join(lines)


@pytest.mark.parametrize("edit, message", [
    (lambda text: text.replace("train:\n  seed: 0", "train:\n  seed: {" + _bomb().replace("\n", ", ") + "}"),
     r"line \d+: YAML anchors and aliases \(&name, \*name\) are not accepted in parameter files; write the value out"),
    (lambda text: text.replace("train:\n  seed: 0", "train:\n  seed: " + "[" * 20000 + "]" * 20000),
     r"line \d+: nested more than 32 levels deep"),
    (lambda text: text.replace("train:\n  seed: 0", "train:\n  seed: 0\n  seed: 1"),
     r"line (\d+): key 'seed' appears twice in the same mapping \(first on line \d+\); keep one"),
    (lambda text: text.replace("train:\n  seed: 0", "train:\n  seed: 1e100"), r"train.seed is 1e\+100; expected a whole number"),
    (lambda text: text.replace("  seed: 0                # drives", "  seed: 18446744073709551616  # drives"),
     r"dataset.seed is 18446744073709551616; expected at most 4294967295"),
    (lambda text: text.replace("iterations: 50", "iterations: 1000000000000000000", 1),
     r"methods.itq.iterations is 1000000000000000000; expected at most 100000"),
    (lambda text: text.replace("max_image_pixels: 89478485", "max_image_pixels: 1e30"),
     r"dataset.max_image_pixels is 1e\+30; expected a whole number"),
])
def test_params_yaml_that_could_hang_or_mislead_is_one_line_at_once(tmp_path, edit, message):
    import time

    path = tmp_path / "params.yaml"
    path.write_text(edit((REPO / "params.yaml").read_text()))
    started = time.monotonic()
    with pytest.raises(CmhashError, match=message) as error:
        load_params(path)
    assert time.monotonic() - started < 5 and "\n" not in str(error.value) and len(str(error.value)) < 400


def test_params_yaml_is_read_as_dvc_reads_it(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text((REPO / "params.yaml").read_text().replace("lr_image: 0.001", "lr_image: 1e-3"))
    assert load_params(path)["methods"]["djsrh"]["lr_image"] == 0.001  # YAML 1.2, as DVC: a number
    path.write_bytes((REPO / "params.yaml").read_bytes().replace(b"name: builtin ", b"name: b\xe9iltin "))
    with pytest.raises(CmhashError, match=r"params.yaml line 5: byte 0xe9 is not UTF-8; save the file as UTF-8"):
        load_params(path)


def test_params_yaml_repeats_the_defaults_of_the_code():
    """Every setting has one owner, the component that declares it; params.yaml lists the values so
    that DVC tracks them, and may not silently run other values than the code's defaults. The data
    chosen for a run (``dataset``) and the papers' per-dataset values (``dataset_overrides``) are
    choices, not defaults."""
    from cmhash.pipeline.params_file import read_yaml_file

    raw = read_yaml_file(REPO / "params.yaml")
    listed, defaults = validate_params(raw), validate_params({"dataset": {"name": raw["dataset"]["name"]}})
    for section in ("dataset", "dataset_overrides"):
        listed.pop(section), defaults.pop(section)
    assert listed == defaults


# ---- YAML scalars that are not plain values, and interpolations (issue 29, items 7 and 8)

SECRET = "hunter2-very-secret"
DATE = r"reads as a date, which no parameter takes; put it in quotes if it is a text"
TAG = r"YAML tags such as '{}' are not accepted in parameters; write the plain value"
INTERPOLATION = r"interpolations such as \$\{\.\.\.\} \(and resolvers such as oc.env\) are not accepted"


@pytest.mark.parametrize("old, new, message", [
    ("root: null", "root: 2020-02-30", rf"line 7, key dataset.root: '2020-02-30' {DATE} \(\"2020-02-30\"\)"),
    ("root: null", "root: 2020-01-01", rf"line 7, key dataset.root: '2020-01-01' {DATE}"),  # a valid date too
    ("root: null", "root: 2001-12-14t21:59:43.10-05:00", rf"line 7, key dataset.root: '2001-12-14t21:59:43.10-05:00' {DATE}"),
    ("subsets: [train, val]", "subsets: [train, 2020-01-01]", rf"key dataset.coco.subsets\[1\]: '2020-01-01' {DATE}"),
    ("lr_image: 0.001", "lr_image: !!float abc", r"line 75, key methods.djsrh.lr_image: " + TAG.format("!!float")),
    ("deduplicate: false", "deduplicate: !!bool maybe", r"key dataset.byo.deduplicate: " + TAG.format("!!bool")),
    ("subsets: [train, val]", "subsets: !!omap [{train: 1}, {train: 2}]", r"key dataset.coco.subsets: " + TAG.format("!!omap")),
    ("root: null", "root: !local x", r"line 7, key dataset.root: " + TAG.format("!local")),
    ("root: null", "root: !!str 3", r"line 7, key dataset.root: " + TAG.format("!!str")),
    ("root: null", "root: !!binary aGVsbG8=", r"line 7, key dataset.root: " + TAG.format("!!binary")),
    ("seed: 0                # drives", "seed: " + "9" * 5000 + "  # drives",
     r"line 6, key dataset.seed: a number of 5,000 characters; a parameter's number has at most 100"),
    ("root: null", "root: 0x" + "f" * 200, r"line 7, key dataset.root: a number of 202 characters"),
    ("root: null", "root: -_", r"line 7, key dataset.root: '-_' is a number without digits; write the number, or put it in quotes"),
    ("root: null", "root: ._e+1", r"line 7, key dataset.root: '._e\+1' is a number without digits"),
    ("root: null", "root: null\n  <<: {seed: 1}", r"line 8, key dataset.<<: '<<' has a special meaning in YAML \(merge\)"),
    ("root: null", "root: ${oc.env:SECRET_TOKEN}", rf"line 7, key dataset.root: {INTERPOLATION}"),
    ("root: null", r'root: "\x24{oc.env:SECRET_TOKEN}"', rf"line 7, key dataset.root: {INTERPOLATION}"),
    ("root: null", r'root: "\u0024{oc.env:SECRET_TOKEN}"', rf"line 7, key dataset.root: {INTERPOLATION}"),
    ("subsets: [train, val]", r'subsets: [train, "\x24{oc.env:SECRET_TOKEN}"]', rf"key dataset.coco.subsets\[1\]: {INTERPOLATION}"),
    ("root: null", 'root: null\n  "\\x24{oc.env:SECRET_TOKEN}": 1', rf"line 8, key dataset.\$\{{oc.env:SECRET_TOKEN\}}: {INTERPOLATION}"),
])
def test_a_scalar_that_is_not_a_plain_value_is_one_line_from_check_params(tmp_path, old, new, message):
    """Each of these ended in a traceback from inside the YAML loader (an impossible date, a tag whose
    constructor fails, an integer of more than 4,300 digits), was read as a date or a merge, or let an
    escaped ${...} through. check-params (and every stage) refuses them in one line naming the line
    and the key, without converting anything; the secret never appears."""
    from conftest import COMMAND_ENV, run_command

    text = (REPO / "params.yaml").read_text()
    assert old in text
    (tmp_path / "params.yaml").write_text(text.replace(old, new, 1))
    result = run_command(["cmhash", "check-params"], tmp_path, env={**COMMAND_ENV, "SECRET_TOKEN": SECRET}, check=False)
    assert result.returncode == 1 and result.stdout == ""
    error = result.stderr
    assert error.startswith("cmhash check-params: error: params.yaml ") and error.endswith("\n")
    assert len(error.splitlines()) == 1 and len(error) < 400 and "Traceback" not in error and SECRET not in error
    import re

    assert re.search(message, error), error


def test_a_quoted_date_or_interpolation_like_text_is_a_text(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text((REPO / "params.yaml").read_text().replace("root: null", 'root: "2020-02-30"', 1)
                    .replace("seed: 0                # drives", "seed: 1_000  # drives", 1))
    params = load_params(path)
    assert params["dataset"]["root"] == "2020-02-30" and params["dataset"]["seed"] == 1000
    path.write_text((REPO / "params.yaml").read_text().replace("root: null", 'root: "/data/$HOME/{x}"', 1))
    assert load_params(path)["dataset"]["root"] == "/data/$HOME/{x}"  # only `${` is refused


@pytest.mark.parametrize("value, message", [
    ("2020-13-45", rf"override dataset.root line 1: '2020-13-45' {DATE}"),
    ("2020-02-30", rf"override dataset.root line 1: '2020-02-30' {DATE}"),
    ("!!float abc", "override dataset.root line 1: " + TAG.format("!!float")),
    ("!!bool maybe", "override dataset.root line 1: " + TAG.format("!!bool")),
    ("!!omap [{a: 1}, {a: 2}]", "override dataset.root line 1: " + TAG.format("!!omap")),
    ("!local x", "override dataset.root line 1: " + TAG.format("!local")),
    ("9" * 5000, "override dataset.root line 1: a number of 5,000 characters"),
    ("0b_", "override dataset.root line 1: '0b_' is a number without digits"),
    ("<<", r"override dataset.root line 1: '<<' has a special meaning in YAML \(merge\)"),
    ("${oc.env:SECRET_TOKEN}", rf"override dataset.root: {INTERPOLATION}"),
    (r'"\x24{oc.env:SECRET_TOKEN}"', rf"override dataset.root line 1: {INTERPOLATION}"),
    (r'"\u0024{oc.env:SECRET_TOKEN}"', rf"override dataset.root line 1: {INTERPOLATION}"),
    (r'"\U00000024{oc.env:SECRET_TOKEN}"', rf"override dataset.root line 1: {INTERPOLATION}"),
    (r'["a", "\x24{oc.env:SECRET_TOKEN}"]', rf"override dataset.root line 1, key \[1\]: {INTERPOLATION}"),
    (r'{"\x24{oc.env:SECRET_TOKEN}": 1}', rf"override dataset.root line 1, key \$\{{oc.env:SECRET_TOKEN\}}: {INTERPOLATION}"),
    (r'{a: {b: "\x24{x}"}}', rf"override dataset.root line 1, key a.b: {INTERPOLATION}"),
    pytest.param(10 ** 5000, "override dataset.root: a value of type int is not a plain value",  # JSON from the flow
                 id="int-of-5001-digits"),  # (pytest cannot name it: str() of it raises)
    ({1, 2}, "override dataset.root line 1: " + TAG.format("!!set")),
    (object(), "override dataset.root: a value of type object is not a plain value"),
])
def test_an_override_that_is_not_a_plain_value_is_one_line(value, message):
    """What `python flows/pipeline.py -S dataset.root=VALUE` (and the flow's `overrides`) passes to
    parse_overrides before anything is written: one line, never a traceback, never the literal
    ${...} after YAML's escapes are undone."""
    import re

    from cmhash.pipeline.params_file import parse_overrides

    with pytest.raises(CmhashError) as error:
        parse_overrides({"dataset.root": value})
    assert re.search(message, str(error.value)), str(error.value)
    assert "\n" not in str(error.value) and len(str(error.value)) < 400


def test_every_plain_number_like_spelling_loads_or_is_one_line():
    """YAML's number patterns accept spellings its loader cannot convert (`-_`, `0x_`, `._`); every
    short spelling from the characters numbers and dates are made of loads as a plain value or is
    refused in one line."""
    import itertools

    from cmhash.pipeline.params_file import read_yaml_text

    loaded = 0
    for size in range(1, 4):
        for letters in itertools.product("1_.-+eEbxo:T", repeat=size):
            text = "".join(letters)
            try:
                value = read_yaml_text(f"a: {text}", "t")["a"]
            except CmhashError as error:
                assert "\n" not in str(error)
                continue
            assert value is None or type(value) in (str, int, float, bool), (text, value)
            loaded += 1
    assert loaded > 1000
