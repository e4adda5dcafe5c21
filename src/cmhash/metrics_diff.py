"""Compare the metrics of two versions: one row per method, code length and retrieval direction.

``cmhash diff [A] [B]`` prints it; each flow run publishes it as its ``metrics-diff`` artifact and
fails when a cell dropped by more than the run's ``regression_threshold``. A version is anything DVC
can read metrics at: ``workspace``, a commit, a branch or tag, or an experiment's name. DVC reads
them (``dvc metrics show``), so every metrics file that ``dvc.yaml`` declares at that version counts,
and only those.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cmhash.errors import CmhashError

COLUMNS = {"map_all": "mAP@all", "map_50": "mAP@50"}
DIRECTION_NAMES = {"i2t": "I→T", "t2i": "T→I", "p2p": "pair→pair"}
_METRICS_FILE = re.compile(r"(?P<method>[^/]+)-(?P<bits>\d+)\.json$")

Cell = tuple[str, int, str]  # method, bits, direction


def metrics_at(root: str | Path, version: str) -> dict[Cell, dict[str, float]]:
    """``{(method, bits, direction): {"map_all": ..., "map_50": ...}}`` at ``version``."""
    from dvc.repo import Repo
    from dvc.scm import RevError, resolve_rev

    with Repo(str(root)) as repo:
        if version == "workspace":
            entry = next(iter(repo.metrics.show(hide_workspace=False).values()), {})
        else:
            try:
                resolve_rev(repo.scm, version)
            except RevError:
                raise CmhashError(f"{version!r} is neither a commit, a branch, a tag nor an experiment of {root} "
                                  "(`dvc exp show` lists the experiments).") from None
            entry = repo.metrics.show(revs=[version]).get(version, {})  # (DVC adds the workspace to the versions)
    # A metrics file that dvc.yaml declares but the version lacks (not evaluated yet) comes with an
    # "error" instead of "data".
    files = entry.get("data", {})
    cells: dict[Cell, dict[str, float]] = {}
    for path, entry in files.items():
        match = _METRICS_FILE.search(path.replace("\\", "/"))
        if not match or "data" not in entry:
            continue
        for direction, scores in entry["data"].items():
            if isinstance(scores, dict) and "map_all" in scores:
                cells[match["method"], int(match["bits"]), direction] = {k: scores[k] for k in COLUMNS if k in scores}
    return cells


@dataclass
class DiffRow:
    method: str
    bits: int
    direction: str
    old: dict[str, float] = field(default_factory=dict)   # empty: not in the old version
    new: dict[str, float] = field(default_factory=dict)   # empty: not in the new version
    regressed: list[str] = field(default_factory=list)    # the columns that dropped beyond the threshold

    def delta(self, key: str) -> float | None:
        """new - old, to the 6 decimals the metrics files hold (so that a drop of exactly the
        threshold is not one beyond it)."""
        return round(self.new[key] - self.old[key], 6) if key in self.old and key in self.new else None

    def describe(self) -> str:
        """``djsrh 64 bits I→T`` (a cell's name in messages)."""
        return f"{self.method} {self.bits} bits {DIRECTION_NAMES.get(self.direction, self.direction)}"


def diff_metrics(old: dict[Cell, dict[str, float]], new: dict[Cell, dict[str, float]], threshold: float) -> list[DiffRow]:
    """A row for every cell of either version, by method, length and direction; a column regressed
    when it dropped by more than ``threshold``."""
    rows = []
    for cell in sorted(set(old) | set(new)):
        row = DiffRow(*cell, old=old.get(cell, {}), new=new.get(cell, {}))
        row.regressed = [key for key in COLUMNS if (delta := row.delta(key)) is not None and delta < -threshold]
        rows.append(row)
    return rows


def regressions(rows: list[DiffRow]) -> list[str]:
    """One phrase per regressed cell: ``djsrh 16 bits I→T mAP@all 0.612 -> 0.540 (-0.072)``."""
    return [f"{row.describe()} {COLUMNS[key]} {row.old[key]:.3f} -> {row.new[key]:.3f} ({row.delta(key):+.3f})"
            for row in rows for key in row.regressed]


def table_records(rows: list[DiffRow]) -> list[dict[str, Any]]:
    """The rows as records (the Prefect table artifact and ``cmhash diff --json``); ``None`` where
    a version lacks the cell."""
    records = []
    for row in rows:
        record: dict[str, Any] = {"method": row.method, "bits": row.bits, "direction": DIRECTION_NAMES.get(row.direction, row.direction)}
        for key, title in COLUMNS.items():
            record[f"{title} old"] = row.old.get(key)
            record[f"{title} new"] = row.new.get(key)
            record[f"{title} Δ"] = row.delta(key)
        record["regression"] = ", ".join(COLUMNS[key] for key in row.regressed)
        records.append(record)
    return records


def _cell_text(header: str, value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:+.3f}" if header.endswith("Δ") else f"{value:.3f}"
    return str(value)


def render_diff(rows: list[DiffRow], old_name: str, new_name: str, threshold: float) -> str:
    """A compact text table for the terminal, regressions marked ``<<``."""
    if not rows:
        return f"no metrics at {old_name} or {new_name}"
    records = [{h: _cell_text(h, v) for h, v in record.items()} for record in table_records(rows)]
    headers = list(records[0])
    widths = {h: max(len(h), *(len(r[h]) for r in records)) for h in headers}
    line = lambda values: "  ".join(v.ljust(widths[h]) for h, v in zip(headers, values)).rstrip()  # noqa: E731
    lines = [f"metrics: {old_name} (old) -> {new_name} (new); regression: a drop of more than {threshold:g}",
             line(headers), line("-" * widths[h] for h in headers)]
    lines += [line(r.values()) + ("  <<" if r["regression"] else "") for r in records]
    return "\n".join(lines)
