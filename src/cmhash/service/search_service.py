"""Searching the indexes: what ``cmhash search`` and ``cmhash serve`` share.

A :class:`SearchService` knows the indexes that exist (the folders ``data/index/<method>-<bits>/``,
listed again when ``data/index`` changes), loads the items catalog, each index it is asked for
(checked before it is trusted: :class:`~cmhash.search.index_files.IndexFiles`) and the encoder once
per process, checks every request, and answers with ranked items. A request names an index by
method and length; both are looked up among the indexes that exist, never joined into a path.
Bad input raises :class:`~cmhash.search.query.SearchError` with a message and an HTTP status.

:meth:`SearchService.search_many` answers several requests together: their texts go through the
encoder as one batch, their images as another, and each index searches all of its queries at once.
This is how the server keeps up with concurrent clients (:mod:`cmhash.service.batching`); one
request alone is the same call with a batch of one.
"""

from __future__ import annotations

import io
import json
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cmhash.errors import CmhashError, quote
from cmhash.search.query import SearchError, check_recipe, query_features, text_notes

if TYPE_CHECKING:
    from cmhash.encoders import EncoderSpec

MAX_UPLOAD_BYTES = 10 * 1024 * 1024
MAX_K = 10_000
MAX_TEXT_CHARS = 10_000
DEFAULT_K = 10
_INDEX_FOLDER = re.compile(r"^(?P<method>[a-z][a-z0-9_]*)-(?P<bits>[1-9][0-9]{0,2})$")


@dataclass
class LoadedIndex:
    name: str
    info: dict[str, Any]
    ids: np.ndarray
    codes: dict[str, Any]   # "images" / "texts" / "pairs" -> HammingIndex
    model: Any
    stamp: tuple[int, int]  # index.json's (inode, mtime): a rebuilt index is loaded again


@dataclass
class Request:
    """One search: the index (method, bits), how many results, and a text, an image (file bytes) or
    both (fused methods)."""

    method: str
    bits: Any
    k: Any = DEFAULT_K
    text: str | None = None
    image: bytes | None = None
    image_name: str = "the upload"


@dataclass
class _Query:
    request: Request
    loaded: LoadedIndex
    k: int
    kind: str               # which codes it searches: images, texts or pairs
    direction: str
    picture: Any = None
    notes: list[str] = field(default_factory=list)


def parse_k(value: Any) -> int:
    """``k`` from a command line or a URL: a whole number from 1 to :data:`MAX_K`."""
    try:
        k = int(str(value).strip())
    except ValueError:
        raise SearchError(f"k must be a whole number from 1 to {MAX_K:,}, got {quote(value)}.") from None
    if not 1 <= k <= MAX_K:
        raise SearchError(f"k must be a whole number from 1 to {MAX_K:,}, got {k}.")
    return k


def read_image(data: bytes, name: str, max_pixels: int):
    """An RGB PIL image from file bytes, or a clear error: too large a file, more than ``max_pixels``
    pixels (checked from the header, before any pixel is decoded), not an image."""
    from PIL import Image, UnidentifiedImageError

    from cmhash.datasets.source import pixels_in, quiet_about_bombs

    if len(data) > MAX_UPLOAD_BYTES:
        raise SearchError(f"{name} is {len(data):,} bytes; images up to {MAX_UPLOAD_BYTES:,} bytes are accepted.", 413)

    def too_many(pixels: int | None) -> SearchError:
        count = f"{pixels:,} pixels" if pixels is not None else "too many pixels"
        return SearchError(f"{name} has {count}, more than dataset.max_image_pixels ({max_pixels:,}); send a smaller "
                           "image.", 413)

    Image.MAX_IMAGE_PIXELS = max_pixels
    quiet_about_bombs()  # refused below, from the header
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if width * height > max_pixels:  # PIL alone refuses only above twice its limit
                raise too_many(width * height)
            return image.convert("RGB")
    except Image.DecompressionBombError as err:
        raise too_many(pixels_in(err)) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise SearchError(f"{name} is not an image PIL can read (JPEG, PNG, WebP, ...).", 415) from None


@dataclass(frozen=True)
class ServiceSettings:
    """What the service reads, as plain values (``cmhash search`` and ``cmhash serve`` fill them from
    params.yaml and the paths of dvc.yaml)."""

    index_root: Path            # one <method>-<bits>/ folder per index (data/index)
    items_root: Path            # the items catalog: captions, labels, thumbnails (data/items)
    metrics_root: Path          # <method>-<bits>.json: the scores the list of indexes shows (metrics)
    encoder: EncoderSpec        # the encoder of queries: the one the features were encoded with
    max_image_pixels: int       # a query image above this is refused (413)
    map_ks: tuple[int, ...] = ()  # the mAP@k shown besides mAP@all: those the evaluation computes


class SearchService:
    def __init__(self, settings: ServiceSettings):
        self.settings = settings
        self.max_pixels = int(settings.max_image_pixels)
        self._items = None
        self._encoder = None
        self._catalog: dict[tuple[str, int], Path] = {}
        self._catalog_stamp: int | None = None
        self._indexes: dict[tuple[str, int], LoadedIndex] = {}
        self._lock = threading.RLock()  # loading is done once; searches themselves run concurrently

    # ---- what there is
    def catalog(self) -> dict[tuple[str, int], Path]:
        """``{(method, bits): folder}`` of every index folder under ``data/index`` (read again when
        the folder changes). Only real folders named ``<method>-<bits>`` of a known method count."""
        from cmhash.methods.registry import METHODS

        root = self.settings.index_root
        try:
            stamp = os.stat(root).st_mtime_ns
        except FileNotFoundError:
            stamp = None
        with self._lock:
            if stamp != self._catalog_stamp:
                found = {}
                for folder in sorted(root.iterdir()) if stamp is not None else []:
                    match = _INDEX_FOLDER.match(folder.name)
                    if match and match["method"] in METHODS and folder.is_dir() and not folder.is_symlink():
                        found[match["method"], int(match["bits"])] = folder
                self._catalog, self._catalog_stamp = found, stamp
                self._indexes = {key: value for key, value in self._indexes.items() if key in found}
            return dict(self._catalog)

    def available(self) -> list[dict[str, Any]]:
        """Every index in :meth:`catalog`, with its mAP@all and mAP@k (``map_ks``) from the metrics files; an index
        whose description cannot be read is listed with the reason instead."""
        found = []
        for (method, bits), folder in sorted(self.catalog().items()):
            entry: dict[str, Any] = {"method": method, "bits": bits}
            try:
                info = json.loads((folder / "index.json").read_text(encoding="utf-8"))
                entry.update({"fused": bool(info["fused"]), "items": int(info["items"])})
            except (OSError, ValueError, KeyError, TypeError):
                entry["error"] = f"{folder / 'index.json'} is missing or damaged; rebuild it with `dvc repro index`."
            entry["map"] = self._scores(method, bits)
            found.append(entry)
        return found

    def _scores(self, method: str, bits: int) -> dict[str, dict[str, float | None]]:
        try:
            scores = json.loads((self.settings.metrics_root / f"{method}-{bits}.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        if not isinstance(scores, dict):
            return {}
        return {direction: {key: values.get(key) if isinstance(values.get(key), (int, float)) else None
                            for key in ["map_all", *(f"map_{k}" for k in self.settings.map_ks)]}
                for direction, values in scores.items() if isinstance(values, dict)}

    def _names(self) -> str:
        return ", ".join(f"{method} {bits}" for method, bits in sorted(self.catalog())) or "none (run dvc repro)"

    @property
    def items(self):
        from cmhash.search.index_files import Items

        with self._lock:
            if self._items is None:
                self._items = Items.read(self.settings.items_root)
        return self._items

    def _encoder_for(self):
        from cmhash.encoders import build_encoder

        with self._lock:
            if self._encoder is None:
                self._encoder = build_encoder(self.settings.encoder)
        return self._encoder

    def index(self, method: Any, bits: Any) -> LoadedIndex:
        """The index of ``method`` at ``bits``, if one exists (404 naming the ones that do), checked
        and loaded once (again only when it was rebuilt)."""
        from cmhash.search.index_files import IndexFiles, kinds_of

        try:
            bits = int(str(bits).strip())
        except ValueError:
            raise SearchError(f"bits must be a whole number, got {quote(bits)}; indexes here: {self._names()}.") from None
        folder = self.catalog().get((str(method), bits))
        if folder is None:
            raise SearchError(f"there is no index for method {quote(str(method), 40)} at {bits} bits; indexes here: "
                              f"{self._names()}.", 404)
        try:
            info = os.stat(folder / "index.json")
            stamp = (info.st_ino, info.st_mtime_ns)
        except OSError:
            stamp = (0, 0)
        key = (str(method), bits)
        with self._lock:
            loaded = self._indexes.get(key)
            if loaded is None or loaded.stamp != stamp:
                try:
                    files = IndexFiles.read(folder, key[0], bits, len(self.items))
                    codes = {kind: files.codes(kind) for kind in kinds_of(files.info["fused"])}
                    model = files.model(self.settings.encoder.device)
                except SearchError:
                    raise
                except CmhashError as err:
                    raise SearchError(str(err), 503) from None
                for index in codes.values():  # load the compiled kernel now, not during the first query
                    index.search(np.zeros((1, index.bits), np.int8) + 1, 1)
                loaded = LoadedIndex(f"{key[0]}-{bits}", files.info, files.ids, codes, model, stamp)
                self._indexes[key] = loaded
        return loaded

    # ---- searching
    def search(self, method: str, bits: Any, k: Any = DEFAULT_K, text: str | None = None,
               image: bytes | None = None, image_name: str = "the upload") -> dict[str, Any]:
        """The ``k`` nearest retrieval items of a text (searching the images), an image (searching
        the texts) or, for fused methods, an image-text pair."""
        answer = self.search_many([Request(method, bits, k, text, image, image_name)])[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    def search_many(self, requests: list[Request]) -> list[dict[str, Any] | SearchError]:
        """Answer several requests together (see the module docstring): each gets its own answer, or
        its own error."""
        answers: list[dict[str, Any] | SearchError | None] = [None] * len(requests)
        queries: dict[int, _Query] = {}
        for i, request in enumerate(requests):
            try:
                queries[i] = self._check(request)
            except SearchError as err:
                answers[i] = err
        if queries:
            started = time.perf_counter()  # the query's own latency: models load once per process
            encoder = self._encoder_for()
            texts = [i for i, query in queries.items() if query.request.text is not None]
            pictures = [i for i, query in queries.items() if query.picture is not None]
            text_features = dict(zip(texts, encoder.encode_texts([queries[i].request.text for i in texts]))) if texts else {}
            image_features = dict(zip(pictures, encoder.encode_images([queries[i].picture for i in pictures]))) if pictures else {}
            encoded = time.perf_counter()
            for group in self._by_index_and_kind(queries):
                self._search_group(group, text_features, image_features, answers, started, encoded)
        return answers  # type: ignore[return-value]

    def _check(self, request: Request) -> _Query:
        k = parse_k(request.k)
        text = request.text
        if text is not None and not text.strip():
            raise SearchError("the query text is empty; type what to search for.")
        if text is not None and len(text) > MAX_TEXT_CHARS:
            raise SearchError(f"the query text has {len(text):,} characters; at most {MAX_TEXT_CHARS:,} are accepted.", 413)
        if text is None and request.image is None:
            raise SearchError("give a text or an image to search with.")
        loaded = self.index(request.method, request.bits)
        picture = read_image(request.image, request.image_name, self.max_pixels) if request.image is not None else None
        check_recipe(loaded.name, loaded.info["encoder"], self._encoder_for())
        notes = text_notes(self._encoder_for(), loaded.info["encoder"], text) if text is not None else []
        if loaded.info["fused"]:
            if text is None or picture is None:
                raise SearchError(f"{loaded.info['method']} makes one code per image-text pair (fused codes), so a query "
                                  "is a pair too: give both a text and an image.", 422)
            kind, direction = "pairs", "pair→pair"
        elif text is not None and picture is not None:
            raise SearchError("give a text (to find images) or an image (to find texts), not both; only fused methods "
                              "such as clipmh take a pair.")
        elif text is not None:
            kind, direction = "images", "text→image"
        else:
            kind, direction = "texts", "image→text"
        return _Query(request, loaded, k, kind, direction, picture, notes)

    @staticmethod
    def _by_index_and_kind(queries: dict[int, _Query]) -> list[list[tuple[int, _Query]]]:
        groups: dict[tuple[str, str], list[tuple[int, _Query]]] = {}
        for i, query in queries.items():
            groups.setdefault((query.loaded.name, query.kind), []).append((i, query))
        return list(groups.values())

    def _search_group(self, group, text_features, image_features, answers, started, encoded) -> None:
        """The queries of one index and kind: their codes in one call of the index's model, then one
        search for all of them, each answer cut to its own k."""
        loaded, kind = group[0][1].loaded, group[0][1].kind
        images = np.stack([image_features[i] for i, _ in group]) if kind in ("texts", "pairs") else None
        texts = np.stack([text_features[i] for i, _ in group]) if kind in ("images", "pairs") else None
        codes_of_queries = query_features(loaded.model, images, texts)
        codes = loaded.codes[kind]
        k_max = min(max(query.k for _, query in group), len(codes))
        distances, rows = codes.search(codes_of_queries, k_max)
        searched = time.perf_counter()
        for position, (i, query) in enumerate(group):
            notes = list(query.notes)
            if query.k > len(codes):
                notes.append(f"k={query.k} is more than the {len(codes):,} indexed items; all of them are returned")
            k = min(query.k, len(codes))
            results = [{"rank": rank + 1, "distance": int(distance), **self.items.describe(int(loaded.ids[row]))}
                       for rank, (distance, row) in enumerate(zip(distances[position][:k], rows[position][:k]))]
            answers[i] = {"method": loaded.info["method"], "bits": loaded.info["bits"], "direction": query.direction,
                          "text": query.request.text, "k": query.k, "results": results, "notes": notes,
                          "batch": len(group),
                          "milliseconds": {"encode": round((encoded - started) * 1000, 2),
                                           "search": round((searched - encoded) * 1000, 3),
                                           "total": round((time.perf_counter() - started) * 1000, 2)}}

    # ---- items
    def item(self, item: Any) -> dict[str, Any]:
        try:
            item = int(str(item))
        except ValueError:
            raise SearchError(f"an item id is a whole number, got {quote(item)}.") from None
        if not 0 <= item < len(self.items):
            raise SearchError(f"there is no item {item}; ids run from 0 to {len(self.items) - 1}.", 404)
        return self.items.describe(item)

    def thumbnail(self, item: Any) -> Path:
        found = self.items.thumbnail(self.item(item)["id"])
        if found is None:
            raise SearchError(f"item {item} has no thumbnail in {self.settings.items_root / 'images'}; rebuild the "
                              "catalog with `dvc repro items`.", 404)
        return found
