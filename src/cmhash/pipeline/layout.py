"""Where each stage reads and writes, relative to a project root.

``dvc.yaml`` declares the same paths (with ``${dataset.name}`` and the method/bits matrix); the
end-to-end test runs ``dvc repro`` and so fails if the two ever disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Layout:
    root: Path = Path(".")

    def params_checked(self) -> Path:
        return self.root / "data" / "params.checked"

    def prepared(self, dataset: str) -> Path:
        return self.root / "data" / "prepared" / f"{dataset}.h5"

    def validation_report(self, dataset: str) -> Path:
        return self.root / "data" / "validation" / f"{dataset}.json"

    def features(self, dataset: str) -> Path:
        return self.root / "data" / "features" / f"{dataset}.h5"

    def model_dir(self, method: str, bits: int) -> Path:
        return self.root / "data" / "models" / f"{method}-{bits}"

    def index_root(self) -> Path:
        """Every search index, one folder per method and length (what ``cmhash serve`` serves)."""
        return self.root / "data" / "index"

    def items_dir(self) -> Path:
        """The items catalog that search results show (captions, labels, thumbnails)."""
        return self.root / "data" / "items"

    def index_dir(self, method: str, bits: int) -> Path:
        return self.index_root() / f"{method}-{bits}"

    def metrics_root(self) -> Path:
        return self.root / "metrics"

    def metrics(self, method: str, bits: int) -> Path:
        return self.metrics_root() / f"{method}-{bits}.json"

    def plots_dir(self, kind: str, method: str, bits: int) -> Path:
        """One folder per kind of curve (``precision_at_top_r``, ``precision_recall``), as dvc.yaml
        declares each kind's axes once."""
        return self.root / "plots" / kind / f"{method}-{bits}"

    def results_report(self) -> Path:
        return self.root / "reports" / "results.md"

    def tune_report(self, method: str, bits: int) -> Path:
        """``cmhash tune`` writes this with the suffixes .json and .md."""
        return self.root / "reports" / "tune" / f"{method}-{bits}"
