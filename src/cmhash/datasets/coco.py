"""MS-COCO 2014 or 2017 (``dataset.name: coco``).

``dataset.root`` holds the official archives unpacked::

    annotations/instances_<subset><year>.json   (the object annotations)
    annotations/captions_<subset><year>.json    (five or more captions per image)
    <subset><year>/<file_name>                  the images, e.g. train2017/000000000009.jpg

``dataset.coco.year`` (2017) and ``dataset.coco.subsets`` ([train, val]) pick the files. Items are
the images with at least one object instance (122,218 of the 123,287 train+val images in either
year), in subset order then by image id. The labels are the 80 categories, multi-hot, in category-id
order; every caption of an image is kept. Images with no instance, or with no caption, are skipped
and counted; a blank caption or a missing image file stops the stage. The two JSON files of the
train subset take about 2 GB of memory while they are read.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import numpy as np
from pydantic import Field

from cmhash.datasets.source import SourceData, check_images_exist, multi_hot, source_root
from cmhash.errors import CmhashError
from cmhash.settings import Section

if TYPE_CHECKING:
    from cmhash.datasets.settings import DatasetSettings


class Options(Section):
    """``dataset.coco``."""

    year: Literal[2014, 2017] = 2017
    subsets: Annotated[list[Literal["train", "val"]], Field(min_length=1)] = ["train", "val"]


N_CATEGORIES = 80
FULL_TRAIN_VAL = {"images": 123_287, "items": 122_218}


def _load(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CmhashError(f"{path} not found: unpack the COCO annotations archive into dataset.root "
                          "(annotations/instances_*.json and captions_*.json).")
    try:
        with path.open(encoding="utf-8") as handle:
            data = json.load(handle)
    except json.JSONDecodeError as err:
        raise CmhashError(f"{path}: not valid JSON ({err.msg} at line {err.lineno}); download it again.") from None
    missing = [key for key in ("images", "annotations") if key not in data]
    if missing:
        raise CmhashError(f"{path}: no {' or '.join(missing)} list; is it a COCO annotation file?")
    return data


def _categories(data: dict[str, Any], path: Path) -> list[dict[str, Any]]:
    categories = sorted(data.get("categories") or [], key=lambda c: c["id"])
    if not categories:
        raise CmhashError(f"{path}: no categories; is it an instances_*.json file?")
    return categories


def build(dataset: DatasetSettings, progress: bool) -> SourceData:
    root = source_root(dataset)
    year, subsets = str(dataset.options.year), list(dataset.options.subsets)
    label_names: list[str] | None = None
    paths, rows, texts, owners = [], [], [], []
    summary = {"images": 0, "items": 0, "skipped_no_instance": 0, "skipped_no_caption": 0, "captions": 0}
    for subset in subsets:
        instances_path = root / "annotations" / f"instances_{subset}{year}.json"
        captions_path = root / "annotations" / f"captions_{subset}{year}.json"
        instances = _load(instances_path)
        categories = _categories(instances, instances_path)
        names = [c["name"] for c in categories]
        if label_names is None:
            label_names = names
        elif names != label_names:
            raise CmhashError(f"{instances_path}: its categories differ from the first subset's; use one year's files.")
        column = {c["id"]: i for i, c in enumerate(categories)}
        labels_of: dict[int, set[int]] = defaultdict(set)
        for annotation in instances["annotations"]:
            if annotation["category_id"] not in column:
                raise CmhashError(f"{instances_path}: annotation {annotation.get('id')} has category "
                                  f"{annotation['category_id']}, which is not in the file's categories.")
            labels_of[annotation["image_id"]].add(column[annotation["category_id"]])
        images = sorted(instances["images"], key=lambda image: image["id"])
        del instances
        captions_of: dict[int, list[str]] = defaultdict(list)
        for annotation in sorted(_load(captions_path)["annotations"], key=lambda a: a["id"]):
            caption = str(annotation.get("caption") or "").strip()
            if not caption:
                raise CmhashError(f"{captions_path}: caption annotation {annotation.get('id')} of image "
                                  f"{annotation.get('image_id')} is blank; fix or remove it.")
            captions_of[annotation["image_id"]].append(" ".join(caption.split()))
        summary["images"] += len(images)
        for image in images:
            if not labels_of.get(image["id"]):
                summary["skipped_no_instance"] += 1
                continue
            if not captions_of.get(image["id"]):
                summary["skipped_no_caption"] += 1
                continue
            item = len(paths)
            paths.append(f"{subset}{year}/{image['file_name']}")
            rows.append(sorted(labels_of[image["id"]]))
            texts.extend(captions_of[image["id"]])
            owners.extend([item] * len(captions_of[image["id"]]))
    if not paths:
        raise CmhashError(f"{root}: no image has both an object instance and a caption.")
    summary["items"], summary["captions"] = len(paths), len(texts)
    check_images_exist(root, paths, lambda i: f"{root}: item {i}", progress)
    return SourceData(labels=multi_hot(rows, len(label_names)), label_names=label_names, texts=texts,
                      text_item=np.array(owners, dtype=np.int64), image_paths=paths, image_root=str(root),
                      summary=summary)


def expected(dataset: DatasetSettings, summary: dict[str, int]) -> dict[str, int]:
    """80 categories; 122,218 items when the whole of train+val was read."""
    full = sorted(dataset.options.subsets) == ["train", "val"] and summary.get("images") == FULL_TRAIN_VAL["images"]
    return {"labels": N_CATEGORIES, **({"items": FULL_TRAIN_VAL["items"]} if full else {})}
