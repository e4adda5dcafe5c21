"""Compare the metrics of two versions: one row per method, code length and retrieval direction.

``cmhash diff [A] [B]`` prints it; each flow run publishes it as its ``metrics-diff`` artifact and
fails when a cell dropped by more than the run's ``regression_threshold``. A version is
``workspace``, anything git names a commit by (a hash, a branch, a tag, ``HEAD~1``) or an
experiment's name. Its files are read as data: from git's objects for a commit, from the disk for
the workspace.

- The cells of a version are its metrics files (``metrics/<method>-<bits>.json``) and the ones its
  ``params.yaml`` declares (``train.methods`` x ``train.bits``). A declared file that is missing
  while others exist, a file that is not JSON, and a score that is not a number make the cell
  *unreadable*: a row that says why, never a silent "-". (A version with no metrics file at all,
  such as a commit before the first run, simply has no cells.)
- Two versions are *comparable* when their data and evaluation settings agree (every
  ``dataset`` key that applies to the dataset in use, every ``evaluate`` key but the device): a
  600-item smoke run is not a regression of the 6,000-item results. For versions that are not, the
  table still shows the numbers, names the differing keys, and marks no regression.
- The settings compared are a version's ``params.yaml`` as the stages read it: checked against the
  schema and completed with its defaults, so a key left out and the same key set to its default
  are the same setting. A version whose ``params.yaml`` does not pass the schema (an old commit
  written for another schema, a file that is missing or not YAML) has unknown settings: it is
  comparable with no version, and the header says why (rather than guessing which of its keys
  mean what today).
- The columns are mAP@all and mAP@k for every k of the version's ``evaluate.map_ks`` (the cells the
  evaluation computes): a metrics file that lacks one of them is unreadable.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cmhash.errors import CmhashError, quote
from cmhash.pipeline.report import DIRECTION_NAMES

_METRICS_FILE = re.compile(r"^metrics/(?P<method>[^/]+)-(?P<bits>\d+)\.json$")
WORKSPACE = "workspace"

Cell = tuple[str, int, str]  # method, bits, direction


def metric_columns(map_ks: Any) -> dict[str, str]:
    """{key in the metrics files: title} of mAP@all and mAP@k for each k of ``evaluate.map_ks``
    (the schema's default list when a version's params.yaml does not set a usable one)."""
    if not _usable_map_ks(map_ks):
        from cmhash.metrics.report import DEFAULT_MAP_KS

        map_ks = list(DEFAULT_MAP_KS)
    return {"map_all": "mAP@all", **{f"map_{k}": f"mAP@{k}" for k in map_ks}}


def _usable_map_ks(map_ks: Any) -> bool:
    return isinstance(map_ks, list) and all(type(k) is int and k > 0 for k in map_ks)


def check_threshold(value: Any, name: str = "regression_threshold") -> float:
    """A regression threshold: a finite number of at least 0 (NaN would flag nothing, a negative
    one would flag unchanged cells), or a one-line error."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise CmhashError(f"{name} is {quote(value)}; expected a finite number of at least 0 (e.g. 0.01).")
    return float(value)


# ---- versions, read as data

@dataclass(frozen=True)
class Version:
    name: str                 # as given: workspace, a commit, a branch, a tag, an experiment
    commit: str | None        # None: the workspace


def _git(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=root, capture_output=True)


def resolve_version(root: str | Path, name: str) -> Version:
    """``name`` as a version of the DVC project at ``root``, or a one-line error."""
    root = Path(root)
    if not (root / ".dvc").is_dir() or _git(root, "rev-parse", "--git-dir").returncode != 0:
        raise CmhashError(f"{root} is not a DVC project in a git repository (no .dvc folder or no git); "
                          "run cmhash diff in the project's clone or pass --root.")
    if name == WORKSPACE:
        return Version(name, None)
    if not name or name.startswith("-") or "\n" in name:
        raise CmhashError(f"{quote(name)} is not a version: give workspace, a commit, a branch, a tag or an experiment.")
    found = _git(root, "rev-parse", "--verify", "--quiet", f"{name}^{{commit}}")
    if found.returncode == 0:
        return Version(name, found.stdout.decode().strip())
    refs = _git(root, "for-each-ref", "--format=%(refname) %(objectname)", "refs/exps").stdout.decode().split("\n")
    matches = [line.split()[1] for line in refs if line and line.split()[0].rsplit("/", 1)[-1] == name]
    if len(matches) == 1:
        return Version(name, matches[0])
    if len(matches) > 1:
        raise CmhashError(f"{quote(name)} names {len(matches)} experiments of {root}; give the commit of the one you mean "
                          "(`dvc exp show` lists them).")
    raise CmhashError(f"{quote(name)} is neither a commit, a branch, a tag nor an experiment of {root} "
                      "(`dvc exp show` lists the experiments).")


def read_at(root: str | Path, version: Version, path: str) -> bytes | None:
    """The bytes of ``path`` (relative to the project) at ``version``; ``None`` where it has none."""
    root = Path(root)
    if version.commit is None:
        try:
            return (root / path).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None
    shown = _git(root, "show", f"{version.commit}:{path}")
    return shown.stdout if shown.returncode == 0 else None


def _metrics_files_at(root: Path, version: Version) -> list[str]:
    if version.commit is None:
        return sorted(f"metrics/{path.name}" for path in (root / "metrics").glob("*.json"))
    listed = _git(root, "ls-tree", "--name-only", version.commit, "metrics/").stdout.decode().splitlines()
    return sorted(path for path in listed if path.endswith(".json"))


def params_at(root: str | Path, version: Version) -> tuple[dict[str, Any], str]:
    """(the raw ``params.yaml`` of ``version``, ``""``), or (``{}``, why it cannot be read: it is
    missing, not UTF-8 or not YAML). An old version need not satisfy today's schema: see
    :func:`checked_sections`."""
    from cmhash.pipeline.params_file import read_yaml_text

    data = read_at(root, version, "params.yaml")
    if data is None:
        return {}, f"params.yaml at {version.name}: missing"
    try:
        params = read_yaml_text(data.decode("utf-8"), f"params.yaml at {version.name}")
    except UnicodeDecodeError:
        return {}, f"params.yaml at {version.name}: not UTF-8"
    except CmhashError as err:
        return {}, str(err)
    if not isinstance(params, dict):
        return {}, f"params.yaml at {version.name}: not a mapping of stage names to settings"
    return params, ""


def checked_sections(raw: dict[str, Any], name: str, sections: tuple[str, ...]) -> tuple[dict[str, Any], str]:
    """(``{section: settings}`` of ``raw`` checked against the schema and completed with its
    defaults, ``""``), or (``{}``, the schema's one-line complaint). Each section is checked on its
    own, so that a section the comparison does not read (an old version's ``methods``) cannot make
    one it reads unknown."""
    from cmhash.pipeline.params import validate_params

    checked = {}
    for section in sections:
        try:
            checked[section] = validate_params({section: raw[section]} if section in raw else {}, f"params.yaml at {name}",
                                               (section,))[section]
        except CmhashError as err:
            return {}, str(err)
    return checked, ""


def comparison_settings(params: dict[str, Any]) -> dict[str, Any]:
    """The settings two versions must share for their scores to be comparable, as dotted keys:
    the data (``dataset``, less the options of sources not in use) and the evaluation
    (``evaluate``, less the device, which changes no number)."""
    settings: dict[str, Any] = {}

    def flatten(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                flatten(f"{prefix}.{key}", inner)
        else:
            settings[prefix] = value

    dataset = dict(params.get("dataset") or {}) if isinstance(params.get("dataset"), dict) else {}
    from cmhash.datasets import SOURCES

    for source in SOURCES:
        if source != dataset.get("name"):
            dataset.pop(source, None)
    flatten("dataset", dataset)
    evaluate = params.get("evaluate") if isinstance(params.get("evaluate"), dict) else {}
    flatten("evaluate", {key: value for key, value in evaluate.items() if key != "device"})
    return settings


def settings_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``key old -> new`` for every comparison setting that differs (absent: ``-``)."""
    return [f"{key} {quote(old.get(key, '-'), 40)} -> {quote(new.get(key, '-'), 40)}"
            for key in sorted(set(old) | set(new)) if old.get(key, "-") != new.get(key, "-")]


@dataclass(frozen=True)
class EncodeRecord:
    """What ``dvc.lock`` recorded of a version's encode stage: what went in (its command, the md5 of
    every dependency, code included, and its parameters) and the md5 of the features it wrote."""
    inputs: str
    features: str


ENCODE_STAGE = "encode"


def encode_record_at(root: str | Path, version: Version) -> EncodeRecord | None:
    """The encode stage's entry of ``dvc.lock`` at ``version`` (DVC's lock file format: ``stages`` ->
    name -> ``cmd``, ``deps``, ``params``, ``outs``, each file with its md5), or None where there is
    none or it cannot be read."""
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError

    data = read_at(root, version, "dvc.lock")
    try:
        entry = ((YAML(typ="safe").load(data) or {}).get("stages") or {}).get(ENCODE_STAGE) if data else None
        if not isinstance(entry, dict):
            return None
        files = lambda items: sorted((item.get("path"), item.get("md5") or item.get("hash")) for item in items or [])  # noqa: E731
        inputs = json.dumps({"cmd": entry.get("cmd"), "deps": files(entry.get("deps")), "params": entry.get("params")},
                            sort_keys=True, default=str)
        features = json.dumps(files(entry.get("outs")))
    except (YAMLError, AttributeError, TypeError, ValueError):
        return None
    return EncodeRecord(inputs, features)


def features_differ_by_machine(old: VersionMetrics, new: VersionMetrics) -> bool:
    """Whether the two versions encoded the same inputs (command, code, parameters and prepared data,
    by their md5 in dvc.lock) into different features: the machines' arithmetic differs (the
    encoder's kernels take other SIMD paths on other CPUs), not anything the versions changed."""
    return (old.encoding is not None and new.encoding is not None and old.encoding.inputs == new.encoding.inputs
            and old.encoding.features != new.encoding.features)


@dataclass
class VersionMetrics:
    """The scores of one version, the cells it could not read (and why), and its comparison settings."""
    name: str
    cells: dict[Cell, dict[str, float]] = field(default_factory=dict)
    unreadable: dict[tuple[str, int], str] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    columns: dict[str, str] = field(default_factory=lambda: metric_columns(None))
    unchecked: str = ""  # why the settings are unknown (params.yaml missing or not passing the schema); "": known
    encoding: EncodeRecord | None = None  # what dvc.lock recorded of the encode stage; None: no record


def metrics_at(root: str | Path, name: str) -> VersionMetrics:
    """The metrics of version ``name`` (see the module docstring)."""
    root = Path(root)
    version = resolve_version(root, name)
    raw, unchecked = params_at(root, version)  # unchecked: why its params.yaml cannot be read
    compared: dict[str, Any] = {}
    if not unchecked:
        compared, unchecked = checked_sections(raw, name, ("dataset", "evaluate"))
    if unchecked:  # unknown settings, comparable with no version
        evaluate = raw.get("evaluate") if isinstance(raw.get("evaluate"), dict) else {}
        # The mAP@k it computed as far as its file says; else only mAP@all, which every evaluation
        # computes (today's default map_ks would be a guess, and a file without them "unreadable").
        map_ks = evaluate.get("map_ks")
        columns = metric_columns(map_ks) if _usable_map_ks(map_ks) else {"map_all": "mAP@all"}
        result = VersionMetrics(name, columns=columns, unchecked=unchecked)
    else:
        result = VersionMetrics(name, settings=comparison_settings(compared),
                                columns=metric_columns(compared["evaluate"]["map_ks"]))
    result.encoding = encode_record_at(root, version)
    present = _metrics_files_at(root, version)
    files = {(match["method"], int(match["bits"])): path for path in present if (match := _METRICS_FILE.match(path))}
    # The cells its train stages fit: dvc.yaml's matrix reads train.methods x train.bits from the raw
    # file (no schema defaults), so the raw file is what ran.
    train = raw.get("train") if isinstance(raw.get("train"), dict) else {}
    declared = [(method, bits) for method in train.get("methods") or [] for bits in train.get("bits") or []
                if isinstance(method, str) and isinstance(bits, int)] if present else []
    for method, bits in sorted(set(files) | set(declared)):
        path = files.get((method, bits), f"metrics/{method}-{bits}.json")
        problem, scores = _read_scores(read_at(root, version, path), result.columns)
        if problem:
            result.unreadable[method, bits] = f"{path} at {name}: {problem}"
            continue
        for direction, values in scores.items():
            result.cells[method, bits, direction] = values
    return result


def _read_scores(data: bytes | None, columns: dict[str, str]) -> tuple[str | None, dict[str, dict[str, float]]]:
    """(why the file cannot be used, or None; its scores of ``columns`` by direction)."""
    if data is None:
        return "missing", {}
    try:
        content = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return "not JSON", {}
    if not isinstance(content, dict):
        return "not a mapping of directions to scores", {}
    scores = {}
    for direction, values in content.items():
        if direction == "warnings":
            continue
        if not isinstance(values, dict):
            return f"{quote(direction, 30)} holds no scores", {}
        for key in columns:
            if key not in values:
                return f"{quote(direction, 30)} holds no {key} (evaluate.map_ks asks for it)", {}
            value = values[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                return f"{direction}.{key} is {quote(value, 30)}, not a number", {}
        scores[direction] = {key: float(values[key]) for key in columns}
    return None, scores


# ---- the diff

@dataclass
class DiffRow:
    method: str
    bits: int
    direction: str
    old: dict[str, float] = field(default_factory=dict)   # empty: not in the old version
    new: dict[str, float] = field(default_factory=dict)   # empty: not in the new version
    regressed: list[str] = field(default_factory=list)    # the columns that dropped beyond the threshold
    unreadable: str = ""                                  # why a version's file for this cell could not be read

    def delta(self, key: str) -> float | None:
        """new - old, to the 6 decimals the metrics files hold (so that a drop of exactly the
        threshold is not one beyond it)."""
        return round(self.new[key] - self.old[key], 6) if key in self.old and key in self.new else None

    def describe(self) -> str:
        """``djsrh 64 bits I→T`` (a cell's name in messages)."""
        return f"{self.method} {self.bits} bits {DIRECTION_NAMES.get(self.direction, self.direction)}".rstrip()


@dataclass
class Diff:
    old_name: str
    new_name: str
    threshold: float
    rows: list[DiffRow]
    not_comparable: list[str]   # the differing data and evaluation settings, or why they are unknown; empty: comparable
    columns: dict[str, str] = field(default_factory=dict)  # {key: title}: mAP@all and the mAP@k of either version
    unchecked: list[str] = field(default_factory=list)     # why a version's settings are unknown
    features_differ: bool = False  # same encoding inputs, other features: the machines differ (features_differ_by_machine)

    @property
    def unreadable(self) -> list[str]:
        return [row.unreadable for row in self.rows if row.unreadable]


def diff_metrics(old: VersionMetrics, new: VersionMetrics, threshold: float) -> Diff:
    """A row for every cell of either version, by method, length and direction, and one for each
    unreadable file; a column regressed when it dropped by more than ``threshold`` and the two
    versions are comparable."""
    threshold = check_threshold(threshold)
    unchecked = [version.unchecked for version in (old, new) if version.unchecked]
    differences = unchecked or settings_differences(old.settings, new.settings)
    columns = {**new.columns, **old.columns}
    rows = []
    for cell in sorted(set(old.cells) | set(new.cells)):
        row = DiffRow(*cell, old=old.cells.get(cell, {}), new=new.cells.get(cell, {}))
        if not differences:
            row.regressed = [key for key in columns if (delta := row.delta(key)) is not None and delta < -threshold]
        rows.append(row)
    for version in (old, new):
        for (method, bits), why in sorted(version.unreadable.items()):
            rows.append(DiffRow(method, bits, "", unreadable=why))
    return Diff(old.name, new.name, threshold, rows, differences, columns, unchecked, features_differ_by_machine(old, new))


def regressions(diff: Diff) -> list[str]:
    """One phrase per regressed cell: ``djsrh 16 bits I→T mAP@all 0.612 -> 0.540 (-0.072)``."""
    return [f"{row.describe()} {diff.columns[key]} {row.old[key]:.3f} -> {row.new[key]:.3f} ({row.delta(key):+.3f})"
            for row in diff.rows for key in row.regressed]


def table_records(diff: Diff) -> list[dict[str, Any]]:
    """The rows as records (the Prefect table artifact and ``cmhash diff --json``); ``None`` where
    a version lacks the cell."""
    records = []
    for row in diff.rows:
        record: dict[str, Any] = {"method": row.method, "bits": row.bits,
                                  "direction": DIRECTION_NAMES.get(row.direction, row.direction)}
        for key, title in diff.columns.items():
            record[f"{title} old"] = row.old.get(key)
            record[f"{title} new"] = row.new.get(key)
            record[f"{title} Δ"] = row.delta(key)
        record["regression"] = ", ".join(diff.columns[key] for key in row.regressed)
        record["unreadable"] = row.unreadable
        records.append(record)
    return records


def _cell_text(header: str, value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:+.3f}" if header.endswith("Δ") else f"{value:.3f}"
    return str(value)


FEATURES_DIFFER = ("features differ by machine: both versions encoded the same data with the same code and parameters "
                   "(dvc.lock), but the features differ, so the changes below include the two machines' arithmetic, "
                   "not only what the versions changed")


def header_lines(diff: Diff) -> list[str]:
    """What the table compares, and why no cell counts as a regression when the versions differ."""
    lines = [f"metrics: {diff.old_name} (old) -> {diff.new_name} (new); regression: a drop of more than {diff.threshold:g}"]
    if diff.unchecked:
        lines.append(f"not comparable: the data and evaluation settings of a version are unknown ({'; '.join(diff.unchecked)}), "
                     "so no change is a regression")
    elif diff.not_comparable:
        lines.append(f"not comparable: the two versions differ in data or evaluation settings ({'; '.join(diff.not_comparable)}), "
                     "so no change is a regression")
    if diff.features_differ:
        lines.append(FEATURES_DIFFER)
    return lines


def render_diff(diff: Diff) -> str:
    """A compact text table for the terminal, regressions marked ``<<``, unreadable files named."""
    if not diff.rows:
        return "\n".join(header_lines(diff)[1:] + [f"no metrics at {diff.old_name} or {diff.new_name}"])
    records = [{h: _cell_text(h, v) for h, v in record.items() if h != "unreadable"} for record in table_records(diff)]
    headers = list(records[0])
    widths = {h: max(len(h), *(len(r[h]) for r in records)) for h in headers}
    line = lambda values: "  ".join(v.ljust(widths[h]) for h, v in zip(headers, values)).rstrip()  # noqa: E731
    lines = header_lines(diff) + [line(headers), line("-" * widths[h] for h in headers)]
    for row, record in zip(diff.rows, records):
        if row.unreadable:
            lines.append(f"{row.method}  {row.bits}  unreadable: {row.unreadable}")
        else:
            lines.append(line(record.values()) + ("  <<" if record["regression"] else ""))
    return "\n".join(lines)
