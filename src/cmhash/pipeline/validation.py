"""The validate stage: Great Expectations (GX Core 1.x) checks of a prepared file.

The prepared file is turned into small tables, one row per item, text, split entry or label, and
each table gets an expectation suite. Every expectation carries a plain-English description; a
failure lists the ids of a few offending rows. The stage writes a JSON report and raises
:class:`ValidationFailed` (exit code 1 from the CLI) when anything fails, so that ``dvc repro``
stops before encode and train.

What is checked:

- items: labels are 0/1, every item has at least one label and a caption (for sources whose only
  text is a bag of words, the published DCMH files, at most 1 % of items may have an empty one),
  every image is present (pixels that are not one flat colour, or a path that exists) and of one
  shape and dtype; the item count where the source defines it (e.g. 20,015 for the full
  MIRFlickr-25K release);
- texts: none is empty or blank, each belongs to an existing item;
- splits: indices in range and unique, sizes as the split protocol says, query and retrieval
  disjoint, train inside retrieval, and every item exactly where the protocol, drawn again from
  the parameters' protocol and seed, puts it;
- labels: every label occurs in the training split; the label count where the source defines it
  (24 / 10 or 21 / 80);
- vocabulary: the bag-of-words width where the source defines it (1,386 / 1,000).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from cmhash.atomic import write_json
from cmhash.datasets.prepared import SPLIT_NAMES, PreparedData
from cmhash.datasets.splits import SplitProtocol
from cmhash.errors import CmhashError, ValidationFailed

if TYPE_CHECKING:
    from cmhash.datasets.settings import DatasetSettings

EXAMPLES = 5  # offending ids quoted per failed expectation


@dataclass
class TableCheck:
    """A table and the expectations it must meet; ``id_column`` names the rows in failure reports."""

    name: str
    frame: pd.DataFrame
    id_column: str
    expectations: list[Any] = field(default_factory=list)


def _membership(n: int, splits: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    membership = {}
    for name in SPLIT_NAMES:
        mask = np.zeros(n, dtype=bool)
        idx = splits.get(name, np.array([], dtype=np.int64))
        mask[idx[(idx >= 0) & (idx < n)]] = True
        membership[name] = mask
    return membership


def _texts_per_item(data: PreparedData, bag_of_words: np.ndarray | None) -> np.ndarray:
    """Captions per item; for a source without captions, 1 where the bag of words is not empty."""
    n = data.n_items
    if len(data.texts) == 0 and bag_of_words is not None:
        return (bag_of_words > 0).any(axis=1).astype(np.int64)
    return np.bincount(data.text_item[(data.text_item >= 0) & (data.text_item < n)], minlength=n)


def _item_table(data: PreparedData, protocol: SplitProtocol, bag_of_words: np.ndarray | None) -> pd.DataFrame:
    n = data.n_items
    labels = data.labels
    shapes, dtypes, present = _image_columns(data)
    membership = _membership(n, data.splits)
    try:
        drawn = _membership(n, protocol.draw(labels))
        as_protocol = np.logical_and.reduce([membership[name] == drawn[name] for name in SPLIT_NAMES])
    except CmhashError:  # the protocol cannot be drawn on these labels at all
        as_protocol = np.zeros(n, dtype=bool)
    return pd.DataFrame(
        {
            "item": np.arange(n),
            "labels_binary": np.isin(labels, (0, 1)).all(axis=1),
            "n_labels": (labels > 0).sum(axis=1),
            "n_texts": _texts_per_item(data, bag_of_words),
            "image_present": present,
            "image_shape": shapes,
            "image_dtype": dtypes,
            "in_query_and_retrieval": membership["query"] & membership["retrieval"],
            "in_train_not_retrieval": membership["train"] & ~membership["retrieval"],
            "split_as_protocol": as_protocol,
        }
    )


def _image_columns(data: PreparedData, chunk: int = 256) -> tuple[list[str], list[str], np.ndarray]:
    """Per item: image shape, dtype and whether an image is really there."""
    n = data.n_items
    if data.stores_pixels:
        images = data.images
        shape, dtype = str(tuple(images.shape[1:])), str(images.dtype)
        present = np.zeros(n, dtype=bool)
        for start in range(0, min(n, images.shape[0]), chunk):
            block = images[start : start + chunk].reshape(min(chunk, images.shape[0] - start), -1)
            present[start : start + len(block)] = block.min(axis=1) != block.max(axis=1)  # not one flat colour
        return [shape] * n, [dtype] * n, present
    root = data.image_root
    present = np.array([(root / p).is_file() for p in data.image_paths] + [False] * max(0, n - len(data.image_paths)))[:n]
    return ["file"] * n, ["file"] * n, present


def build_checks(data: PreparedData, expected: dict[str, int], protocol: SplitProtocol) -> list[TableCheck]:
    """The tables and expectations for one prepared file. ``expected`` holds the query/train sizes
    and, where the source defines them, items, retrieval, labels and vocabulary counts."""
    import great_expectations.expectations as gxe

    n = data.n_items
    bow = data.bag_of_words  # (rows, words) or None; read once, it can be large
    items = _item_table(data, protocol, None if bow is None else bow[0])
    first_shape = items["image_shape"].iloc[0] if n else ""
    first_dtype = items["image_dtype"].iloc[0] if n else ""
    checks = [
        TableCheck("items", items, "item", [
            gxe.ExpectColumnValuesToBeInSet(column="labels_binary", value_set=[True], description="labels are 0 or 1"),
            gxe.ExpectColumnValuesToBeBetween(column="n_labels", min_value=1, description="every item has at least one label"),
            _text_expectation(gxe, captions=len(data.texts) > 0),
            gxe.ExpectColumnValuesToBeInSet(column="image_present", value_set=[True], description="every item has an image (not missing, not one flat colour)"),
            gxe.ExpectColumnValuesToBeInSet(column="image_shape", value_set=[first_shape], description=f"all images have one shape {first_shape}"),
            gxe.ExpectColumnValuesToBeInSet(column="image_dtype", value_set=[first_dtype], description=f"all images have one dtype {first_dtype}"),
            gxe.ExpectColumnValuesToBeInSet(column="in_query_and_retrieval", value_set=[False], description="query and retrieval splits are disjoint"),
            gxe.ExpectColumnValuesToBeInSet(column="in_train_not_retrieval", value_set=[False], description="the train split lies inside the retrieval split"),
            gxe.ExpectColumnValuesToBeInSet(column="split_as_protocol", value_set=[True],
                                            description=f"every item is in the splits that protocol {protocol.protocol!r} with seed {protocol.seed} draws"),
        ]),
    ]
    if "items" in expected:
        checks[0].expectations.append(gxe.ExpectTableRowCountToEqual(value=int(expected["items"]), description=f"the dataset has {expected['items']} items"))
    texts = pd.DataFrame({"text_id": np.arange(len(data.texts)), "item": data.text_item, "text": [t.strip() for t in data.texts]})
    checks.append(TableCheck("texts", texts, "text_id", [
        gxe.ExpectColumnValueLengthsToBeBetween(column="text", min_value=1, description="no text is empty or blank"),
        gxe.ExpectColumnValuesToBeBetween(column="item", min_value=0, max_value=n - 1, description="every text belongs to an existing item"),
    ]))
    for name in SPLIT_NAMES:
        frame = pd.DataFrame({"index": data.splits.get(name, np.array([], dtype=np.int64))})
        split_checks = [
            gxe.ExpectColumnValuesToBeBetween(column="index", min_value=0, max_value=n - 1, description=f"{name} indices are within 0..{n - 1}"),
            gxe.ExpectColumnValuesToBeUnique(column="index", description=f"{name} indices are unique"),
        ]
        if name in expected:
            split_checks.append(gxe.ExpectTableRowCountToEqual(value=int(expected[name]), description=f"the {name} split has {expected[name]} items"))
        checks.append(TableCheck(f"splits/{name}", frame, "index", split_checks))
    train = data.splits.get("train", np.array([], dtype=np.int64))
    train = train[(train >= 0) & (train < n)]
    label_frame = pd.DataFrame({"label": data.label_names, "train_count": (data.labels[train] > 0).sum(axis=0)})
    label_checks = [gxe.ExpectColumnValuesToBeBetween(column="train_count", min_value=1, description="every label occurs in the train split")]
    if "labels" in expected:  # the source defines its label set
        label_checks.append(gxe.ExpectTableRowCountToEqual(value=int(expected["labels"]), description=f"the dataset has {expected['labels']} labels"))
    checks.append(TableCheck("labels", label_frame, "label", label_checks))
    if "vocabulary" in expected and bow is not None:
        words = bow[1] or [f"column {i}" for i in range(bow[0].shape[1])]
        vocabulary = pd.DataFrame({"word": words, "items": (bow[0] > 0).sum(axis=0)})
        checks.append(TableCheck("vocabulary", vocabulary, "word", [
            gxe.ExpectTableRowCountToEqual(value=int(expected["vocabulary"]), description=f"the bag of words has {expected['vocabulary']} words")]))
    return checks


# Sources whose only text is a bag of words (the DCMH .mat files) are the field's published item
# lists, kept as they are; a few items there may have no word. Up to this share may, and the source
# summary counts them; captions, in contrast, must exist for every item.
EMPTY_BAG_OF_WORDS_ALLOWED = 0.01


def _text_expectation(gxe: Any, captions: bool) -> Any:
    if captions:
        return gxe.ExpectColumnValuesToBeBetween(column="n_texts", min_value=1, description="every item has at least one text")
    return gxe.ExpectColumnValuesToBeBetween(
        column="n_texts", min_value=1, mostly=1 - EMPTY_BAG_OF_WORDS_ALLOWED,
        description=f"at most {EMPTY_BAG_OF_WORDS_ALLOWED:.0%} of items have an empty bag of words (their only text)")


def run_checks(checks: list[TableCheck]) -> list[dict[str, Any]]:
    """Run every table's suite in an ephemeral GX context; one result dict per expectation."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    source = context.data_sources.add_pandas("prepared")
    outcomes = []
    for check in checks:
        slug = check.name.replace("/", "_")
        batch = source.add_dataframe_asset(slug).add_batch_definition_whole_dataframe("all")
        suite = context.suites.add(gx.ExpectationSuite(name=f"{slug}_suite"))
        for expectation in check.expectations:
            suite.add_expectation(expectation)
        definition = context.validation_definitions.add(gx.ValidationDefinition(name=f"{slug}_validation", data=batch, suite=suite))
        result = definition.run(
            batch_parameters={"dataframe": check.frame},
            result_format={"result_format": "COMPLETE", "unexpected_index_column_names": [check.id_column]},
        )
        for r in result.results:
            details = r.result or {}
            ids = [_plain(row[check.id_column]) for row in details.get("unexpected_index_list") or [] if isinstance(row, dict)]
            outcomes.append(
                {
                    "table": check.name,
                    "expectation": r.expectation_config.type,
                    "description": r.expectation_config.description,
                    "success": bool(r.success),
                    "unexpected_count": int(details.get("unexpected_count") or 0),
                    "observed_value": _plain(details.get("observed_value")),
                    "examples": ids[:EXAMPLES],
                    "id_column": check.id_column,
                }
            )
    return outcomes


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def duplicate_query_warnings(data: PreparedData) -> list[str]:
    """Queries with an exact duplicate (the same image and the same captions) in the retrieval set:
    such a query finds itself, which inflates mAP. A warning, not a failure: real collections hold
    duplicates; ``dataset.byo.deduplicate`` drops them."""
    import hashlib

    if data.stores_pixels:
        images = [hashlib.md5(data.images[i].tobytes()).hexdigest() for i in range(data.n_items)]
    else:
        images = data.image_paths
    keys = [(image, tuple(sorted(texts))) for image, texts in zip(images, data.texts_by_item())]
    inside = lambda rows: [int(i) for i in rows if 0 <= i < len(keys)]  # noqa: E731 (out-of-range ids fail elsewhere)
    retrieval = {keys[i] for i in inside(data.splits.get("retrieval", []))}
    duplicated = [i for i in inside(data.splits.get("query", [])) if keys[i] in retrieval]
    if not duplicated:
        return []
    return [f"{len(duplicated)} of the {len(data.splits['query'])} queries have an exact duplicate (same image, same "
            f"captions) in the retrieval set, e.g. item {duplicated[0]}; each finds itself, which inflates mAP "
            "(for your own data, dataset.byo.deduplicate: true drops duplicates)"]


def validate_prepared(prepared_path: Path, report_path: Path, dataset: DatasetSettings) -> dict[str, Any]:
    """Validate a prepared file against the ``dataset`` parameters; write the JSON report; raise
    ValidationFailed on any failure."""
    from cmhash.datasets import expected_counts, split_protocol

    protocol = split_protocol(dataset)
    with PreparedData(prepared_path) as data:
        expected = expected_counts(dataset, data.summary, data.labels.shape[1])
        outcomes = run_checks(build_checks(data, expected, protocol))
        summary, split = data.summary, data.split_record
        warnings = duplicate_query_warnings(data)
    failed = [o for o in outcomes if not o["success"]]
    report = {"prepared": str(prepared_path), "success": not failed, "evaluated": len(outcomes), "failed": len(failed),
              "source_summary": summary, "split": split, "warnings": warnings, "expectations": outcomes}
    write_json(report_path, report)
    for warning in warnings:
        print(f"warning: {prepared_path}: {warning}")
    if failed:
        lines = [f"{prepared_path}: {len(failed)} of {len(outcomes)} data expectations failed:"]
        for o in failed:
            if o["examples"]:
                detail = f"{o['unexpected_count']} bad row(s), e.g. {o['id_column']} {', '.join(map(str, o['examples']))}"
            else:
                detail = f"observed {o['observed_value']}"
            lines.append(f"  - [{o['table']}] {o['description']}: {detail}")
        lines.append(f"Full report: {report_path}. Fix the source data or the dataset parameters, then run `cmhash prepare` again.")
        raise ValidationFailed("\n".join(lines))
    return report
