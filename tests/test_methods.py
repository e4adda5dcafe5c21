import numpy as np
import pytest
import torch

from cmhash.errors import CmhashError
from cmhash.methods import build_method, load_model, save_model
from cmhash.methods.djsrh import djsrh_loss, joint_semantic_affinity


def _features(seed=0, n=40):
    rng = np.random.default_rng(seed)
    topics = rng.integers(0, 4, n)
    image = rng.normal(size=(4, 12))[topics] + 0.3 * rng.normal(size=(n, 12))
    text = rng.normal(size=(4, 9))[topics] + 0.3 * rng.normal(size=(n, 9))
    return image.astype(np.float32), text.astype(np.float32)


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
    assert djsrh_loss(bi, bt, torch.tensor(expected_s, dtype=torch.float32), 0.1, 0.2).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("name, settings", [("lsh", {}), ("itq", {"iterations": 5}), ("djsrh", {"hidden": 16, "epochs": 3, "batch_size": 8})])
def test_methods_fit_encode_save_load(tmp_path, name, settings):
    image, text = _features()
    method = build_method(name, 8, settings, seed=1, device="cpu").fit(image, text)
    codes = method.encode_images(image), method.encode_texts(text)
    for c in codes:
        assert c.shape == (40, 8) and c.dtype == np.int8 and set(np.unique(c)) <= {-1, 1}
    again = build_method(name, 8, settings, seed=1, device="cpu").fit(image, text)
    assert np.array_equal(again.encode_images(image), codes[0])  # seeded: reproducible
    save_model(tmp_path / "model.pt", name, method, settings, seed=1)
    loaded = load_model(tmp_path / "model.pt", device="cpu")
    assert np.array_equal(loaded.encode_texts(text), codes[1])


def test_djsrh_loss_decreases():
    image, text = _features(n=64)
    method = build_method("djsrh", 16, {"hidden": 32, "epochs": 15, "batch_size": 16, "lr_image": 0.05, "lr_text": 0.05}, device="cpu").fit(image, text)
    assert method.history[-1] < method.history[0]


def test_aligned_baselines_share_one_projection():
    image, _ = _features()
    method = build_method("lsh", 8, {}, device="cpu").fit(image, image.copy(), aligned=True)
    assert np.array_equal(method.encode_images(image), method.encode_texts(image))


def test_unknown_method_and_setting_are_clear_errors():
    with pytest.raises(CmhashError, match="known methods"):
        build_method("nope", 8, {})
    with pytest.raises(CmhashError, match="methods.djsrh has unknown setting"):
        build_method("djsrh", 8, {"learning_rate": 1})
    with pytest.raises(CmhashError, match="ITQ needs bits"):
        build_method("itq", 10, {}).fit(*_features())
