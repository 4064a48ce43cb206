"""The divergence triangle: Eqs. 19-21 (and 17) by hand with the Gaussian log densities written out,
their gradients by finite differences, few-step runs of every config, load + sample + reconstruct
in a fresh process, and the out-of-distribution evaluation."""
import gzip
import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO, SHARED, apply_overrides

from ebm_jax import configlib, train
from configs import triangle as triangle_config
from ebm_jax.methods import get_method, triangle

LOG2PI = math.log(2 * math.pi)


TINY = {"model.generator.hidden": (8,), "model.inference.hidden": (8,), "model.energy.encoder_hidden": (8,),
        "model.energy.features": 4, "model.energy.hidden": (8,), "data.batch_size": 6, "optim.lr": 1e-3, "data.num_train": 500, "data.num_test": 100, "train.num_steps": 4,
        "train.log_every": 2, "train.checkpoint_every": 2, "train.progress_bar": False, "eval.grid_size": 30,
        "eval.num_samples": 100, "sampling.mcmc_steps": 3}


def tiny(variant="", **extra):
    return apply_overrides(triangle_config.make_config(variant), {**TINY, **extra})


def np_gauss(x, mean, sigma):
    r = (np.asarray(x, np.float64) - np.asarray(mean, np.float64)).reshape(len(x), -1)
    return np.sum(-0.5 * r ** 2 / sigma ** 2 - np.log(sigma) - 0.5 * LOG2PI, axis=1)


def test_gaussian_log_densities_written_out():
    rng = np.random.default_rng(0)
    x, m = rng.normal(size=(3, 4)), rng.normal(size=(3, 4))
    np.testing.assert_allclose(triangle.gaussian_log_density(jnp.asarray(x), jnp.asarray(m), 0.7),
                               np_gauss(x, m, 0.7), rtol=1e-5)
    lv = rng.normal(size=(3, 4))
    want = np.sum(-0.5 * (x - m) ** 2 / np.exp(lv) - 0.5 * lv - 0.5 * LOG2PI, axis=1)
    np.testing.assert_allclose(triangle.diagonal_gaussian_log_density(jnp.asarray(x), jnp.asarray(m), jnp.asarray(lv)),
                               want, rtol=1e-5)


def hand_losses(method, params, new_energy, x, key, objective):
    """Eqs. 19, 20 / 17 and 21 in numpy from the networks' outputs."""
    b = x.shape[0]
    k_z, k_e = jax.random.split(key)
    z = np.asarray(jax.random.normal(k_z, (b, 2)), np.float64)
    e = np.asarray(jax.random.normal(k_e, (b, 2)), np.float64)
    mu, lv = (np.asarray(a, np.float64) for a in method.encode(params, x))
    zt = mu + np.exp(0.5 * lv) * e                                   # Eq. 18
    g = lambda zz: np.asarray(method.generate(params, jnp.asarray(zz, jnp.float32)), np.float64)
    f_old = lambda xx, zz: np.asarray(method.f(params, jnp.asarray(xx, jnp.float32), jnp.asarray(zz, jnp.float32)))
    new = {**params, "energy": new_energy}
    f_new = lambda xx, zz: np.asarray(method.f(new, jnp.asarray(xx, jnp.float32), jnp.asarray(zz, jnp.float32)))
    x_syn = g(z)
    l_e = -np.mean(f_old(x, zt)) + np.mean(f_old(x_syn, z))                          # Eq. 19
    log_prior = np.sum(-0.5 * zt ** 2 - 0.5 * LOG2PI, axis=1)
    log_lik = np_gauss(x, g(zt), method.sigma)
    log_q = np.sum(-0.5 * (zt - mu) ** 2 / np.exp(lv) - 0.5 * lv - 0.5 * LOG2PI, axis=1)
    if objective == "kl_difference":                                                # Eq. 20
        l_i = np.mean((log_q - log_prior - log_lik) - (log_q - f_new(x, zt)))
    else:                                                                           # Eq. 17
        l_i = np.mean((log_q - log_prior - log_lik) + (log_q - f_new(x, zt)))
    l_g = -np.mean(log_lik) - np.mean(f_new(x_syn, z))                              # Eq. 21
    return l_e, l_i, l_g


@pytest.mark.parametrize("objective", ["kl_difference", "kl_sum"])
def test_losses_equal_eqs_19_to_21_by_hand(objective):
    # the paper's losses: without the toy default's energy regulariser (its gradient: test_gradients.py)
    c = tiny(**{"method.inference_objective": objective, "method.sigma": 0.5, "optim.name": "sgd",
                "method.energy_reg": 0.0})
    method = get_method(c, (2,))
    state = method.init(jax.random.PRNGKey(0), None)
    x = np.random.default_rng(1).normal(size=(6, 2)).astype(np.float32)
    key = jax.random.PRNGKey(5)
    new, metrics = jax.jit(method.train_step)(state, jnp.asarray(x)[None], key)
    l_e, l_i, l_g = hand_losses(method, state["params"], new["params"]["energy"], x, key, objective)
    assert float(metrics["energy_loss"]) == pytest.approx(l_e, rel=1e-4, abs=1e-5)
    assert float(metrics["inference_loss"]) == pytest.approx(l_i, rel=1e-4, abs=1e-4)
    assert float(metrics["generator_loss"]) == pytest.approx(l_g, rel=1e-4, abs=1e-4)


def test_updates_are_the_gradients_of_the_hand_losses():
    """With SGD, new - old = -lr * dL/dparam; checked by central differences of the numpy losses for one
    entry of each network (the inference model's gradient goes through z~ = mu + V^(1/2) e)."""
    lr = 0.01
    c = tiny(**{"method.sigma": 0.5, "optim.name": "sgd", "optim.lr": lr, "method.energy_reg": 0.0})
    method = get_method(c, (2,))
    state = method.init(jax.random.PRNGKey(0), None)
    x = np.random.default_rng(1).normal(size=(6, 2)).astype(np.float32)
    key = jax.random.PRNGKey(5)
    new, _ = jax.jit(method.train_step)(state, jnp.asarray(x)[None], key)
    params = state["params"]
    h = 1e-3
    # (network, which loss of hand_losses, path to one kernel entry)
    for net, which in (("energy", 0), ("inference", 1), ("generator", 2)):
        leaf_path = sorted(jax.tree_util.tree_flatten_with_path(params[net])[0], key=lambda t: str(t[0]))[0][0]

        def loss_at(delta):
            def bump(path, leaf):
                return leaf.at[(0,) * leaf.ndim].add(delta) if path == leaf_path else leaf
            p = {**params, net: jax.tree_util.tree_map_with_path(bump, params[net])}
            # the EBM's loss is at the old alpha; the others use the updated alpha, held fixed here
            e_new = new["params"]["energy"] if net != "energy" else p["energy"]
            return hand_losses(method, p, e_new, x, key, "kl_difference")[which]

        numeric = (loss_at(h) - loss_at(-h)) / (2 * h)
        old_leaf = [l for pth, l in jax.tree_util.tree_flatten_with_path(params[net])[0] if pth == leaf_path][0]
        new_leaf = [l for pth, l in jax.tree_util.tree_flatten_with_path(new["params"][net])[0] if pth == leaf_path][0]
        analytic = -(float(np.ravel(new_leaf)[0]) - float(np.ravel(old_leaf)[0])) / lr
        assert analytic == pytest.approx(numeric, rel=2e-2, abs=2e-3), net


def test_bad_config_fields_are_named():
    from ebm_jax.methods import ConfigError
    with pytest.raises(ConfigError, match=r"method.inference_objective 'nope' is unknown; valid objectives are"):
        get_method(tiny(**{"method.inference_objective": "nope"}), (2,))
    with pytest.raises(ConfigError, match=r"config.method.sigma=0.0 is invalid"):
        get_method(tiny(**{"method.sigma": 0.0}), (2,))
    with pytest.raises(ValueError, match=r"'conv' needs image data"):
        triangle_config.make_config("swissroll,conv")


def write_idx(path, arr):
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def fake_mnist(folder, n_train=40, n_test=20, seed=0):
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    write_idx(os.path.join(folder, "train-images-idx3-ubyte.gz"), rng.integers(0, 256, (n_train, 28, 28)))
    write_idx(os.path.join(folder, "t10k-images-idx3-ubyte.gz"), rng.integers(0, 256, (n_test, 28, 28)))
    return folder


@pytest.mark.slow
def test_toy_run_loads_samples_and_reconstructs_in_a_fresh_process(tmp_path):
    config = tiny("swissroll")
    train.train_and_evaluate(config, str(tmp_path))
    final = json.load(open(tmp_path / "eval_final.json"))
    assert final["step"] == 4 and final["reconstruction_rmse"] > 0 and np.isfinite(final["kl_data_model"])
    code = f"""
import jax, numpy as np, ebm_jax
m = ebm_jax.load({str(tmp_path)!r})
x = np.asarray(m.sample(jax.random.PRNGKey(0), 7))
mu, lv = m.encode(x)
r = np.asarray(m.reconstruct(x))
e = np.asarray(m.energy(x))
# the energy of x alone is the joint energy at the inferred z
ej = np.asarray(m.method.joint_energy(m.params, x, mu))
assert x.shape == (7, 2) and mu.shape == (7, 2) and lv.shape == (7, 2) and r.shape == (7, 2)
assert np.allclose(e, ej, atol=1e-5) and np.all(np.isfinite(r))
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]


def test_encode_on_a_method_without_inference_is_a_clear_error(tmp_path):
    from conftest import tiny_config
    train.train_and_evaluate(tiny_config(), str(tmp_path))
    import ebm_jax
    m = ebm_jax.load(str(tmp_path))
    with pytest.raises(ValueError, match=r"meg has no inference model, so it has no reconstruct\(\)"):
        m.reconstruct(np.zeros((2, 2), np.float32))


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["mnist", "mnist,conv"])
def test_mnist_configs_few_steps_with_ood_evaluation(tmp_path, variant):
    """On small fake idx files (the real MNIST is in ../shared where present); a second fake set plays
    Fashion-MNIST for the OOD metrics."""
    mnist = fake_mnist(str(tmp_path / "mnist"))
    ood = fake_mnist(str(tmp_path / "ood"), seed=1)
    c = apply_overrides(triangle_config.make_config(variant), {
        "data.data_dir": mnist, "data.batch_size": 8, "train.num_steps": 2, "train.log_every": 1,
        "train.checkpoint_every": 2, "train.progress_bar": False, "eval.ood_data_dir": ood,
        "model.generator.width": 32, "model.generator.channels": 4, "model.generator.hidden": (32,),
        "model.inference.hidden": (32,), "model.inference.channels": 4, "model.energy.channels": 4,
        "model.energy.encoder_hidden": (32,), "model.energy.hidden": (16,)})
    train.train_and_evaluate(c, str(tmp_path / "run"))
    final = json.load(open(tmp_path / "run" / "eval_final.json"))
    for kind in ("energy", "score_norm"):
        for m in ("auroc", "auprc_trapezoid", "average_precision", "fpr80"):
            assert 0.0 <= final[f"ood_{kind}/{m}"] <= 1.0
    assert final["reconstruction_rmse"] > 0
    assert os.path.exists(tmp_path / "run" / "samples.png")


def test_ood_set_of_another_shape_is_refused(tmp_path):
    from ebm_jax.data import DataError
    c = tiny("swissroll", **{"eval.ood_data_dir": fake_mnist(str(tmp_path / "ood"))})
    with pytest.raises(DataError, match=r"eval.ood_data_dir holds images of shape \(28, 28, 1\), but the model's data "
                                        r"have shape \(2,\)"):
        train.train_and_evaluate(c, str(tmp_path / "run"))
    with pytest.raises(DataError, match=r"eval.ood_data_dir '/nope' has no t10k-images-idx3-ubyte.gz"):
        train.train_and_evaluate(tiny("swissroll", **{"eval.ood_data_dir": "/nope"}), str(tmp_path / "run2"))


MNIST_DIR = os.path.join(SHARED, "data", "mnist")


@pytest.mark.skipif(not os.path.exists(os.path.join(MNIST_DIR, "train-images-idx3-ubyte.gz")),
                    reason="../shared/data/mnist is not here (MNIST cannot be downloaded in tests)")
@pytest.mark.slow
def test_real_mnist_config_two_steps(tmp_path):
    c = apply_overrides(configlib.load_config(os.path.join(REPO, "configs", "triangle.py") + ":mnist"),
              {"data.data_dir": MNIST_DIR, "train.num_steps": 2, "train.log_every": 1, "train.checkpoint_every": 2,
               "train.progress_bar": False, "eval.num_reconstruct": 500})
    state = train.train_and_evaluate(c, str(tmp_path))
    assert int(state["step"]) == 2
