import h5py
import numpy as np
import pytest

from cmhash import stages
from cmhash.encoders import build_encoder
from cmhash.errors import CmhashError
from cmhash.features import encode_dataset, read_features


def _images(n=3):
    from PIL import Image

    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)) for _ in range(n)]


def test_open_clip_tiny_architecture(clip_config):
    encoder = build_encoder({"backend": "open_clip", "device": "cpu", "open_clip": {"model": "tiny-clip-test", "model_config": str(clip_config)}})
    assert encoder.aligned and encoder.name == "open_clip:tiny-clip-test:random-init"
    assert encoder.encode_images(_images()).shape == (3, 32)
    assert encoder.encode_texts(["a red disc", "two blue stars", ""]).shape == (3, 32)


def test_open_clip_local_checkpoint_gives_the_same_model(tmp_path, clip_config):
    import torch

    first = build_encoder({"backend": "open_clip", "device": "cpu", "open_clip": {"model": "tiny-clip-test", "model_config": str(clip_config)}})
    checkpoint = tmp_path / "tiny.pt"
    torch.save(first.model.state_dict(), checkpoint)
    second = build_encoder({"backend": "open_clip", "device": "cpu",
                            "open_clip": {"model": "tiny-clip-test", "pretrained": str(checkpoint), "model_config": str(clip_config)}})
    texts = ["a green hexagon in a room"]
    assert np.allclose(first.encode_texts(texts), second.encode_texts(texts), atol=1e-6)


def test_open_clip_unavailable_weights_explain_the_local_checkpoint(clip_config):
    with pytest.raises(CmhashError, match="local path"):
        build_encoder({"backend": "open_clip", "device": "cpu",
                       "open_clip": {"model": "tiny-clip-test", "pretrained": "laion2b_s34b_b79k", "model_config": str(clip_config)}})
    with pytest.raises(CmhashError, match="not a known open_clip architecture"):
        build_encoder({"backend": "open_clip", "device": "cpu", "open_clip": {"model": "no-such-arch"}})


def test_offline_pretrained_pair():
    encoder = build_encoder({"backend": "offline", "device": "cpu", "offline": {"image_size": 64}})
    assert not encoder.aligned
    assert encoder.encode_images(_images(2)).shape == (2, 1280)
    texts = encoder.encode_texts(["a red circle", "a crimson disc", "a blue square on the grass"])
    assert texts.shape == (3, 384)
    normed = texts / np.linalg.norm(texts, axis=1, keepdims=True)
    assert normed[0] @ normed[1] > normed[0] @ normed[2]  # real pretrained weights, not random


class _Interrupting:
    """Wraps an encoder and fails on the n-th image batch, like a crash mid-stage."""

    def __init__(self, inner, fail_at):
        self.inner, self.fail_at, self.calls = inner, fail_at, 0
        self.name, self.aligned, self.settings = inner.name, inner.aligned, inner.settings

    def encode_images(self, images):
        self.calls += 1
        if self.calls == self.fail_at:
            raise KeyboardInterrupt
        return self.inner.encode_images(images)

    def encode_texts(self, texts):
        return self.inner.encode_texts(texts)


def test_encode_resumes_after_interruption(project, clip_config):
    params, layout = project
    encoder = build_encoder({"backend": "open_clip", "device": "cpu", "open_clip": {"model": "tiny-clip-test", "model_config": str(clip_config)}})
    prepared, out = layout.prepared("builtin"), layout.features("builtin")
    with pytest.raises(KeyboardInterrupt):
        encode_dataset(prepared, out, _Interrupting(encoder, fail_at=3), batch_size=16, progress=False)
    assert not out.exists()  # no half-written output
    with h5py.File(out.with_name(out.name + ".partial"), "r") as f:
        assert f.attrs["images_done"] == 32
    resumed = _Interrupting(encoder, fail_at=0)
    encode_dataset(prepared, out, resumed, batch_size=16, progress=False)
    assert resumed.calls == (120 - 32) // 16 + 1  # only the remaining batches were encoded
    reference = layout.root / "reference.h5"
    encode_dataset(prepared, reference, encoder, batch_size=16, progress=False)
    a, b = read_features(out), read_features(reference)
    assert np.allclose(a.images, b.images, atol=1e-6) and np.allclose(a.texts, b.texts, atol=1e-6)
    assert np.allclose(np.linalg.norm(a.images, axis=1), 1, atol=1e-5)


class _InterruptingTexts(_Interrupting):
    def encode_texts(self, texts):
        self.calls += 1
        if self.calls == self.fail_at:
            raise KeyboardInterrupt
        return self.inner.encode_texts(texts)


@pytest.mark.parametrize("interrupt", [_Interrupting, _InterruptingTexts], ids=["during images", "during texts"])
def test_a_resumed_encode_gives_the_same_bytes(project, clip_config, interrupt):
    import hashlib

    _, layout = project
    encoder = build_encoder({"backend": "open_clip", "device": "cpu", "open_clip": {"model": "tiny-clip-test", "model_config": str(clip_config)}})
    prepared, out = layout.prepared("builtin"), layout.features("builtin")
    reference = layout.root / "reference.h5"
    encode_dataset(prepared, reference, encoder, batch_size=16, progress=False)
    with pytest.raises(KeyboardInterrupt):
        encode_dataset(prepared, out, interrupt(encoder, fail_at=4), batch_size=16, progress=False)
    encode_dataset(prepared, out, encoder, batch_size=16, progress=False)
    assert hashlib.md5(out.read_bytes()).hexdigest() == hashlib.md5(reference.read_bytes()).hexdigest()
    assert not out.with_name(out.name + ".partial").exists()


def test_a_corrupt_partial_file_is_discarded_with_a_message(project, clip_config, capsys):
    _, layout = project
    encoder = build_encoder({"backend": "open_clip", "device": "cpu", "open_clip": {"model": "tiny-clip-test", "model_config": str(clip_config)}})
    prepared, out = layout.prepared("builtin"), layout.features("builtin")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_name(out.name + ".partial").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)  # cut short by a crash
    encode_dataset(prepared, out, encoder, batch_size=64, progress=False)
    assert "discarding" in capsys.readouterr().out and read_features(out).images.shape[0] == 120


def test_two_encodes_of_one_file_do_not_both_write(project, clip_config):
    import fcntl

    _, layout = project
    encoder = build_encoder({"backend": "open_clip", "device": "cpu", "open_clip": {"model": "tiny-clip-test", "model_config": str(clip_config)}})
    out = layout.features("builtin")
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.with_name(out.name + ".lock"), "a") as other:  # what a running encode holds
        fcntl.flock(other, fcntl.LOCK_EX)
        with pytest.raises(CmhashError, match=f"another process is writing {out}"):
            encode_dataset(layout.prepared("builtin"), out, encoder, batch_size=64, progress=False)
    assert not out.exists()


def test_encoding_the_same_data_again_gives_the_same_file(project, clip_config):
    """The finished file must not depend on when the prepared file was written (DVC hashes it)."""
    import hashlib
    import os

    _, layout = project
    encoder = build_encoder({"backend": "open_clip", "device": "cpu", "open_clip": {"model": "tiny-clip-test", "model_config": str(clip_config)}})
    prepared, out = layout.prepared("builtin"), layout.features("builtin")
    encode_dataset(prepared, out, encoder, batch_size=64, progress=False)
    first = hashlib.md5(out.read_bytes()).hexdigest()
    os.utime(prepared, ns=(1, 1))  # as after `dvc repro -f prepare`: same content, new mtime
    encode_dataset(prepared, out, encoder, batch_size=64, progress=False)
    assert hashlib.md5(out.read_bytes()).hexdigest() == first


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
    stages.encode(tiny_params(clip_config), layout, progress=False)
    features = read_features(layout.features("builtin"))
    assert features.texts.shape == (120, 32) and features.aligned
