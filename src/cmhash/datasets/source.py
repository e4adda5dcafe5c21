"""What a dataset source hands to the prepare stage, and the helpers every source shares.

Each source is one module of :mod:`cmhash.datasets` with two functions::

    build(dataset: DatasetSettings, progress: bool) -> SourceData      # read the user's files
    expected(dataset: DatasetSettings, summary: dict) -> dict[str, int]  # what validate checks for this source

``dataset`` is the dataset's settings (:mod:`cmhash.datasets.settings`); a source's own options
are ``dataset.options``, which the module declares, with their defaults, as a schema class
``Options``. ``expected`` may return ``labels`` (label count), ``items`` (pairs) and ``vocabulary``
(bag-of-words width) where the source defines them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from cmhash.errors import CmhashError

if TYPE_CHECKING:
    from cmhash.datasets.settings import DatasetSettings


class PixelArray(Protocol):
    """(N, H, W, 3) uint8 pixels that can be sliced along N (a numpy array or a lazy reader)."""

    shape: tuple[int, ...]

    def __getitem__(self, rows: slice) -> np.ndarray: ...


@dataclass
class SourceData:
    """One source read into memory (pixels may stay lazy), before the split is drawn.

    ``summary`` counts what was read, kept and skipped (by reason); it is stored in the prepared
    file and shown by prepare and validate.
    """

    labels: np.ndarray
    label_names: list[str]
    texts: list[str]
    text_item: np.ndarray
    summary: dict[str, int]
    images: PixelArray | None = None
    image_paths: list[str] | None = None
    image_root: str | None = None
    bag_of_words: np.ndarray | None = None
    vocabulary: list[str] | None = None


def source_root(dataset: DatasetSettings) -> Path:
    """``dataset.root``, which must be an existing folder."""
    if not dataset.root:
        raise CmhashError(f"params.yaml: dataset.root must name the folder with the {dataset.name} files.")
    root = Path(dataset.root).expanduser().resolve()
    if not root.is_dir():
        raise CmhashError(f"dataset.root {root} is not a folder; set dataset.root to where you put the "
                          f"{dataset.name} files (docs/data.md).")
    return root


MAX_IMAGE_PIXELS = 89_478_485  # PIL's default limit; dataset.max_image_pixels changes it


def too_many_pixels(path: Path | str, where: str, limit: int, pixels: int | BaseException | None = None) -> str:
    """The message for an image over the pixel limit ``limit`` (``dataset.max_image_pixels``);
    ``pixels`` is the count, or PIL's DecompressionBombError, which states it."""
    if isinstance(pixels, BaseException):
        pixels = pixels_in(pixels)
    size = f"{pixels:,} pixels" if pixels is not None else "too many pixels"
    return (f"{where}: image {path} has {size}, more than dataset.max_image_pixels ({limit:,}), the limit "
            "kept against decompression bombs; if the image is genuine, raise dataset.max_image_pixels in params.yaml.")


def pixels_in(error: BaseException) -> int | None:
    """The pixel count PIL's DecompressionBombError states ("Image size (N pixels) exceeds ...")."""
    import re

    found = re.search(r"\((\d+) pixels\)", str(error))
    return int(found[1]) if found else None


def quiet_about_bombs() -> None:
    """PIL warns about images between once and twice its limit; cmhash refuses them instead
    (:func:`check_pixels`), so the warning would only repeat it."""
    import warnings

    from PIL import Image

    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def check_pixels(image, max_pixels: int, path: Path | str, where: str) -> None:
    """Refuse an opened (not yet decoded) PIL image with more than ``max_pixels`` pixels. PIL itself
    refuses only above twice its limit (it merely warns between 1x and 2x), so the limit is checked
    here, from the header, before any pixel is decoded."""
    width, height = image.size
    if width * height > max_pixels:
        raise CmhashError(too_many_pixels(path, where, max_pixels, width * height))


def check_images_exist(root: Path, paths: list[str], describe: Any, progress: bool) -> None:
    """Stop with the item's name when an image file is missing (``describe(i)`` names item i)."""
    from tqdm import tqdm

    for i, path in enumerate(tqdm(paths, desc="checking image files", unit="image", disable=not progress)):
        if not (root / path).is_file():
            raise CmhashError(f"{describe(i)}: image {root / path} does not exist; put the images where "
                              "docs/data.md says or fix dataset.root.")


def multi_hot(rows: list[list[int]], n_labels: int) -> np.ndarray:
    """(N, C) uint8 labels from each item's list of label columns."""
    labels = np.zeros((len(rows), n_labels), dtype=np.uint8)
    for i, columns in enumerate(rows):
        labels[i, columns] = 1
    return labels
