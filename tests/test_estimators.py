"""Estimators (MCMC, JSD mutual information, gradient penalties) against independent exact computations.

Everything that is compared against is written out here in plain numpy (float64) from the formulas,
never copied from running the library.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ebm_jax.estimators import (input_gradients, jsd_mutual_information, langevin_chain, latent_log_prob,
                                mala_chain, mala_log_proposal, mala_step, shuffle_per_dimension,
                                zero_centered_gradient_penalty, energy_and_gradient_penalty)


# --------------------------------------------------------------------------------------------------
# Helpers: exact formulas in numpy.

def _gauss_log_density(a, mean, var):
    """Full log N(a; mean, var I) per row (rows of (B, d) arrays), normaliser included."""
    a = np.asarray(a, np.float64)
    mean = np.asarray(mean, np.float64)
    d = a.shape[1]
    return -0.5 * d * np.log(2.0 * np.pi * var) - np.sum((a - mean) ** 2, axis=1) / (2.0 * var)


# Non-Gaussian 2-D target: log p(x) = -0.5 x^T P x - 0.25 sum x^4 + c^T x.
_P = np.array([[1.5, 0.7], [0.7, 1.0]])
_C = np.array([0.3, -0.2])


def _np_logp(x):
    x = np.asarray(x, np.float64)
    return -0.5 * np.einsum("bi,ij,bj->b", x, _P, x) - 0.25 * np.sum(x ** 4, axis=1) + x @ _C


def _np_score(x):
    x = np.asarray(x, np.float64)
    return -x @ _P - x ** 3 + _C


def _jax_logp(x):
    P, C = jnp.asarray(_P, x.dtype), jnp.asarray(_C, x.dtype)
    return -0.5 * jnp.einsum("bi,ij,bj->b", x, P, x) - 0.25 * jnp.sum(x ** 4, axis=1) + x @ C


# --------------------------------------------------------------------------------------------------
# MALA.

def test_mala_chain_samples_correlated_gaussian():
    mu = np.array([1.0, -2.0])
    sigma = np.array([[1.0, 0.6], [0.6, 0.8]])
    prec = np.linalg.inv(sigma)

    def log_prob(x):
        d = x - jnp.asarray(mu, x.dtype)
        return -0.5 * jnp.einsum("bi,ij,bj->b", d, jnp.asarray(prec, x.dtype), d)

    n, steps, h = 4000, 200, 0.35
    # Poor start: every chain far from the mode, in the tail of the target.
    x0 = jnp.tile(jnp.asarray([[6.0, 4.0]], jnp.float32), (n, 1))
    samples, rate = mala_chain(log_prob, x0, jax.random.PRNGKey(0), steps, h)
    samples = np.asarray(samples, np.float64)
    rate = float(rate)

    assert samples.shape == (n, 2)
    assert np.all(np.isfinite(samples))
    # Large enough step that some proposals are rejected, small enough that many are accepted.
    assert 0.0 < rate < 1.0
    assert 0.2 < rate < 0.99

    # Mean within 5 Monte-Carlo standard errors (independent chains: SE = sqrt(Sigma_ii / n)).
    mean = samples.mean(axis=0)
    se_mean = np.sqrt(np.diag(sigma) / n)
    assert np.all(np.abs(mean - mu) < 5 * se_mean), (mean, mu, se_mean)

    # Covariance entries within 5 SE; for Gaussian data Var(S_ij) ~ (S_ii S_jj + S_ij^2) / n.
    cov = np.cov(samples, rowvar=False)
    se_cov = np.sqrt((np.outer(np.diag(sigma), np.diag(sigma)) + sigma ** 2) / n)
    assert np.all(np.abs(cov - sigma) < 5 * se_cov), (cov, sigma, se_cov)


def test_mala_step_matches_exact_metropolis_hastings():
    """Re-derive proposal, MH ratio and decision in float64 numpy from the same random draws."""
    with jax.enable_x64(True):
        b, h = 512, 0.6
        key_x, key_step = jax.random.split(jax.random.PRNGKey(3))
        x = np.asarray(jax.random.normal(key_x, (b, 2), jnp.float64)) * 1.3
        logp_x = _np_logp(x)
        score_x = _np_score(x)

        new_x, new_logp, new_score, accepted = mala_step(
            _jax_logp, jnp.asarray(x), jnp.asarray(logp_x), jnp.asarray(score_x), key_step, h)
        new_x, new_logp, new_score, accepted = map(np.asarray, (new_x, new_logp, new_score, accepted))

        # Same random draws as mala_step: split the key, normal noise of x's shape, one uniform per row.
        k_noise, k_accept = jax.random.split(key_step)
        noise = np.asarray(jax.random.normal(k_noise, (b, 2), jnp.float64))
        u = np.asarray(jax.random.uniform(k_accept, (b,), jnp.float64))

    prop = x + h * score_x + np.sqrt(2.0 * h) * noise
    logp_p, score_p = _np_logp(prop), _np_score(prop)
    # q(a | b) = N(a; b + h grad log p(b), 2h I), full density.
    log_q_back = _gauss_log_density(x, prop + h * score_p, 2.0 * h)
    log_q_fwd = _gauss_log_density(prop, x + h * score_x, 2.0 * h)
    log_ratio = logp_p + log_q_back - logp_x - log_q_fwd
    expect_accept = np.log(u) < log_ratio

    # Both outcomes must be exercised for the test to mean something.
    assert 0 < expect_accept.sum() < b
    # Rows whose decision is a numerical coin toss (|log u - log r| tiny) are excluded.
    clear = np.abs(np.log(u) - log_ratio) > 1e-8
    assert clear.sum() > b - 5
    np.testing.assert_array_equal(accepted[clear], expect_accept[clear])

    exp_x = np.where(expect_accept[:, None], prop, x)
    exp_logp = np.where(expect_accept, logp_p, logp_x)
    exp_score = np.where(expect_accept[:, None], score_p, score_x)
    np.testing.assert_allclose(new_x[clear], exp_x[clear], rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(new_logp[clear], exp_logp[clear], rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(new_score[clear], exp_score[clear], rtol=1e-9, atol=1e-9)


def test_mala_log_proposal_is_gaussian_log_density_up_to_constant():
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        b, d, h = 64, 3, 0.17
        x_to = rng.normal(size=(b, d)) * 2.0
        x_from = rng.normal(size=(b, d))
        score_from = rng.normal(size=(b, d))
        lib = np.asarray(mala_log_proposal(jnp.asarray(x_to), jnp.asarray(x_from), jnp.asarray(score_from), h))
        exact = _gauss_log_density(x_to, x_from + h * score_from, 2.0 * h)
        diff = lib - exact
        np.testing.assert_allclose(diff, diff[0], rtol=0, atol=1e-10)

        # Squared norm: doubling the displacement from the proposal mean quadruples the exponent.
        delta = rng.normal(size=(b, d))
        mean = x_from + h * score_from

        def f(t):
            return np.asarray(mala_log_proposal(jnp.asarray(mean + t * delta), jnp.asarray(x_from),
                                                jnp.asarray(score_from), h))

        f0 = f(0.0)
        np.testing.assert_allclose(f(2.0) - f0, 4.0 * (f(1.0) - f0), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(f(1.0) - f0, -np.sum(delta ** 2, axis=1) / (4.0 * h), rtol=1e-10)

        # Works on (B, H, W) inputs (sum over all non-batch axes).
        x4 = rng.normal(size=(5, 2, 3))
        m4 = rng.normal(size=(5, 2, 3))
        s4 = rng.normal(size=(5, 2, 3))
        lib4 = np.asarray(mala_log_proposal(jnp.asarray(x4), jnp.asarray(m4), jnp.asarray(s4), h))
        exact4 = _gauss_log_density(x4.reshape(5, -1), (m4 + h * s4).reshape(5, -1), 2.0 * h)
        d4 = lib4 - exact4
        np.testing.assert_allclose(d4, d4[0], rtol=0, atol=1e-10)


def test_mala_chain_zero_steps_returns_start():
    x0 = jnp.asarray(np.random.default_rng(1).normal(size=(7, 2)), jnp.float32)
    out, _ = mala_chain(_jax_logp, x0, jax.random.PRNGKey(0), 0, 0.1)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(x0))


# --------------------------------------------------------------------------------------------------
# Latent-space target.

_W = np.array([[0.5, -1.0, 0.3], [0.2, 0.4, -0.7]])  # generator weights: R^3 -> R^2


def _energy_jax(x):
    return jnp.sum(x ** 2, axis=1) + jnp.sin(x[:, 0]) * x[:, 1]


def _generator_jax(z):
    return jnp.tanh(z @ jnp.asarray(_W.T, z.dtype)) + 0.1 * z[:, :2]


def _energy_np(x):
    return np.sum(x ** 2, axis=1) + np.sin(x[:, 0]) * x[:, 1]


def _generator_np(z):
    return np.tanh(z @ _W.T) + 0.1 * z[:, :2]


@pytest.mark.parametrize("temperature", [1.0, 0.5])
@pytest.mark.parametrize("include_prior", [True, False])
def test_latent_log_prob(temperature, include_prior):
    with jax.enable_x64(True):
        z = np.random.default_rng(2).normal(size=(10, 3)) * 1.5
        fn = latent_log_prob(_energy_jax, _generator_jax, temperature=temperature, include_prior=include_prior)
        got = np.asarray(fn(jnp.asarray(z)))
    expect = -_energy_np(_generator_np(z)) / temperature
    if include_prior:
        expect = expect - 0.5 * np.sum(z ** 2, axis=1)
    np.testing.assert_allclose(got, expect, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------------------------------
# Unadjusted Langevin.

def _std_normal(x):
    return -0.5 * jnp.sum(x ** 2, axis=1)


def test_langevin_small_step_variance_close_to_one():
    n, h, steps = 4000, 0.01, 1000
    x0 = jnp.full((n, 2), 3.0, jnp.float32)
    x = np.asarray(langevin_chain(_std_normal, x0, jax.random.PRNGKey(5), steps, h), np.float64)
    var = x.var(axis=0)
    # Exact ULA stationary variance 1/(1 - h/2) = 1.005; loose tolerance (SE of var ~ sqrt(2/n) = 0.022).
    assert np.all(np.abs(var - 1.0) < 0.12), var
    assert np.all(np.abs(x.mean(axis=0)) < 5 * np.sqrt(1.0 / n) + 3.0 * (1 - h) ** steps), x.mean(axis=0)


def test_langevin_large_step_matches_exact_ula_stationary_variance():
    """x' = (1-h) x + sqrt(2h) eps on N(0, 1): the chain is AR(1) with variance 1 / (1 - h/2)."""
    n, h, steps = 20000, 0.5, 60
    x0 = jnp.zeros((n, 1), jnp.float32)
    x = np.asarray(langevin_chain(_std_normal, x0, jax.random.PRNGKey(6), steps, h), np.float64)[:, 0]
    v_exact = (1.0 / (1.0 - h / 2.0)) * (1.0 - (1.0 - h) ** (2 * steps))
    se = v_exact * np.sqrt(2.0 / n)
    assert abs(x.var() - v_exact) < 5 * se, (x.var(), v_exact, se)


def test_langevin_zero_steps_returns_start():
    x0 = jnp.asarray(np.random.default_rng(1).normal(size=(7, 2)), jnp.float32)
    out = langevin_chain(_std_normal, x0, jax.random.PRNGKey(0), 0, 0.1)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(x0))


# --------------------------------------------------------------------------------------------------
# JSD mutual information.

def _np_softplus(t):
    t = np.asarray(t, np.float64)
    return np.log1p(np.exp(-np.abs(t))) + np.maximum(t, 0.0)


def test_jsd_mutual_information_explicit_values():
    t_joint = np.array([2.0, -1.0, 0.5, 3.0, -0.2])
    t_marg = np.array([-2.0, 0.7, -0.3])  # different length from t_joint on purpose
    expect = np.mean(-np.log1p(np.exp(-t_joint))) - np.mean(np.log1p(np.exp(t_marg)))
    got = float(jsd_mutual_information(jnp.asarray(t_joint, jnp.float32), jnp.asarray(t_marg, jnp.float32)))
    np.testing.assert_allclose(got, expect, rtol=1e-6)

    # Hand value for a single pair: T_joint = log 3, T_marg = -log 3:
    # -softplus(-log 3) = -log(4/3), softplus(-log 3) = log(4/3).
    got1 = float(jsd_mutual_information(jnp.asarray([np.log(3.0)]), jnp.asarray([-np.log(3.0)])))
    np.testing.assert_allclose(got1, -2.0 * np.log(4.0 / 3.0), rtol=1e-6)


def test_jsd_mutual_information_zero_statistics_is_minus_two_log_two():
    got = float(jsd_mutual_information(jnp.zeros((6,)), jnp.zeros((4,))))
    np.testing.assert_allclose(got, -2.0 * np.log(2.0), rtol=1e-6)


def test_jsd_mutual_information_large_values_stable_and_bounded():
    # A perfect critic (T_joint -> +inf, T_marg -> -inf) approaches the supremum 0 from below.
    t_j = np.array([50.0, 80.0, 200.0])
    t_m = np.array([-60.0, -100.0])
    got = float(jsd_mutual_information(jnp.asarray(t_j), jnp.asarray(t_m)))
    expect = np.mean(-_np_softplus(-t_j)) - np.mean(_np_softplus(t_m))
    assert np.isfinite(got) and got <= 0.0
    np.testing.assert_allclose(got, expect, atol=1e-12)


# --------------------------------------------------------------------------------------------------
# Per-dimension shuffle.

def test_shuffle_per_dimension_columns_are_independent_permutations():
    b, d = 1000, 4
    base = np.arange(b)
    z = np.stack([base + 10000 * k for k in range(d)], axis=1).astype(np.float32)
    out = np.asarray(shuffle_per_dimension(jax.random.PRNGKey(0), jnp.asarray(z)))
    assert out.shape == z.shape
    perms = [(out[:, k] - 10000 * k).astype(np.int64) for k in range(d)]
    for k in range(d):
        # Each column is a permutation of the original column.
        np.testing.assert_array_equal(np.sort(out[:, k]), np.sort(z[:, k]))
        assert not np.array_equal(perms[k], base)  # it actually moved things
    for k in range(1, d):
        assert not np.array_equal(perms[0], perms[k])
        # Rows are not kept together: independent permutations agree on ~1 position out of b.
        assert np.mean(perms[0] == perms[k]) < 0.02


def test_shuffle_per_dimension_multi_axis_input():
    b = 500
    z = np.arange(b * 2 * 3, dtype=np.float32).reshape(b, 2, 3)
    out = np.asarray(shuffle_per_dimension(jax.random.PRNGKey(1), jnp.asarray(z)))
    assert out.shape == z.shape
    flat_in, flat_out = z.reshape(b, -1), out.reshape(b, -1)
    for k in range(flat_in.shape[1]):
        np.testing.assert_array_equal(np.sort(flat_out[:, k]), np.sort(flat_in[:, k]))
    rows = (flat_out - np.arange(6)) // 6  # original row index of every entry
    assert np.mean(np.all(rows == rows[:, :1], axis=1)) < 0.02


# --------------------------------------------------------------------------------------------------
# Gradient penalties.

def test_gradient_penalty_quadratic_energy():
    rng = np.random.default_rng(4)
    d, b = 3, 16
    m = rng.normal(size=(d, d))
    a_mat = m + m.T
    b_vec = rng.normal(size=(d,))
    x = rng.normal(size=(b, d))

    def energy(v):
        a, c = jnp.asarray(a_mat, v.dtype), jnp.asarray(b_vec, v.dtype)
        return 0.5 * jnp.einsum("bi,ij,bj->b", v, a, v) + v @ c

    with jax.enable_x64(True):
        grads = np.asarray(input_gradients(energy, jnp.asarray(x)))
        pen = float(zero_centered_gradient_penalty(energy, jnp.asarray(x)))
    exact_g = x @ a_mat.T + b_vec
    np.testing.assert_allclose(grads, exact_g, rtol=1e-10, atol=1e-10)
    exact_pen = np.mean([np.dot(g, g) for g in exact_g])
    np.testing.assert_allclose(pen, exact_pen, rtol=1e-10)


def test_input_gradients_match_finite_differences_nonlinear():
    rng = np.random.default_rng(7)
    d, hdim, b = 3, 8, 6
    w1 = rng.normal(size=(d, hdim))
    b1 = rng.normal(size=(hdim,))
    w2 = rng.normal(size=(hdim,))

    def energy(v):
        hid = jax.nn.softplus(v @ jnp.asarray(w1, v.dtype) + jnp.asarray(b1, v.dtype))
        return jnp.tanh(hid) @ jnp.asarray(w2, v.dtype) + 0.1 * jnp.sum(v ** 4, axis=1)

    x = rng.normal(size=(b, d))
    eps = 1e-5
    with jax.enable_x64(True):
        grads = np.asarray(input_gradients(energy, jnp.asarray(x)))
        pen = float(zero_centered_gradient_penalty(energy, jnp.asarray(x)))
        fd = np.zeros_like(x)
        for k in range(d):
            e = np.zeros(d)
            e[k] = eps
            fd[:, k] = (np.asarray(energy(jnp.asarray(x + e))) - np.asarray(energy(jnp.asarray(x - e)))) / (2 * eps)
    np.testing.assert_allclose(grads, fd, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(pen, np.mean(np.sum(fd ** 2, axis=1)), rtol=1e-6)


def test_energy_and_gradient_penalty_in_one_pass_matches_the_two_pass_form():
    """(E, penalty) from one vjp equal E(x) and the penalty computed apart, and so do their parameter
    gradients (the critic loss differentiates through the penalty: a second-order term)."""
    rng = np.random.default_rng(8)
    w1, w2 = rng.normal(size=(3, 8)), rng.normal(size=(8,))
    x = rng.normal(size=(5, 3))

    def energy(p, v):
        return jnp.tanh(v @ p["w1"]) @ p["w2"] + 0.1 * jnp.sum(v ** 2, axis=1)

    with jax.enable_x64(True):
        p = {"w1": jnp.asarray(w1), "w2": jnp.asarray(w2)}
        xv = jnp.asarray(x)
        e, pen = energy_and_gradient_penalty(lambda v: energy(p, v), xv)
        np.testing.assert_allclose(np.asarray(e), np.asarray(energy(p, xv)), rtol=1e-12)
        np.testing.assert_allclose(float(pen), float(zero_centered_gradient_penalty(lambda v: energy(p, v), xv)), rtol=1e-12)

        def one(q):
            e, pen = energy_and_gradient_penalty(lambda v: energy(q, v), xv)
            return jnp.mean(e) + 3.0 * pen

        def two(q):
            return jnp.mean(energy(q, xv)) + 3.0 * zero_centered_gradient_penalty(lambda v: energy(q, v), xv)
        g1, g2 = jax.grad(one)(p), jax.grad(two)(p)
    for k in p:
        np.testing.assert_allclose(np.asarray(g1[k]), np.asarray(g2[k]), rtol=1e-10)
