"""The encode stage: every item's image and text features, at the speed the machine (or machines) allow.

The items are cut into shards of ``shard_items`` consecutive items (a multiple of the batch
size, so that every batch is the same whether one process encodes them all or many share them).
Each shard is encoded into its own file, ``<out>.shards/<first>-<stop>.h5``: written to a
``.partial`` file batch by batch (an interrupted shard resumes from its last batch; one left
unreadable is discarded, with a message, and encoded again) and renamed when complete. The shards
are then copied, in order, into the features file, written in one go (atomically), so that the
file is the same bytes however the work was divided, interrupted and resumed.

Who encodes the shards:

- this process, one after the other (``encode.workers: 0``, the default); within a shard,
  ``encode.loaders`` threads read, decode and preprocess the next batches (and tokenise their
  captions) while the model runs on the current one;
- a Dask cluster: ``encode.workers: N`` starts a local cluster of N worker processes, and
  ``encode.scheduler: tcp://host:8786`` uses a running one whose workers see the project folder at
  the same path. A worker builds the encoder once and keeps it; a worker that is lost costs only
  the shard it was encoding (Dask gives it to another worker), and a run that was stopped resumes
  from the shards already on disk.

Memory stays bounded: a batch of pixels at a time per process, a shard at a time when merging.
"""

from __future__ import annotations

import fcntl
import json
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np
from tqdm import tqdm

from cmhash import __version__
from cmhash.atomic import atomic_path
from cmhash.checksums import file_md5
from cmhash.datasets.prepared import PreparedData
from cmhash.encoders.batch_size import resolve_batch_size
from cmhash.encoders.towers import prefetched
from cmhash.errors import CmhashError
from cmhash.features import normalise_rows, text_source

if TYPE_CHECKING:
    from cmhash.encoders import Encoder, EncoderSpec

SHARD_ITEMS = 4096


def encode_dataset(prepared_path: Path, out_path: Path, encoder: Encoder, batch_size: int | str = "auto",
                   progress: bool = True,
                   text: str = "auto", loaders: int = 2, shard_items: int = SHARD_ITEMS, workers: int = 0,
                   scheduler: str | None = None, spec: EncoderSpec | None = None) -> None:
    """Encode every image and text of a prepared file into the features file ``out_path``.

    ``encoder`` encodes in this process; with ``workers`` or ``scheduler`` the shards go to Dask
    workers, which build their own encoder from ``spec`` (the one that built ``encoder``).
    ``batch_size`` "auto" is chosen here, once, from this process's device (see encoders.batch_size)."""
    if (workers or scheduler) and spec is None:
        raise ValueError("Dask workers build their own encoder: give its spec")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if batch_size == "auto":
        batch_size = resolve_batch_size(batch_size, encoder)
        if progress:
            print(f"encoding {batch_size} items per batch (encode.batch_size: auto on {encoder.device})")
    shard_items = max(batch_size, shard_items // batch_size * batch_size)  # whole batches in every shard
    with _exclusive(out_path):
        with PreparedData(prepared_path) as data:
            text = text_source(data, text)
            n_items = data.n_items
        # the prepared file's content, not its mtime: the fingerprint stays in the finished file, so
        # encoding the same data again must give the same bytes (DVC then reruns nothing downstream)
        fingerprint = json.dumps({"encoder": encoder.name, "settings": encoder.settings(), "text": text,
                                  "prepared_md5": file_md5(prepared_path)}, sort_keys=True)
        folder = out_path.with_name(out_path.name + ".shards")
        shards = [(first, min(first + shard_items, n_items)) for first in range(0, n_items, shard_items)]
        missing = [shard for shard in shards if not _complete(_shard_path(folder, *shard), fingerprint)]
        if len(missing) < len(shards):
            print(f"resuming {folder}: {len(shards) - len(missing)} of {len(shards)} shards already encoded")
        job = dict(prepared_path=str(prepared_path), batch_size=batch_size, text=text, fingerprint=fingerprint,
                   loaders=loaders)
        if workers or scheduler:
            _encode_on_dask(folder, missing, job, spec, workers, scheduler, progress)
        else:
            with tqdm(total=n_items, initial=n_items - sum(stop - first for first, stop in missing), desc="encoding",
                      unit="item", disable=not progress) as bar:
                for first, stop in missing:
                    encode_shard(folder, first, stop, encoder, **job, on_batch=bar.update)
        attrs = {
            "fingerprint": fingerprint,
            "encoder": encoder.name if text == "captions" else f"{encoder.name} images + bag-of-words text",
            "encoder_settings": json.dumps(encoder.settings(), sort_keys=True),
            "text": text,
            "aligned": encoder.aligned and text == "captions",
            "prepared": str(prepared_path),
            "cmhash_version": __version__,
        }
        _merge(folder, shards, out_path, attrs)
        shutil.rmtree(folder)


# ---- one shard

def _shard_path(folder: Path, first: int, stop: int) -> Path:
    return folder / f"{first:09d}-{stop:09d}.h5"


def _complete(path: Path, fingerprint: str) -> bool:
    """A finished shard of this very encoding (same encoder, settings and prepared file)."""
    if not path.is_file():
        return False
    try:
        with h5py.File(path, "r") as f:
            return f.attrs.get("fingerprint") == fingerprint
    except OSError:
        return False


def encode_shard(folder: Path, first: int, stop: int, encoder: Encoder, prepared_path: str, batch_size: int, text: str,
                 fingerprint: str, loaders: int = 2, on_batch: Callable[[int], Any] | None = None) -> Path:
    """Encode items first..stop-1 into their shard file (resuming a ``.partial`` one); ``on_batch``
    is told the size of every batch of images encoded."""
    path = _shard_path(Path(folder), first, stop)
    partial = path.with_name(path.name + ".partial")
    partial.parent.mkdir(parents=True, exist_ok=True)
    with PreparedData(prepared_path) as data, _open_partial(partial) as f:
        if f.attrs.get("fingerprint") != fingerprint:  # another encoding's leftovers: start over
            for key in list(f.keys()):
                del f[key]
            f.attrs.update({"fingerprint": fingerprint, "images_done": 0, "texts_done": 0})
        images_done, texts_done = int(f.attrs["images_done"]), int(f.attrs["texts_done"])
        if on_batch is not None:
            on_batch(images_done)
        _encode_images(f, data, encoder, first + images_done, stop, first, batch_size, loaders, on_batch)
        if text == "captions":
            _encode_texts(f, data, encoder, first + texts_done, stop, first, batch_size, loaders)
        else:
            _store_bag_of_words(f, data, first + texts_done, stop, first)
    partial.rename(path)
    return path


def preprocess_on_device(encoder: Encoder) -> bool:
    """Whether images are preprocessed (and JPEG files decoded) where the model runs: on CUDA. On an
    H200 this was 24-38x faster for stored pixels and 12-23x for JPEG files than PIL on the CPU with
    8 cores (bench/results/encode_throughput_h200.json); the features differ from the CPU path's in
    the resampling's last bits, as fp16 already makes them."""
    return encoder.device.startswith("cuda")


def _is_jpeg(data: bytes) -> bool:
    return data[:3] == b"\xff\xd8\xff"


def _image_route(data: PreparedData, encoder: Encoder) -> tuple[Callable, Callable]:
    """(prepare, embed) for a batch of rows: ``prepare`` runs in the loader threads, ``embed`` in the
    model's. On the CPU, PIL reads, decodes and resizes; on the device, the loader threads read
    stored uint8 pixels or image files, and the device decodes (nvJPEG), resizes and normalises. A
    batch holding a file that is not a JPEG, or one the device cannot decode, goes through PIL."""
    if not preprocess_on_device(encoder):
        return (lambda rows: encoder.prepare_images(data.load_images(rows))), encoder.embed_images
    if data.stores_pixels:
        return (lambda rows: encoder.prepare_pixels(data.load_pixels(rows))), encoder.embed_pixels

    def through_pil(files: list[bytes]):
        import io

        from PIL import Image

        return encoder.prepare_images([Image.open(io.BytesIO(file)).convert("RGB") for file in files])

    def prepare(rows):
        files = data.load_image_files(rows)  # each checked against the pixel limit from its header
        if all(_is_jpeg(file) for file in files):
            return "jpeg", encoder.prepare_jpegs(files), files
        return "pil", through_pil(files), files

    def embed(prepared):
        kind, batch, files = prepared
        if kind == "jpeg":
            try:
                return encoder.embed_jpegs(batch)
            except RuntimeError:  # a JPEG variant the device's decoder does not take
                batch = through_pil(files)
        return encoder.embed_images(batch)

    return prepare, embed


def _encode_images(f: h5py.File, data: PreparedData, encoder: Encoder, start: int, stop: int, first: int, batch_size: int,
                   loaders: int, on_batch: Callable[[int], Any] | None) -> None:
    """Images start..stop-1: ``loaders`` threads read (and on the CPU decode and preprocess) the
    batches ahead of the model."""
    batches = [np.arange(begin, min(begin + batch_size, stop)) for begin in range(start, stop, batch_size)]
    prepare, embed = _image_route(data, encoder)
    for rows, prepared in prefetched(batches, prepare, workers=loaders):
        _store(f, "images", rows[0] - first, embed(prepared), stop - first)
        if on_batch is not None:
            on_batch(len(rows))


def _encode_texts(f: h5py.File, data: PreparedData, encoder: Encoder, start: int, stop: int, first: int, batch_size: int,
                  loaders: int) -> None:
    """Each item's captions, embedded and averaged (an item with several gets their normalised mean)."""
    captions = data.texts_by_item()
    batches = [list(range(begin, min(begin + batch_size, stop))) for begin in range(start, stop, batch_size)]
    prepare = lambda items: encoder.prepare_texts([text for item in items for text in captions[item]])  # noqa: E731
    for items, tokens in prefetched(batches, prepare, workers=loaders):
        embedded = normalise_rows(encoder.embed_texts(tokens))
        owner = np.repeat(np.arange(len(items)), [len(captions[item]) for item in items])
        means = np.zeros((len(items), embedded.shape[1]), dtype=np.float64)
        np.add.at(means, owner, embedded)
        _store(f, "texts", items[0] - first, means, stop - first)


def _store_bag_of_words(f: h5py.File, data: PreparedData, start: int, stop: int, first: int) -> None:
    bow, _ = data.bag_of_words
    for begin in range(start, stop, 8192):
        end = min(begin + 8192, stop)
        _store(f, "texts", begin - first, bow[begin:end].astype(np.float32), stop - first)


def _store(f: h5py.File, name: str, offset: int, rows: np.ndarray, shard_size: int) -> None:
    if name not in f:
        f.create_dataset(name, shape=(shard_size, rows.shape[1]), dtype=np.float32)
    f[name][offset : offset + len(rows)] = normalise_rows(rows)
    f.attrs[f"{name}_done"] = offset + len(rows)
    f.flush()


def _open_partial(partial: Path) -> h5py.File:
    """A shard's resumable ``.partial`` file; one an interrupted run left unreadable is discarded,
    with a message, and the shard starts over."""
    try:
        return h5py.File(partial, "a")
    except OSError as err:
        print(f"discarding {partial}: an interrupted encode left it unreadable ({str(err).splitlines()[0]}); starting over")
        partial.unlink()
        return h5py.File(partial, "a")


# ---- the whole file

def _merge(folder: Path, shards: list[tuple[int, int]], out_path: Path, attrs: dict) -> None:
    """Copy the shards, in order, into a new features file written in one go, atomically: its bytes
    depend neither on how the work was divided nor on whether and where it was interrupted."""
    with atomic_path(out_path) as tmp, h5py.File(tmp, "w") as f:
        for name in ("images", "texts"):
            with h5py.File(_shard_path(folder, *shards[0]), "r") as head:
                width = head[name].shape[1]
            target = f.create_dataset(name, shape=(shards[-1][1], width), dtype=np.float32)
            for first, stop in shards:  # a shard at a time: memory stays bounded at any size
                with h5py.File(_shard_path(folder, first, stop), "r") as shard:
                    target[first:stop] = shard[name][()]
        for key in sorted(attrs):
            f.attrs[key] = attrs[key]


@contextmanager
def _exclusive(out_path: Path) -> Iterator[None]:
    """One encode at a time per output: a second one stops at once instead of writing the same
    shards (an exclusive lock on ``<out>.lock``, dropped by the kernel if a process dies)."""
    lock = out_path.with_name(out_path.name + ".lock")
    with open(lock, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CmhashError(f"another process is writing {out_path} (it holds {lock}); wait for it to finish, "
                              "or stop it, before encoding again.") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# ---- on a Dask cluster

_WORKER_ENCODERS: dict[str, Any] = {}  # one encoder per worker process and spec, built on first use


def _worker_encoder(spec: EncoderSpec):
    key = json.dumps(asdict(spec), sort_keys=True)
    if key not in _WORKER_ENCODERS:
        from cmhash.encoders import build_encoder

        _WORKER_ENCODERS[key] = build_encoder(spec)
    return _WORKER_ENCODERS[key]


def _shard_task(folder: str, first: int, stop: int, spec: EncoderSpec, job: dict[str, Any]) -> str:
    """What a Dask worker runs: one shard, with the worker's own encoder."""
    return str(encode_shard(Path(folder), first, stop, _worker_encoder(spec), **job))


def _encode_on_dask(folder: Path, shards: list[tuple[int, int]], job: dict[str, Any], spec: EncoderSpec,
                    workers: int, scheduler: str | None, progress: bool) -> None:
    from distributed import Client, LocalCluster, as_completed

    if not shards:
        return
    cluster = None if scheduler else LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                                  dashboard_address=None)
    try:
        with Client(scheduler or cluster) as client:
            futures = [client.submit(_shard_task, str(folder), first, stop, spec, job, key=f"encode-{first}-{stop}",
                                     pure=False) for first, stop in shards]
            with tqdm(total=len(futures), desc="encoding shards", unit="shard", disable=not progress) as bar:
                for future in as_completed(futures):
                    future.result()  # a shard that failed on every worker raises here, with its error
                    bar.update(1)
    finally:
        if cluster is not None:
            cluster.close()
