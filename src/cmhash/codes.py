"""The codes file a train stage writes: {-1, +1} int8 codes of the query and retrieval items.

Layout: ``query/images``, ``query/texts``, ``retrieval/images``, ``retrieval/texts`` (n, bits)
int8 — or, for fused methods (one code per image-text pair), ``query/pairs`` and
``retrieval/pairs`` instead — plus ``query/index`` and ``retrieval/index`` (the item indices, as in
the prepared splits), and attributes ``method``, ``bits`` and the cmhash version.
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

# The longest code cmhash handles: the evaluation kernels hold a Hamming distance in 8 bits.
MAX_BITS = 255


CODE_KINDS = ("images", "texts", "pairs")


@dataclass
class SplitCodes:
    """Codes of one split: per modality (``images``, ``texts``) or per pair (``pairs``)."""

    index: np.ndarray
    images: np.ndarray | None = None
    texts: np.ndarray | None = None
    pairs: np.ndarray | None = None


def retrieval_directions(query: SplitCodes, retrieval: SplitCodes) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The (query codes, retrieval codes) of each retrieval direction: image-to-text and
    text-to-image, or pair-to-pair for fused codes."""
    if query.pairs is not None:
        return {"p2p": (query.pairs, retrieval.pairs)}
    return {"i2t": (query.images, retrieval.texts), "t2i": (query.texts, retrieval.images)}


def collapse_warnings(codes: dict[str, SplitCodes]) -> list[str]:
    """What says a model's codes carry little: every retrieval item sharing one code, or more than
    half the bits the same for every item. mAP still gets computed; train.json, the metrics file
    and the results table say so."""
    warnings = []
    for kind in CODE_KINDS:
        rows = getattr(codes["retrieval"], kind)
        if rows is None or len(rows) < 2:
            continue
        bits = rows.shape[1]
        constant = int(np.all(rows == rows[:1], axis=0).sum())
        if len(np.unique(rows, axis=0)) == 1:
            warnings.append(f"all {len(rows):,} retrieval items share one {kind[:-1]} code (the codes collapsed)")
        elif constant > bits // 2:
            warnings.append(f"{constant} of the {bits} bits of the {kind[:-1]} codes are the same for every retrieval item")
    return warnings


def write_codes(path: Path, method: str, bits: int, codes: dict[str, SplitCodes], prepared_md5: str) -> None:
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        for name in SETS:
            group = f.create_group(name)
            group.create_dataset("index", data=codes[name].index.astype(np.int64))
            for kind in CODE_KINDS:
                if getattr(codes[name], kind) is not None:
                    group.create_dataset(kind, data=getattr(codes[name], kind).astype(np.int8))
        f.attrs.update({"method": method, "bits": int(bits), "prepared_md5": prepared_md5, "cmhash_version": __version__})


def check_codes_made_from(path: Path, prepared_path: Path, prepared_md5: str) -> None:
    """The codes' items and splits are those of the prepared file as it is now (its md5, computed
    once by the caller for all the codes it checks)."""
    with h5py.File(path, "r") as f:
        made_from = f.attrs.get("prepared_md5")
    if made_from != prepared_md5:
        raise CmhashError(f"{prepared_path} changed after {path} was made from it; run `dvc repro` (encode and the train "
                          "stage of this method and length) first, then evaluate again.")


def read_codes(path: Path) -> dict[str, SplitCodes]:
    if not Path(path).is_file():
        raise CmhashError(f"{path}: codes not found; run `cmhash train` for this method and bit length first.")
    try:
        with h5py.File(path, "r") as f:
            return {name: SplitCodes(f[name]["index"][()], **{kind: f[name][kind][()] for kind in CODE_KINDS if kind in f[name]})
                    for name in SETS}
    except (OSError, KeyError) as err:
        raise CmhashError(f"{path}: truncated or not a codes file ({str(err).splitlines()[0]}); rebuild it with "
                          "`dvc repro` (the train stage of this method and length).") from None
