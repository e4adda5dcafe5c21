"""DCMHT's finetune mode: the open_clip towers train end to end with the select layers (tiny CLIP, CPU)."""

import math

import numpy as np
import pytest
import torch

from cmhash.codes import read_codes
from cmhash.datasets.prepared import PreparedData
from cmhash.encoders.towers import prefetched
from cmhash.errors import CmhashError
from cmhash.methods import load_model
from cmhash.methods.dcmht import warmup_cosine
from cmhash.pipeline import stages


def test_warmup_then_cosine_schedule():
    factor = warmup_cosine(total_steps=100, warmup=0.1)
    assert [round(factor(s), 3) for s in (0, 4, 9)] == [0.1, 0.5, 1.0]  # linear warm-up over 10 steps
    after = [factor(s) for s in range(10, 100)]
    assert after[0] == 1.0 and all(a >= b for a, b in zip(after, after[1:]))
    assert factor(55) == pytest.approx(0.5 * (1 + math.cos(math.pi * 45 / 90)))
    assert factor(99) < 0.001


def test_prefetched_batches_come_in_order_and_are_prepared_one_ahead():
    import threading
    import time

    prepared, consumed = [], []

    def prepare(batch):
        time.sleep(0.01 * (3 - batch))  # earlier batches take longer: order must not depend on speed
        prepared.append((batch, threading.current_thread() is threading.main_thread()))
        return batch * 10

    for batch, value in prefetched([0, 1, 2, 3], prepare):
        consumed.append((batch, value))
        # the next batch is being prepared while this one is in use: never more than one ahead
        assert len(prepared) <= batch + 2
    assert consumed == [(0, 0), (1, 10), (2, 20), (3, 30)]
    assert [batch for batch, _ in prepared] == [0, 1, 2, 3]
    assert not any(on_main for _, on_main in prepared)
    assert list(prefetched([], prepare)) == []


def _finetune_params(params, clip_config):
    params["encode"]["backend"] = "open_clip"
    params["encode"]["open_clip"] = {"model": "tiny-clip-test", "pretrained": None, "model_config": str(clip_config)}
    params["methods"]["dcmht"].update({"mode": "finetune", "epochs": 2, "batch_size": 16, "clip_lr": 1e-3})
    return params


def test_finetune_trains_the_towers_and_encodes_through_them(project, clip_config):
    params, layout = project
    params = _finetune_params(params, clip_config)
    stages.validate.run(params, layout)
    stages.encode.run(params, layout, progress=False)
    out = stages.train.run(params, layout, "dcmht", 16, progress=False)
    codes = read_codes(out / "codes.h5")
    with PreparedData(layout.prepared("builtin")) as data:
        n_query, n_retrieval = len(data.splits["query"]), len(data.splits["retrieval"])
        assert codes["query"].images.shape == (n_query, 16) and codes["retrieval"].texts.shape == (n_retrieval, 16)
        assert set(np.unique(codes["retrieval"].images)) <= {-1, 1}
        model = load_model(out / "model.pt", device="cpu")  # towers and select layers come back
        images, texts = model.encode_items(data, data.splits["query"])
    np.testing.assert_array_equal(images, codes["query"].images)
    np.testing.assert_array_equal(texts, codes["query"].texts)
    # the towers moved away from their initial weights (same seed, same initialisation)
    torch.manual_seed(int(params["train"]["seed"]))
    from cmhash.encoders import build_encoder
    from cmhash.pipeline.params import encoder_spec

    initial = build_encoder(encoder_spec(params["encode"], "cpu")).model.state_dict()
    trained = model.towers.state_dict()
    assert any(not torch.equal(initial[k], trained[k]) for k in initial)
    assert len(model.history) == 2 and all(np.isfinite(model.history))
    # reproducible: a second run gives the same codes
    again = read_codes(stages.train.run(params, layout, "dcmht", 16, progress=False) / "codes.h5")
    np.testing.assert_array_equal(again["retrieval"].texts, codes["retrieval"].texts)


def test_finetune_needs_open_clip_towers(project):
    params, layout = project
    params["methods"]["dcmht"]["mode"] = "finetune"
    stages.validate.run(params, layout)
    stages.encode.run(params, layout, progress=False)
    with pytest.raises(CmhashError, match="fine-tuning .* trains the open_clip towers; set encode.backend: open_clip"):
        stages.train.run(params, layout, "dcmht", 16, progress=False)
    params["methods"]["dcmht"]["mode"] = "fine-tune"
    with pytest.raises(CmhashError, match="methods.dcmht.mode is 'fine-tune'; expected one of 'frozen' or 'finetune'"):
        stages.train.run(params, layout, "dcmht", 16, progress=False)


@pytest.mark.gpu
def test_finetune_on_cuda_with_mixed_precision(project, clip_config):
    """The CUDA path: fp16 autocast and the gradient scaler (run with -m gpu on a machine with a GPU)."""
    params, layout = project
    params = _finetune_params(params, clip_config)
    params["train"]["device"] = "cuda"
    stages.validate.run(params, layout)
    stages.encode.run(params, layout, progress=False)
    out = stages.train.run(params, layout, "dcmht", 16, progress=False)
    codes = read_codes(out / "codes.h5")
    assert set(np.unique(codes["query"].images)) <= {-1, 1}
    model = load_model(out / "model.pt", device="cuda")
    assert all(np.isfinite(model.history)) and next(model.towers.parameters()).is_cuda
