"""The codes file a train stage writes: {-1, +1} int8 codes of the query and retrieval items.

Layout: ``query/images``, ``query/texts``, ``retrieval/images``, ``retrieval/texts`` (n, bits)
int8, ``query/index`` and ``retrieval/index`` (the item indices, as in the prepared splits), and
attributes ``method``, ``bits`` and the cmhash version.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from cmhash import __version__
from cmhash.atomic import atomic_path
from cmhash.errors import CmhashError

SETS = ("query", "retrieval")


@dataclass
class SplitCodes:
    index: np.ndarray
    images: np.ndarray
    texts: np.ndarray


def write_codes(path: Path, method: str, bits: int, codes: dict[str, SplitCodes]) -> None:
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        for name in SETS:
            group = f.create_group(name)
            group.create_dataset("index", data=codes[name].index.astype(np.int64))
            group.create_dataset("images", data=codes[name].images.astype(np.int8))
            group.create_dataset("texts", data=codes[name].texts.astype(np.int8))
        f.attrs.update({"method": method, "bits": int(bits), "cmhash_version": __version__})


def read_codes(path: Path) -> dict[str, SplitCodes]:
    if not Path(path).is_file():
        raise CmhashError(f"{path}: codes not found; run `cmhash train` for this method and bit length first.")
    with h5py.File(path, "r") as f:
        return {name: SplitCodes(f[name]["index"][()], f[name]["images"][()], f[name]["texts"][()]) for name in SETS}
