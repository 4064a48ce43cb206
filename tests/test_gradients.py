"""One real iteration of every method's train_step against its paper's update, in float64.

Each test builds a tiny network, sets SGD with learning rate 1 (so that each network's update IS
minus the gradient of its loss), runs ONE `train_step`, and compares the new parameters of EVERY
network with `old - jax.grad(loss)` where `loss` is written here, afresh, from the paper's equation.
The losses below use the library's networks (their `apply`) and its random draws (the same key
splits as `train_step`, restated), never its loss helpers, estimators or SVGD / entropy code.
Entropy terms are included: MEG's I_JSD through G(z) (Eq. 8), Kim & Bengio's batch-norm entropy
(Eq. 15), EBM-BB's d log s_1 from numpy's SVD of the explicit Jacobian (Eq. 11) and the upper
bound's latent score (Eqs. 18-20), SteinGAN's amortized SVGD (Eq. 21), the divergence triangle's
Eqs. 17 / 19-21.
"""
import math

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from conftest import apply_overrides
from ebm_jax.methods import get_method

LOG_2PI = math.log(2.0 * math.pi)


# ---------------------------------------------------------------------------------------------- helpers
def sgd(config, **overrides):
    """SGD with lr 1 and no schedule or clipping: one update is minus the gradient."""
    return apply_overrides(config, {"optim.name": "sgd", "optim.lr": 1.0, "optim.schedule": "constant",
                                    "optim.grad_clip": 0.0, **overrides})


def to64(tree):
    return jax.tree_util.tree_map(
        lambda a: jnp.asarray(a, jnp.float64) if jnp.issubdtype(jnp.asarray(a).dtype, jnp.floating) else a, tree)


def one_iteration(method, batch, key, seed=0):
    """(state before, state after, metrics) of one jitted train_step in float64."""
    state = to64(method.init(jax.random.PRNGKey(seed), None))
    new_state, metrics = jax.jit(method.train_step)(state, jnp.asarray(batch, jnp.float64), key)
    return state, new_state, metrics


def sgd_step(params, loss_fn):
    """params - grad(loss_fn)(params): the update SGD(lr=1) makes."""
    return jax.tree_util.tree_map(lambda p, g: p - g, params, jax.grad(loss_fn)(params))


def assert_trees_close(got, want, rtol=1e-9, atol=1e-11, what=""):
    """Same tree, every leaf within tolerance (chex names the first leaf that is not)."""
    try:
        chex.assert_trees_all_close(got, want, rtol=rtol, atol=atol)
    except AssertionError as e:
        raise AssertionError(f"{what}: {e}") from None


def assert_changed(old, new):
    """The update moved every network (a test of an update that is zero would prove nothing)."""
    diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree_util.tree_leaves(old),
                                                               jax.tree_util.tree_leaves(new)))
    assert diff > 1e-6


def data(shape, seed=0, scale=1.0):
    return scale * np.random.default_rng(seed).normal(size=shape)


def per_row_grad(f, x):
    """grad_x f at every row of x, for f mapping a batch (B, D) to (B,) with independent rows."""
    return jax.vmap(lambda xi: jax.grad(lambda v: f(v[None])[0])(xi))(x)


def svgd_phi(x, score, scale=1.0):
    """phi*(x_i) = (1/m) sum_j [k(x_j, x_i) score_j + grad_{x_j} k(x_j, x_i)] (SVGD, Liu & Wang 2016,
    as Eq. 5 of the Stein paper), RBF k(a, b) = exp(-||a - b||^2 / h), h = (scale med)^2 / log m with med
    the median distance over the pairs i < j; written as explicit sums over pairs."""
    m = x.shape[0]
    xs = np.asarray(jax.lax.stop_gradient(x), np.float64)
    dist = [np.linalg.norm(xs[i] - xs[j]) for i in range(m) for j in range(i + 1, m)]
    h = (scale * np.median(dist)) ** 2 / np.log(m)
    out = []
    for i in range(m):
        acc = 0.0
        for j in range(m):
            k = jnp.exp(-jnp.sum((x[j] - x[i]) ** 2) / h)
            acc = acc + k * score[j] + (2.0 / h) * (x[i] - x[j]) * k
        out.append(acc / m)
    return jnp.stack(out)


# ----------------------------------------------------------------------------------------------- MEG
@pytest.mark.parametrize("entropy_weight,energy_reg", [(1.0, 0.0), (0.5, 0.2)])
def test_meg_iteration_is_algorithm_1(entropy_weight, energy_reg):
    """n_critic = 2 energy steps on Eq. 9 + lambda * zero-centred penalty (+ alpha (E(x+)^2 + E(x-)^2),
    Du & Mordatch's regulariser, when alpha > 0), then G and T on L_G = mean E(G(z)) - w I_JSD(G(z), z)
    (Eqs. 7-8; T maximises the same w I_JSD)."""
    from configs import meg
    config = sgd(meg.get_config(), **{
        "model.energy.hidden": (8, 8), "model.generator.hidden": (8, 8), "model.statistics.hidden": (8, 8),
        "method.n_critic": 2, "method.penalty_weight": 0.3, "method.entropy_weight": entropy_weight,
        "method.energy_reg": energy_reg, "data.batch_size": 6})
    with jax.enable_x64(True):
        method = get_method(config, (2,))
        batch, key = data((2, 6, 2), 1, 0.5), jax.random.PRNGKey(3)
        old, new, _ = one_iteration(method, batch, key)
        p = old["params"]
        E = lambda ep, x: method.energy_net.apply({"params": ep}, x)           # noqa: E731
        G = lambda gp, z: method.gen.net.apply({"params": gp}, z)              # noqa: E731
        T = lambda tp, x, z: method.statistics_net.apply({"params": tp}, x, z)  # noqa: E731
        k_critic, k_z, k_shuffle = jax.random.split(key, 3)

        e = p["energy"]
        for i, k in enumerate(jax.random.split(k_critic, 2)):
            x_real = jnp.asarray(batch[i])
            x_fake = G(p["generator"], jax.random.normal(k, (6, 2)))

            def critic_loss(ep):
                grads = per_row_grad(lambda v: E(ep, v), x_real)
                return (jnp.mean(E(ep, x_real)) - jnp.mean(E(ep, x_fake))
                        + 0.3 * jnp.mean(jnp.sum(grads ** 2, axis=1))
                        + energy_reg * (jnp.mean(E(ep, x_real) ** 2) + jnp.mean(E(ep, x_fake) ** 2)))
            e = sgd_step(e, critic_loss)

        z = jax.random.normal(k_z, (6, 2))
        # the per-dimension shuffle of Algorithm 1: an independent permutation of each column
        z_bar = jnp.stack([jax.random.permutation(kk, z[:, j])
                           for j, kk in enumerate(jax.random.split(k_shuffle, 2))], axis=1)

        def generator_loss(gt):
            x = G(gt[0], z)
            i_jsd = jnp.mean(-jax.nn.softplus(-T(gt[1], x, z))) - jnp.mean(jax.nn.softplus(T(gt[1], x, z_bar)))
            return jnp.mean(E(e, x)) - entropy_weight * i_jsd
        g, t = sgd_step((p["generator"], p["statistics"]), generator_loss)

        assert_trees_close(new["params"]["energy"], e, what="energy")
        assert_trees_close(new["params"]["generator"], g, what="generator")
        assert_trees_close(new["params"]["statistics"], t, what="statistics network")
        for name in ("energy", "generator", "statistics"):
            assert_changed(p[name], new["params"][name])


# ---------------------------------------------------------------------------------------------- DDGM
def test_ddgm_iteration_is_eqs_12_to_15():
    """Energy on Eq. 12 (samples of the current G fixed) with the toys' zero-centred penalty on data and
    Du & Mordatch's alpha (E(x+)^2 + E(x-)^2) (neither in the paper); generator on Eq. 13 with Eq. 15's
    entropy sum_a 0.5 log(2 pi e gamma_a^2) over its batch-norm scales; running averages updated."""
    from configs import ddgm as ddgm_config
    config = sgd(ddgm_config.make_config(), **{"model.energy.hidden": (8, 8), "model.energy.num_experts": 3,
                                        "model.generator.hidden": (8, 8), "model.latent_dim": 3,
                                        "method.entropy_weight": 0.7, "method.penalty_weight": 0.2,
                                        "method.energy_reg": 0.25, "data.batch_size": 6})
    with jax.enable_x64(True):
        method = get_method(config, (2,))
        batch, key = data((1, 6, 2), 2, 0.5), jax.random.PRNGKey(4)
        old, new, _ = one_iteration(method, batch, key)
        p, stats = old["params"], old["batch_stats"]
        net = method.gen.net
        E = lambda ep, x: method.energy_net.apply({"params": ep}, x)  # noqa: E731

        def G(gp, z):  # training mode: the batch's own statistics
            return net.apply({"params": gp, "batch_stats": stats}, z, mode="batch")

        k_e, k_g = jax.random.split(key)
        x = jnp.asarray(batch[0])
        x_neg = G(p["generator"], jax.random.uniform(k_e, (6, 3), minval=-1.0, maxval=1.0))[0]
        # Eq. 12, plus the zero-centred penalty on data and the energy regulariser of the toy defaults
        # (not in the paper)
        e = sgd_step(p["energy"], lambda ep: jnp.mean(E(ep, x)) - jnp.mean(E(ep, x_neg))
                     + 0.2 * jnp.mean(jnp.sum(per_row_grad(lambda v: E(ep, v), x) ** 2, axis=1))
                     + 0.25 * (jnp.mean(E(ep, x) ** 2) + jnp.mean(E(ep, x_neg) ** 2)))

        z = jax.random.uniform(k_g, (6, 3), minval=-1.0, maxval=1.0)

        def generator_loss(gp):
            gammas = [gp[k] for k in gp if k.startswith("bn_scale_")]
            assert len(gammas) == 2
            entropy = sum(jnp.sum(0.5 * jnp.log(2.0 * math.pi * math.e * gm ** 2)) for gm in gammas)
            return jnp.mean(E(e, G(gp, z)[0])) - 0.7 * entropy
        g = sgd_step(p["generator"], generator_loss)
        assert_trees_close(new["params"]["energy"], e, what="energy")
        assert_trees_close(new["params"]["generator"], g, what="generator")
        for name in ("energy", "generator"):
            assert_changed(p[name], new["params"][name])
        # running averages: 0.9 old + 0.1 batch (torch's momentum 0.1), the variance unbiased
        used = G(p["generator"], z)[1]
        for i, (mean, var) in enumerate(used):
            np.testing.assert_allclose(np.asarray(new["batch_stats"][f"mean_{i}"]),
                                       np.asarray(0.9 * stats[f"mean_{i}"] + 0.1 * mean), rtol=1e-10)
            np.testing.assert_allclose(np.asarray(new["batch_stats"][f"var_{i}"]),
                                       np.asarray(0.9 * stats[f"var_{i}"] + 0.1 * var * 6 / 5), rtol=1e-10)


# ------------------------------------------------------------------------------- EBM-BB / 0GP / WGAN
def generator_pieces(method, gp, stats_running, z):
    """x = G(z) with the batch's statistics, and the per-sample map z_i -> G(z_i) with those statistics
    (which depend on the parameters) held as the batch's: the map whose Jacobian the entropy uses."""
    net = method.gen.net
    variables = {"params": gp, "batch_stats": stats_running}
    x, used = net.apply(variables, z, mode="batch")
    return x, (lambda zi: net.apply(variables, zi[None], mode="given", stats=used)[0][0])


def numpy_singular_vectors(fn, zs):
    """(u_1, s_1, v_1) of every explicit Jacobian J_i = d fn / dz at the rows of zs, by numpy's SVD."""
    out = []
    for zi in zs:
        jac = np.asarray(jax.jacfwd(lambda v: jnp.ravel(fn(v)))(zi), np.float64)
        u, s, vt = np.linalg.svd(jac, full_matrices=False)
        out.append((u[:, -1], s[-1], vt[-1]))
    return out


def log_s1(fn, zi, u, v, d):
    """d log s_1 at zi, as d log |u^T J v| with numpy's singular vectors held fixed: the same value,
    and the exact first derivative (d s_1 = u^T dJ v), in the parameters and in z."""
    return d * jnp.log(jnp.abs(u @ jax.jvp(lambda q: jnp.ravel(fn(q)), (zi,), (v,))[1]))


def prior_entropy(d, prior):
    return d * math.log(2.0) if prior == "uniform" else 0.5 * d * (1.0 + LOG_2PI)


def bounds_config(name, entropy, d, prior="gaussian", **extra):
    from configs import ebm_bb as bounds_config_file
    return sgd(bounds_config_file.make_config(name), **{
        "model.energy.hidden": (8, 8), "model.generator.hidden": (8, 8), "model.latent_dim": d,
        "model.prior": prior, "method.entropy": entropy, "method.lanczos_iters": 0, "method.lobpcg_iters": 80,
        "method.bound_c": 0.5, "method.zeta": 0.01, "method.num_probes": 3, "method.penalty_weight": 0.2,
        "method.anisotropy_samples": 0, "data.batch_size": 5, **extra})


@pytest.mark.parametrize("name,entropy,d,D,prior,energy_reg", [
    ("ebm_bb", "svd", 2, 2, "gaussian", 0.0),        # the toys' default: the exact 2x2 path
    ("ebm_bb", "svd", 2, 2, "gaussian", 0.3),        # with Du & Mordatch's regulariser on the critic
    ("ebm_bb", "lanczos", 3, 5, "gaussian", 0.0),    # Golub-Kahan with d steps: exact
    ("ebm_bb", "svd", 3, 5, "uniform", 0.0),         # U(-1, 1) prior: H[p_0] = d log 2, latent score 0
    ("ebm_0gp", "lobpcg", 3, 5, "gaussian", 0.0),    # the paper's LOBPCG, converged
    ("ebm_0gp", "exact", 3, 5, "gaussian", 0.3),     # 0.5 log det J^T J in place of d log s_1
    ("wgan_0gp", "svd", 3, 5, "gaussian", 0.0),      # no entropy term
])
def test_bounds_iteration_is_eqs_11_and_15_to_20(name, entropy, d, D, prior, energy_reg):
    """EBM-BB: critic on Eq. 20, mean E(x) - mean E(G(z)) + [(c/d) mean_z ||grad_x E(G(z)) J_z + w_z||^2 -
    zeta]_+ with w_z = grad_z log p_0(z) - grad_z d log s_1(z) and Hutchinson's probes (Eq. 19); EBM-0GP /
    WGAN-0GP: critic on Eq. 9 + lambda mean ||grad_x E(x)||^2; either plus energy_reg (mean E(x)^2 +
    mean E(G(z))^2), not in the paper. Generator on -(Eq. 11): mean E(G(z)) - mean_z d log s_1(z) (EBM-BB,
    EBM-0GP; 0.5 log det J^T J with entropy='exact'), mean E(G(z)) (WGAN-0GP)."""
    config = bounds_config(name, entropy, d, prior, **{"method.energy_reg": energy_reg})
    with jax.enable_x64(True):
        method = get_method(config, (D,))
        batch, key = data((1, 5, D), 3, 0.5), jax.random.PRNGKey(5)
        old, new, metrics = one_iteration(method, batch, key)
        p, stats = old["params"], old["batch_stats"]
        E = lambda ep, x: method.energy_net.apply({"params": ep}, x)  # noqa: E731
        k_z, k_critic, _ = jax.random.split(key, 3)
        if prior == "uniform":
            z_all = jax.random.uniform(k_z, (10, d), minval=-1.0, maxval=1.0).reshape(2, 5, d)
        else:
            z_all = jax.random.normal(k_z, (10, d)).reshape(2, 5, d)

        # ---- critic
        z_c = z_all[0]
        x_fake, fn = generator_pieces(method, p["generator"], stats, z_c)
        x_real = jnp.asarray(batch[0])
        if name == "ebm_bb":
            svd = numpy_singular_vectors(fn, z_c)
            prior_score = (lambda z: 0.0 * z) if prior == "uniform" else (lambda z: -z)
            w = jnp.stack([prior_score(z_c[i]) - jax.grad(lambda q: log_s1(fn, q, svd[i][0], svd[i][2], d))(z_c[i])
                           for i in range(5)])
            _, k_probe = jax.random.split(jax.random.split(k_critic, 1)[0])
            probes = [jax.random.normal(kk, (3, d)) for kk in jax.random.split(k_probe, 5)]
            jacs = [jax.jacfwd(fn)(z_c[i]) for i in range(5)]

            def critic_loss(ep):
                u = per_row_grad(lambda v: E(ep, v), x_fake)          # grad_x E at G(z_i)
                sq = jnp.stack([jnp.mean((probes[i] @ (jacs[i].T @ u[i] + w[i])) ** 2) for i in range(5)])
                penalty = jnp.maximum(0.5 / d * jnp.mean(sq) - 0.01, 0.0)
                return (jnp.mean(E(ep, x_real)) - jnp.mean(E(ep, x_fake)) + penalty
                        + energy_reg * (jnp.mean(E(ep, x_real) ** 2) + jnp.mean(E(ep, x_fake) ** 2)))
        else:
            def critic_loss(ep):
                g = per_row_grad(lambda v: E(ep, v), x_real)
                return (jnp.mean(E(ep, x_real)) - jnp.mean(E(ep, x_fake)) + 0.2 * jnp.mean(jnp.sum(g ** 2, axis=1))
                        + energy_reg * (jnp.mean(E(ep, x_real) ** 2) + jnp.mean(E(ep, x_fake) ** 2)))
        e = sgd_step(p["energy"], critic_loss)
        # the logged critic loss is the whole loss at the old parameters, the regulariser included
        np.testing.assert_allclose(float(metrics["energy_loss"]), float(critic_loss(p["energy"])), rtol=1e-5)

        # ---- generator
        z = z_all[1]
        x_now, fn_now = generator_pieces(method, p["generator"], stats, z)
        svd_now = numpy_singular_vectors(fn_now, z)

        def generator_loss(gp):
            x, f = generator_pieces(method, gp, stats, z)
            loss = jnp.mean(E(e, x))
            if name == "wgan_0gp":
                return loss
            if entropy == "exact":
                # 0.5 log det J^T J from a fresh explicit Jacobian (slogdet, not the library's QR)
                return loss - jnp.mean(jnp.stack([0.5 * jnp.linalg.slogdet(jax.jacfwd(f)(zi).T @ jax.jacfwd(f)(zi))[1]
                                                  for zi in z]))
            return loss - jnp.mean(jnp.stack([log_s1(f, z[i], svd_now[i][0], svd_now[i][2], d) for i in range(5)]))
        g = sgd_step(p["generator"], generator_loss)

        tol = dict(rtol=1e-6, atol=1e-9) if entropy == "lobpcg" else {}
        assert_trees_close(new["params"]["energy"], e, what="energy", **tol)
        assert_trees_close(new["params"]["generator"], g, what="generator", **tol)
        for net in ("energy", "generator"):
            assert_changed(p[net], new["params"][net])
        if name != "wgan_0gp" and entropy != "exact":
            s1 = np.array([s for _, s, _ in svd_now])
            np.testing.assert_allclose(float(metrics["s_min_mean"]), s1.mean(), rtol=1e-6)
            np.testing.assert_allclose(float(metrics["entropy"]), prior_entropy(d, prior) + d * np.mean(np.log(s1)),
                                       rtol=1e-6)
            assert float(metrics["entropy_residual"]) < 1e-5


# -------------------------------------------------------------------------------------- Stein methods
def stein_config(name, **extra):
    from configs import steincd as stein_config
    return sgd(stein_config.make_config(name), **{"model.energy.hidden": (8, 8), "data.batch_size": 6, **extra})


@pytest.mark.parametrize("rule", ["cd", "symmetric", "score_matching"])
def test_steincd_iteration_is_eqs_13_15_17(rule):
    """x- = x + eps phi*(x) (one SVGD step, Algorithm 1); Eq. 13: mean E(x) - mean E(x-); Eq. 17:
    mean E(x - eps phi) - mean E(x + eps phi); Eq. 15: mean grad_x f(x) . phi with f = -E (phi fixed)."""
    config = stein_config("steincd", **{"method.update_rule": rule, "method.step_size": 0.2})
    with jax.enable_x64(True):
        method = get_method(config, (2,))
        batch, key = data((1, 6, 2), 4, 0.7), jax.random.PRNGKey(6)
        old, new, _ = one_iteration(method, batch, key)
        p = old["params"]
        E = lambda ep, x: method.energy_net.apply({"params": ep}, x)  # noqa: E731
        x = jnp.asarray(batch[0])
        phi = jax.lax.stop_gradient(svgd_phi(x, -per_row_grad(lambda v: E(p["energy"], v), x)))
        if rule == "cd":
            loss = lambda ep: jnp.mean(E(ep, x)) - jnp.mean(E(ep, x + 0.2 * phi))  # noqa: E731
        elif rule == "symmetric":
            loss = lambda ep: jnp.mean(E(ep, x - 0.2 * phi)) - jnp.mean(E(ep, x + 0.2 * phi))  # noqa: E731
        else:
            # Eq. 15: theta <- theta - mu E[grad_theta grad_x f(x) phi(x)], descent on mean grad_x f . phi
            loss = lambda ep: jnp.mean(jnp.sum(-per_row_grad(lambda v: E(ep, v), x) * phi, axis=1))  # noqa: E731
        e = sgd_step(p["energy"], loss)
        assert_trees_close(new["params"]["energy"], e, what="energy")
        assert_changed(p["energy"], new["params"]["energy"])


@pytest.mark.parametrize("energy_reg", [0.0, 0.3])
def test_cd_k_iteration_is_langevin_contrastive_divergence(energy_reg):
    """CD-k: x- after k Langevin steps x + a grad log p(x) + sqrt(2a) eps from the data (Eq. 11's
    sampler), then mean E(x) - mean E(x-) (+ energy_reg (mean E(x)^2 + mean E(x-)^2), not in the paper)."""
    config = stein_config("cd", **{"method.k": 3, "method.step_size": 0.05, "method.energy_reg": energy_reg})
    with jax.enable_x64(True):
        method = get_method(config, (2,))
        batch, key = data((1, 6, 2), 5, 0.7), jax.random.PRNGKey(7)
        old, new, _ = one_iteration(method, batch, key)
        p = old["params"]
        E = lambda ep, x: method.energy_net.apply({"params": ep}, x)  # noqa: E731
        x_neg = jnp.asarray(batch[0])
        for k in jax.random.split(key, 3):
            x_neg = (x_neg - 0.05 * per_row_grad(lambda v: E(p["energy"], v), x_neg)
                     + jnp.sqrt(0.1) * jax.random.normal(k, x_neg.shape))
        x = jnp.asarray(batch[0])
        e = sgd_step(p["energy"], lambda ep: jnp.mean(E(ep, x)) - jnp.mean(E(ep, x_neg))
                     + energy_reg * (jnp.mean(E(ep, x) ** 2) + jnp.mean(E(ep, x_neg) ** 2)))
        assert_trees_close(new["params"]["energy"], e, what="energy")
        assert_changed(p["energy"], new["params"]["energy"])


@pytest.mark.parametrize("alpha,energy_reg", [(0.0, 0.0), (0.5, 0.0), (1.0, 0.0), (0.0, 0.3)])
def test_steingan_iteration_is_algorithm_2(alpha, energy_reg):
    """Generator (Eq. 21, its step eps = lr / m): eta <- eta + (1/m) sum_i dG(xi_i)/deta phi*(G(xi_i)); energy: mean E(x+) -
    (1 - gamma) mean E(x-) with x- = G(xi), or with probability alpha (SteinCD-GAN(alpha)) the SVGD-moved
    data; gamma_fast while mean E(x+) > mean E(x-) (Sec. 5.2's speed-up); plus energy_reg (mean E(x+)^2 +
    mean E(x-)^2), Du & Mordatch's regulariser (not in the paper)."""
    config = stein_config("steingan", **{"model.generator.hidden": (8, 8), "method.alpha": alpha,
                                         "method.gamma": 0.2, "method.gamma_fast": 0.6, "method.step_size": 0.3,
                                         "method.energy_reg": energy_reg})
    with jax.enable_x64(True):
        method = get_method(config, (2,))
        batch, key = data((1, 6, 2), 6, 0.7), jax.random.PRNGKey(8)
        old, new, metrics = one_iteration(method, batch, key)
        p = old["params"]
        E = lambda ep, x: method.energy_net.apply({"params": ep}, x)  # noqa: E731
        G = lambda gp, z: method.gen.net.apply({"params": gp}, z)     # noqa: E731
        k_z, k_mix = jax.random.split(key)
        z = jax.random.normal(k_z, (6, 2))
        x_gen = G(p["generator"], z)
        scale = config.method.bandwidth_scale   # 0.3 in the toy default
        phi = jax.lax.stop_gradient(svgd_phi(x_gen, -per_row_grad(lambda v: E(p["energy"], v), x_gen), scale))
        g = sgd_step(p["generator"], lambda gp: -jnp.sum(G(gp, z) * phi) / 6)
        x = jnp.asarray(batch[0])
        use_cd = alpha > 0 and bool(jax.random.bernoulli(k_mix, alpha))
        if use_cd:
            x_neg = x + 0.3 * svgd_phi(x, -per_row_grad(lambda v: E(p["energy"], v), x), scale)
        else:
            x_neg = x_gen
        behind = float(jnp.mean(E(p["energy"], x))) > float(jnp.mean(E(p["energy"], x_neg)))
        gamma = 0.6 if behind else 0.2
        e = sgd_step(p["energy"], lambda ep: jnp.mean(E(ep, x)) - (1.0 - gamma) * jnp.mean(E(ep, x_neg))
                     + energy_reg * (jnp.mean(E(ep, x) ** 2) + jnp.mean(E(ep, x_neg) ** 2)))
        assert float(metrics["cd_negatives"]) == float(use_cd)
        assert_trees_close(new["params"]["energy"], e, what="energy")
        assert_trees_close(new["params"]["generator"], g, what="generator")
        for name in ("energy", "generator"):
            assert_changed(p[name], new["params"][name])


# --------------------------------------------------------------------------------- divergence triangle
@pytest.mark.parametrize("objective,energy_reg", [("kl_difference", 0.0), ("kl_sum", 0.0), ("kl_difference", 0.3)])
def test_triangle_iteration_is_algorithm_1(objective, energy_reg):
    """Han et al.'s Algorithm 1 in order: alpha on Eq. 19 (+ energy_reg (mean f(x, z~)^2 + mean f(x~, z)^2),
    not in the paper); phi on Eq. 15 = KL(q||p) - KL(q||pi) (kl_difference) or Eq. 17 = KL(q||p) +
    KL(q||pi) (kl_sum), by the re-parameterised z~ and with the updated alpha; theta on Eq. 21 with z~
    fixed and the updated alpha."""
    from configs import triangle as triangle_config
    config = sgd(triangle_config.make_config(), **{
        "model.generator.hidden": (8, 8), "model.inference.hidden": (8, 8), "model.energy.encoder_hidden": (8,),
        "model.energy.features": 4, "model.energy.hidden": (8,), "method.inference_objective": objective,
        "method.sigma": 0.5, "data.batch_size": 5, "method.energy_reg": energy_reg})
    with jax.enable_x64(True):
        method = get_method(config, (2,))
        batch, key = data((1, 5, 2), 7, 0.7), jax.random.PRNGKey(9)
        old, new, _ = one_iteration(method, batch, key)
        p = old["params"]
        # the spectrally normalised layers' right singular vectors: one power iteration from the stored
        # ones is what the iteration stores, f before the update uses them, f after it one more step
        sv_old, sv_new = old["energy_spectral"], new["energy_spectral"]

        def power_step(kernel, v):
            w = np.asarray(kernel).reshape(-1, kernel.shape[-1])
            u = w @ np.asarray(v) / np.linalg.norm(w @ np.asarray(v))
            return w.T @ u / np.linalg.norm(w.T @ u)
        stepped = jax.tree_util.tree_map_with_path(
            lambda path, v: power_step(p["energy"][path[0].key][path[1].key]["kernel"], v), sv_old)
        assert_trees_close(sv_new, stepped, what="stored singular vectors")
        f_old = lambda ap, x, z: method.energy_net.apply({"params": ap, "spectral": sv_old}, x, z)   # noqa: E731
        f = lambda ap, x, z: method.energy_net.apply({"params": ap, "spectral": sv_new}, x, z)   # noqa: E731
        q = lambda ip, x: method.inference_net.apply({"params": ip}, x)      # noqa: E731
        g = lambda tp, z: method.gen.net.apply({"params": tp}, z)            # noqa: E731
        x = jnp.asarray(batch[0])
        k_z, k_e = jax.random.split(key)
        z = jax.random.normal(k_z, (5, 2))
        noise = jax.random.normal(k_e, (5, 2))

        def infer(ip):
            mu, log_var = q(ip, x)
            return mu + jnp.exp(0.5 * log_var) * noise, mu, log_var

        def log_normal(v, mean, var):  # log N(v; mean, diag var), per row
            return jnp.sum(-0.5 * (v - mean) ** 2 / var - 0.5 * jnp.log(2.0 * math.pi * var), axis=1)

        z_tilde = infer(p["inference"])[0]
        x_tilde = g(p["generator"], z)
        alpha = sgd_step(p["energy"], lambda ap: -jnp.mean(f_old(ap, x, z_tilde)) + jnp.mean(f_old(ap, x_tilde, z))
                         + energy_reg * (jnp.mean(f_old(ap, x, z_tilde) ** 2) + jnp.mean(f_old(ap, x_tilde, z) ** 2)))

        def inference_loss(ip):
            zt, mu, log_var = infer(ip)
            log_q = log_normal(zt, mu, jnp.exp(log_var))
            log_p = log_normal(zt, 0.0, 1.0) + log_normal(x, g(p["generator"], zt), 0.25)
            kl_q_p = jnp.mean(log_q - log_p)
            kl_q_pi = jnp.mean(log_q - f(alpha, x, zt))          # + log Z, constant in phi
            return kl_q_p - kl_q_pi if objective == "kl_difference" else kl_q_p + kl_q_pi
        phi = sgd_step(p["inference"], inference_loss)

        theta = sgd_step(p["generator"], lambda tp: -jnp.mean(log_normal(x, g(tp, z_tilde), 0.25))
                         - jnp.mean(f(alpha, g(tp, z), z)))
        assert_trees_close(new["params"]["energy"], alpha, what="latent EBM")
        assert_trees_close(new["params"]["inference"], phi, what="inference model")
        assert_trees_close(new["params"]["generator"], theta, what="generator")
        for name in ("energy", "inference", "generator"):
            assert_changed(p[name], new["params"][name])


# ---------------------------------------------------------------------------------------------- references
def cell_centres(extent, size):
    """(cell side, the (size^2, 2) cell centres of [-extent, extent]^2 as float32 numbers, as evaluation's grid
    holds them), written afresh here."""
    step = 2.0 * extent / size
    axis = -extent + step * (np.arange(size) + 0.5)
    return step, np.stack(np.meshgrid(axis, axis), -1).reshape(-1, 2).astype(np.float32).astype(np.float64)


@pytest.mark.parametrize("points_per_step,shift", [(0, False), (50, False), (0, True)])
def test_mle_iteration_is_the_exact_grid_likelihood(points_per_step, shift):
    """loss = mean E(x) + log Z, log Z = log sum over the grid's cell centres of exp(-E) x cell area (all
    cells, or a random M of them scaled by N / M; with method.grid_shift every centre moved by one offset
    u ~ U(-h/2, h/2)^2, h the cell side): the exact NLL of the grid-normalised density."""
    import configs.mle as mle_config
    config = sgd(mle_config.get_config(), **{"model.energy.hidden": (8, 8), "method.grid_size": 20,
                                             "method.grid_extent": 3.0, "method.grid_points_per_step": points_per_step,
                                             "method.grid_shift": shift, "method.normaliser": "grid",
                                             "data.batch_size": 6})
    with jax.enable_x64(True):
        method = get_method(config, (2,))
        batch, key = data((1, 6, 2), 8, 0.7), jax.random.PRNGKey(10)
        old, new, metrics = one_iteration(method, batch, key)
        p = old["params"]
        E = lambda ep, x: method.energy_net.apply({"params": ep}, x)  # noqa: E731
        step, grid = cell_centres(3.0, 20)
        if shift:
            u = np.asarray(jax.random.uniform(jax.random.fold_in(key, 1), (2,)))
            assert np.abs(u - 0.5).max() > 0.01   # the offset is not the centre
            grid = grid + step * (u - 0.5)
        scale = 1.0
        if points_per_step:
            grid = grid[np.asarray(jax.random.choice(key, 400, (50,), replace=False))]
            scale = 400 / 50

        def nll(ep):
            neg = -E(ep, jnp.asarray(grid))
            log_z = jnp.log(scale * jnp.sum(jnp.exp(neg)) * step * step)
            return jnp.mean(E(ep, jnp.asarray(batch[0]))) + log_z
        np.testing.assert_allclose(float(metrics["nll"]), float(nll(p["energy"])), rtol=1e-10)
        assert_trees_close(new["params"]["energy"], sgd_step(p["energy"], nll), what="energy")
        assert_changed(p["energy"], new["params"]["energy"])


def test_mle_shifted_grid_is_unbiased_for_the_integral():
    """method.grid_shift: over many offsets the mean of the coarse grid's Z equals the integral of exp(-E)
    over the square (a 6x finer grid in numpy), which the unshifted coarse sum misses."""
    import configs.mle as mle_config
    config = sgd(mle_config.get_config(), **{"model.energy.hidden": (8, 8), "method.grid_size": 10,
                                             "method.grid_extent": 3.0, "method.grid_shift": True,
                                             "method.normaliser": "grid"})
    with jax.enable_x64(True):
        method = get_method(config, (2,))
        p = to64(method.init(jax.random.PRNGKey(0), None))["params"]["energy"]

        def z_of(h, pts):   # the midpoint sum of exp(-E) over cells of side h
            return float(np.sum(np.exp(-np.asarray(method.energy_net.apply({"params": p}, jnp.asarray(pts)))))) * h * h
        keys = jax.random.split(jax.random.PRNGKey(11), 2000)
        log_z = jax.jit(jax.vmap(lambda k: method.grid_log_partition(p, k)))(keys)
        z_hat = np.exp(np.asarray(log_z))
        z_fine, z_centres = z_of(*cell_centres(3.0, 60)), z_of(*cell_centres(3.0, 10))
        assert np.std(z_hat) > 0   # the offsets vary
        assert abs(np.mean(z_hat) / z_fine - 1.0) < 3 * np.std(z_hat) / np.sqrt(2000) / z_fine + 1e-3
        assert abs(np.mean(z_hat) / z_fine - 1.0) < abs(z_centres / z_fine - 1.0)   # the unshifted coarse sum is off


def test_mle_importance_normaliser_is_an_unbiased_estimate_of_z():
    """normaliser='importance': log Z = log mean_i exp(-E(y_i)) / q(y_i), y from u U([-R, R]^2) + (1 - u)
    (the batch's Gaussian kernels of bandwidth h); q written out here, and the estimate's mean over many
    draws matches the grid's Z of the same energy."""
    import configs.mle as mle_config
    config = sgd(mle_config.get_config(), **{"model.energy.hidden": (8, 8), "method.grid_extent": 3.0,
                                             "method.importance_samples": 40, "method.kde_bandwidth": 0.2,
                                             "method.uniform_fraction": 0.3, "data.batch_size": 6})
    with jax.enable_x64(True):
        method = get_method(config, (2,))
        batch, key = data((1, 6, 2), 10, 0.7), jax.random.PRNGKey(12)
        old, new, metrics = one_iteration(method, batch, key)
        p = old["params"]
        E = lambda ep, x: method.energy_net.apply({"params": ep}, x)  # noqa: E731
        x = jnp.asarray(batch[0])
        k_pick, k_uni, k_row, k_eps = jax.random.split(key, 4)
        uniform = jax.random.uniform(k_uni, (40, 2), minval=-3.0, maxval=3.0)
        kde = x[jax.random.randint(k_row, (40,), 0, 6)] + 0.2 * jax.random.normal(k_eps, (40, 2))
        y = np.where(np.asarray(jax.random.bernoulli(k_pick, 0.3, (40, 1))), uniform, kde)
        xs = np.asarray(x)
        q = np.array([0.3 / 36.0 * float(np.all(np.abs(v) <= 3.0))
                      + 0.7 * np.mean(np.exp(-np.sum((v - xs) ** 2, axis=1) / (2 * 0.04)) / (2 * np.pi * 0.04))
                      for v in y])

        def nll(ep):
            return jnp.mean(E(ep, x)) + jnp.log(jnp.mean(jnp.exp(-E(ep, jnp.asarray(y))) / q))
        np.testing.assert_allclose(float(metrics["nll"]), float(nll(p["energy"])), rtol=1e-9)
        assert_trees_close(new["params"]["energy"], sgd_step(p["energy"], nll), what="energy")
        # unbiased: over many proposals the mean of Z_hat is the grid's Z of this energy
        draws = jax.jit(jax.vmap(lambda k: method.importance_draws(x, k)))(jax.random.split(key, 400))
        z_hat = np.mean(np.exp(np.asarray(-jax.vmap(lambda yy: E(p["energy"], yy))(draws[0])) - np.asarray(draws[1])), axis=1)
        step, grid = cell_centres(3.0, 300)
        z_grid = float(np.sum(np.exp(-np.asarray(E(p["energy"], jnp.asarray(grid))))) * step * step)
        assert abs(np.mean(z_hat) / z_grid - 1.0) < 3 * np.std(z_hat) / np.sqrt(400) / z_grid + 1e-3


def test_pcd_iteration_is_du_and_mordatch():
    """x- = K Langevin steps from buffer rows (some restarted from uniform noise); loss mean E(x+) -
    mean E(x-) + alpha (mean E(x+)^2 + mean E(x-)^2), x- fixed; the rows written back into the buffer."""
    import configs.pcd as pcd_config
    config = sgd(pcd_config.get_config(), **{"model.energy.hidden": (8, 8), "method.buffer_size": 20,
                                             "method.langevin_steps": 3, "method.step_size": 0.01,
                                             "method.reinit_prob": 0.4, "method.energy_reg": 0.3,
                                             "data.batch_size": 6})
    with jax.enable_x64(True):
        method = get_method(config, (2,))
        batch, key = data((1, 6, 2), 9, 0.7), jax.random.PRNGKey(11)
        old, new, _ = one_iteration(method, batch, key)
        p, buffer = old["params"], old["buffer"]
        E = lambda ep, x: method.energy_net.apply({"params": ep}, x)  # noqa: E731
        k_idx, k_mask, k_noise, k_chain = jax.random.split(key, 4)
        idx = jax.random.choice(k_idx, 20, (6,), replace=False)
        restart = jax.random.bernoulli(k_mask, 0.4, (6,))
        x_neg = jnp.where(restart[:, None], jax.random.uniform(k_noise, (6, 2), minval=-2.0, maxval=2.0), buffer[idx])
        for k in jax.random.split(k_chain, 3):
            x_neg = (x_neg - 0.01 * per_row_grad(lambda v: E(p["energy"], v), x_neg)
                     + math.sqrt(0.02) * jax.random.normal(k, x_neg.shape))
        x = jnp.asarray(batch[0])

        def loss(ep):
            e_pos, e_neg = E(ep, x), E(ep, x_neg)
            return jnp.mean(e_pos) - jnp.mean(e_neg) + 0.3 * (jnp.mean(e_pos ** 2) + jnp.mean(e_neg ** 2))
        assert_trees_close(new["params"]["energy"], sgd_step(p["energy"], loss), what="energy")
        np.testing.assert_allclose(np.asarray(new["buffer"][idx]), np.asarray(x_neg), rtol=1e-10)
        untouched = np.setdiff1d(np.arange(20), np.asarray(idx))
        np.testing.assert_array_equal(np.asarray(new["buffer"][untouched]), np.asarray(buffer[untouched]))


def test_every_method_has_a_gradient_test():
    """The registry's methods are all covered above (a new method needs its own paper-update test)."""
    from ebm_jax.methods import METHODS
    covered = {"meg", "ddgm", "ebm_bb", "ebm_0gp", "wgan_0gp", "steincd", "cd", "steingan", "triangle", "mle", "pcd"}
    assert set(METHODS) <= covered, sorted(set(METHODS) - covered)
