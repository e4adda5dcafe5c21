"""Searching the indexes: what ``cmhash search`` and ``cmhash serve`` share.

A :class:`SearchService` loads the items catalog, each index (memory-mapped codes and its model)
and the encoder once per process, checks every request, and answers with ranked items. Bad input
raises :class:`~cmhash.search.query.SearchError` with a message and an HTTP status.
"""

from __future__ import annotations

import io
import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cmhash.layout import Layout
from cmhash.search.query import SearchError, check_recipe, encode_image, encode_pair, encode_text

MAX_UPLOAD_BYTES = 10 * 1024 * 1024
DEFAULT_K = 10


@dataclass
class LoadedIndex:
    name: str
    info: dict[str, Any]
    ids: np.ndarray
    codes: dict[str, Any]   # "images" / "texts" / "pairs" -> HammingIndex
    model: Any


def parse_k(value: Any) -> int:
    """``k`` from a command line or a URL: a positive whole number."""
    try:
        k = int(str(value).strip())
    except ValueError:
        raise SearchError(f"k must be a positive whole number, got {value!r}.") from None
    if k < 1:
        raise SearchError(f"k must be a positive whole number, got {value!r}.")
    return k


def read_image(data: bytes, name: str = "the upload"):
    """An RGB PIL image from file bytes, or a clear error (not an image; too many pixels)."""
    from PIL import Image, UnidentifiedImageError

    if len(data) > MAX_UPLOAD_BYTES:
        raise SearchError(f"{name} is {len(data):,} bytes; images up to {MAX_UPLOAD_BYTES:,} bytes are accepted.", 413)
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.convert("RGB")
    except Image.DecompressionBombError:
        raise SearchError(f"{name} has more pixels than {Image.MAX_IMAGE_PIXELS:,}, PIL's limit against decompression "
                          "bombs; send a smaller image.", 413) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise SearchError(f"{name} is not an image PIL can read (JPEG, PNG, WebP, ...).", 415) from None


class SearchService:
    def __init__(self, root: str | Path, params: dict[str, Any]):
        self.layout = Layout(Path(root))
        self.params = params
        self._items = None
        self._encoder = None
        self._indexes: dict[tuple[str, int], LoadedIndex] = {}
        self._lock = threading.Lock()  # loading is done once; searches themselves run concurrently

    # ---- what there is
    def available(self) -> list[dict[str, Any]]:
        """Every index built under data/index, with its mAP@all and mAP@50 from the metrics files."""
        found = []
        for info_path in sorted(self.layout.root.glob("data/index/*/index.json")):
            info = json.loads(info_path.read_text())
            metrics_path = self.layout.metrics(info["method"], info["bits"])
            scores = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
            found.append({"method": info["method"], "bits": info["bits"], "fused": info["fused"], "items": info["items"],
                          "map": {direction: {key: values.get(key) for key in ("map_all", "map_50")}
                                  for direction, values in scores.items() if isinstance(values, dict)}})
        return sorted(found, key=lambda entry: (entry["method"], entry["bits"]))

    def _names(self) -> str:
        return ", ".join(f"{entry['method']} {entry['bits']}" for entry in self.available()) or "none (run dvc repro)"

    @property
    def items(self):
        from cmhash.search.index_files import Items

        with self._lock:
            if self._items is None:
                self._items = Items.read(self.layout.items_dir())
        return self._items

    def _encoder_for(self):
        from cmhash.encoders import build_encoder

        with self._lock:
            if self._encoder is None:
                self._encoder = build_encoder(self.params["encode"])
        return self._encoder

    def index(self, method: str, bits: Any) -> LoadedIndex:
        from cmhash.methods import load_model
        from cmhash.search.index_files import IndexFiles

        try:
            bits = int(str(bits))
        except ValueError:
            raise SearchError(f"bits must be a whole number, got {bits!r}; indexes here: {self._names()}.") from None
        folder = self.layout.index_dir(str(method), bits)
        if not (folder / "index.json").is_file():
            raise SearchError(f"there is no index for method {method!r} at {bits} bits; indexes here: {self._names()}.", 404)
        with self._lock:
            if (method, bits) not in self._indexes:
                files = IndexFiles.read(folder)
                kinds = ("pairs",) if files.info["fused"] else ("images", "texts")
                codes = {kind: files.codes(kind) for kind in kinds}
                for index in codes.values():  # load the compiled kernel now, not during the first query
                    index.search(np.zeros((1, index.bits), np.int8) + 1, 1)
                self._indexes[method, bits] = LoadedIndex(f"{method}-{bits}", files.info, files.ids, codes,
                                                          load_model(folder / "model.pt", self.params["encode"]["device"]))
        return self._indexes[method, bits]

    # ---- searching
    def search(self, method: str, bits: Any, k: Any = DEFAULT_K, text: str | None = None,
               image: bytes | None = None, image_name: str = "the upload") -> dict[str, Any]:
        """The ``k`` nearest retrieval items of a text (searching the images), an image (searching
        the texts) or, for fused methods, an image-text pair."""
        k = parse_k(k)
        if text is not None and not text.strip():
            raise SearchError("the query text is empty; type what to search for.")
        if text is None and image is None:
            raise SearchError("give a text or an image to search with.")
        loaded = self.index(method, bits)
        picture = read_image(image, image_name) if image is not None else None
        encoder = self._encoder_for()
        check_recipe(loaded.name, loaded.info["encoder"], encoder)
        started = time.perf_counter()  # the query's own latency: models load once per process
        if loaded.info["fused"]:
            if text is None or picture is None:
                raise SearchError(f"{method} makes one code per image-text pair (fused codes), so a query is a pair too: "
                                  "give both a text and an image.", 422)
            query, kind, direction = encode_pair(encoder, loaded.model, loaded.info["encoder"], picture, text), "pairs", "pair→pair"
        elif text is not None and picture is not None:
            raise SearchError("give a text (to find images) or an image (to find texts), not both; only fused methods "
                              "such as clipmh take a pair.")
        elif text is not None:
            query, kind, direction = encode_text(encoder, loaded.model, loaded.info["encoder"], text), "images", "text→image"
        else:
            query, kind, direction = encode_image(encoder, loaded.model, picture), "texts", "image→text"
        encoded = time.perf_counter()
        codes = loaded.codes[kind]
        notes = list(query.notes)
        if k > len(codes):
            notes.append(f"k={k} is more than the {len(codes):,} indexed items; all of them are returned")
        distances, rows = codes.search(query.code, min(k, len(codes)))
        searched = time.perf_counter()
        results = [{"rank": rank + 1, "distance": int(distance), **self.items.describe(int(loaded.ids[row]))}
                   for rank, (distance, row) in enumerate(zip(distances[0], rows[0]))]
        return {"method": loaded.info["method"], "bits": loaded.info["bits"], "direction": direction, "text": text,
                "k": k, "results": results, "notes": notes,
                "milliseconds": {"encode": round((encoded - started) * 1000, 2),
                                 "search": round((searched - encoded) * 1000, 3),
                                 "total": round((time.perf_counter() - started) * 1000, 2)}}

    def item(self, item: Any) -> dict[str, Any]:
        try:
            item = int(str(item))
        except ValueError:
            raise SearchError(f"an item id is a whole number, got {item!r}.") from None
        if not 0 <= item < len(self.items):
            raise SearchError(f"there is no item {item}; ids run from 0 to {len(self.items) - 1}.", 404)
        return self.items.describe(item)

    def thumbnail(self, item: Any) -> Path:
        return self.items.thumbnail(self.item(item)["id"])
