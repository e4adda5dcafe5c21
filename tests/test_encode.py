import json

import h5py
import numpy as np
import pytest

from cmhash.encoders import EncoderSpec, build_encoder
from cmhash.encoders.dataset import encode_dataset
from cmhash.errors import CmhashError
from cmhash.features import read_features
from cmhash.pipeline import stages
from cmhash.pipeline.layout import Layout


def _images(n=3):
    from PIL import Image

    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)) for _ in range(n)]


def test_open_clip_tiny_architecture(clip_config):
    encoder = build_encoder(EncoderSpec("open_clip", "cpu", {"model": "tiny-clip-test", "model_config": str(clip_config)}))
    assert encoder.aligned and encoder.name == "open_clip:tiny-clip-test:random-init"
    assert encoder.encode_images(_images()).shape == (3, 32)
    assert encoder.encode_texts(["a red disc", "two blue stars", ""]).shape == (3, 32)


def test_open_clip_local_checkpoint_gives_the_same_model(tmp_path, clip_config):
    import torch

    first = build_encoder(EncoderSpec("open_clip", "cpu", {"model": "tiny-clip-test", "model_config": str(clip_config)}))
    checkpoint = tmp_path / "tiny.pt"
    torch.save(first.model.state_dict(), checkpoint)
    second = build_encoder(EncoderSpec("open_clip", "cpu", {"model": "tiny-clip-test", "pretrained": str(checkpoint), "model_config": str(clip_config)}))
    texts = ["a green hexagon in a room"]
    assert np.allclose(first.encode_texts(texts), second.encode_texts(texts), atol=1e-6)


def test_open_clip_unavailable_weights_explain_the_local_checkpoint(clip_config):
    with pytest.raises(CmhashError, match="local path"):
        build_encoder(EncoderSpec("open_clip", "cpu", {"model": "tiny-clip-test", "pretrained": "laion2b_s34b_b79k", "model_config": str(clip_config)}))
    with pytest.raises(CmhashError, match="not a known open_clip architecture"):
        build_encoder(EncoderSpec("open_clip", "cpu", {"model": "no-such-arch"}))


def test_offline_pretrained_pair():
    encoder = build_encoder(EncoderSpec("offline", "cpu", {"image_size": 64}))
    assert not encoder.aligned
    assert encoder.encode_images(_images(2)).shape == (2, 1280)
    texts = encoder.encode_texts(["a red circle", "a crimson disc", "a blue square on the grass"])
    assert texts.shape == (3, 384)
    normed = texts / np.linalg.norm(texts, axis=1, keepdims=True)
    assert normed[0] @ normed[1] > normed[0] @ normed[2]  # real pretrained weights, not random


class _Interrupting:
    """Wraps an encoder and fails on the n-th batch of ``modality`` it embeds, like a crash mid-stage."""

    def __init__(self, inner, fail_at, modality="images"):
        self.inner, self.fail_at, self.modality, self.calls = inner, fail_at, modality, 0
        self.name, self.aligned, self.settings, self.device = inner.name, inner.aligned, inner.settings, inner.device
        self.prepare_images, self.prepare_texts = inner.prepare_images, inner.prepare_texts

    def embed_images(self, batch):
        return self._embed("images", self.inner.embed_images, batch)

    def embed_texts(self, tokens):
        return self._embed("texts", self.inner.embed_texts, tokens)

    def _embed(self, modality, embed, batch):
        if modality == self.modality:
            self.calls += 1
            if self.calls == self.fail_at:
                raise KeyboardInterrupt
        return embed(batch)


def _tiny_clip(clip_config):
    return build_encoder(EncoderSpec("open_clip", "cpu", {"model": "tiny-clip-test", "model_config": str(clip_config)}))


def _shards(out):
    return out.with_name(out.name + ".shards")


def _md5(path):
    import hashlib

    return hashlib.md5(path.read_bytes()).hexdigest()


def test_encode_resumes_after_interruption(project, clip_config):
    params, layout = project
    encoder = _tiny_clip(clip_config)
    prepared, out = layout.prepared("builtin"), layout.features("builtin")
    with pytest.raises(KeyboardInterrupt):
        encode_dataset(prepared, out, _Interrupting(encoder, fail_at=3), batch_size=16, progress=False)
    assert not out.exists()  # no half-written output
    (partial,) = _shards(out).glob("*.partial")
    with h5py.File(partial, "r") as f:
        assert f.attrs["images_done"] == 32
    resumed = _Interrupting(encoder, fail_at=0)
    encode_dataset(prepared, out, resumed, batch_size=16, progress=False)
    assert resumed.calls == (120 - 32) // 16 + 1  # only the remaining batches were encoded
    reference = layout.root / "reference.h5"
    encode_dataset(prepared, reference, encoder, batch_size=16, progress=False)
    a, b = read_features(out), read_features(reference)
    assert np.allclose(a.images, b.images, atol=1e-6) and np.allclose(a.texts, b.texts, atol=1e-6)
    assert np.allclose(np.linalg.norm(a.images, axis=1), 1, atol=1e-5)


@pytest.mark.parametrize("modality", ["images", "texts"], ids=["during images", "during texts"])
@pytest.mark.parametrize("shard_items", [4096, 32], ids=["one shard", "four shards"])
def test_a_resumed_encode_gives_the_same_bytes(project, clip_config, modality, shard_items):
    _, layout = project
    encoder = _tiny_clip(clip_config)
    prepared, out = layout.prepared("builtin"), layout.features("builtin")
    reference = layout.root / "reference.h5"
    encode_dataset(prepared, reference, encoder, batch_size=16, progress=False, loaders=0)
    with pytest.raises(KeyboardInterrupt):
        encode_dataset(prepared, out, _Interrupting(encoder, fail_at=4, modality=modality), batch_size=16, progress=False, shard_items=shard_items)
    encode_dataset(prepared, out, encoder, batch_size=16, progress=False, shard_items=shard_items)
    assert _md5(out) == _md5(reference)  # and the same as one shard, no preprocessing threads
    assert not _shards(out).exists()


def test_a_corrupt_partial_shard_is_discarded_with_a_message(project, clip_config, capsys):
    _, layout = project
    encoder = _tiny_clip(clip_config)
    prepared, out = layout.prepared("builtin"), layout.features("builtin")
    _shards(out).mkdir(parents=True)
    (_shards(out) / "000000000-000000120.h5.partial").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)  # cut short by a crash
    encode_dataset(prepared, out, encoder, batch_size=64, progress=False)
    assert "discarding" in capsys.readouterr().out and read_features(out).images.shape[0] == 120


def test_two_encodes_of_one_file_do_not_both_write(project, clip_config):
    import fcntl

    _, layout = project
    out = layout.features("builtin")
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.with_name(out.name + ".lock"), "a") as other:  # what a running encode holds
        fcntl.flock(other, fcntl.LOCK_EX)
        with pytest.raises(CmhashError, match=f"another process is writing {out}"):
            encode_dataset(layout.prepared("builtin"), out, _tiny_clip(clip_config), batch_size=64, progress=False)
    assert not out.exists()


def test_encoding_the_same_data_again_gives_the_same_file(project, clip_config):
    """The finished file must not depend on when the prepared file was written (DVC hashes it)."""
    import hashlib
    import os

    _, layout = project
    encoder = _tiny_clip(clip_config)
    prepared, out = layout.prepared("builtin"), layout.features("builtin")
    encode_dataset(prepared, out, encoder, batch_size=64, progress=False)
    first = hashlib.md5(out.read_bytes()).hexdigest()
    os.utime(prepared, ns=(1, 1))  # as after `dvc repro -f prepare`: same content, new mtime
    encode_dataset(prepared, out, encoder, batch_size=64, progress=False)
    assert hashlib.md5(out.read_bytes()).hexdigest() == first


def test_batch_size_auto_is_64_on_the_cpu_and_a_number_is_kept(clip_config):
    from cmhash.encoders.batch_size import resolve_batch_size

    encoder = _tiny_clip(clip_config)
    assert resolve_batch_size("auto", encoder) == 64
    assert resolve_batch_size(100, encoder) == 100


@pytest.mark.parametrize(("free_gib", "mib_per_item", "batch"), [
    (80, 10, 4096),   # a large GPU: capped where throughput stops growing
    (10, 10, 512),    # 0.6 * 10 GiB / 10 MiB = 614 items: the power of two below
    (1, 10, 32),      # little free memory: never below the smallest batch
    (10, 0, 4096),    # an encoder that measures no memory per item
])
def test_batch_size_from_free_gpu_memory(free_gib, mib_per_item, batch):
    from cmhash.encoders.batch_size import batch_size_for_memory

    assert batch_size_for_memory(free_gib * 2**30, mib_per_item * 2**20) == batch


def test_encode_stage_with_multiple_captions(project, clip_config):
    from conftest import tiny_params

    from cmhash.datasets.prepared import PreparedData, write_prepared

    params, layout = project
    path = layout.prepared("builtin")
    with PreparedData(path) as data:
        texts, items = data.texts + ["an extra caption for item 0"], np.append(data.text_item, 0)
        order = np.argsort(items, kind="stable")
        write_prepared(path, labels=data.labels, label_names=data.label_names, texts=[texts[i] for i in order],
                       text_item=items[order], splits=data.splits, source="builtin", params=data.params, images=data.images[()])
    with PreparedData(path) as data:
        assert len(data.texts_by_item()[0]) == 2
    stages.encode.run(tiny_params(clip_config), layout, progress=False)
    features = read_features(layout.features("builtin"))
    assert features.texts.shape == (120, 32) and features.aligned


def _clip_spec(clip_config):
    return EncoderSpec("open_clip", "cpu", {"model": "tiny-clip-test", "pretrained": None, "model_config": str(clip_config)})


@pytest.mark.e2e  # a local Dask cluster
def test_two_dask_workers_give_the_same_file_as_one_process(project, clip_config):
    """Shards encoded on a local Dask cluster of two worker processes, merged: the same bytes."""
    _, layout = project
    encoder = _tiny_clip(clip_config)
    prepared, single, sharded = layout.prepared("builtin"), layout.root / "single.h5", layout.features("builtin")
    encode_dataset(prepared, single, encoder, batch_size=16, progress=False)
    encode_dataset(prepared, sharded, encoder, batch_size=16, progress=False, shard_items=32, workers=2,
                   spec=_clip_spec(clip_config))
    assert _md5(sharded) == _md5(single) and not _shards(sharded).exists()


@pytest.mark.slow
def test_a_worker_killed_part_way_costs_only_its_shard(project, clip_config):
    """One of two Dask workers is killed while shards are being encoded: the run completes, the
    file is the same, and no shard but the one the dead worker held is encoded twice."""
    import os
    import signal
    import threading
    import time

    from distributed import LocalCluster

    _, layout = project
    encoder = _tiny_clip(clip_config)
    prepared, single, out = layout.prepared("builtin"), layout.root / "single.h5", layout.features("builtin")
    encode_dataset(prepared, single, encoder, batch_size=8, progress=False)
    started: dict[str, int] = {}  # shard -> how many times its .partial file appeared
    killed = []

    def watch_and_kill(folder, cluster):
        seen = set()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not out.exists():
            partials = {path.name for path in folder.glob("*.partial")} if folder.exists() else set()
            for name in partials - seen:
                started[name] = started.get(name, 0) + 1
            seen = partials
            done = list(folder.glob("*.h5")) if folder.exists() else []
            if done and partials and not killed:  # a shard finished and others are under way: kill a worker
                nanny = next(iter(cluster.workers.values()))
                os.kill(nanny.process.process.pid, signal.SIGKILL)
                killed.append(nanny.process.process.pid)
            time.sleep(0.002)

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        watcher = threading.Thread(target=watch_and_kill, args=(_shards(out), cluster))
        watcher.start()
        encode_dataset(prepared, out, encoder, batch_size=8, progress=False, shard_items=8,
                       scheduler=cluster.scheduler_address, spec=_clip_spec(clip_config))
        watcher.join()
    assert killed, "no worker was killed"
    assert _md5(out) == _md5(single)
    assert sum(count - 1 for count in started.values()) <= 1  # at most the dead worker's shard started again


@pytest.mark.gpu
def test_encoding_on_cuda_matches_the_cpu_within_fp16(project):
    """fp16 autocast and channels-last on the GPU; the CPU path in fp32."""
    _, layout = project
    cpu, gpu = layout.root / "cpu.h5", layout.root / "gpu.h5"
    for device, out in (("cpu", cpu), ("cuda", gpu)):
        encoder = build_encoder(EncoderSpec("offline", device, {"image_size": 96}))
        encode_dataset(layout.prepared("builtin"), out, encoder, batch_size=32, progress=False)
    a, b = read_features(cpu), read_features(gpu)
    assert np.abs(a.images - b.images).max() < 2e-2 and np.abs(a.texts - b.texts).max() < 2e-2


@pytest.mark.gpu
def test_batch_size_auto_on_cuda_fits_in_free_memory(clip_config):
    from cmhash.encoders.batch_size import LARGEST, SMALLEST, resolve_batch_size

    encoder = build_encoder(EncoderSpec("open_clip", "cuda", {
        "model": "tiny-clip-test", "pretrained": None, "model_config": str(clip_config)}))
    batch = resolve_batch_size("auto", encoder)
    assert SMALLEST <= batch <= LARGEST and batch & (batch - 1) == 0
    assert encoder.encode_images(_images(batch)).shape[0] == batch  # a batch of that size runs


@pytest.mark.parametrize("backend", ["offline", "open_clip"])
def test_jpegs_decoded_on_the_device_give_the_features_of_the_cpu_path(tmp_path, clip_config, backend):
    """The GPU decoding path (bytes -> decode_jpeg -> resize on the device) against PIL's, run on the
    CPU here with the same code: features equal up to resampling differences."""
    import io

    from PIL import Image

    rng = np.random.default_rng(0)
    files = []
    for height, width in ((64, 64), (80, 120), (64, 64), (130, 90)):  # mixed shapes, resized in groups
        pixels = (rng.random((height // 8, width // 8, 3)) * 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).resize((width, height), Image.BILINEAR).save(buffer, format="JPEG", quality=95)
        files.append(buffer.getvalue())
    spec = EncoderSpec("offline", "cpu", {"image_size": 64}) if backend == "offline" else _clip_spec(clip_config)
    encoder = build_encoder(spec)
    on_cpu = encoder.encode_images([Image.open(io.BytesIO(data)) for data in files])
    on_device = encoder.embed_jpegs(encoder.prepare_jpegs(files))
    assert on_device.shape == on_cpu.shape
    cosine = (on_cpu * on_device).sum(1) / np.linalg.norm(on_cpu, axis=1) / np.linalg.norm(on_device, axis=1)
    assert cosine.min() > 0.995, cosine


def _byo_images(root, formats):
    from PIL import Image

    root.mkdir(parents=True)
    rng = np.random.default_rng(1)
    lines = []
    for i, fmt in enumerate(formats):
        pixels = (rng.random((9, 12, 3)) * 255).astype(np.uint8)
        Image.fromarray(pixels).resize((120, 90), Image.BILINEAR).save(root / f"{i}.{fmt}", quality=95)
        lines.append(json.dumps({"image": f"{i}.{fmt}", "text": f"picture {i}", "labels": ["a" if i % 2 else "b"]}))
    (root / "pairs.jsonl").write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("source", ["pixels", "jpeg files", "jpeg and png files"])
def test_the_device_route_of_the_encode_stage_gives_the_cpu_routes_features(tmp_path, project, monkeypatch, source):
    """On CUDA the encode stage preprocesses stored pixels, and decodes JPEG files, on the device
    (a batch with another format goes through PIL). The same route runs here on the CPU."""
    from conftest import params_for_dataset

    import cmhash.encoders.dataset

    if source == "pixels":
        params, layout = project
        prepared = layout.prepared("builtin")
    else:
        _byo_images(tmp_path / "raw", ["jpg"] * 6 if source == "jpeg files" else ["jpg", "png"] * 3)
        layout = Layout(tmp_path / "byo")
        params = params_for_dataset({"name": "byo", "root": str(tmp_path / "raw"), "split": {"query": 2, "train": 3}})
        prepared = stages.prepare.run(params, layout, progress=False)
    encoder = build_encoder(EncoderSpec("offline", "cpu", {"image_size": 64}))
    cpu, device = tmp_path / "cpu.h5", tmp_path / "device.h5"
    encode_dataset(prepared, cpu, encoder, batch_size=4, progress=False)
    monkeypatch.setattr(cmhash.encoders.dataset, "preprocess_on_device", lambda encoder: True)
    encode_dataset(prepared, device, encoder, batch_size=4, progress=False)
    a, b = read_features(cpu).images, read_features(device).images
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert a.shape == b.shape and cosine.min() > 0.995, cosine
