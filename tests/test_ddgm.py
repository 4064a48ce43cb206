"""Kim & Bengio's deep directed generative model: Eq. 11 energy, Eq. 15 entropy, Eqs. 12-14 losses,
batch-norm statistics, the uniform prior and short runs of each config."""
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO, SHARED, apply_overrides

from ebm_jax import configlib, train
from configs import ddgm as ddgm_config
from ebm_jax.methods import ddgm, get_method
from ebm_jax.models import ProductOfExpertsEnergy


def softplus(a):
    return np.logaddexp(0.0, a)


def test_energy_is_eq_11_by_hand():
    """No hidden layer (f(x) = x): E = ||x||^2 / sigma^2 - b.x - sum_i softplus(W_i.x + b_i)."""
    m = ProductOfExpertsEnergy((), num_experts=3, sigma=0.5)
    x = np.array([[0.3, -1.2], [2.0, 0.1]], np.float32)
    params = m.init(jax.random.PRNGKey(0), jnp.asarray(x))["params"]
    W, c = np.asarray(params["experts"]["kernel"], np.float64), np.asarray(params["experts"]["bias"], np.float64)
    params = {**params, "b": jnp.array([0.7, -0.4])}
    b = np.array([0.7, -0.4])
    want = np.sum(x ** 2, 1) / 0.25 - x @ b - np.sum(softplus(x @ W + c), axis=1)
    np.testing.assert_allclose(np.asarray(m.apply({"params": params}, jnp.asarray(x))), want, rtol=1e-5)


def test_energy_is_integrable():
    """The quadratic term dominates: E(t u) / t^2 -> 1 / sigma^2 along any direction u, so exp(-E) is
    integrable; checked with random ReLU features for several directions."""
    m = ProductOfExpertsEnergy((64, 64), num_experts=8, sigma=2.0)
    params = m.init(jax.random.PRNGKey(1), jnp.zeros((1, 2)))["params"]
    u = np.random.default_rng(0).normal(size=(16, 2))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    for t in (1e2, 1e4):
        ratio = np.asarray(m.apply({"params": params}, jnp.asarray(t * u, jnp.float32))) / t ** 2
        assert np.all(np.abs(ratio - 0.25) < 30.0 / t)   # the experts only add O(t)


def test_batch_norm_entropy_is_eq_15():
    params = {"bn_scale_0": jnp.array([1.0, 2.0]), "bn_scale_1": jnp.array([0.5]), "Dense_0": {}}
    want = sum(0.5 * math.log(2 * math.pi * math.e * g ** 2) for g in (1.0, 2.0, 0.5))
    assert float(ddgm.batch_norm_entropy(params)) == pytest.approx(want, rel=1e-6)


def tiny(variant="fourspin", **over):
    c = ddgm_config.make_config(variant)
    c.method.penalty_weight = 0.0   # the paper's objective (the toys' default adds a gradient penalty
    c.method.energy_reg = 0.0       # and an energy-magnitude regulariser)
    c.model.energy.hidden = (16,)
    c.model.generator.hidden = (16, 16)
    c.data.batch_size = 8
    c.optim.name = "sgd"
    c.optim.lr = 0.05
    return apply_overrides(c, over)


def test_losses_are_eqs_12_to_15_and_batch_stats_update():
    c = tiny(**{"method.entropy_weight": 0.5})
    method = get_method(c, (2,))
    state = method.init(jax.random.PRNGKey(0), None)
    x = jnp.asarray(np.random.default_rng(1).normal(size=(8, 2)), jnp.float32)
    key = jax.random.PRNGKey(3)
    new, metrics = method.train_step(state, x[None], key)
    k_e, k_g = jax.random.split(key)
    gvars = {"params": state["params"]["generator"], "batch_stats": state["batch_stats"]}
    # Eq. 12 with the generator's samples of z ~ U(-1, 1) in batch mode (training statistics)
    z_e = method.prior(k_e, 8)
    assert np.all(np.abs(np.asarray(z_e)) <= 1.0)
    x_neg = method.gen.net.apply(gvars, z_e, mode="batch")[0]
    e = lambda p, v: np.asarray(method.energy_net.apply({"params": p}, v))
    want_e = e(state["params"]["energy"], x).mean() - e(state["params"]["energy"], x_neg).mean()
    assert float(metrics["energy_loss"]) == pytest.approx(want_e, rel=1e-5, abs=1e-5)
    # Eqs. 13-15 with the energy just updated
    x_gen = method.gen.net.apply(gvars, method.prior(k_g, 8), mode="batch")[0]
    h = sum(float(np.sum(0.5 * np.log(2 * np.pi * np.e * np.asarray(v) ** 2)))
            for k, v in state["params"]["generator"].items() if k.startswith("bn_scale_"))
    want_g = e(new["params"]["energy"], x_gen).mean() - 0.5 * h
    assert float(metrics["generator_loss"]) == pytest.approx(want_g, rel=1e-5, abs=1e-5)
    # the entropy term alone moves every BN scale up by lr * w / gamma (d/dgamma of -w log gamma)
    assert np.all(np.asarray(new["params"]["generator"]["bn_scale_0"]) != 1.0)
    # running averages move towards the batch's statistics; sampling uses them, so a sample does
    # not depend on the rest of its batch
    assert not np.allclose(np.asarray(new["batch_stats"]["mean_0"]), np.asarray(state["batch_stats"]["mean_0"]))
    params = method.inference_params(new)
    z = method.prior(jax.random.PRNGKey(9), 10)
    np.testing.assert_allclose(np.asarray(method.generate(params, z))[:1], np.asarray(method.generate(params, z[:1])),
                               rtol=1e-5)


def test_uniform_prior_log_density_and_latent_mala_stays_in_the_box():
    method = get_method(tiny(), (2,))
    state = method.init(jax.random.PRNGKey(0), None)
    lp = np.asarray(method.log_prior(jnp.array([[0.5, -0.9, 0.0, 1.0], [1.1, 0.0, 0.0, 0.0]])))
    assert lp[0] == 0.0 and lp[1] == -np.inf
    params = method.inference_params(state)
    x, rate = method.sample(params, jax.random.PRNGKey(1), 64, mcmc_steps=20, step_size=0.05)
    assert np.all(np.isfinite(np.asarray(x))) and 0.0 < float(rate) <= 1.0


def test_bad_prior_and_sigma():
    from ebm_jax.methods import ConfigError
    with pytest.raises(ConfigError, match="valid priors"):
        train.Trainer(tiny(**{"model.prior": "laplace"}))
    with pytest.raises(ConfigError, match="sigma"):
        get_method(tiny(**{"model.energy.sigma": 0.0}), (2,))
    for bad in (-0.1, float("nan")):
        with pytest.raises(ConfigError, match=r"config.method.energy_reg=.* is invalid; it must be a finite number >= 0"):
            get_method(tiny(**{"method.energy_reg": bad}), (2,))


@pytest.mark.parametrize("variant", ["fourspin", "twospirals"])
def test_toy_configs_train_load_sample(tmp_path, variant):
    config = configlib.load_config(os.path.join(REPO, "configs", "ddgm.py") + ":" + variant)
    for path, value in {"train.num_steps": 4, "train.log_every": 2, "train.checkpoint_every": 2,
                        "train.progress_bar": False, "eval.grid_size": 40, "eval.num_samples": 100,
                        "sampling.mcmc_steps": 3, "model.energy.hidden": (16,), "model.generator.hidden": (16, 16),
                        "data.num_test": 500}.items():
        node = config
        *parents, leaf = path.split(".")
        for q in parents:
            node = node[q]
        node[leaf] = value
    train.train_and_evaluate(config, str(tmp_path))
    final = json.load(open(os.path.join(str(tmp_path), "eval_final.json")))
    assert np.isfinite(final["kl_data_model"]) and np.isfinite(final["test_nll"])
    import ebm_jax
    model = ebm_jax.load(str(tmp_path))
    x = np.asarray(model.sample(jax.random.PRNGKey(0), 10, mcmc_steps=3))
    assert x.shape == (10, 2) and np.all(np.isfinite(x))


@pytest.mark.skipif(not os.path.isdir(os.path.join(SHARED, "data", "mnist")),
                    reason="needs ../shared/data/mnist (MNIST idx files); not available outside this project's machines")
def test_mnist_config_few_steps(tmp_path):
    config = configlib.load_config(os.path.join(REPO, "configs", "ddgm.py") + ":mnist")
    config.data.data_dir = os.path.join(SHARED, "data", "mnist")
    config.train.num_steps = 3
    config.train.progress_bar = False
    train.train_and_evaluate(config, str(tmp_path))
    import ebm_jax
    model = ebm_jax.load(str(tmp_path))
    x = np.asarray(model.sample(jax.random.PRNGKey(0), 4))
    assert x.shape == (4, 28, 28, 1) and np.all(np.isfinite(x))
    assert np.all(np.abs(x) < 1.0)   # tanh outputs: the images' range


def test_generator_output_tanh_and_unknown_output():
    from ebm_jax.models import NormalizedGeneratorMLP
    from ebm_jax.methods import ConfigError
    z = jax.random.normal(jax.random.PRNGKey(1), (16, 2))
    lin = NormalizedGeneratorMLP((8,), (3,))
    variables = lin.init(jax.random.PRNGKey(0), z)
    x_lin = lin.apply(variables, z)[0]
    x_tanh = NormalizedGeneratorMLP((8,), (3,), output="tanh").apply(variables, z)[0]
    np.testing.assert_allclose(np.asarray(x_tanh), np.tanh(np.asarray(x_lin)), rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigError, match=r"model.generator.output 'relu' is unknown; valid outputs are"):
        NormalizedGeneratorMLP((8,), (3,), output="relu").apply(variables, z)


def test_interpolation_is_linear_in_latent_space(tmp_path):
    """Model.interpolate: row r is G((1 - t) z_r + t z'_r) for t on an even grid in [0, 1]."""
    config = configlib.load_config(os.path.join(REPO, "configs", "ddgm.py") + ":fourspin")
    config.train.num_steps = 2
    config.train.progress_bar = False
    config.model.energy.hidden = (8,)
    config.model.generator.hidden = (8, 8)
    config.eval.grid_size = 20
    config.eval.num_samples = 50
    config.sampling.mcmc_steps = 0
    train.train_and_evaluate(config, str(tmp_path))
    import ebm_jax
    model = ebm_jax.load(str(tmp_path))
    key = jax.random.PRNGKey(3)
    x = np.asarray(model.interpolate(key, rows=3, steps=5)).reshape(3, 5, 2)
    k0, k1 = jax.random.split(key)
    z0, z1 = model.method.prior(k0, 3), model.method.prior(k1, 3)
    np.testing.assert_allclose(x[:, 0], np.asarray(model.generate(z0)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(x[:, -1], np.asarray(model.generate(z1)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(x[:, 2], np.asarray(model.generate(0.5 * z0 + 0.5 * z1)), rtol=1e-5, atol=1e-6)


DEVICE_SCRIPT = """
import sys, numpy as np, jax
sys.path.insert(0, {repo!r})
from ebm_jax import train
from configs import ddgm as ddgm_config
assert jax.device_count() == {n}, jax.devices()
c = ddgm_config.make_config("fourspin")
c.model.energy.hidden = (16,); c.model.generator.hidden = (16, 16); c.data.batch_size = 64
c.optim.name = "sgd"; c.optim.lr = 0.05; c.train.num_steps = 5; c.train.progress_bar = False
c.train.checkpoint_every = 5; c.eval.grid_size = 20; c.eval.num_samples = 64; c.sampling.mcmc_steps = 0
state = jax.device_get(train.train_and_evaluate(c, {wd!r}))
flat = jax.tree_util.tree_flatten_with_path({{"params": state["params"], "stats": state["batch_stats"]}})[0]
np.savez({out!r}, **{{jax.tree_util.keystr(p): v for p, v in flat}})
"""


@pytest.mark.slow
def test_batch_norm_statistics_are_global_across_devices(tmp_path):
    """1 device and 8 (the batch sharded 8 ways) give the same parameters and running averages: batch
    norm normalises with the whole global batch's statistics, not each device's shard."""
    import subprocess
    import sys
    results = {}
    for n in (1, 8):
        out = str(tmp_path / f"p{n}.npz")
        script = DEVICE_SCRIPT.format(repo=REPO, n=n, wd=str(tmp_path / f"wd{n}"), out=out)
        env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={n}", "JAX_PLATFORMS": "cpu"}
        r = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        with np.load(out) as f:
            results[n] = dict(f)
    assert any("mean_0" in k for k in results[1])
    for k in results[1]:
        np.testing.assert_allclose(results[1][k], results[8][k], rtol=2e-4, atol=2e-5, err_msg=k)


def test_celeba_variant_is_section_4s_convolutional_model():
    """64x64: DEM 5x5 convolutions with 128-256-512-1024 feature maps and 1024 experts, DGM 1024-512-256-128
    with 5x5 filters, z of 100; every hidden activation of the DGM batch-normalised (Eq. 15 reads 4 scales)."""
    c = ddgm_config.make_config("celeba")
    method = get_method(c, (64, 64, 3))
    shapes = jax.eval_shape(lambda k: method.init(k, None), jax.random.PRNGKey(0))["params"]
    energy, gen = shapes["energy"], shapes["generator"]
    assert [energy["DDGMConvFeatures_0"][f"Conv_{i}"]["kernel"].shape for i in range(4)] == [
        (5, 5, 3, 128), (5, 5, 128, 256), (5, 5, 256, 512), (5, 5, 512, 1024)]
    assert energy["experts"]["kernel"].shape == (4 * 4 * 1024, 1024)
    assert gen["Dense_0"]["kernel"].shape == (100, 4 * 4 * 1024)
    assert [gen[f"ConvTranspose_{i}"]["kernel"].shape for i in range(4)] == [
        (5, 5, 1024, 512), (5, 5, 512, 256), (5, 5, 256, 128), (5, 5, 128, 3)]
    assert sorted(k for k in gen if k.startswith("bn_scale_")) == [f"bn_scale_{i}" for i in range(4)]
    x = jax.eval_shape(lambda k: method.generate(method.inference_params(method.init(k, None)),
                                                 method.prior(k, 2)), jax.random.PRNGKey(0))
    assert x.shape == (2, 64, 64, 3)


def test_generator_without_batch_norm_is_refused():
    """Eq. 15's entropy is made of the batch-norm scales: a generator without them is an error, not a 0."""
    from ebm_jax.methods import ConfigError
    c = ddgm_config.make_config("celeba")
    c.model.generator.batch_norm = False
    with pytest.raises(ConfigError, match="batch_norm=False"):
        get_method(c, (64, 64, 3))
    with pytest.raises(ConfigError, match="no batch-norm scale"):
        ddgm.batch_norm_entropy({"Dense_0": {"kernel": jnp.ones((2, 2))}})
