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

**One version.** An index records the md5 of the items catalog it was built with, and is loaded
only with that catalog: each loaded index holds its own, so an answer's ids and captions always come
from one version, even while ``dvc repro`` rebuilds the catalog (minutes before the index). Every
file is read once and loaded from what was checked. While a rebuild is in progress (DVC holds a lock
in this project, or a folder is being written), a version loaded before is served until the new one
is complete, and one never loaded is answered 503 with ``Retry-After``.

**Bounded memory.** An image query is decoded and turned into the model's input (a few hundred KB)
at once by :meth:`SearchService.prepare_image`, not when its batch runs; the bytes a decode holds
(up to :data:`DECODE_BYTES_PER_PIXEL` a pixel) are reserved first from an :class:`ImageMemory`,
which answers 503 with ``Retry-After`` when the images held would pass its limit.
"""

from __future__ import annotations

import io
import json
import os
import re
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cmhash.errors import CmhashError, quote
from cmhash.search.query import SearchError, check_recipe, query_features, text_notes

if TYPE_CHECKING:
    from cmhash.encoders import EncoderSpec
    from cmhash.search.index_files import Items

MAX_UPLOAD_BYTES = 10 * 1024 * 1024
MAX_K = 10_000
MAX_TEXT_CHARS = 10_000
DEFAULT_K = 10
RETRY_AFTER_SECONDS = 2  # what a 503 asks a client to wait when the same request will be served later
# PIL holds a decoded pixel in 1 to 4 bytes, and its RGB copy in 4 more (PIL's RGB pixels are 32-bit):
# what decoding an image may hold at once, reserved before the first pixel is decoded.
DECODE_BYTES_PER_PIXEL = 8
IMAGE_MEMORY_HEADROOM = 128 * 1024 * 1024  # room for ordinary uploads beside one image at the pixel limit
_INDEX_FOLDER = re.compile(r"^(?P<method>[a-z][a-z0-9_]*)-(?P<bits>[1-9][0-9]{0,2})$")
# a file or folder that cmhash.atomic is writing (".NAME.<12 hex digits>.tmp"): a rebuild in progress
_BEING_WRITTEN = re.compile(r"^\..+\.[0-9a-f]{12}\.tmp$")


@dataclass
class LoadedIndex:
    name: str
    info: dict[str, Any]
    ids: np.ndarray
    codes: dict[str, Any]   # "images" / "texts" / "pairs" -> HammingIndex
    model: Any
    stamp: tuple[int, int, int]  # index.json's (inode, mtime, size): a rebuilt index is loaded again
    items: Items            # the catalog this index was built with (the md5 index.json records)


@dataclass
class PreparedImage:
    """An image query as the encoder's input batch of one (decoded, resized, normalised), and its size."""

    batch: Any
    nbytes: int


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
    picture: PreparedImage | None = None  # the image already prepared (the server does it on arrival)


@dataclass
class _Query:
    request: Request
    loaded: LoadedIndex
    k: int
    kind: str               # which codes it searches: images, texts or pairs
    direction: str
    picture: PreparedImage | None = None
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


@contextmanager
def open_image(data: bytes, name: str, max_pixels: int):
    """A PIL image opened from file bytes, its header read and nothing decoded yet, or a clear error:
    too large a file, more than ``max_pixels`` pixels (checked from the header), not an image."""
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
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as err:
        raise too_many(pixels_in(err)) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise SearchError(f"{name} is not an image PIL can read (JPEG, PNG, WebP, ...).", 415) from None
    with image:
        width, height = image.size
        if width * height > max_pixels:  # PIL alone refuses only above twice its limit
            raise too_many(width * height)
        yield image


def _decoded_rgb(image, name: str):
    """The pixels of an opened image, in RGB (the image itself when it is RGB already: no copy)."""
    from PIL import Image

    try:
        image.load()
        return image if image.mode == "RGB" else image.convert("RGB")
    except Image.DecompressionBombError:
        raise SearchError(f"{name} has more pixels than dataset.max_image_pixels; send a smaller image.", 413) from None
    except (OSError, SyntaxError, ValueError):
        raise SearchError(f"{name} is not an image PIL can read (JPEG, PNG, WebP, ...).", 415) from None


def image_memory_limit(max_pixels: int) -> int:
    """The bytes of images a server holds at once: one image at the pixel limit being decoded (and
    its upload), and room for ordinary ones beside it."""
    return max_pixels * DECODE_BYTES_PER_PIXEL + MAX_UPLOAD_BYTES + IMAGE_MEMORY_HEADROOM


class ImageMemory:
    """The bytes of query images held at once (uploads being read, images being decoded, model
    inputs waiting for their batch), kept under ``limit``: what would pass it is refused with a
    503 and ``Retry-After`` before anything is allocated."""

    def __init__(self, limit: int):
        self.limit = int(limit)
        self.held = 0
        self._lock = threading.Lock()

    def reserve(self, nbytes: int) -> None:
        with self._lock:
            if self.held + nbytes > self.limit:
                raise SearchError(f"the server is holding {self.held / 2**20:,.0f} MB of query images, near its limit of "
                                  f"{self.limit / 2**20:,.0f} MB; retry in a moment.", 503, retry_after=1)
            self.held += nbytes

    def release(self, nbytes: int) -> None:
        with self._lock:
            self.held -= nbytes

    @contextmanager
    def holding(self, nbytes: int):
        self.reserve(nbytes)
        try:
            yield
        finally:
            self.release(nbytes)


def _stamp(path: Path) -> tuple[int, int, int] | None:
    """(inode, mtime, size) of the file at ``path`` (not following a link), ``None`` when there is
    none: a file replaced by a rebuild has another."""
    from cmhash.search.index_files import file_stamp

    try:
        return file_stamp(os.lstat(path))
    except OSError:
        return None


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


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
        self._items: Items | None = None  # the catalog as last read from disk
        self._encoder = None
        self._catalog: dict[tuple[str, int], Path] = {}
        self._catalog_stamp: int | None = None
        self._indexes: dict[tuple[str, int], LoadedIndex] = {}
        self._dvc_root: Path | None | bool = False  # not looked for yet
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
            return dict(self._catalog)

    def available(self) -> list[dict[str, Any]]:
        """Every index in :meth:`catalog` (and, during a rebuild, those still served from memory),
        with its mAP@all and mAP@k (``map_ks``) from the metrics files; an index whose description
        cannot be read is listed with the reason instead."""
        found = []
        on_disk = self.catalog()
        with self._lock:
            held = {key: loaded for key, loaded in self._indexes.items() if key not in on_disk}
        for method, bits in sorted({*on_disk, *held}):
            entry: dict[str, Any] = {"method": method, "bits": bits}
            try:
                info = held[method, bits].info if (method, bits) in held else \
                    json.loads((on_disk[method, bits] / "index.json").read_text(encoding="utf-8"))
                entry.update({"fused": bool(info["fused"]), "items": int(info["items"])})
            except (OSError, ValueError, KeyError, TypeError):
                entry["error"] = f"{on_disk[method, bits] / 'index.json'} is missing or damaged; rebuild it with `dvc repro index`."
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

    # ---- rebuilds
    def rebuild_in_progress(self) -> bool:
        """Whether the indexes or the catalog may be half rebuilt now: a DVC command of this project
        holds a lock (``dvc repro`` removes a stage's outputs, then its command writes them again), or
        a folder of ``data/`` or ``data/index`` is being written (cmhash.atomic's temporaries)."""
        for folder in (self.settings.index_root, self.settings.items_root.parent):
            try:
                if any(_BEING_WRITTEN.match(name) for name in os.listdir(folder)):
                    return True
            except OSError:
                continue
        return self._dvc_holds_a_lock()

    def _dvc_holds_a_lock(self) -> bool:
        """Whether a live process is listed in DVC's lock file of the project holding the indexes
        (``.dvc/tmp/rwlock``: the files each running stage reads and writes)."""
        if self._dvc_root is False:
            self._dvc_root = next((folder for folder in [self.settings.index_root, *self.settings.index_root.parents]
                                   if (folder / ".dvc").is_dir()), None)
        if self._dvc_root is None:
            return False
        try:
            locks = json.loads((self._dvc_root / ".dvc" / "tmp" / "rwlock").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        holders = [*(locks.get("write") or {}).values(), *(info for infos in (locks.get("read") or {}).values() for info in infos)] \
            if isinstance(locks, dict) else []
        return any(isinstance(holder, dict) and _alive(holder.get("pid")) for holder in holders)

    def _being_rebuilt(self, what: str) -> SearchError:
        return SearchError(f"{what} is being rebuilt (dvc repro is running); retry in a few seconds.", 503,
                           retry_after=RETRY_AFTER_SECONDS)

    # ---- the items catalog
    @property
    def items(self) -> Items:
        """The items catalog as it is on disk now (read again when ``items.h5`` changes); while a
        rebuild is in progress, the one read last, until the new one is complete."""
        with self._lock:
            try:
                return self._read_items()
            except CmhashError as err:
                if not self.rebuild_in_progress():
                    raise SearchError(str(err), 503) from None
                if self._items is None:
                    raise self._being_rebuilt(f"the items catalog {self.settings.items_root}") from None
                return self._items

    def _read_items(self) -> Items:
        """items.h5 as it is now, read again only when it changed."""
        from cmhash.search.index_files import Items

        if self._items is None or self._items.stamp != _stamp(self.settings.items_root / "items.h5"):
            self._items = Items.read(self.settings.items_root)
        return self._items

    def _catalog_of(self, md5: str, index_json: Path) -> Items:
        """The catalog whose items.h5 has this md5 (the one an index was built with): one already
        read, or items.h5 as it is now if it is that version."""
        for items in (self._items, *(loaded.items for loaded in self._indexes.values())):
            if items is not None and items.md5 == md5:
                return items
        current = self._read_items()
        if current.md5 != md5:
            raise CmhashError(f"{index_json}: built with another version of the items catalog than "
                              f"{current.folder / 'items.h5'} (md5 {md5[:12]}..., that file's is {current.md5[:12]}...); "
                              "rebuild the index with `dvc repro index`.")
        return current

    def _encoder_for(self):
        from cmhash.encoders import build_encoder

        with self._lock:
            if self._encoder is None:
                self._encoder = build_encoder(self.settings.encoder)
        return self._encoder

    # ---- the indexes
    def index(self, method: Any, bits: Any) -> LoadedIndex:
        """The index of ``method`` at ``bits``, if one exists (404 naming the ones that do), checked
        and loaded once, with the catalog it was built with (again only when it was rebuilt). While a
        rebuild is in progress, the version loaded before is served until the new one is complete."""
        from cmhash.methods.registry import METHODS

        try:
            bits = int(str(bits).strip())
        except ValueError:
            raise SearchError(f"bits must be a whole number, got {quote(bits)}; indexes here: {self._names()}.") from None
        key = (str(method), bits)
        folder = self.catalog().get(key)
        with self._lock:
            held = self._indexes.get(key)
            stamp = _stamp(folder / "index.json") if folder is not None else None
            if held is not None and stamp == held.stamp:
                return held
            try:
                if folder is None:
                    raise FileNotFoundError
                loaded = self._load(key, folder)
            except (FileNotFoundError, CmhashError) as problem:
                if self.rebuild_in_progress():
                    if held is not None:
                        return held  # the previous version, whole, until the new one is complete
                    if key[0] in METHODS and _INDEX_FOLDER.match(f"{key[0]}-{bits}"):
                        raise self._being_rebuilt(f"the index {key[0]}-{bits}") from None
                self._indexes.pop(key, None)
                if isinstance(problem, SearchError):
                    raise
                if isinstance(problem, CmhashError):
                    raise SearchError(str(problem), 503) from None
                raise SearchError(f"there is no index for method {quote(str(method), 40)} at {bits} bits; indexes here: "
                                  f"{self._names()}.", 404) from None
            self._indexes[key] = loaded
            return loaded

    def require_index(self, method: Any, bits: Any) -> None:
        """The answer :meth:`index` gives an index that is not there (404, or 503 during a rebuild),
        from a look at the folders alone: before an upload is decoded for it."""
        try:
            key = (str(method), int(str(bits).strip()))
        except ValueError:
            key = None
        if key not in self.catalog() and key not in self._indexes:
            self.index(method, bits)  # no folder: nothing to load, it raises (or finds the version held)

    def _load(self, key: tuple[str, int], folder: Path) -> LoadedIndex:
        from cmhash.search.index_files import IndexFiles

        files = IndexFiles.read(folder, *key)
        items = self._catalog_of(files.info["catalog"], folder / "index.json")
        files.check_ids(len(items))
        model = files.model(self.settings.encoder.device)
        for index in files.codes.values():  # load the compiled kernel now, not during the first query
            index.search(np.zeros((1, index.bits), np.int8) + 1, 1)
        return LoadedIndex(f"{key[0]}-{key[1]}", files.info, files.ids, files.codes, model, files.stamp, items)

    # ---- images
    def prepare_image(self, data: bytes, name: str = "the upload", memory: ImageMemory | None = None) -> PreparedImage:
        """An image file as the encoder's input (decoded, resized, normalised: a few hundred KB),
        at once: only that is held while the query waits for its batch. The bytes the decoding holds
        are reserved from ``memory`` first (503 when it is full), from the image's header."""
        encoder = self._encoder_for()
        with open_image(data, name, self.max_pixels) as image:
            with memory.holding(image.width * image.height * DECODE_BYTES_PER_PIXEL) if memory is not None else nullcontext():
                picture = _decoded_rgb(image, name)
                if picture is not image:
                    image.close()  # its pixels are not needed beside the RGB copy (the encoder copies that again)
                batch = encoder.prepare_images([picture])
                del picture
        return PreparedImage(batch, int(batch.element_size() * batch.nelement()))

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
            image_features = dict(zip(pictures, self._embed([queries[i].picture for i in pictures]))) if pictures else {}
            encoded = time.perf_counter()
            for group in self._by_index_and_kind(queries):
                self._search_group(group, text_features, image_features, answers, started, encoded)
        return answers  # type: ignore[return-value]

    def _embed(self, pictures: list[PreparedImage]) -> np.ndarray:
        """The features of prepared images, as one batch through the encoder."""
        import torch

        return self._encoder_for().embed_images(torch.cat([picture.batch for picture in pictures]))

    def _check(self, request: Request) -> _Query:
        k = parse_k(request.k)
        text = request.text
        if text is not None and not text.strip():
            raise SearchError("the query text is empty; type what to search for.")
        if text is not None and len(text) > MAX_TEXT_CHARS:
            raise SearchError(f"the query text has {len(text):,} characters; at most {MAX_TEXT_CHARS:,} are accepted.", 413)
        if text is None and request.image is None and request.picture is None:
            raise SearchError("give a text or an image to search with.")
        loaded = self.index(request.method, request.bits)
        picture = request.picture
        if picture is None and request.image is not None:
            picture = self.prepare_image(request.image, request.image_name)
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
            results = [{"rank": rank + 1, "distance": int(distance), **loaded.items.describe(int(loaded.ids[row]))}
                       for rank, (distance, row) in enumerate(zip(distances[position][:k], rows[position][:k]))]
            answers[i] = {"method": loaded.info["method"], "bits": loaded.info["bits"], "direction": query.direction,
                          "text": query.request.text, "k": query.k, "results": results, "notes": notes,
                          "batch": len(group),
                          "milliseconds": {"encode": round((encoded - started) * 1000, 2),
                                           "search": round((searched - encoded) * 1000, 3),
                                           "total": round((time.perf_counter() - started) * 1000, 2)}}

    # ---- items
    def item(self, item: Any) -> dict[str, Any]:
        items = self.items
        return items.describe(self._item_id(item, items))

    def thumbnail(self, item: Any) -> bytes:
        """The item's thumbnail (JPEG bytes) in the catalog as it is now: only the file that catalog
        recorded, never one of another version."""
        items = self.items
        found = items.thumbnail(self._item_id(item, items))
        if found is None:
            if self.rebuild_in_progress():
                raise self._being_rebuilt(f"the items catalog {self.settings.items_root}")
            raise SearchError(f"item {item} has no thumbnail in {self.settings.items_root / 'images'} (or not the one "
                              "its catalog recorded); rebuild the catalog with `dvc repro items`.", 404)
        return found

    @staticmethod
    def _item_id(item: Any, items: Items) -> int:
        try:
            item = int(str(item))
        except ValueError:
            raise SearchError(f"an item id is a whole number, got {quote(item)}.") from None
        if not 0 <= item < len(items):
            raise SearchError(f"there is no item {item}; ids run from 0 to {len(items) - 1}.", 404)
        return item
