"""The settings of a dataset (params.yaml's ``dataset`` section), typed: which source, where its
files are, the split and its seed, the pixel limit, and every source's own options.

Each source declares its options once, in its module (``Options``); :data:`DatasetSettings` adds
one field per registered source (:data:`cmhash.datasets.SOURCES`), named as ``dataset.name``
names it, with those options' defaults. A source reads its own as ``dataset.options``.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, create_model, field_validator

from cmhash.datasets import SOURCES
from cmhash.datasets.source import MAX_IMAGE_PIXELS
from cmhash.datasets.splits import parse_split
from cmhash.errors import CmhashError
from cmhash.settings import Section, Seed


class DatasetBase(Section):
    """The keys every source shares; :data:`DatasetSettings` adds each source's options."""

    name: str
    seed: Seed = 0                 # the split's draw (and the built-in dataset's generator)
    root: str | None = None        # the folder with the source's files (every source but the built-in one)
    # 1 Gpx at most: decoding one such RGB image takes 3 GB
    max_image_pixels: Annotated[int, Field(ge=1, le=1_000_000_000)] = MAX_IMAGE_PIXELS
    split: str | dict[str, int | str] | None = None  # a protocol's name or the sizes (cmhash.datasets.splits)

    @property
    def options(self) -> Section:
        """The options of the source that ``name`` picks (``dataset.<name>``)."""
        return getattr(self, self.name)

    @field_validator("split")
    @classmethod
    def _split_is_a_protocol_or_sizes(cls, value, info):
        name = info.data.get("name", "builtin")
        try:
            parse_split(value, 0, getattr(SOURCES.load(name), "DEFAULT_SPLIT", None))
        except CmhashError as err:
            raise ValueError(str(err).removeprefix("params.yaml: ")) from None
        return value


DatasetSettings = create_model(
    "DatasetSettings", __base__=DatasetBase, name=(Literal[tuple(SOURCES)], ...),
    **{name: (SOURCES.load(name).Options, SOURCES.load(name).Options()) for name in SOURCES})
