"""Stein methods: SVGD against explicit loops, the RBM's exact log Z against numerical integration,
each update against its equation on a small case, and short runs of every config."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO, SHARED, apply_overrides

from ebm_jax import configlib, estimators, train
from ebm_jax.methods import ConfigError, get_method
from configs import steincd as stein_config
from ebm_jax.methods import stein
from ebm_jax.models import AutoencoderEnergy, RBMEnergy, rbm_log_partition

jax.config.update("jax_enable_x64", False)


# ---------------------------------------------------------------- SVGD
def numpy_median_bandwidth(x, scale=1.0):
    m = len(x)
    d = [np.linalg.norm(x[i] - x[j]) for i in range(m) for j in range(i + 1, m)]
    return (scale * np.median(d)) ** 2 / np.log(m)


def numpy_svgd(x, score, h, feat=None, feat_jac=None):
    """phi_i = 1/m sum_j [k(x_j, x_i) score_j + grad_{x_j} k(x_j, x_i)], written as a double loop."""
    m = len(x)
    feat = feat or (lambda v: v)
    feat_jac = feat_jac or (lambda v: np.eye(len(v)))
    phi = np.zeros_like(x)
    for i in range(m):
        for j in range(m):
            diff = feat(x[j]) - feat(x[i])
            k = np.exp(-diff @ diff / h)
            grad_k = -2.0 / h * k * (feat_jac(x[j]).T @ diff)
            phi[i] += k * score[j] + grad_k
    return phi / m


@pytest.mark.parametrize("n", [1, 2, 3, 8, 101, 32640])
def test_median_by_bisection_equals_numpy(n):
    """The sort-free median of non-negative floats (exact order statistics by bisection on the bit
    patterns) against numpy's, with ties, zeros (also -0.0) and odd and even counts."""
    rng = np.random.default_rng(n)
    for v in (rng.exponential(size=n), np.round(rng.exponential(size=n), 1),
              np.where(np.arange(n) % 2 == 0, -0.0, rng.uniform(size=n))):
        v = v.astype(np.float32)
        got = float(jax.jit(estimators.stein.nonnegative_median)(jnp.asarray(v)))
        assert got == np.float32(np.median(np.abs(v))), (n, got, np.median(v))


def test_median_bandwidth_counts_distinct_pairs_only():
    x = np.random.default_rng(0).normal(size=(9, 3)).astype(np.float32)
    np.testing.assert_allclose(float(estimators.median_bandwidth(jnp.asarray(x))), numpy_median_bandwidth(x), rtol=1e-5)
    # the reference's median over the full matrix (zero diagonal included) is smaller
    full = np.median(np.linalg.norm(x[:, None] - x[None], axis=-1)) ** 2 / np.log(9)
    assert full < numpy_median_bandwidth(x)


@pytest.mark.parametrize("bandwidth", [None, 0.7])
def test_svgd_direction_matches_double_loop(bandwidth):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(7, 3)).astype(np.float32)
    score = rng.normal(size=(7, 3)).astype(np.float32)
    h = numpy_median_bandwidth(x) if bandwidth is None else bandwidth
    got = estimators.svgd_direction(jnp.asarray(x), jnp.asarray(score), bandwidth=bandwidth)
    np.testing.assert_allclose(np.asarray(got), numpy_svgd(x, score, h), rtol=1e-4, atol=1e-5)


def test_svgd_direction_closed_form_on_image_shaped_particles():
    """The particles' own RBF kernel (closed form, m x m matrices) on non-flat particles = the double loop."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=(6, 2, 3)).astype(np.float32)
    score = rng.normal(size=(6, 2, 3)).astype(np.float32)
    got = estimators.svgd_direction(jnp.asarray(x), jnp.asarray(score))
    want = numpy_svgd(x.reshape(6, 6), score.reshape(6, 6), numpy_median_bandwidth(x.reshape(6, 6)))
    assert got.shape == x.shape
    np.testing.assert_allclose(np.asarray(got).reshape(6, 6), want, rtol=1e-4, atol=1e-5)


def test_svgd_direction_on_features_and_image_shapes():
    rng = np.random.default_rng(2)
    A = rng.normal(size=(2, 4)).astype(np.float32)
    x = rng.normal(size=(5, 2, 2)).astype(np.float32)       # particles with a non-flat shape
    score = rng.normal(size=(5, 2, 2)).astype(np.float32)
    got = estimators.svgd_direction(jnp.asarray(x), jnp.asarray(score), bandwidth=1.3,
                                    features=lambda v: jnp.asarray(A) @ v.reshape(-1))
    want = numpy_svgd(x.reshape(5, 4), score.reshape(5, 4), 1.3, feat=lambda v: A @ v, feat_jac=lambda v: A)
    np.testing.assert_allclose(np.asarray(got).reshape(5, 4), want, rtol=1e-4, atol=1e-5)


def test_svgd_kernel_switches():
    rng = np.random.default_rng(3)
    x, score = (jnp.asarray(rng.normal(size=(6, 2)), jnp.float32) for _ in range(2))
    np.testing.assert_allclose(np.asarray(estimators.svgd_direction(x, score, kernel="gradient")), np.asarray(score))
    const = np.asarray(estimators.svgd_direction(x, score, kernel="constant"))
    np.testing.assert_allclose(const, np.broadcast_to(np.asarray(score).mean(0), (6, 2)), rtol=1e-6)
    with pytest.raises(ValueError, match="valid kernels"):
        estimators.svgd_direction(x, score, kernel="laplace")


def test_svgd_moves_particles_towards_a_gaussian():
    """Many SVGD steps on N(2, 0.5^2 I) particles from N(0, I): mean and variance approach the target's
    (an end-to-end check of the direction's sign and its repulsive term)."""
    log_prob = lambda v: -jnp.sum((v - 2.0) ** 2, axis=1) / (2 * 0.25)
    x = jax.random.normal(jax.random.PRNGKey(0), (200, 1))
    step = jax.jit(lambda v: estimators.svgd_step(log_prob, v, 0.05))
    for _ in range(1000):
        x = step(x)
    x = np.asarray(x)[:, 0]
    assert abs(x.mean() - 2.0) < 0.05 and abs(x.std() - 0.5) < 0.08


def test_stein_score_matching_forms_agree_with_hand_value():
    """f(x) = -||x - mu||^2 / 2: grad_x f . phi = -(x - mu) . phi, mean over rows."""
    rng = np.random.default_rng(4)
    x, phi, mu = rng.normal(size=(5, 3)), rng.normal(size=(5, 3)), rng.normal(size=3)
    f = lambda v: -0.5 * jnp.sum((v - jnp.asarray(mu, jnp.float32)) ** 2, axis=1)
    want = np.mean(np.sum(-(x - mu) * phi, axis=1))
    # on a quadratic the central difference is exact and the forward one is off by -eps/2 mean ||phi||^2
    eps = 1e-2
    forward = want - 0.5 * eps * np.mean(np.sum(phi ** 2, axis=1))
    for form, value in [("exact", want), ("central", want), ("forward", forward)]:
        got = float(estimators.stein_score_matching(f, jnp.asarray(x, jnp.float32), jnp.asarray(phi, jnp.float32),
                                                    form, eps=eps))
        np.testing.assert_allclose(got, value, rtol=2e-3, atol=1e-4)


# ---------------------------------------------------------------- RBM
def rbm_params(d, l, seed):
    rng = np.random.default_rng(seed)
    return {"B": jnp.asarray(rng.normal(size=(d, l)) * 0.7, jnp.float32),
            "b": jnp.asarray(rng.normal(size=d) * 0.5, jnp.float32),
            "c": jnp.asarray(rng.normal(size=l) * 0.5, jnp.float32)}


def test_rbm_energy_is_the_papers_f():
    p = rbm_params(3, 2, 0)
    x = np.array([[0.3, -1.0, 2.0]], np.float32)
    B, b, c = (np.asarray(p[k], np.float64) for k in "Bbc")
    h = x[0] @ B + c
    f = b @ x[0] - 0.5 * x[0] @ x[0] + np.sum(np.log(np.exp(h) + np.exp(-h)))
    np.testing.assert_allclose(float(RBMEnergy(2).apply({"params": p}, jnp.asarray(x))[0]), -f, rtol=1e-5)


@pytest.mark.parametrize("d,l", [(1, 3), (2, 2)])
def test_rbm_log_partition_against_numerical_integration(d, l):
    p = rbm_params(d, l, d + l)
    side = np.linspace(-12, 12, 1201 if d == 1 else 481)
    grid = np.stack(np.meshgrid(*([side] * d), indexing="ij"), -1).reshape(-1, d)
    f = -np.asarray(RBMEnergy(l).apply({"params": p}, jnp.asarray(grid, jnp.float32)), np.float64)
    cell = (side[1] - side[0]) ** d
    numeric = np.log(np.sum(np.exp(f - f.max())) * cell) + f.max()
    np.testing.assert_allclose(float(rbm_log_partition(p, l)), numeric, rtol=0, atol=2e-3)


def test_rbm_exact_partition_has_a_size_limit():
    with pytest.raises(ConfigError, match="at most 20"):
        rbm_log_partition(rbm_params(2, 21, 0), 21)


def test_autoencoder_energy_eqs_24_and_25():
    m = AutoencoderEnergy((8,), 3, 4, num_classes=3, margin=0.5)
    x = jnp.asarray(np.random.default_rng(5).normal(size=(2, 4)), jnp.float32)
    p = m.init(jax.random.PRNGKey(0), x)
    code = m.apply(p, x, method=m.encode)
    recon = m.apply(p, code, method=lambda mod, c: mod.decoder(c))
    want = np.linalg.norm(np.asarray(x) - np.asarray(recon), axis=1)
    np.testing.assert_allclose(np.asarray(m.apply(p, x)), want, rtol=1e-4)
    y = jnp.array([0, 2])
    logits = np.asarray(m.apply(p, code, method=lambda mod, c: mod.classifier(c)), np.float64)
    ce = -(logits[[0, 1], [0, 2]] - np.log(np.exp(logits).sum(1)))
    np.testing.assert_allclose(np.asarray(m.apply(p, x, y, method=m.joint_energy)), want + np.maximum(0.5, ce), rtol=1e-4)


# ---------------------------------------------------------------- updates equal their equations
def small_config(name, **overrides):
    c = stein_config.make_config(name, "25gaussians")
    c.optim.name = "sgd"
    c.optim.lr = 0.1
    c.data.batch_size = 6
    return apply_overrides(c, overrides)


def rbm_grad_f(p, x):
    """d f / d(B, b, c) at each row of x, by hand: f = b.x - x.x/2 + sum log 2cosh(B^T x + c)."""
    B, b, c = (np.asarray(p[k], np.float64) for k in "Bbc")
    t = np.tanh(x @ B + c)
    return {"B": np.einsum("nd,nl->ndl", x, t), "b": x, "c": t}


def test_steincd_update_is_eq_13():
    c = small_config("steincd", **{"model.energy": __import__("ml_collections").ConfigDict({"kind": "rbm", "num_hidden": 3}),
                                   "method.step_size": 0.3})
    method = get_method(c, (2,))
    state = method.init(jax.random.PRNGKey(0), None)
    p = jax.tree_util.tree_map(np.asarray, state["params"]["energy"])
    x = np.random.default_rng(6).normal(size=(6, 2)).astype(np.float32)
    new, _ = method.train_step(state, jnp.asarray(x)[None], jax.random.PRNGKey(1))
    # x- = x + eps phi*(x), phi from the double loop with grad log p = grad_x f
    B, b, cc = (np.asarray(p[k], np.float64) for k in "Bbc")
    score = b - x + np.tanh(x @ B + cc) @ B.T
    x_neg = x + 0.3 * numpy_svgd(x.astype(np.float64), score, numpy_median_bandwidth(x))
    g_pos, g_neg = rbm_grad_f(p, x.astype(np.float64)), rbm_grad_f(p, x_neg)
    for k in "Bbc":
        want = p[k] + 0.1 * (g_pos[k].mean(0) - g_neg[k].mean(0))   # theta + mu (E_q0 grad f - E_q grad f)
        np.testing.assert_allclose(np.asarray(new["params"]["energy"][k]), want, rtol=1e-4, atol=1e-6)


def test_cd_k_negatives_are_langevin_steps():
    c = small_config("cd", **{"method.k": 3, "method.step_size": 0.01})
    method = get_method(c, (2,))
    state = method.init(jax.random.PRNGKey(0), None)
    x = jnp.asarray(np.random.default_rng(7).normal(size=(6, 2)), jnp.float32)
    x_neg, phi = method.negatives(state["params"]["energy"], x, jax.random.PRNGKey(3))
    want = estimators.langevin_chain(lambda v: -method.energy(state["params"], v), x, jax.random.PRNGKey(3), 3, 0.01)
    assert phi is None
    np.testing.assert_allclose(np.asarray(x_neg), np.asarray(want), rtol=1e-6)


@pytest.mark.parametrize("rule,scale", [("symmetric", 2.0), ("score_matching", 1.0)])
def test_symmetric_and_score_matching_updates_approach_steincd(rule, scale):
    """Eqs. 13, 15 and 17 differ by O(eps): (theta' - theta) of Eq. 13 / eps ~ Eq. 15's ~ Eq. 17's / 2."""
    eps = 1e-3
    base = {"model.energy": __import__("ml_collections").ConfigDict({"kind": "rbm", "num_hidden": 3}),
            "method.step_size": eps}
    x = jnp.asarray(np.random.default_rng(8).normal(size=(6, 2)), jnp.float32)
    deltas = {}
    for r in ("cd", rule):
        method = get_method(small_config("steincd", **base, **{"method.update_rule": r}), (2,))
        state = method.init(jax.random.PRNGKey(0), None)
        new, _ = method.train_step(state, x[None], jax.random.PRNGKey(1))
        deltas[r] = np.asarray(new["params"]["energy"]["B"]) - np.asarray(state["params"]["energy"]["B"])
    np.testing.assert_allclose(deltas[rule] / (1.0 if rule == "score_matching" else eps * scale),
                               deltas["cd"] / eps, rtol=2e-2, atol=1e-4)


def test_steingan_updates_are_eqs_21_and_23():
    """Linear generator G(z) = W z + a (no hidden layer) and an RBM energy, plain SGD:
    eta' = eta + mu/m sum_i dG/deta phi*(x_i);  theta' = theta + mu (mean grad f(x+) - (1-gamma) mean grad f(G(z)))."""
    import ml_collections
    c = small_config("steingan", **{"model.energy": ml_collections.ConfigDict({"kind": "rbm", "num_hidden": 3}),
                                    "model.generator.hidden": (), "method.gamma": 0.3,
                                    "method.energy_reg": 0.0})   # the paper's update; the regulariser: test_gradients
    method = get_method(c, (2,))
    state = method.init(jax.random.PRNGKey(0), None)
    x = np.random.default_rng(9).normal(size=(6, 2)).astype(np.float32)
    key = jax.random.PRNGKey(4)
    new, metrics = method.train_step(state, jnp.asarray(x)[None], key)
    z = np.asarray(method.prior(jax.random.split(key)[0], 6), np.float64)
    gp = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), state["params"]["generator"])
    W, a = gp["MLP_0"]["Dense_0"]["kernel"], gp["MLP_0"]["Dense_0"]["bias"]
    xg = z @ W + a
    p = jax.tree_util.tree_map(np.asarray, state["params"]["energy"])
    B, b, cc = (np.asarray(p[k], np.float64) for k in "Bbc")
    score = b - xg + np.tanh(xg @ B + cc) @ B.T
    phi = numpy_svgd(xg, score, numpy_median_bandwidth(xg, c.method.bandwidth_scale))
    np.testing.assert_allclose(np.asarray(new["params"]["generator"]["MLP_0"]["Dense_0"]["kernel"]),
                               W + 0.1 * z.T @ phi / 6, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(np.asarray(new["params"]["generator"]["MLP_0"]["Dense_0"]["bias"]), a + 0.1 * phi.mean(0),
                               rtol=1e-4, atol=1e-6)
    g_pos, g_neg = rbm_grad_f(p, x.astype(np.float64)), rbm_grad_f(p, xg)
    for k in "Bbc":
        want = p[k] + 0.1 * (g_pos[k].mean(0) - 0.7 * g_neg[k].mean(0))
        np.testing.assert_allclose(np.asarray(new["params"]["energy"][k]), want, rtol=1e-4, atol=1e-6)
    assert float(metrics["gamma"]) == pytest.approx(0.3)


def test_steincd_gan_with_alpha_one_uses_svgd_moved_data():
    """alpha = 1: the energy step equals SteinCD's (same eps), while the generator still learns."""
    # SteinCD's toy defaults differ from SteinGAN's (kernel bandwidth, regulariser, output-scale form); the
    # same settings for both, so that only the negatives' source can differ.
    over = {"method.step_size": 0.2, "method.bandwidth_scale": 0.3, "method.energy_reg": 0.1,
            "model.energy.log_output_scale": True}
    x = jnp.asarray(np.random.default_rng(10).normal(size=(6, 2)), jnp.float32)
    gan = get_method(small_config("steingan", **over, **{"method.alpha": 1.0}), (2,))
    cd = get_method(small_config("steincd", **over), (2,))
    s_gan = gan.init(jax.random.PRNGKey(0), None)
    s_cd = {"params": {"energy": s_gan["params"]["energy"]},
            "opt_state": {"energy": cd.tx_energy.init(s_gan["params"]["energy"])}}
    new_gan, metrics = gan.train_step(s_gan, x[None], jax.random.PRNGKey(2))
    new_cd, _ = cd.train_step(s_cd, x[None], jax.random.PRNGKey(2))
    assert float(metrics["cd_negatives"]) == 1.0
    chex_close = jax.tree_util.tree_map(lambda u, v: np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-5, atol=1e-7),
                                        new_gan["params"]["energy"], new_cd["params"]["energy"])
    del chex_close


@pytest.mark.parametrize("field,value,match", [
    ("method.alpha", 1.5, "probability"), ("method.kernel", "laplace", "valid kernels"),
    ("method.gamma", 1.0, "below 1"), ("method.step_size", 0.0, "step_size"),
    ("method.energy_reg", -0.1, r"method.energy_reg=-0.1 is invalid; it must be a finite number >= 0"),
    ("method.energy_reg", float("nan"), r"method.energy_reg=nan is invalid")])
def test_bad_stein_config_fields(field, value, match):
    c = small_config("steingan", **{field: value})
    with pytest.raises(ConfigError, match=match):
        get_method(c, (2,))


# ---------------------------------------------------------------- runs, load, sample
TINY = {"data.batch_size": 32, "data.num_train": 2000, "data.num_test": 500, "train.num_steps": 4,
        "train.log_every": 2, "train.checkpoint_every": 2, "train.progress_bar": False, "eval.grid_size": 40,
        "eval.num_samples": 100, "sampling.mcmc_steps": 3, "model.energy.hidden": (16, 16)}


@pytest.mark.parametrize("spec", ["steincd.py", "steincd.py:cd1", "steincd.py:score_matching", "steingan.py",
                                  "steingan.py:swissroll"])
def test_toy_configs_train_load_sample(tmp_path, spec):
    config = configlib.load_config(os.path.join(REPO, "configs", spec))
    over = dict(TINY)
    if "steingan" in spec:
        over.update({"model.generator.hidden": (16, 16), "method.alpha": 0.5})
    for path, value in over.items():
        node = config
        *parents, leaf = path.split(".")
        for q in parents:
            node = node[q]
        node[leaf] = value
    state = train.train_and_evaluate(config, str(tmp_path))
    assert int(state["step"]) == 4
    import ebm_jax
    model = ebm_jax.load(str(tmp_path))
    x = np.asarray(model.sample(jax.random.PRNGKey(0), 10))
    assert x.shape == (10, 2) and np.all(np.isfinite(x))
    final = json.load(open(os.path.join(str(tmp_path), "eval_final.json")))
    assert np.isfinite(final["test_nll"])
    if "steincd" in spec:
        with pytest.raises(ConfigError, match="no generator"):
            model.sample(jax.random.PRNGKey(0), 10, mcmc_steps=0)
        with pytest.raises(ValueError, match="no exact partition"):
            model.log_likelihood(x)


@pytest.mark.skipif(not os.path.isdir(os.path.join(SHARED, "data", "mnist")),
                    reason="needs ../shared/data/mnist (MNIST idx files); not available outside this project's machines")
@pytest.mark.parametrize("name", ["steincd", "steingan"])
def test_mnist_rbm_configs_report_exact_log_likelihood(tmp_path, name):
    config = configlib.load_config(os.path.join(REPO, "configs", f"{name}.py") + ":mnist")
    config.data.data_dir = os.path.join(SHARED, "data", "mnist")
    config.train.num_steps = 3
    config.train.eval_every = 0
    config.train.progress_bar = False
    config.sampling.mcmc_steps = 2
    config.eval.num_samples = 8
    train.train_and_evaluate(config, str(tmp_path))
    final = json.load(open(os.path.join(str(tmp_path), "eval_final.json")))
    import ebm_jax
    model = ebm_jax.load(str(tmp_path))
    from ebm_jax.data import get_dataset
    test = get_dataset(model.config.data).test[:100]
    ll = np.asarray(model.log_likelihood(test))
    # the evaluation's figure is the mean exact log-likelihood over the whole test split
    assert np.isfinite(final["test_log_likelihood"]) and abs(ll.mean() - final["test_log_likelihood"]) < 50
    assert final["log_partition_exact"] == pytest.approx(float(model.method.log_partition(model.params)), rel=1e-5)


def test_steingan_speed_up_rule_switches_gamma():
    """Sec. 5.2: gamma_fast replaces gamma exactly when mean E(x+) > mean E(x-)."""
    import ml_collections
    c = small_config("steingan", **{"model.energy": ml_collections.ConfigDict({"kind": "rbm", "num_hidden": 3}),
                                    "method.gamma": 0.3, "method.gamma_fast": 0.9})
    method = get_method(c, (2,))
    state = method.init(jax.random.PRNGKey(0), None)
    seen = set()
    for shift in (-3.0, 3.0):   # data far from / near the RBM's mode moves mean E(x+) above / below mean E(G(z))
        x = jnp.asarray(np.random.default_rng(11).normal(size=(6, 2)) * 0.1 + shift * (shift > 0), jnp.float32)
        _, m = method.train_step(state, x[None], jax.random.PRNGKey(5))
        expected = 0.9 if float(m["energy_real"]) > float(m["energy_negative"]) else 0.3
        assert float(m["gamma"]) == pytest.approx(expected)
        seen.add(expected)
    assert seen == {0.3, 0.9}
