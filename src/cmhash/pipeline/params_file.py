"""Reading ``params.yaml`` (and a run's overrides) safely, and writing overrides into it.

The file is read as DVC reads it (ruamel.yaml's safe loader, YAML 1.2: ``1e-3`` is a number, ``yes``
is a word), so that what ``dvc params diff`` shows and what the stages use agree. Before anything
is built from it, one pass over the parser's events refuses what could hang or mislead a stage:

- anchors and aliases (``&x`` / ``*x``): a few hundred bytes of aliases can expand into gigabytes;
- nesting deeper than :data:`MAX_DEPTH`, and more than :data:`MAX_EVENTS` values in all;
- a key given twice in one mapping (YAML would silently keep the last one);
- bytes that are not UTF-8.

Each refusal is one line naming the file, the line and the key. Overrides (``-S KEY=VALUE`` and the
flow's ``overrides``) are plain values: an interpolation such as ``${oc.env:TOKEN}`` is refused
before anything is written, so no environment value can reach a file, a commit or a message.
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

from cmhash.errors import CmhashError, quote

MAX_DEPTH = 32          # params.yaml nests four levels; anything this deep is a mistake or an attack
MAX_EVENTS = 100_000    # scalars, mappings and sequences together (params.yaml has about 300)
MAX_BYTES = 1_000_000   # params.yaml is about 7 KB
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def read_yaml_text(text: str, source: str) -> Any:
    """The YAML document in ``text`` as plain Python values, after the checks of the module
    docstring; ``source`` names it in messages (a file path, or ``override methods.djsrh.lr``)."""
    from ruamel.yaml import YAML
    from ruamel.yaml.error import MarkedYAMLError, YAMLError

    if len(text) > MAX_BYTES:
        raise CmhashError(f"{source}: {len(text):,} characters; a parameter file holds at most {MAX_BYTES:,}.")
    try:
        _check_events(YAML(typ="safe").parse(text), source)
        return YAML(typ="safe").load(text)
    except MarkedYAMLError as err:
        where = f" line {err.problem_mark.line + 1}" if err.problem_mark is not None else ""
        raise CmhashError(f"{source}{where}: not valid YAML: {quote(err.problem or err.context or '', 120)}") from None
    except YAMLError as err:
        raise CmhashError(f"{source}: not valid YAML: {quote(str(err).splitlines()[0] if str(err) else '', 120)}") from None


def read_yaml_file(path: str | Path) -> Any:
    """A YAML file read with :func:`read_yaml_text`; bytes that are not UTF-8 are refused with the
    line they are on."""
    path = Path(path)
    data = path.read_bytes()
    if len(data) > MAX_BYTES:
        raise CmhashError(f"{path}: {len(data):,} bytes; a parameter file holds at most {MAX_BYTES:,}.")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise CmhashError(f"{path} line {line}: byte 0x{data[err.start]:02x} is not UTF-8; save the file as UTF-8.") from None
    return read_yaml_text(text, str(path))


def _check_events(events, source: str) -> None:
    """One pass over the parser's events (no value is built yet): depth, anchors and aliases,
    duplicate keys, size."""
    from ruamel.yaml.events import AliasEvent, CollectionEndEvent, MappingStartEvent, NodeEvent, ScalarEvent, SequenceStartEvent

    # One frame per open collection: for a mapping, the keys seen so far and whether the next node is a key.
    frames: list[dict] = []
    for count, event in enumerate(events):
        line = event.start_mark.line + 1 if event.start_mark is not None else 0
        if count > MAX_EVENTS:
            raise CmhashError(f"{source}: more than {MAX_EVENTS:,} values; a parameter file is much smaller.")
        if isinstance(event, AliasEvent) or (isinstance(event, NodeEvent) and event.anchor is not None):
            raise CmhashError(f"{source} line {line}: YAML anchors and aliases (&name, *name) are not accepted "
                              "in parameter files; write the value out.")
        frame = frames[-1] if frames else None
        is_node = isinstance(event, (ScalarEvent, MappingStartEvent, SequenceStartEvent))
        is_key = is_node and frame is not None and frame["mapping"] and frame["expect_key"]
        if is_node and frame is not None and frame["mapping"]:
            frame["expect_key"] = not frame["expect_key"]
        if is_key:
            if not isinstance(event, ScalarEvent):
                raise CmhashError(f"{source} line {line}: a key must be a plain name, not a mapping or a list.")
            if event.value in frame["keys"]:
                raise CmhashError(f"{source} line {line}: key {quote(event.value)} appears twice in the same mapping "
                                  f"(first on line {frame['keys'][event.value]}); keep one.")
            frame["keys"][event.value] = line
        if isinstance(event, (MappingStartEvent, SequenceStartEvent)):
            if len(frames) >= MAX_DEPTH:
                raise CmhashError(f"{source} line {line}: nested more than {MAX_DEPTH} levels deep; "
                                  "a parameter file nests a few levels.")
            frames.append({"mapping": isinstance(event, MappingStartEvent), "expect_key": True, "keys": {}})
        elif isinstance(event, CollectionEndEvent):
            frames.pop()


# ---- overrides: `-S KEY=VALUE` and the flow's `overrides`

def _refuse_interpolation(value: Any, key: str) -> None:
    if isinstance(value, str) and "${" in value:
        raise CmhashError(f"override {key}: interpolations such as ${{...}} (and resolvers such as oc.env) are not "
                          "accepted; give the plain value.")
    if isinstance(value, dict):
        for inner, item in value.items():
            _refuse_interpolation(inner, key)
            _refuse_interpolation(item, key)
    elif isinstance(value, list):
        for item in value:
            _refuse_interpolation(item, key)


def parse_overrides(overrides: dict[str, Any] | None) -> dict[str, Any]:
    """``{dotted key: value}`` as the parameter file will hold them. A string value is read as on the
    command line of ``dvc exp run -S`` (``"3"`` is the number 3, ``"[16, 32]"`` a list, ``"1e-3"`` a
    number), any other value is taken as it is, and a mapping is spread over dotted keys
    (``{"methods.djsrh": {"epochs": 1}}`` sets ``methods.djsrh.epochs``). Interpolations, malformed keys
    and values past the parameter file's limits are refused, each in one line."""
    parsed: dict[str, Any] = {}
    for key, value in (overrides or {}).items():
        if not isinstance(key, str) or not _KEY.match(key):
            raise CmhashError(f"override key {quote(key)}: expected dotted names such as methods.djsrh.epochs.")
        _refuse_interpolation(key, key)
        _refuse_interpolation(value, key)
        if isinstance(value, dict):
            parsed.update(parse_overrides({f"{key}.{inner}": item for inner, item in value.items()}))
            continue
        if isinstance(value, str):
            value = read_yaml_text(value, f"override {key}") if value.strip() else value
        else:  # a value that came as JSON: the same limits as the file's
            from ruamel.yaml import YAML

            stream = io.StringIO()
            YAML(typ="safe").dump(value, stream)
            value = read_yaml_text(stream.getvalue(), f"override {key}")
        parsed[key] = value
    return parsed


def apply_overrides(text: str, overrides: dict[str, Any], source: str) -> str:
    """``text`` (a parameter file) with ``overrides`` (from :func:`parse_overrides`) set, comments and
    layout kept as they were. A key must lead through mappings that exist; the last part may be new
    (the schema check that follows names an unknown key and the closest valid one)."""
    import io

    from ruamel.yaml import YAML

    read_yaml_text(text, source)  # the same checks as any read of the file
    editor = YAML(typ="rt")
    editor.preserve_quotes = True
    document = editor.load(text)
    for key, value in overrides.items():
        *parents, last = key.split(".")
        node = document
        for depth, part in enumerate(parents):
            if not isinstance(node, dict) or part not in node or not isinstance(node[part], dict):
                where = ".".join(parents[:depth + 1])
                raise CmhashError(f"override {key}: {source} has no mapping {where}; check the key's spelling.")
            node = node[part]
        node[last] = value
    stream = io.StringIO()
    editor.dump(document, stream)
    return stream.getvalue()
