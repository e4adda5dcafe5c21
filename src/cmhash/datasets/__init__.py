"""Dataset builders: each turns one source into the canonical prepared HDF5 file.

A builder is a function ``(dataset_params, out_path, progress) -> None`` registered in
:data:`BUILDERS` under the ``dataset.name`` that selects it in params.yaml.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cmhash.datasets.prepared import write_prepared
from cmhash.datasets.splits import random_split
from cmhash.errors import CmhashError

Builder = Callable[[dict[str, Any], Path, bool], None]


def builtin_expected_sizes(dataset: dict[str, Any]) -> dict[str, int]:
    """Item and split counts of the built-in dataset (the defaults live here, once)."""
    size = int((dataset.get("builtin") or {}).get("size", 6000))
    split = dataset.get("split") or {}
    query, train = int(split.get("query", 1000)), int(split.get("train", 3000))
    return {"items": size, "query": query, "retrieval": size - query, "train": train}


def prepare_builtin(dataset: dict[str, Any], out_path: Path, progress: bool = True) -> None:
    """Generate the built-in dataset (see :mod:`cmhash.datasets.builtin`) and write it."""
    from cmhash.datasets.builtin import generate_builtin

    sizes = builtin_expected_sizes(dataset)
    size = sizes["items"]
    image_size = int((dataset.get("builtin") or {}).get("image_size", 96))
    if image_size < 64:
        raise CmhashError(f"params.yaml: dataset.builtin.image_size is {image_size}; it must be at least 64.")
    splits = seeded_split(dataset, size, sizes)
    data = generate_builtin(size, image_size, int(dataset.get("seed", 0)), progress=progress)
    write_prepared(
        out_path,
        labels=data["labels"],
        label_names=data["label_names"],
        texts=data["captions"],
        text_item=np.arange(size),
        images=data["images"],
        splits=splits,
        source="builtin",
        params=dataset,
    )


def split_sizes(dataset: dict[str, Any]) -> dict[str, int]:
    """The explicit ``dataset.split`` sizes ({query: n, train: n}) of a source with no default."""
    split = dataset.get("split") or {}
    if not isinstance(split, dict) or not {"query", "train"} <= set(split):
        raise CmhashError(f"params.yaml: dataset.split must give query and train sizes for dataset {dataset.get('name')!r}, "
                          f"e.g. split: {{query: 100, train: 500}}; got {split!r}.")
    return {"query": int(split["query"]), "train": int(split["train"])}


def seeded_split(dataset: dict[str, Any], n_items: int, sizes: dict[str, int]) -> dict[str, np.ndarray]:
    """The query/retrieval/train split of ``n_items`` with ``sizes``, seeded by ``dataset.seed``."""
    return random_split(n_items, sizes["query"], sizes["train"], int(dataset.get("seed", 0)))


def _source_root(dataset: dict[str, Any]) -> Path:
    if not dataset.get("root"):
        raise CmhashError(f"params.yaml: dataset.root must name the folder with the {dataset.get('name')} files.")
    return Path(dataset["root"]).expanduser().resolve()


def prepare_byo(dataset: dict[str, Any], out_path: Path, progress: bool = True) -> None:
    """Convert a bring-your-own folder (see :mod:`cmhash.datasets.byo`)."""
    from cmhash.datasets.byo import check_images_decode, labels_matrix, read_pairs

    sizes = split_sizes(dataset)  # parameters first: fail before reading the folder
    root = _source_root(dataset)
    pairs = read_pairs(root)
    check_images_decode(root, pairs, progress)
    labels, names = labels_matrix(pairs)
    write_prepared(
        out_path,
        labels=labels,
        label_names=names,
        texts=[text for pair in pairs for text in pair.texts],
        text_item=np.repeat(np.arange(len(pairs)), [len(pair.texts) for pair in pairs]),
        image_paths=[pair.image for pair in pairs],
        image_root=str(root),
        splits=seeded_split(dataset, len(pairs), sizes),
        source="byo",
        params=dataset,
    )


def prepare_mirflickr25k(dataset: dict[str, Any], out_path: Path, progress: bool = True) -> None:
    """Convert the raw MIRFlickr-25K release (see :mod:`cmhash.datasets.mirflickr`)."""
    from cmhash.datasets.mirflickr import IMAGES, build_mirflickr

    sizes = split_sizes(dataset)
    root = _source_root(dataset)
    min_tag_count = int((dataset.get("mirflickr25k") or {}).get("min_tag_count", 20))
    data = build_mirflickr(root, min_tag_count, progress)
    n = len(data["numbers"])
    write_prepared(
        out_path,
        labels=data["labels"],
        label_names=data["label_names"],
        texts=data["texts"],
        text_item=np.arange(n),
        image_paths=[f"{IMAGES}/im{number}.jpg" for number in data["numbers"]],
        image_root=str(root),
        bag_of_words=data["bow"],
        vocabulary=data["vocabulary"],
        splits=seeded_split(dataset, n, sizes),
        source="mirflickr25k",
        params=dataset,
    )


def mirflickr25k_expected(dataset: dict[str, Any]) -> dict[str, int]:
    from cmhash.datasets.mirflickr import N_CONCEPTS

    return {**split_sizes(dataset), "labels": N_CONCEPTS}


BUILDERS: dict[str, Builder] = {"builtin": prepare_builtin, "byo": prepare_byo, "mirflickr25k": prepare_mirflickr25k}
EXPECTED_SIZES: dict[str, Callable[[dict[str, Any]], dict[str, int]]] = {
    "builtin": builtin_expected_sizes, "byo": split_sizes, "mirflickr25k": mirflickr25k_expected}


def expected_sizes(dataset: dict[str, Any]) -> dict[str, int]:
    """The item and split counts the parameters promise, for the validate stage."""
    return EXPECTED_SIZES[dataset["name"]](dataset) if dataset.get("name") in EXPECTED_SIZES else {}


def prepare_dataset(dataset: dict[str, Any], out_path: Path, progress: bool = True) -> None:
    """Build the dataset named by ``dataset['name']`` into ``out_path``."""
    name = dataset.get("name")
    if name not in BUILDERS:
        raise CmhashError(f"params.yaml: dataset.name is {name!r}; known datasets: {', '.join(sorted(BUILDERS))}.")
    BUILDERS[name](dataset, Path(out_path), progress)
