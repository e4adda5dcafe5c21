"""Reading ``params.yaml`` (and a run's overrides) safely, and writing overrides into it.

The file is read as DVC reads it (ruamel.yaml's safe loader, YAML 1.2: ``1e-3`` is a number, ``yes``
is a word), so that what ``dvc params diff`` shows and what the stages use agree. Before anything
is built from it, one pass over the parser's events refuses what could hang or mislead a stage:

- anchors and aliases (``&x`` / ``*x``): a few hundred bytes of aliases can expand into gigabytes;
- nesting deeper than :data:`MAX_DEPTH`, and more than :data:`MAX_EVENTS` values in all;
- a key given twice in one mapping (YAML would silently keep the last one);
- bytes that are not UTF-8;
- explicit tags (``!!float abc``, ``!!omap``, ``!local``): a parameter is a plain value;
- a plain scalar that YAML reads as something other than a text, a number, true/false or null:
  a date or timestamp (``2020-01-01``), a merge key (``<<``); quoting it makes it a text;
- a number of more than :data:`MAX_NUMBER_CHARS` characters (refused before Python converts it);
- an interpolation such as ``${oc.env:TOKEN}``, in a key or a value, checked after YAML's escapes
  are undone (``"\x24{...}"`` is ``${...}``).

Each refusal is one line naming the file, the line and the key. Overrides (``-S KEY=VALUE`` and the
flow's ``overrides``) are read by the same pass, so they are plain values too, and an interpolation
is refused before anything is written: no environment value can reach a file, a commit or a message.
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
# The longest number a parameter holds is a seed (20 digits); a longer one is a mistake, and one of
# thousands of digits would make Python's int() raise (more than 4,300 digits) or work for a long time.
MAX_NUMBER_CHARS = 100
_YAML_TAG = "tag:yaml.org,2002:"
# What a plain scalar may resolve to: the types a parameter has.
_PLAIN_TYPES = {f"{_YAML_TAG}{kind}" for kind in ("str", "int", "float", "bool", "null")}
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
    duplicate keys, size, tags, the type of every plain scalar, interpolations."""
    from ruamel.yaml.events import AliasEvent, CollectionEndEvent, MappingStartEvent, NodeEvent, ScalarEvent, SequenceStartEvent
    from ruamel.yaml.resolver import VersionedResolver

    # The resolver the safe loader uses to type a plain scalar (YAML 1.2, as DVC reads the file; the
    # C loader reads a %YAML 1.1 document by the 1.2 rules too), asked before anything is converted.
    resolver = VersionedResolver()
    # One frame per open collection: for a mapping, the keys seen so far, whether the next node is a
    # key, and the current key; for a list, the index of the current item.
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
        if is_node and frame is not None:
            if frame["mapping"]:
                frame["expect_key"] = not frame["expect_key"]
            else:
                frame["at"] += 1
        if is_key:
            if not isinstance(event, ScalarEvent):
                raise CmhashError(f"{source} line {line}: a key must be a plain name, not a mapping or a list.")
            if event.value in frame["keys"]:
                raise CmhashError(f"{source} line {line}: key {quote(event.value)} appears twice in the same mapping "
                                  f"(first on line {frame['keys'][event.value]}); keep one.")
            frame["keys"][event.value] = line
            frame["at"] = event.value
        if is_node:
            key = "".join(f".{f['at']}" if f["mapping"] else f"[{f['at']}]" for f in frames).lstrip(".")
            where = f"{source} line {line}" + (f", key {quote(key, 80)[1:-1]}" if key else "")
            _check_node(event, where, resolver)
        if isinstance(event, (MappingStartEvent, SequenceStartEvent)):
            if len(frames) >= MAX_DEPTH:
                raise CmhashError(f"{source} line {line}: nested more than {MAX_DEPTH} levels deep; "
                                  "a parameter file nests a few levels.")
            frames.append({"mapping": isinstance(event, MappingStartEvent), "expect_key": True, "keys": {},
                           "at": -1})
        elif isinstance(event, CollectionEndEvent):
            frames.pop()


def _check_node(event, where: str, resolver) -> None:
    """Refuse an explicit tag, a scalar that would not be a text, a number, a boolean or null, a
    number too long to convert cheaply, and an interpolation (``where``: file, line and key)."""
    from ruamel.yaml.events import ScalarEvent
    from ruamel.yaml.nodes import ScalarNode

    if event.tag is not None:
        # `!!float abc`, `!!bool maybe`, `!!omap` with a repeated key and `!!binary` fail or build
        # values that no parameter takes, deep inside the loader; `!local` has no constructor at all.
        tag = event.tag.replace(_YAML_TAG, "!!", 1) if event.tag.startswith(_YAML_TAG) else event.tag
        raise CmhashError(f"{where}: YAML tags such as {quote(tag, 40)} are not accepted in parameters; "
                          "write the plain value (in quotes if it is a text).")
    if not isinstance(event, ScalarEvent):  # a mapping or a list
        return
    value = event.value
    if event.implicit[0]:  # plain (unquoted): YAML decides its type from its spelling
        kind = str(resolver.resolve(ScalarNode, value, (True, False)))
        if kind == f"{_YAML_TAG}timestamp":
            # Refused, not read as a date: no parameter takes one, and `2020-02-30` or `2020-13-45`
            # would fail inside the loader. Quoted, it is the text the user most likely meant (a path).
            raise CmhashError(f"{where}: {quote(value, 40)} reads as a date, which no parameter takes; "
                              f"put it in quotes if it is a text (\"{quote(value, 40)[1:-1]}\").")
        if kind not in _PLAIN_TYPES:  # `<<` (a merge key), `=` (a value key)
            raise CmhashError(f"{where}: {quote(value, 40)} has a special meaning in YAML ({kind.replace(_YAML_TAG, '')}); "
                              "put it in quotes if it is a text.")
        if kind in (f"{_YAML_TAG}int", f"{_YAML_TAG}float"):
            if len(value) > MAX_NUMBER_CHARS:
                # Checked by length before the loader converts it: int() refuses more than 4,300
                # digits with a traceback (and is slow well before that).
                raise CmhashError(f"{where}: a number of {len(value):,} characters; a parameter's number has at most "
                                  f"{MAX_NUMBER_CHARS}.")
            if not _has_digits(value, kind):
                # YAML's number patterns allow `_` in place of digits, so `-_`, `0x_` and `._` are
                # numbers to the resolver that the loader then fails to convert.
                raise CmhashError(f"{where}: {quote(value, 40)} is a number without digits; write the number, or put "
                                  "it in quotes if it is a text.")
    if "${" in value:
        # Checked on the value YAML built (escapes undone: "\x24{" is "${"), in keys and values alike.
        # Refused in params.yaml itself, not only in overrides: DVC interpolates ${...} in dvc.yaml, not
        # here, so the stages would read the literal text; but `dvc exp run -S` resolves the whole file
        # (OmegaConf.to_object) and writes the result back, so `${oc.env:TOKEN}` in params.yaml would put
        # the token into params.yaml and the experiment's commit.
        raise CmhashError(f"{where}: interpolations such as ${{...}} (and resolvers such as oc.env) are not "
                          "accepted in parameters; give the plain value.")


def _has_digits(value: str, kind: str) -> bool:
    """Whether a plain scalar that YAML reads as a number (``kind``) has a digit where the number is."""
    if kind == f"{_YAML_TAG}float":
        if value.lstrip("+-").lower() in (".inf", ".nan"):
            return True
        mantissa = re.split(r"[eE]", value, maxsplit=1)[0]
        return any(ch.isdigit() for ch in mantissa)
    unsigned = value.lstrip("+-")
    body = unsigned[2:] if unsigned[:2].lower() in ("0b", "0o", "0x") else unsigned
    return any(ch not in "_" for ch in body)


# ---- overrides: `-S KEY=VALUE` and the flow's `overrides`

def _override_text(key: str, value: Any) -> str:
    """A value that came as JSON (the flow's ``overrides``), as YAML text, so that it is read with
    the same checks as the file's values."""
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError

    stream = io.StringIO()
    try:
        YAML(typ="safe").dump(value, stream)
    except (YAMLError, ValueError, RecursionError):  # an object YAML cannot write, an int of >4,300 digits
        raise CmhashError(f"override {key}: a value of type {type(value).__name__} is not a plain value; give a number, a text, "
                          "true/false, null, or a list or mapping of them.") from None
    return stream.getvalue()


def parse_overrides(overrides: dict[str, Any] | None) -> dict[str, Any]:
    """``{dotted key: value}`` as the parameter file will hold them. A string value is read as on the
    command line of ``dvc exp run -S`` (``"3"`` is the number 3, ``"[16, 32]"`` a list, ``"1e-3"`` a
    number), any other value is taken as it is, and a mapping is spread over dotted keys
    (``{"methods.djsrh": {"epochs": 1}}`` sets ``methods.djsrh.epochs``). Interpolations, malformed keys
    and values past the parameter file's limits are refused, each in one line."""
    parsed: dict[str, Any] = {}
    for key, value in (overrides or {}).items():
        if not isinstance(key, str) or not _KEY.match(key):  # no `$`, `{` or escape can pass this
            raise CmhashError(f"override key {quote(key)}: expected dotted names such as methods.djsrh.epochs.")
        if isinstance(value, dict):
            parsed.update(parse_overrides({f"{key}.{inner}": item for inner, item in value.items()}))
            continue
        text = value if isinstance(value, str) else _override_text(key, value)
        # The plain spelling, refused on the text as given. An escaped one ("\x24{...}") is seen only
        # once YAML has undone the escapes: read_yaml_text refuses it in every parsed key and value.
        if "${" in text:
            raise CmhashError(f"override {key}: interpolations such as ${{...}} (and resolvers such as oc.env) are not "
                              "accepted; give the plain value.")
        parsed[key] = read_yaml_text(text, f"override {key}") if text.strip() else text
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
