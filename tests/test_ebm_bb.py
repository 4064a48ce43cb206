"""EBM-BB / EBM-0GP / WGAN-0GP: losses equal the paper's equations on hand-checkable cases, and each
config trains a few steps, checkpoints, loads and samples."""
import gzip
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import SHARED, apply_overrides
from ebm_jax import configlib, train
from ebm_jax.methods import ebm_bb

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_prior_entropy():
    for d in (1, 2, 128):
        assert ebm_bb.prior_entropy(d) == pytest.approx(0.5 * d * (1 + math.log(2 * math.pi)))


def test_critic_losses_by_hand():
    # (the EBM-0GP / WGAN-0GP critic loss is MEG's energy_loss, checked by hand in test_meg.py)
    e_real, e_fake = jnp.array([1.0, 3.0]), jnp.array([5.0, 7.0])
    # Eq. 20: hinge inactive when (c/d) mean ||.||^2 <= zeta ...
    loss, pen = ebm_bb.critic_loss_upper_bound(e_real, e_fake, jnp.array([100.0, 300.0]), 0.01, 2, 1.0)
    assert float(pen) == 0.0 and float(loss) == pytest.approx(-4.0)
    # ... and linear beyond it: (0.1 / 2) * 200 - 1 = 9
    loss, pen = ebm_bb.critic_loss_upper_bound(e_real, e_fake, jnp.array([100.0, 300.0]), 0.1, 2, 1.0)
    assert float(pen) == pytest.approx(9.0) and float(loss) == pytest.approx(-4.0 + 9.0)


def test_generator_loss_by_hand():
    assert float(ebm_bb.generator_loss(jnp.array([1.0, 2.0]), jnp.array([0.5, -1.5]))) == pytest.approx(1.5 + 0.5)


def linear_method(name, a, b, probes=1):
    """A method whose generator is G(z) = A z + b (no batch norm, identity activation)."""
    config = configlib.load_config(os.path.join(REPO, "configs", f"{name}.py"))
    config.model.generator.hidden = ()
    config.model.generator.batch_norm = False
    config.method.num_probes = probes
    config.method.lobpcg_iters = 30
    method = ebm_bb.METHOD_CLASSES[name](config, (a.shape[0],))
    state = method.init(jax.random.PRNGKey(0), None)
    state["params"]["generator"] = {"Dense_0": {"kernel": jnp.asarray(a.T), "bias": jnp.asarray(b)}}
    return method, state


def test_upper_bound_term_matches_explicit_formula():
    # Linear G: J = A, s_1 constant, so grad_z log p_g(G(z)) = -z and the Eq. 19 quantity is
    # || A^T grad_x E(A z + b) - z ||^2, written out here with a quadratic energy E(x) = 0.5 x^T Q x.
    rng = np.random.default_rng(0)
    a = rng.normal(size=(3, 2)).astype(np.float32)
    b = rng.normal(size=3).astype(np.float32)
    q = np.diag([1.0, 2.0, 0.5]).astype(np.float32)
    method, state = linear_method("ebm_bb", a, b, probes=40000)
    method.energy = lambda params, x: 0.5 * jnp.einsum("bi,ij,bj->b", x, q, x)
    z = np.array([0.3, -0.7], np.float32)
    fn = method.gen.per_sample(state["params"]["generator"], {}, [])
    w = method._latent_score(fn, jnp.asarray(z), jax.random.PRNGKey(2), jnp.array([1.0, 0.0]))
    np.testing.assert_allclose(w, -z, rtol=1e-5, atol=1e-6)   # s_1 is constant for a linear G
    estimate = float(method._upper_bound_sq(None, fn, jnp.asarray(z), jax.random.PRNGKey(3), w))
    exact = np.sum((a.T @ (q @ (a @ z + b)) - z) ** 2)
    # Hutchinson with Gaussian probes: Var[(g.v)^2] = 2 ||g||^4, so the standard error is sqrt(2/n) ||g||^2
    assert estimate == pytest.approx(exact, rel=5 * math.sqrt(2 / 40000))


def test_generator_entropy_is_d_log_smallest_singular_value():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(4, 2)).astype(np.float32)
    method, state = linear_method("ebm_0gp", a, np.zeros(4, np.float32))
    batch = jnp.zeros((1, int(method.config.data.batch_size), 4))
    _, metrics = jax.jit(method.train_step)(state, batch, jax.random.PRNGKey(0))
    s1 = np.linalg.svd(a, compute_uv=False)[-1]
    assert float(metrics["log_volume"]) == pytest.approx(2 * np.log(s1), rel=1e-4)
    assert float(metrics["s_min_min"]) == pytest.approx(s1, rel=1e-4)
    assert float(metrics["entropy"]) == pytest.approx(ebm_bb.prior_entropy(2) + 2 * np.log(s1), rel=1e-4)
    # C_z of a linear map: the std of A's column norms
    assert float(metrics["anisotropy"]) == pytest.approx(np.std(np.linalg.norm(a, axis=0)), rel=1e-4)


def test_batch_norm_generator_modes():
    from ebm_jax.models import NormalizedGeneratorMLP
    g = NormalizedGeneratorMLP((8, 8), (2,))
    variables = g.init(jax.random.PRNGKey(0), jnp.zeros((1, 2)))
    z = jax.random.normal(jax.random.PRNGKey(1), (16, 2))
    (x, stats), new = g.apply(variables, z, mutable=["batch_stats"])
    per_sample = jax.vmap(lambda zz: g.apply(variables, zz[None], mode="given", stats=stats)[0][0])(z)
    np.testing.assert_allclose(per_sample, x, rtol=1e-5, atol=1e-6)
    h = jax.nn.leaky_relu(z @ variables["params"]["Dense_0"]["kernel"] + variables["params"]["Dense_0"]["bias"], 0.25)
    np.testing.assert_allclose(new["batch_stats"]["mean_0"], 0.1 * h.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(new["batch_stats"]["var_0"], 0.9 + 0.1 * h.var(0) * 16 / 15, rtol=1e-5)


TINY = {"train.num_steps": 4, "train.log_every": 2, "train.checkpoint_every": 2, "train.eval_every": 0,
        "train.progress_bar": False, "data.num_train": 1000, "data.num_test": 200, "data.batch_size": 32,
        "eval.grid_size": 40, "eval.num_samples": 100, "sampling.mcmc_steps": 3}


# the exact log-determinant path once (it is the same loop with another entropy function)
@pytest.mark.parametrize("name,entropy", [("ebm_bb", "lobpcg"), pytest.param("ebm_0gp", "lobpcg", marks=pytest.mark.slow),
                                          pytest.param("wgan_0gp", "lobpcg", marks=pytest.mark.slow),
                                          pytest.param("ebm_bb", "exact", marks=pytest.mark.slow)])
def test_toy_config_trains_loads_and_samples(tmp_path, name, entropy):
    config = apply_overrides(configlib.load_config(os.path.join(REPO, "configs", f"{name}.py") + ":swissroll"),
                   {**TINY, "method.entropy": entropy})
    state = train.train_and_evaluate(config, str(tmp_path))
    assert int(state["step"]) == 4
    v = np.asarray(state["singular_vectors"])
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, rtol=1e-5)   # warm-start vectors kept
    import ebm_jax
    model = ebm_jax.load(str(tmp_path))
    x = np.asarray(model.sample(jax.random.PRNGKey(0), 10))
    assert x.shape == (10, 2) and np.all(np.isfinite(x))
    xm = np.asarray(model.sample(jax.random.PRNGKey(0), 10, mcmc_steps=5))
    assert xm.shape == (10, 2) and np.all(np.isfinite(xm))
    assert np.all(np.isfinite(np.asarray(model.energy(x))))
    final = __import__("json").load(open(os.path.join(str(tmp_path), "eval_final.json")))
    assert np.isfinite(final["test_nll"]) and final["generator/anisotropy"] >= 0


def test_logged_metrics(tmp_path):
    config = apply_overrides(configlib.load_config(os.path.join(REPO, "configs", "ebm_bb.py")), TINY)
    trainer = train.Trainer(config)
    state = trainer.init_state()
    state, metrics = trainer.iteration(state, trainer.batch(0), trainer.base_key)
    assert {"lower_bound", "upper_bound", "entropy", "s_min_mean", "s_min_min", "anisotropy", "penalty"} <= set(metrics)
    assert float(metrics["upper_bound"]) >= float(metrics["lower_bound"])


def _write_idx(path, arr):
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def test_mnist_reader_on_fake_idx_files(tmp_path):
    from ebm_jax.data import DataError, get_dataset
    import ml_collections
    rng = np.random.default_rng(0)
    train_imgs = rng.integers(0, 256, size=(50, 28, 28))
    _write_idx(str(tmp_path / "train-images-idx3-ubyte.gz"), train_imgs)
    _write_idx(str(tmp_path / "t10k-images-idx3-ubyte.gz"), rng.integers(0, 256, size=(20, 28, 28)))
    ds = get_dataset(ml_collections.ConfigDict({"name": "mnist", "data_dir": str(tmp_path), "seed": 0}))
    assert ds.train.shape == (50, 28, 28, 1) and ds.test.shape == (20, 28, 28, 1)
    np.testing.assert_allclose(np.asarray(ds.train)[..., 0], train_imgs / 127.5 - 1.0, atol=1e-6)
    # no idx files there: the TFDS fallback says how to prepare the set instead of downloading it
    with pytest.raises(DataError, match=r"cannot be read from data.data_dir=.*tfds build mnist"):
        get_dataset(ml_collections.ConfigDict({"name": "mnist", "data_dir": str(tmp_path / "nope"), "seed": 0}))
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(b"junk")
    with pytest.raises(DataError, match=r"could not be read"):
        get_dataset(ml_collections.ConfigDict({"name": "mnist", "data_dir": str(tmp_path), "seed": 0}))


MNIST_DIR = os.path.join(SHARED, "data", "mnist")


@pytest.mark.skipif(not os.path.exists(os.path.join(MNIST_DIR, "train-images-idx3-ubyte.gz")),
                    reason="../shared/data/mnist is not here (MNIST cannot be downloaded in tests)")
def test_mnist_configs_differ_in_the_loss_only():
    """So that one compiled MNIST run (below) covers all three."""
    configs = {n: configlib.load_config(os.path.join(REPO, "configs", f"{n}.py") + ":mnist")
               for n in ("ebm_bb", "ebm_0gp", "wgan_0gp")}
    for name in ("ebm_0gp", "wgan_0gp"):
        for section in ("data", "model", "optim", "train", "eval", "sampling"):
            assert configs[name][section].to_dict() == configs["ebm_bb"][section].to_dict(), (name, section)
        assert {**configs[name].method.to_dict(), "name": "ebm_bb"} == configs["ebm_bb"].method.to_dict()


@pytest.mark.slow
def test_mnist_config_few_steps(tmp_path, name="ebm_bb"):
    config = apply_overrides(configlib.load_config(os.path.join(REPO, "configs", f"{name}.py") + ":mnist"),
                   {"data.data_dir": MNIST_DIR, "train.num_steps": 2, "train.log_every": 1,
                    "train.checkpoint_every": 2, "train.progress_bar": False, "eval.num_samples": 16,
                    "sampling.mcmc_steps": 2, "method.lobpcg_iters": 2, "method.anisotropy_samples": 2})
    assert config.model.latent_dim == 128 and config.data.batch_size == 64
    state = train.train_and_evaluate(config, str(tmp_path))
    assert int(state["step"]) == 2
    import ebm_jax
    model = ebm_jax.load(str(tmp_path))
    x = np.asarray(model.sample(jax.random.PRNGKey(0), 4))
    assert x.shape == (4, 28, 28, 1) and np.all(np.isfinite(x))
    assert np.all(np.isfinite(np.asarray(model.energy(x))))


def test_resume_with_other_batch_size_names_the_state_entry(tmp_path):
    from ebm_jax import checkpointing
    config = apply_overrides(configlib.load_config(os.path.join(REPO, "configs", "ebm_0gp.py")), TINY)
    train.train_and_evaluate(config, str(tmp_path))
    config = apply_overrides(configlib.load_config(os.path.join(REPO, "configs", "ebm_0gp.py")),
                   {**TINY, "data.batch_size": 16, "train.num_steps": 8})
    with pytest.raises(checkpointing.CheckpointError,
                       match=r"state entry \['singular_vectors'\] has shape \[32, 2\], but the config builds \[16, 2\]"):
        train.train_and_evaluate(config, str(tmp_path))


@pytest.mark.parametrize("shape", [(2, 100), (100, 2), (2, 2), (3, 2), (100, 1), (1, 7), (1, 1)])
def test_spectral_norm_is_exact_for_a_side_of_one_or_two(shape):
    """Kernels with a side <= 2 get sigma in closed form: numpy's exact value on a plain Gaussian matrix
    (the power iteration's slow case), and the gradient u v^T of a simple singular value."""
    from ebm_jax.models.mlp import spectral_norm_estimate
    w = np.random.default_rng(sum(shape)).normal(size=shape)
    u, sv, vt = np.linalg.svd(w)
    wj = jnp.asarray(w, jnp.float32)
    np.testing.assert_allclose(float(spectral_norm_estimate(wj)), sv[0], rtol=2e-6)
    np.testing.assert_allclose(np.asarray(jax.grad(spectral_norm_estimate)(wj)), np.outer(u[:, 0], vt[0]),
                               rtol=1e-4, atol=1e-5)


def test_spectral_norm_closed_form_degenerate_kernels():
    """A zero kernel, and a 2x2 kernel with two equal singular values (any vector is a top one): the
    value is exact and the gradient finite."""
    from ebm_jax.models.mlp import spectral_norm_estimate
    rot = np.array([[np.cos(0.3), -np.sin(0.3)], [np.sin(0.3), np.cos(0.3)]])
    for w, sigma in [(np.zeros((2, 5)), 0.0), (2.5 * rot, 2.5), (np.zeros((4, 1)), 0.0)]:
        wj = jnp.asarray(w, jnp.float32)
        assert float(spectral_norm_estimate(wj)) == pytest.approx(sigma, abs=1e-6)
        assert np.all(np.isfinite(np.asarray(jax.grad(spectral_norm_estimate)(wj))))


@pytest.mark.parametrize("impl", ["cpu", "native"])
def test_spectral_norm_estimate_against_numpy_svd(impl):
    """The power-iteration sigma of models.spectral_norm_estimate against numpy's exact largest singular
    value, and its gradient against u v^T of numpy's singular vectors, on both paths (the Gram W^T W
    of the CPU rewrite and the native pair of matrix-vector products), and the normalised layer's
    kernel has spectral norm ~1 (the reference toy energy's SN)."""
    from ebm_jax import kernels
    from ebm_jax.models.mlp import SpectralDense, spectral_norm_estimate
    rng = np.random.default_rng(0)
    for shape in [(2, 100), (100, 1), (100, 100), (300, 64), (64, 300)]:
        # a trained layer has a dominant direction; a pure Gaussian matrix is the slow case (see docstring)
        w = rng.normal(size=shape) + 3.0 * np.outer(rng.normal(size=shape[0]), rng.normal(size=shape[1])) / np.sqrt(shape[0])
        u, sv, vt = np.linalg.svd(w)
        # the choice is read while tracing, and jit's cache does not key on it: a fresh function each time
        with kernels.use(impl):
            wj = jnp.asarray(w, jnp.float32)
            np.testing.assert_allclose(float(jax.jit(lambda a: spectral_norm_estimate(a))(wj)), sv[0], rtol=1e-3)
            np.testing.assert_allclose(np.asarray(jax.jit(jax.grad(lambda a: spectral_norm_estimate(a)))(wj)),
                                       np.outer(u[:, 0], vt[0]), atol=2e-3)
    layer = SpectralDense(100)
    params = layer.init(jax.random.PRNGKey(0), jnp.zeros((1, 2)))["params"]
    k = np.asarray(params["kernel"])
    # the layer uses kernel / sigma_hat: its exact spectral norm is sigma / sigma_hat
    x = jnp.asarray(rng.normal(size=(5, 2)), jnp.float32)
    out = layer.apply({"params": params}, x)
    expected = np.asarray(x) @ (k / np.linalg.svd(k, compute_uv=False)[0])
    np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-3, atol=1e-5)


def test_spectral_norm_native_path_forms_no_gram_matrix():
    """On GPUs and TPUs ('native') the power iteration is matrix-vector products only: the 100x100
    Gram W^T W of the CPU rewrite (2 MFLOP that every device repeats) is absent from the program."""
    from ebm_jax import kernels
    from ebm_jax.models.mlp import spectral_norm_estimate
    w = jnp.ones((100, 100), jnp.float32)
    flops = {}
    for impl in ("cpu", "native"):
        with kernels.use(impl):
            cost = jax.jit(lambda a: spectral_norm_estimate(a)).lower(w).compile().cost_analysis()
        flops[impl] = (cost[0] if isinstance(cost, list) else cost)["flops"]
    gram = 2 * 100 ** 3
    assert flops["cpu"] > gram
    assert flops["native"] < 0.5 * gram   # 20 pairs of 100x100 matrix-vector products: 0.8 MFLOP


def test_log_output_scale_multiplies_the_normalised_network_by_exp_s():
    """model.energy.log_output_scale: E = exp(s) f(x) + q ||x||^2 with f the spectrally normalised MLP,
    and dE/ds = exp(s) f(x): the scale's gradient is proportional to the scale, so Adam's ~lr steps on
    s grow it geometrically. Checked against the same network with the linear scale set to exp(s)."""
    from ebm_jax.models.energies import build_energy
    cfg = configlib.load_config("configs/steincd.py").model.energy
    x = jnp.asarray(np.random.default_rng(0).normal(size=(6, 2)), jnp.float32)
    lin = build_energy(cfg, (2,))
    cfg.log_output_scale = True
    log = build_energy(cfg, (2,))
    p_log = log.init(jax.random.PRNGKey(0), x)["params"]
    assert set(p_log) == {"MLP_0", "log_output_scale"} and float(p_log["log_output_scale"]) == 0.0
    s = 1.3
    p_log = {**p_log, "log_output_scale": jnp.float32(s)}
    p_lin = {"MLP_0": p_log["MLP_0"], "output_scale": jnp.float32(np.exp(s))}
    e_lin = np.asarray(lin.apply({"params": p_lin}, x))
    np.testing.assert_allclose(np.asarray(log.apply({"params": p_log}, x)), e_lin, rtol=1e-5)
    f = (e_lin - cfg.quadratic * np.sum(np.asarray(x) ** 2, axis=1)) / np.exp(s)   # the normalised network
    grad = jax.grad(lambda p: log.apply({"params": p}, x).sum())(p_log)["log_output_scale"]
    np.testing.assert_allclose(float(grad), np.exp(s) * f.sum(), rtol=1e-4)
    import ml_collections
    from ebm_jax.methods.base import ConfigError
    bad = ml_collections.ConfigDict({**cfg.to_dict(), "log_output_scale": 1})   # a config built without the field's type
    with pytest.raises(ConfigError, match=r"model.energy.log_output_scale=1 is invalid; it must be True or False"):
        build_energy(bad, (2,))


def test_output_scale_init_sets_the_initial_sharpness_of_the_normalised_energy():
    """model.energy.output_scale_init=c starts the learned scale at c (E = c f(x) + q ||x||^2 at init, f
    the spectrally normalised network), and at log(c) when the scale is learned as exp(s); the scale
    still gets its gradient f(x) summed. Checked against the same network built with the default init 1."""
    from ebm_jax.models.energies import build_energy
    cfg = configlib.load_config("configs/steincd.py").model.energy
    x = jnp.asarray(np.random.default_rng(1).normal(size=(5, 2)), jnp.float32)
    p_one = build_energy(cfg, (2,)).init(jax.random.PRNGKey(0), x)["params"]
    e_one = np.asarray(build_energy(cfg, (2,)).apply({"params": p_one}, x))
    f = e_one - cfg.quadratic * np.sum(np.asarray(x) ** 2, axis=1)
    cfg.output_scale_init = 30.0
    net = build_energy(cfg, (2,))
    p = net.init(jax.random.PRNGKey(0), x)["params"]
    assert float(p["output_scale"]) == 30.0
    np.testing.assert_allclose(np.asarray(net.apply({"params": p}, x)) - (e_one - f), 30.0 * f, rtol=1e-5)
    grad = jax.grad(lambda q: net.apply({"params": q}, x).sum())(p)["output_scale"]
    np.testing.assert_allclose(float(grad), f.sum(), rtol=1e-4)
    cfg.log_output_scale = True
    p_log = build_energy(cfg, (2,)).init(jax.random.PRNGKey(0), x)["params"]
    np.testing.assert_allclose(float(p_log["log_output_scale"]), np.log(30.0), rtol=1e-6)
    from ebm_jax.methods.base import ConfigError
    for bad in (0.0, float("inf")):
        cfg.output_scale_init = bad
        with pytest.raises(ConfigError, match=rf"model.energy.output_scale_init={bad!r} is invalid; it must be a finite number > 0"):
            build_energy(cfg, (2,))


def test_persistent_spectral_norm_is_one_power_iteration_a_call():
    """With its 'spectral' collection passed (the divergence triangle keeps it in its state), a spectrally
    normalised layer runs one power iteration a call from the stored right singular vector, stores the
    new one when the collection is mutable, and converges to numpy's largest singular value; the
    gradient in the kernel is that of x W / sigma with sigma = u^T W v, u and v held fixed. Without the
    collection it is the stateless estimate, as before."""
    from ebm_jax.models.mlp import SpectralDense, spectral_norm_estimate
    rng = np.random.default_rng(3)
    layer = SpectralDense(20)
    x = jnp.asarray(rng.normal(size=(4, 30)), jnp.float32)
    params = layer.init(jax.random.PRNGKey(0), x)["params"]
    w = rng.normal(size=(30, 20)) + 2.0 * np.outer(rng.normal(size=30), rng.normal(size=20)) / np.sqrt(30)
    params = {"kernel": jnp.asarray(w, jnp.float32), "bias": params["bias"]}
    out = layer.apply({"params": params}, x)
    np.testing.assert_allclose(np.asarray(out), np.asarray(x) @ (w / float(spectral_norm_estimate(params["kernel"]))),
                               rtol=1e-5, atol=1e-6)
    # a first mutable call with nothing stored starts the vector; then one numpy power step a call
    spectral = layer.apply({"params": params}, x, mutable=["spectral"])[1]["spectral"]
    v = np.asarray(spectral["v"], np.float64)
    for _ in range(30):
        u = w @ v / np.linalg.norm(w @ v)
        v_next = w.T @ u / np.linalg.norm(w.T @ u)
        sigma = u @ w @ v_next
        out, new = layer.apply({"params": params, "spectral": spectral}, x, mutable=["spectral"])
        np.testing.assert_allclose(np.asarray(new["spectral"]["v"]), v_next, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(np.asarray(out), np.asarray(x) @ w / sigma, rtol=1e-4, atol=1e-5)
        spectral, v = new["spectral"], v_next
    np.testing.assert_allclose(sigma, np.linalg.svd(w, compute_uv=False)[0], rtol=1e-5)
    # read-only (evaluation): one numpy step from the stored vector, nothing stored
    u = w @ v / np.linalg.norm(w @ v)
    v_next = w.T @ u / np.linalg.norm(w.T @ u)
    sigma = u @ w @ v_next
    frozen = layer.apply({"params": params, "spectral": spectral}, x)
    np.testing.assert_allclose(np.asarray(frozen), np.asarray(x) @ w / sigma, rtol=1e-4, atol=1e-5)
    # d/dW sum(x W / sigma) = (x^T 1) / sigma - sum(x W) / sigma^2 u v^T, with u, v from that step
    xs = np.asarray(x, np.float64)
    want = np.outer(xs.sum(0), np.ones(20)) / sigma - (xs @ w).sum() / sigma ** 2 * np.outer(u, v_next)
    got = jax.grad(lambda k: jnp.sum(layer.apply({"params": {**params, "kernel": k}, "spectral": spectral}, x)))(
        params["kernel"])
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-3, atol=1e-4)
