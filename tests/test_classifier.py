"""The MNIST classifier port (PyTorch-layout npz -> Flax) and its training script."""
import gzip
import os

import numpy as np
import pytest
from conftest import SHARED

from ebm_jax.evaluation import classifier, train_classifier

WEIGHTS = os.path.join(SHARED, "data", "models", "digit_recognizer_py_0.1.0_mnist_cnn.npz")
MNIST_DIR = os.path.join(SHARED, "data", "mnist")


def random_torch_weights(seed=0):
    rng = np.random.default_rng(seed)
    return {k: (rng.normal(size=s) * (0.3 if len(s) == 4 else 0.05)).astype(np.float32)
            for k, s in classifier.EXPECTED_SHAPES.items()}


def torch_reference_forward(w, x_uint8):
    """The PyTorch network written out in numpy on NCHW arrays: cross-correlation with zero padding 1,
    ReLU, 2x2 max pool (floor), flatten in (C, H, W) order, two dense layers; returns (features, logits)."""
    h = ((x_uint8.astype(np.float64) / 255.0 - 0.1307) / 0.3081)[:, None]  # (N, 1, 28, 28)
    for key in ("conv_layers_0", "conv_layers_3", "conv_layers_6"):
        k, b = w[f"{key}_weight"].astype(np.float64), w[f"{key}_bias"].astype(np.float64)
        n, c, hh, ww = h.shape
        p = np.pad(h, ((0, 0), (0, 0), (1, 1), (1, 1)))
        out = np.zeros((n, k.shape[0], hh, ww))
        for di in range(3):
            for dj in range(3):
                out += np.einsum("nchw,oc->nohw", p[:, :, di:di + hh, dj:dj + ww], k[:, :, di, dj])
        h = np.maximum(out + b[None, :, None, None], 0.0)
        h2, w2 = hh // 2, ww // 2
        h = h[:, :, :2 * h2, :2 * w2].reshape(n, -1, h2, 2, w2, 2).max(axis=(3, 5))
    flat = h.reshape(len(h), -1)
    feats = np.maximum(flat @ w["fc_layers_0_weight"].T + w["fc_layers_0_bias"], 0.0)
    return feats, feats @ w["fc_layers_2_weight"].T + w["fc_layers_2_bias"]


def test_port_matches_a_numpy_pytorch_reference_and_round_trips(tmp_path):
    w = random_torch_weights()
    path = str(tmp_path / "w.npz")
    np.savez(path, **w)
    params = classifier.load_classifier(path)
    x_uint8 = np.random.default_rng(1).integers(0, 256, size=(3, 28, 28)).astype(np.uint8)
    x = (x_uint8.astype(np.float32) / 127.5 - 1.0)[..., None]  # the library's scale, as images.py
    feats_ref, logits_ref = torch_reference_forward(w, x_uint8)
    np.testing.assert_allclose(np.asarray(classifier.classifier_features(params, x)), feats_ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(classifier.classifier_logits(params, x)), logits_ref, rtol=1e-4, atol=1e-4)
    # saving writes back the same PyTorch-layout arrays, bit for bit
    out = str(tmp_path / "again.npz")
    classifier.save_classifier(params, out)
    with np.load(out) as f:
        assert sorted(f.keys()) == sorted(w)
        for k in w:
            np.testing.assert_array_equal(f[k], w[k])


def test_load_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.npz.*do not exist.*train_classifier"):
        classifier.load_classifier(str(tmp_path / "nope.npz"))
    w = random_torch_weights()
    bad = dict(w)
    del bad["fc_layers_2_bias"]
    np.savez(tmp_path / "missing.npz", **bad)
    with pytest.raises(ValueError, match=r"lack the arrays \['fc_layers_2_bias'\]"):
        classifier.load_classifier(str(tmp_path / "missing.npz"))
    bad = dict(w, conv_layers_3_weight=np.zeros((64, 32, 5, 5), np.float32))
    np.savez(tmp_path / "shape.npz", **bad)
    with pytest.raises(ValueError, match=r"conv_layers_3_weight of shape \(64, 32, 5, 5\); valid is \(64, 32, 3, 3\)"):
        classifier.load_classifier(str(tmp_path / "shape.npz"))
    (tmp_path / "text.npz").write_text("not a zip")
    with pytest.raises(ValueError, match="could not be read as an .npz"):
        classifier.load_classifier(str(tmp_path / "text.npz"))
    params = classifier.params_from_torch_layout(w)
    with pytest.raises(ValueError, match=r"shape \(2, 28, 28\); the MNIST classifier takes images of shape \(N, 28, 28, 1\)"):
        classifier.classifier_logits(params, np.zeros((2, 28, 28)))


@pytest.mark.skipif(not (os.path.exists(WEIGHTS) and os.path.isdir(MNIST_DIR)),
                    reason="needs ../shared/data (the digit-recognizer-py weights and MNIST); not available outside "
                           "this project's machines")
def test_pretrained_classifier_reproduces_its_published_accuracy():
    from ebm_jax.data.images import load_idx_split
    params = classifier.load_classifier(WEIGHTS)
    x = load_idx_split(MNIST_DIR, "test")
    y = classifier.load_labels(MNIST_DIR, "test")
    assert round(classifier.accuracy(params, x, y), 4) == 0.9906


def write_idx(path, arr):
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def fake_digits(rng, n):
    """An easy separable task: class k is a bright 6x6 square at one of ten places, on noise."""
    y = rng.integers(0, 10, size=n)
    x = rng.integers(0, 60, size=(n, 28, 28))
    for i, k in enumerate(y):
        r, c = 2 + 12 * (k // 5), 2 + 5 * (k % 5)
        x[i, r:r + 6, c:c + 6] = 255
    return x.astype(np.uint8), y.astype(np.uint8)


def test_training_script_learns_an_easy_task_and_writes_a_loadable_file(tmp_path, capsys):
    rng = np.random.default_rng(0)
    for split, n in (("train", 128), ("t10k", 200)):
        x, y = fake_digits(rng, n)
        write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", x)
        write_idx(tmp_path / f"{split}-labels-idx1-ubyte.gz", y)
    out = str(tmp_path / "clf.npz")
    rc = train_classifier.main(["--data_dir", str(tmp_path), "--out", out, "--epochs", "2", "--batch_size", "32"])
    assert rc == 0
    from ebm_jax.data.images import load_idx_split
    test_x, test_y = load_idx_split(str(tmp_path), "test"), classifier.load_labels(str(tmp_path), "test")
    untrained = train_classifier.init_params(__import__("jax").random.PRNGKey(0))
    assert classifier.accuracy(untrained, test_x, test_y) < 0.4  # chance is 0.1
    acc = classifier.accuracy(classifier.load_classifier(out), test_x, test_y)
    assert acc > 0.9, acc
    assert f"test accuracy {acc:.4f}" in capsys.readouterr().out  # the printed number is the saved network's


def test_training_script_reports_a_missing_data_folder(tmp_path, capsys):
    rc = train_classifier.main(["--data_dir", str(tmp_path / "none"), "--out", str(tmp_path / "c.npz")])
    assert rc == 2 and not (tmp_path / "c.npz").exists()
    assert "error: --data_dir" in capsys.readouterr().err
