"""Dataset sources: each turns what a user downloaded into the canonical prepared HDF5 file.

``dataset.name`` in params.yaml picks the source module (:data:`SOURCES`); every module follows
:mod:`cmhash.datasets.source`; a dataset's settings are typed (:mod:`cmhash.datasets.settings`).
:func:`prepare_dataset` checks the split parameters first, reads the source, draws the split and
writes the file; :func:`expected_counts` tells the validate stage what the source and the split
promise.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from cmhash.datasets.prepared import write_prepared
from cmhash.datasets.splits import SplitProtocol, parse_split
from cmhash.registry import Registry

if TYPE_CHECKING:
    from cmhash.datasets.settings import DatasetSettings

# dataset.name -> the source's module (imported only when used)
SOURCES = Registry("dataset source", {
    "builtin": "cmhash.datasets.builtin",
    "byo": "cmhash.datasets.byo",
    "mirflickr25k": "cmhash.datasets.mirflickr",
    "nuswide": "cmhash.datasets.nuswide",
    "coco": "cmhash.datasets.coco",
    "dcmh_mat": "cmhash.datasets.dcmh_mat",
    "dcmht_mat": "cmhash.datasets.dcmht_mat",
})


def source_module(name: str) -> ModuleType:
    """The module of source ``name`` (see :mod:`cmhash.datasets.source`)."""
    return SOURCES.load(name)


def _source(dataset: DatasetSettings) -> ModuleType:
    return source_module(dataset.name)


def split_protocol(dataset: DatasetSettings) -> SplitProtocol:
    """The split that ``dataset.split`` asks for (the built-in dataset has a default)."""
    return parse_split(dataset.split, dataset.seed, getattr(_source(dataset), "DEFAULT_SPLIT", None))


def prepare_dataset(dataset: DatasetSettings, out_path: Path, progress: bool = True) -> dict[str, int]:
    """Build the dataset that ``dataset`` describes into ``out_path``; returns the source summary."""
    source = _source(dataset)
    protocol = split_protocol(dataset)  # parameters first: fail before reading any files
    data = source.build(dataset, progress)
    write_prepared(
        Path(out_path),
        labels=data.labels,
        label_names=data.label_names,
        texts=data.texts,
        text_item=data.text_item,
        images=data.images,
        image_paths=data.image_paths,
        image_root=data.image_root,
        bag_of_words=data.bag_of_words,
        vocabulary=data.vocabulary,
        splits=protocol.draw(data.labels),
        split=protocol.record(),
        summary=data.summary,
        source=dataset.name,
        params=dataset.model_dump(by_alias=True),
        progress=progress,
    )
    return data.summary


def expected_counts(dataset: DatasetSettings, summary: dict[str, int], n_labels: int) -> dict[str, int]:
    """What validate checks: the source's own counts (labels, items, vocabulary), the split sizes
    and, where the item count is known, the retrieval size (every item that is not a query)."""
    expected = {**_source(dataset).expected(dataset, summary), **split_protocol(dataset).expected_sizes(n_labels)}
    if "items" in expected:
        expected["retrieval"] = expected["items"] - expected["query"]
    return expected
