import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cmhash.errors import CmhashError
from cmhash.methods import build_method, load_model, method_class, save_model
from cmhash.methods.djsrh import joint_semantic_affinity
from cmhash.methods.network import affinity_reconstruction_loss


def _features(seed=0, n=40, with_labels=False):
    rng = np.random.default_rng(seed)
    topics = rng.integers(0, 4, n)
    image = rng.normal(size=(4, 12))[topics] + 0.3 * rng.normal(size=(n, 12))
    text = rng.normal(size=(4, 9))[topics] + 0.3 * rng.normal(size=(n, 9))
    features = image.astype(np.float32), text.astype(np.float32)
    if not with_labels:
        return features
    labels = np.eye(5, dtype=np.float32)[topics]
    labels[rng.random(n) < 0.3, 4] = 1  # a second label on some items: multi-label
    return (*features, labels)


TINY = {"hidden": 16, "epochs": 3, "batch_size": 8}
SMOKE = [
    ("lsh", {}), ("itq", {"iterations": 5}), ("cca_itq", {"iterations": 5}),
    ("djsrh", TINY), ("jdsh", TINY), ("cfrh", TINY),
    ("ucmfh", {"width": 8, "heads": 2, "feedforward": 16, "hidden": 16, "epochs": 2, "batch_size": 8}),
    ("dcmht", {"hidden": 16, "epochs": 3, "batch_size": 8}), ("mesdch", TINY),
    ("clipmh", {"width": 16, "epochs": 3, "batch_size": 8}),
]


def test_djsrh_affinity_and_loss_match_the_formula_by_hand():
    fi = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    ft = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    beta, eta, mu, m = 0.9, 0.4, 1.5, 3
    # cosines by hand
    ci = np.array([[1, 0, 1 / np.sqrt(2)], [0, 1, 1 / np.sqrt(2)], [1 / np.sqrt(2), 1 / np.sqrt(2), 1]])
    ct = np.array([[1, 0, 1 / np.sqrt(2)], [0, 1, 0], [1 / np.sqrt(2), 0, 1]])
    joint = beta * (2 * ci - 1) + (1 - beta) * (2 * ct - 1)
    expected_s = mu * ((1 - eta) * joint + eta * joint @ joint.T / m)
    s = joint_semantic_affinity(fi, ft, beta, eta, mu)
    assert np.allclose(s.numpy(), expected_s, atol=1e-6)

    bi = torch.tensor([[0.5, -0.5], [0.2, 0.9], [-0.7, 0.1]])
    bt = torch.tensor([[0.4, 0.4], [-0.3, 0.8], [0.6, -0.2]])
    ni = bi.numpy() / np.linalg.norm(bi.numpy(), axis=1, keepdims=True)
    nt = bt.numpy() / np.linalg.norm(bt.numpy(), axis=1, keepdims=True)
    mse = lambda a: np.mean((a - expected_s) ** 2)  # noqa: E731
    expected = 0.1 * mse(ni @ ni.T) + mse(ni @ nt.T) + 0.2 * mse(nt @ nt.T)
    assert affinity_reconstruction_loss(bi, bt, torch.tensor(expected_s, dtype=torch.float32), 0.1, 0.2).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("name, settings", SMOKE)
def test_methods_fit_encode_save_load(tmp_path, name, settings):
    image, text, labels = _features(with_labels=True)
    method = build_method(name, 8, settings, seed=1, device="cpu").fit(image, text, labels=labels)
    if method.fused:
        codes = (method.encode(images=image, texts=text),)
    else:
        codes = method.encode(images=image), method.encode(texts=text)
    for c in codes:
        assert c.shape == (40, 8) and c.dtype == np.int8 and set(np.unique(c)) <= {-1, 1}
    assert all(np.isfinite(loss) for loss in getattr(method, "history", []))
    again = build_method(name, 8, settings, seed=1, device="cpu").fit(image, text, labels=labels)
    first_again = again.encode(images=image, texts=text) if method.fused else again.encode(images=image)
    assert np.array_equal(first_again, codes[0])  # seeded: reproducible
    save_model(tmp_path / "model.pt", name, method, settings, seed=1)
    loaded = load_model(tmp_path / "model.pt", device="cpu")
    last_loaded = loaded.encode(images=image, texts=text) if method.fused else loaded.encode(texts=text)
    assert np.array_equal(last_loaded, codes[-1])


@pytest.mark.gpu
@pytest.mark.parametrize("name, settings", SMOKE)
def test_methods_fit_on_cuda_save_and_load_on_the_cpu(tmp_path, name, settings):
    """The train stage's path with train.device: auto on a GPU worker: fit on CUDA, save, load and
    encode on the CPU (as the index stage and search do), the same codes as on CUDA."""
    image, text, labels = _features(with_labels=True)
    method = build_method(name, 8, settings, seed=1, device="cuda").fit(image, text, labels=labels)
    codes = method.encode(images=image, texts=text) if method.fused else method.encode(texts=text)
    assert codes.shape == (40, 8) and set(np.unique(codes)) <= {-1, 1}
    again = build_method(name, 8, settings, seed=1, device="cuda").fit(image, text, labels=labels)
    assert np.array_equal(again.encode(images=image, texts=text) if method.fused else again.encode(texts=text), codes)
    save_model(tmp_path / "model.pt", name, method, settings, seed=1)
    loaded = load_model(tmp_path / "model.pt", device="cpu")
    on_cpu = loaded.encode(images=image, texts=text) if method.fused else loaded.encode(texts=text)
    assert (on_cpu == codes).mean() > 0.95  # the same weights; float arithmetic may flip a bit near zero


@pytest.mark.parametrize("name", ["dcmht", "mesdch", "clipmh"])
def test_supervised_methods_need_labels(name):
    with pytest.raises(CmhashError, match="supervised"):
        build_method(name, 8, {"epochs": 1}, device="cpu").fit(*_features())


def test_djsrh_loss_decreases():
    image, text = _features(n=64)
    method = build_method("djsrh", 16, {"hidden": 32, "epochs": 15, "batch_size": 16, "lr_image": 0.05, "lr_text": 0.05}, device="cpu").fit(image, text)
    assert method.history[-1] < method.history[0]


def test_aligned_baselines_share_one_projection():
    image, _ = _features()
    method = build_method("lsh", 8, {}, device="cpu").fit(image, image.copy(), aligned=True)
    assert np.array_equal(method.encode(images=image), method.encode(texts=image))


def test_unknown_method_and_setting_are_clear_errors():
    with pytest.raises(CmhashError, match="known hashing methods"):
        build_method("nope", 8, {})
    with pytest.raises(CmhashError, match="methods.djsrh: unknown setting learning_rate; accepted: batch_size, beta, epochs"):
        build_method("djsrh", 8, {"learning_rate": 1})
    with pytest.raises(CmhashError, match="ITQ needs bits"):
        build_method("itq", 10, {}).fit(*_features())


# ----------------------------------------------------------------------------- losses by hand
# Each test recomputes a method's objective in plain numpy from the formula in its docstring.

_FI = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
_FT = np.array([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
_BI = np.array([[0.5, -0.5], [0.2, 0.9], [-0.7, 0.1]])
_BT = np.array([[0.4, 0.4], [-0.3, 0.8], [0.6, -0.2]])
_t = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731


def _rownorm(a):
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def _cos(a, b):
    return _rownorm(a) @ _rownorm(b).T


def test_jdsh_affinity_and_loss_by_hand():
    from cmhash.methods.jdsh import jdsh_affinity, jdsh_loss

    s_i, s_t = 2 * _cos(_FI, _FI) - 1, 2 * _cos(_FT, _FT) - 1
    high = _rownorm(s_i) @ _rownorm(s_t).T
    joint = 0.5 * s_i + 0.1 * s_t + 0.4 * (high + high.T) / 2
    left, right = 0.3, 0.6  # chosen so that both re-weightings apply on this tiny example
    assert (joint < left).any() and (joint > right).any()
    weight = np.where(joint < left, 1 + 0.1 * np.exp(-(joint - left)), np.where(joint > right, 1 + 0.2 * np.exp(joint - right), 1))
    expected_s = 1.4 * joint * weight
    s = jdsh_affinity(_t(_FI), _t(_FT), a=0.5, b=0.1, high=0.4, mu=1.4, left=left, right=right, left_weight=0.1, right_weight=0.2)
    assert np.allclose(s.numpy(), expected_s, atol=1e-5)

    ni, nt = _rownorm(_BI), _rownorm(_BT)
    mse = lambda a: np.mean((a - expected_s) ** 2)  # noqa: E731
    expected = 0.1 * mse(ni @ ni.T) + mse(ni @ nt.T) + mse(nt @ ni.T) - np.mean(np.diag(ni @ nt.T)) + 0.1 * mse(nt @ nt.T)
    assert jdsh_loss(_t(_BI), _t(_BT), _t(expected_s), 0.1).item() == pytest.approx(expected, rel=1e-5)


def test_cfrh_affinity_and_reconstruction_by_hand():
    from cmhash.methods.cfrh import fused_affinity, fused_features, reconstruction_loss

    fused = np.hstack([_rownorm(_FI), _rownorm(_FT)])
    joint = 0.4 * (2 * _cos(_FI, _FI) - 1) + 0.3 * (2 * _cos(_FT, _FT) - 1) + 0.3 * (2 * _cos(fused, fused) - 1)
    expected = 1.5 * (0.6 * joint + 0.4 * joint @ joint.T / 3)
    s = fused_affinity(_t(_FI), _t(_FT), a=0.4, b=0.3, c=0.3, eta=0.4, mu=1.5)
    assert np.allclose(s.numpy(), expected, atol=1e-5)
    assert np.allclose(fused_features(_t(_FI), _t(_FT)).numpy(), fused, atol=1e-6)
    decoded = fused + 0.1
    assert reconstruction_loss(_t(decoded), _t(fused)).item() == pytest.approx(0.01 * fused.shape[1], rel=1e-5)


def test_dcmht_margin_loss_by_hand():
    from cmhash.methods.dcmht import bit_probabilities, margin_loss, quantization_loss
    from cmhash.methods.network import label_similarity

    logits = np.array([[2.0, 0.0, 0.0, 1.0], [0.5, 0.5, -1.0, 1.0], [0.0, 3.0, 1.0, 0.0]])  # 3 items, K = 2
    probs = np.exp(logits.reshape(3, 2, 2)) / np.exp(logits.reshape(3, 2, 2)).sum(-1, keepdims=True)
    labels = np.array([[1, 0], [1, 1], [0, 1]], dtype=np.float32)
    s = (labels @ labels.T > 0).astype(float)
    flat = probs.reshape(3, 4)
    d = np.linalg.norm(flat[:, None] - flat[None], axis=-1)
    margin = np.sqrt(2 * 2 * 0.75)
    expected = np.mean((d * s) ** 2) + np.mean(((margin - np.minimum(d, margin)) * (1 - s)) ** 2)
    p = bit_probabilities(_t(logits), 2)
    assert np.allclose(p.numpy(), probs, atol=1e-6)
    assert np.array_equal(label_similarity(_t(labels), _t(labels)).numpy(), s)
    assert margin_loss(p, p, _t(s), margin).item() == pytest.approx(expected, rel=1e-5)
    assert quantization_loss(p).item() == pytest.approx(1 - np.mean((2 * probs[..., 1] - 1) ** 2), rel=1e-5)


def test_mesdch_positive_constraint_kl_and_loss_by_hand():
    from cmhash.methods.mesdch import MESDCH, positive_constraint_kl

    s_l = np.array([[1.0, 0.5], [0.0, 1.0]])
    s_h = np.array([[0.8, 0.7], [0.1, 0.0]])
    eps = 1e-5
    expected = np.sum((s_l - s_h) * np.log((s_l + eps) / (s_h + eps))) / 4
    assert positive_constraint_kl(_t(s_l), _t(s_h)).item() == pytest.approx(expected, rel=1e-4)
    assert expected > 0

    # the image network's loss on a batch of two against buffers of three items
    labels = np.array([[1, 0], [1, 1], [0, 1]], dtype=np.float32)
    buffers = {"image": np.array([[0.5, -0.5], [0.2, 0.9], [-0.7, 0.1]]), "text": np.zeros((3, 2)),
               "label": np.array([[0.9, -0.1], [0.3, 0.3], [-0.2, 0.8]])}
    binary = np.sign(buffers["image"] + buffers["label"] + 0.01)
    codes, index = np.array([[0.4, 0.1], [-0.2, 0.6]]), np.array([0, 2])
    s_label = _cos(labels[index], labels)
    kl = lambda other: np.sum((s_label - np.maximum(_cos(codes, buffers[other]), 0)) * np.log(  # noqa: E731
        (s_label + eps) / (np.maximum(_cos(codes, buffers[other]), 0) + eps))) / s_label.size
    expected = 1.9 * kl("image") + kl("label") + 0.9 * np.sum((binary[index] - codes) ** 2) / codes.size
    method = MESDCH(2, alpha=0.3, beta=1.9, gamma=0.9, device="cpu")
    got = method.mesdch_loss("image", _t(codes), _t(labels[index]), torch.tensor(index), _t(labels),
                             {k: _t(v) for k, v in buffers.items()}, _t(binary))
    assert got.item() == pytest.approx(expected, rel=1e-4)


def test_clipmh_loss_by_hand():
    from cmhash.methods.clipmh import clipmh_loss

    codes = np.array([[0.9, -0.8, 0.7], [0.8, -0.9, -0.2], [-0.6, 0.5, 0.9]])
    s = np.array([[1, 1, 0], [1, 1, 0], [0, 0, 1]], dtype=float)
    c = _cos(codes, codes)
    expected = np.mean(s * (1 - c) ** 2 + (1 - s) * np.maximum(c - 0.0, 0) ** 2) + 0.1 * np.mean((np.abs(codes) - 1) ** 2)
    assert clipmh_loss(_t(codes), _t(s), margin=0.0, quantization=0.1).item() == pytest.approx(expected, rel=1e-5)


def test_cca_finds_the_shared_direction():
    from cmhash.methods.cca_itq import fit_cca

    rng = np.random.default_rng(0)
    shared = rng.normal(size=(500, 1))
    images = np.hstack([shared, rng.normal(size=(500, 3))]) @ rng.normal(size=(4, 4))
    texts = np.hstack([shared + 0.1 * rng.normal(size=(500, 1)), rng.normal(size=(500, 2))]) @ rng.normal(size=(3, 3))
    image_centre, a, text_centre, b, rho = fit_cca(images, texts, 2, regularization=1e-6)
    assert rho[0] > 0.99 and rho[1] < 0.3  # one strongly correlated direction, the rest noise
    u, v = (images - image_centre) @ a[:, 0], (texts - text_centre) @ b[:, 0]
    assert abs(np.corrcoef(u, v)[0, 1]) == pytest.approx(rho[0], abs=1e-3)


@pytest.mark.parametrize("method", ["itq", "cca_itq"])
def test_codes_do_not_depend_on_the_signs_lapack_gives_singular_vectors(method, monkeypatch):
    """Either sign of each singular vector is a valid SVD, and LAPACK builds differ in which they
    return; flipping some (u and v together, so the product is unchanged) must not change the codes."""
    images, texts = _features(seed=3, n=60)

    def fit_codes():
        model = build_method(method, 8, {"iterations": 5}, seed=0)
        model.fit(images, texts)
        return model.encode(images=images), model.encode(texts=texts)

    expected = fit_codes()
    svd = np.linalg.svd

    def flipped_svd(matrix, *args, **kwargs):
        u, s, vt = svd(matrix, *args, **kwargs)
        flips = np.where(np.arange(len(s)) % 2 == 0, -1.0, 1.0)
        return u * flips, s, vt * flips[:, None]

    monkeypatch.setattr(np.linalg, "svd", flipped_svd)
    for got, want in zip(fit_codes(), expected):
        np.testing.assert_array_equal(got, want)


def test_each_method_lives_in_its_own_module_and_imports_no_other_method():
    # dvc.yaml's train stage depends on src/cmhash/methods/<name>.py plus the shared modules only
    import ast

    from cmhash.methods import METHODS

    folder = Path(__file__).resolve().parents[1] / "src/cmhash/methods"
    for name, target in METHODS.items():
        assert target.partition(":")[0] == f"cmhash.methods.{name}"
        tree = ast.parse((folder / f"{name}.py").read_text())
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
        assert not imported & {f"cmhash.methods.{other}" for other in METHODS}, name


def test_ucmfh_nt_xent_by_hand_and_codes_do_not_depend_on_the_batch():
    from cmhash.methods.ucmfh import nt_xent

    a, b = np.array([[1.0, 0.0], [0.6, 0.8]]), np.array([[0.8, 0.6], [0.0, 1.0]])
    views = _rownorm(np.vstack([a, b]))
    sim = views @ views.T / 0.5
    losses = []
    for i, partner in enumerate([2, 3, 0, 1]):
        others = [j for j in range(4) if j != i]
        losses.append(-sim[i, partner] + np.log(np.sum(np.exp(sim[i, others]))))
    assert nt_xent(_t(a), _t(b), 0.5).item() == pytest.approx(np.mean(losses), rel=1e-5)

    # the public code's flaw, fixed: an item's code is the same alone and inside any batch
    image, text = _features()
    settings = {"width": 8, "heads": 2, "feedforward": 16, "hidden": 16, "epochs": 2, "batch_size": 8}
    method = build_method("ucmfh", 8, settings, device="cpu").fit(image, text)
    whole = method.encode(images=image)
    assert np.array_equal(np.vstack([method.encode(images=image[i:i + 1]) for i in range(5)]), whole[:5])
    assert np.array_equal(method.encode(texts=text[7:9]), method.encode(texts=text)[7:9])


def test_training_again_gives_identical_files(project):
    """The model folder is a DVC output: the same fit must give the same bytes, or every fresh
    `dvc repro` would change dvc.lock (a torch model and a numpy one)."""
    import hashlib

    from cmhash.pipeline import stages

    params, layout = project
    stages.encode.run(params, layout, progress=False)
    for method in ("itq", "djsrh"):
        folder = layout.model_dir(method, 16)
        digests = []
        for _ in range(2):
            stages.train.run(params, layout, method, 16, progress=False)
            digests.append({path.name: hashlib.md5(path.read_bytes()).hexdigest() for path in sorted(folder.iterdir())})
        assert sorted(digests[0]) == ["codes.h5", "model.pt", "train.json"]
        assert digests[0] == digests[1], method


class _RunsCommandWhenUnpickled:
    """A crafted object: unpickling it calls os.system (what a malicious model.pt would do)."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        import os

        return (os.system, (self.command,))


def test_crafted_model_file_is_refused_and_runs_nothing(tmp_path):
    import torch

    marker = tmp_path / "executed"
    crafted = tmp_path / "model.pt"
    torch.save({"method": "lsh", "bits": 8, "settings": {}, "seed": 0,
                "state": _RunsCommandWhenUnpickled(f"touch {marker}")}, crafted)
    with pytest.raises(CmhashError, match="refused, nothing in it was run"):
        load_model(crafted, device="cpu")
    assert not marker.exists()
    # the file really is an exploit: an unsafe load runs its command
    torch.load(crafted, weights_only=False)
    assert marker.exists()



def test_a_diverging_loss_stops_training_naming_the_method_epoch_and_cause():
    image, text = _features(n=64)
    with pytest.raises(CmhashError, match=r"JDSH 8 bits: the loss became nan in epoch 1 of 3; the likely cause is a "
                                          r"learning rate too high .*methods.jdsh.lr = 1000000000.0\): lower it"):
        # (build_method refuses lr above 10; the class itself is built here, as a library user may)
        method_class("jdsh")(bits=8, device="cpu", **{**TINY, "epochs": 3, "lr": 1e9}).fit(image, text)
    with pytest.raises(CmhashError, match=r"methods.jdsh: lr is 1000000000.0: input should be less than or equal to 10"):
        build_method("jdsh", 8, {**TINY, "lr": 1e9})


def test_collapsed_codes_are_reported(project):
    from cmhash.codes import SplitCodes, collapse_warnings
    from cmhash.pipeline import stages

    index = np.arange(4)
    same = np.ones((4, 8), np.int8)
    mostly = same.copy()
    mostly[1, :3] = -1
    assert collapse_warnings({"retrieval": SplitCodes(index, images=same, texts=mostly)}) == [
        "all 4 retrieval items share one image code (the codes collapsed)",
        "5 of the 8 bits of the text codes are the same for every retrieval item"]
    params, layout = project
    params["train"]["methods"], params["train"]["bits"] = ["djsrh"], [16]
    params["methods"]["djsrh"]["weight_decay"] = 100.0  # every weight driven to zero: one code for all
    stages.encode.run(params, layout, progress=False)
    stages.train.run(params, layout, "djsrh", 16, progress=False)
    warnings = json.loads((layout.model_dir("djsrh", 16) / "train.json").read_text())["warnings"]
    assert any("bits of the image codes are the same for every retrieval item" in w for w in warnings)
    stages.evaluate.run(params, layout, progress=False)
    assert json.loads(layout.metrics("djsrh", 16).read_text())["warnings"] == warnings
    stages.report.run(params, layout)
    assert f"## Warnings\n\nCodes that carry little information (see train.json of each model):\n\n- djsrh 16 bits: {warnings[0]}" \
        in layout.results_report().read_text()


def test_every_method_keeps_the_contract():
    """Each method is a HashingMethod that declares its kind; encode takes what that kind codes."""
    from cmhash.methods import HashingMethod, method_class
    from cmhash.methods.registry import METHODS

    image, text, labels = _features(with_labels=True)
    for name, settings in SMOKE:
        assert issubclass(method_class(name), HashingMethod)
        method = build_method(name, 8, settings, device="cpu").fit(image, text, labels=labels)
        with pytest.raises(ValueError, match="give both images and texts" if method.fused else "give images or texts"):
            method.encode(images=image) if method.fused else method.encode(images=image, texts=text)
    assert {name for name, _ in SMOKE} == set(METHODS)
