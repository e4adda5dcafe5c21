"""Query / retrieval / train splits: named protocols of the field or explicit sizes, always seeded.

``dataset.split`` in params.yaml is one of

- explicit sizes ``{query: n, train: n}`` (protocol ``random``): ``query`` items drawn at random,
  the rest is the retrieval set, ``train`` items drawn from retrieval;
- a protocol name, alone (``split: dcmh``) or with its sizes overridden
  (``split: {protocol: dcmh, train: 5000}``):

  ========  =====================================================================================
  dcmh      ``random`` with 2,000 query / 10,000 train (DCMH, UCCH's MIRFlickr and NUS-WIDE)
  dcmht     ``random`` with 5,000 query / 10,000 train (DCMHT)
  djsrh     per-label stratified: for each label in turn, ``query_per_label`` (100) items that carry
            it and are not drawn yet go to the query set; then, from the retrieval set, likewise
            ``train_per_label`` (500) items per label go to train (21 NUS-WIDE labels: 2,100 / 10,500)
  ucch      the last ``query`` (2,000) rows are the query set, as UCCH's loaders slice the .mat
            files; ``train`` (5,000) items drawn at random from the rest
  ========  =====================================================================================

The protocol, its sizes and the seed are recorded in the prepared file (attribute ``split``), and
the validate stage draws the split again from them and checks that the file holds exactly it.
Indices inside each split are sorted so that files are easy to read and compare.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from cmhash.errors import CmhashError, quote

DEFAULT_SIZES: dict[str, dict[str, int]] = {
    "random": {},
    "dcmh": {"query": 2000, "train": 10000},
    "dcmht": {"query": 5000, "train": 10000},
    "ucch": {"query": 2000, "train": 5000},
    "djsrh": {"query_per_label": 100, "train_per_label": 500},
}
_SIZE_KEYS = {"random": ("query", "train"), "dcmh": ("query", "train"), "dcmht": ("query", "train"),
              "ucch": ("query", "train"), "djsrh": ("query_per_label", "train_per_label")}


@dataclass(frozen=True)
class SplitProtocol:
    """A named split protocol with its sizes and seed; :meth:`draw` makes the split."""

    protocol: str
    seed: int
    sizes: dict[str, int]

    def record(self) -> dict[str, Any]:
        """What the prepared file stores, so that the split can be drawn again and checked."""
        return asdict(self)

    def expected_sizes(self, n_labels: int) -> dict[str, int]:
        """The query and train sizes this protocol promises for data with ``n_labels`` labels."""
        if self.protocol == "djsrh":
            return {"query": self.sizes["query_per_label"] * n_labels, "train": self.sizes["train_per_label"] * n_labels}
        return {"query": self.sizes["query"], "train": self.sizes["train"]}

    def draw(self, labels: np.ndarray) -> dict[str, np.ndarray]:
        """The split of the items whose multi-hot labels are ``labels`` (N, C)."""
        n = len(labels)
        rng = np.random.default_rng(self.seed)
        if self.protocol == "djsrh":
            query = _per_label_draw(labels, np.ones(n, dtype=bool), self.sizes["query_per_label"], rng, "query")
            rest = np.ones(n, dtype=bool)
            rest[query] = False
            train = _per_label_draw(labels, rest, self.sizes["train_per_label"], rng, "train")
            return _finish(n, query, train)
        query_size, train_size = self.sizes["query"], self.sizes["train"]
        if query_size + train_size > n:
            raise CmhashError(f"dataset.split: query ({query_size}) + train ({train_size}) exceeds the {n} items; "
                              "lower the split sizes or use a larger dataset.")
        if self.protocol == "ucch":
            query = np.arange(n - query_size, n)
            train = rng.permutation(n - query_size)[:train_size]
            return _finish(n, query, train)
        order = rng.permutation(n)
        return _finish(n, order[:query_size], order[query_size : query_size + train_size])


def _per_label_draw(labels: np.ndarray, available: np.ndarray, per_label: int, rng: np.random.Generator, split: str) -> np.ndarray:
    available = available.copy()
    chosen = []
    for column in range(labels.shape[1]):
        candidates = np.flatnonzero(available & (labels[:, column] > 0))
        if len(candidates) < per_label:
            raise CmhashError(f"dataset.split (djsrh): only {len(candidates)} items left with label {column} for the "
                              f"{split} split, which needs {per_label} per label; lower {split}_per_label.")
        picked = rng.choice(candidates, size=per_label, replace=False)
        available[picked] = False
        chosen.append(picked)
    return np.concatenate(chosen) if chosen else np.array([], dtype=np.int64)


def _finish(n: int, query: np.ndarray, train: np.ndarray) -> dict[str, np.ndarray]:
    in_query = np.zeros(n, dtype=bool)
    in_query[query] = True
    return {"query": np.sort(query).astype(np.int64), "retrieval": np.flatnonzero(~in_query).astype(np.int64),
            "train": np.sort(train).astype(np.int64)}


def parse_split(value: Any, seed: int, default: dict[str, int] | None = None) -> SplitProtocol:
    """Read ``dataset.split`` (see the module docstring); ``default`` is used when it is absent."""
    if value is None and default is not None:
        value = default
    if isinstance(value, str):
        value = {"protocol": value}
    if not isinstance(value, dict):
        raise CmhashError(f"params.yaml: dataset.split must be a protocol name ({', '.join(sorted(DEFAULT_SIZES))}) "
                          f"or sizes such as {{query: 2000, train: 5000}}; got {value!r}.")
    protocol = value.get("protocol", "random")
    if protocol not in DEFAULT_SIZES:
        raise CmhashError(f"params.yaml: dataset.split.protocol is {protocol!r}; known protocols: "
                          f"{', '.join(sorted(DEFAULT_SIZES))}.")
    unknown = set(value) - {"protocol", *_SIZE_KEYS[protocol]}
    if unknown:
        raise CmhashError(f"params.yaml: dataset.split has {', '.join(sorted(unknown))}, which protocol {protocol!r} "
                          f"does not use; it takes {', '.join(_SIZE_KEYS[protocol])}.")
    sizes = {**DEFAULT_SIZES[protocol], **{k: value[k] for k in _SIZE_KEYS[protocol] if k in value}}
    missing = [k for k in _SIZE_KEYS[protocol] if k not in sizes]
    if missing:
        raise CmhashError(f"params.yaml: dataset.split must give {' and '.join(missing)} "
                          f"(e.g. split: {{query: 2000, train: 5000}}) or name a protocol; got {quote(value)}.")
    for key, size in sizes.items():
        if not isinstance(size, int) or isinstance(size, bool) or not 0 < size <= 10**9:
            raise CmhashError(f"params.yaml: dataset.split.{key} must be a whole number from 1 to 10^9, got {quote(size)}.")
    return SplitProtocol(protocol, int(seed), sizes)
