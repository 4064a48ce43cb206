"""Tests for ebm_jax.estimators.singular_values against explicit Jacobians and numpy's SVD.

References are always built independently of the code under test: J with jax.jacfwd, then
np.linalg.svd / slogdet / norms in float64 numpy. Run with -s to see the relative errors of the
iterative estimators (Golub-Kahan-Lanczos, the default, and LOBPCG) after a few iterations.

To keep the run short on a small CPU, the MLP helpers below take the parameters as ARGUMENTS of
module-level jitted functions (one compilation per shape, not per closure), and most sweeps over
the number of iterations pass it traced (supported: the loop is never differentiated), so one
compilation serves every count.
"""
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ebm_jax.estimators.singular_values import (
    anisotropy_from_jacobian,
    anisotropy_index,
    hutchinson_squared_norm,
    log_det_jacobian,
    relative_residual,
    relative_residual_from_jacobian,
    smallest_singular_value,
    smallest_singular_value_batch,
    smallest_singular_value_from_jacobian,
)

ALGORITHMS = ("lanczos", "lobpcg")

ACTIVATIONS = {"tanh": jnp.tanh, "softplus": jax.nn.softplus}


def init_mlp(seed, sizes, dtype=jnp.float32):
    """Random MLP weights from a fixed numpy seed (numpy, so that no JAX op is compiled here)."""
    rng = np.random.default_rng(seed)
    return [(jnp.asarray(rng.normal(size=(fan_in, fan_out)) / np.sqrt(fan_in), dtype),
             jnp.asarray(0.1 * rng.normal(size=fan_out), dtype))
            for fan_in, fan_out in zip(sizes[:-1], sizes[1:])]


def normal(seed, shape, dtype=jnp.float32):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), dtype)


def mlp(params, z, act="tanh"):
    h = z
    for i, (w, b) in enumerate(params):
        h = h @ w + b
        if i < len(params) - 1:
            h = ACTIVATIONS[act](h)
    return h


@partial(jax.jit, static_argnames=("act", "algorithm"))
def mlp_ssv(params, z, key, num_iters, v0=None, act="tanh", algorithm="lanczos"):
    """The estimator on the MLP generator; num_iters may be traced (one compilation for all counts)."""
    return smallest_singular_value(lambda x: mlp(params, x, act), z, key, num_iters, v0, algorithm)


@partial(jax.jit, static_argnames="act")
def mlp_jacobian(params, z, act="tanh"):
    return jax.jacfwd(lambda x: mlp(params, x, act))(z)


def mlp_svd(params, z, act="tanh"):
    """numpy float64 SVD of the explicit Jacobian: s descending, vt[-1] pairs with s[-1]."""
    jac = np.asarray(mlp_jacobian(params, z, act), np.float64)
    _, s, vt = np.linalg.svd(jac, full_matrices=False)
    return jac, s, vt


def rel(a, b):
    return abs(float(a) / float(b) - 1.0)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("d,D,act", [(2, 2, "tanh"), (8, 64, "softplus"), (32, 784, "tanh")])
def test_matches_numpy_svd(d, D, act, algorithm):
    params = init_mlp(d + D, [d, 64, 128, D])
    z = normal(1, (d,))
    key = jax.random.PRNGKey(2)
    jac, s_ref, vt = mlp_svd(params, z, act)

    counts = (0, 1, 2, 3, 5, 10)
    values = [float(mlp_ssv(params, z, key, k, act=act, algorithm=algorithm)[0]) for k in counts]
    errs = {k: rel(s, s_ref[-1]) for k, s in zip(counts, values)}
    print(f"\n(d, D) = ({d}, {D}): relative error of s_min after k iterations: "
          + ", ".join(f"k={k}: {e:.2e}" for k, e in errs.items())
          + f"  [s_1 = {s_ref[-1]:.4g}, s_2/s_1 = {s_ref[-2] / s_ref[-1]:.3g}, "
            f"s_d/s_1 = {s_ref[0] / s_ref[-1]:.3g}]")
    # LOBPCG's Ritz space always contains the current v, and Lanczos's Krylov space grows, so the
    # estimate -- ||J v|| -- never increases, and it is bounded below by the true s_1.
    assert all(b <= a * (1 + 1e-5) for a, b in zip(values, values[1:])), values
    assert min(values) >= s_ref[-1] * (1 - 1e-5)
    assert errs[5] < 0.5 * errs[0]

    s_min, v = mlp_ssv(params, z, key, 200, act=act, algorithm=algorithm)
    s_min, v = float(s_min), np.asarray(v, np.float64)
    assert rel(s_min, s_ref[-1]) < 1e-3
    assert abs(np.linalg.norm(v) - 1.0) < 1e-5
    assert abs(np.linalg.norm(jac @ v) - s_min) < 1e-5 * s_ref[0]
    if s_ref[-2] / s_ref[-1] > 1.05:  # otherwise the singular vector is not well defined
        assert abs(v @ vt[-1]) > 0.99


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_warm_start_needs_fewer_iterations(algorithm):
    d, D = 16, 256
    params = init_mlp(0, [d, 64, D])
    noise = init_mlp(1, [d, 64, D])
    perturbed = jax.tree_util.tree_map(lambda p, n: p + 0.02 * n, params, noise)
    z = normal(3, (d,))
    _, v_prev = mlp_ssv(params, z, jax.random.PRNGKey(4), 200, algorithm=algorithm)  # previous "training step"
    s_ref = mlp_svd(perturbed, z)[1][-1]

    def iterations_needed(v0, limit=100):
        for k in range(limit + 1):
            if rel(mlp_ssv(perturbed, z, jax.random.PRNGKey(5), k, v0, algorithm=algorithm)[0], s_ref) < 1e-3:
                return k
        return limit + 1

    n_warm, n_cold = iterations_needed(v_prev), iterations_needed(None)
    print(f"\niterations to 1e-3 relative error: warm start {n_warm}, cold start {n_cold}")
    assert n_cold <= 100  # the comparison must be between two runs that both get there
    assert n_warm < n_cold


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_no_nan_when_residual_vanishes(algorithm):
    scale = jnp.array([3.0, 0.5, 2.0, 1.5])
    z = jnp.ones(4)
    e1 = jnp.array([0.0, 1.0, 0.0, 0.0])

    @partial(jax.jit, static_argnums=2)
    def run(c, v0, num_iters, key=jax.random.PRNGKey(0)):
        # Linear, with exactly orthogonal Jacobian columns: J = [diag(c); 0].
        return smallest_singular_value(lambda x: jnp.concatenate([c * x, jnp.zeros(3)]), z, key,
                                       num_iters, v0, algorithm)

    for k in (0, 1, 5):
        s_min, v = run(scale, e1, k)
        assert np.all(np.isfinite(np.asarray(v))) and np.isfinite(float(s_min))
        assert float(s_min) == 0.5
        np.testing.assert_array_equal(np.asarray(v), np.asarray(e1))
    # The gradient of s_1 = min_i c_i w.r.t. c is the indicator of the minimiser.
    grad = jax.grad(lambda c: run(c, e1, 5)[0])(scale)
    np.testing.assert_allclose(np.asarray(grad), np.asarray(e1), atol=1e-6)

    # From a random start (v0 None) or a zero warm start (falls back to the random start) the
    # exact minimiser is reached, after which the residual is exactly zero and must be masked.
    for v0 in (None, jnp.zeros(4)):
        s_min, v = run(scale, v0, 30)
        assert np.isfinite(float(s_min)) and abs(float(s_min) - 0.5) < 1e-6
        assert abs(abs(float(v[1])) - 1.0) < 1e-6

    # A rank-deficient J (s_1 = 0): Av = 0 at convergence; value and gradient stay finite.
    def singular(x):
        return smallest_singular_value(lambda y: jnp.stack([y[0], 2.0 * y[0], 0.0 * y[1]]), x,
                                       jax.random.PRNGKey(2), 5, algorithm=algorithm)
    s_min, v = jax.jit(singular)(jnp.ones(2))
    assert abs(float(s_min)) < 1e-6 and abs(abs(float(v[1])) - 1.0) < 1e-6
    g = jax.jit(jax.grad(lambda x: singular(x)[0]))(jnp.ones(2))
    assert np.all(np.isfinite(np.asarray(g)))


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_gradient_matches_finite_difference_x64(algorithm):
    with jax.enable_x64(True):
        d, D = 4, 12
        params = init_mlp(7, [d, 16, D], jnp.float64)
        z = normal(8, (d,), jnp.float64)
        key = jax.random.PRNGKey(9)

        @jax.jit
        def surrogate_and_grads(p, x):
            def surrogate(p, x):
                return smallest_singular_value(lambda y: mlp(p, y, "softplus"), x, key, 60, algorithm=algorithm)[0]
            return jax.value_and_grad(surrogate, argnums=(0, 1))(p, x)

        def exact(p, x):
            return mlp_svd(p, x, "softplus")[1][-1]

        value, (grad_p, grad_z) = surrogate_and_grads(params, z)
        assert value.dtype == jnp.float64 and grad_p[0][0].dtype == jnp.float64
        assert rel(value, exact(params, z)) < 1e-12

        h = 1e-6
        for layer, kind, idx in [(0, 0, (0, 0)), (0, 0, (3, 7)), (0, 1, (5,)), (1, 0, (2, 11)),
                                 (1, 0, (15, 0))]:
            def shifted(delta):
                return [tuple(a.at[idx].add(delta) if (i, j) == (layer, kind) else a
                              for j, a in enumerate(lw)) for i, lw in enumerate(params)]
            fd = (exact(shifted(h), z) - exact(shifted(-h), z)) / (2 * h)
            got = float(grad_p[layer][kind][idx])
            assert abs(got - fd) <= 1e-4 * abs(fd) + 1e-8, (layer, kind, idx, got, fd)

        for i in range(d):
            e = jnp.zeros(d, jnp.float64).at[i].set(h)
            fd = (exact(params, z + e) - exact(params, z - e)) / (2 * h)
            assert abs(float(grad_z[i]) - fd) <= 1e-4 * abs(fd) + 1e-8


def test_float64_dtype():
    with jax.enable_x64(True):
        params = init_mlp(3, [3, 8, 5], jnp.float64)
        z = jnp.array([0.3, -0.2, 0.5], jnp.float64)
        s_min, v = mlp_ssv(params, z, jax.random.PRNGKey(0), 30)
        assert s_min.dtype == jnp.float64 and v.dtype == jnp.float64
        assert rel(s_min, mlp_svd(params, z)[1][-1]) < 1e-12


def spectrum_map(d, D, cond, seed):
    """z -> A z + 0.05 sin(B z): a map whose Jacobian A + 0.05 diag-ish term has singular values spread
    from 1 down to about 1/cond (A = U diag(s) V^T with log-spaced s), the worst case for s_1."""
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.normal(size=(D, d)))
    v, _ = np.linalg.qr(rng.normal(size=(d, d)))
    s = np.logspace(0.0, -np.log10(cond), d)
    a = jnp.asarray((u * s) @ v.T, jnp.float32)
    b = jnp.asarray(rng.normal(size=(D, d)) * 0.05 / (cond * np.sqrt(d)), jnp.float32)
    return lambda z: a @ z + jnp.sin(b @ z)


@pytest.mark.parametrize("d,D,cond", [(16, 100, 1e2), (48, 300, 1e3), (64, 200, 1e3)])
def test_lanczos_with_d_steps_is_exact_in_float32(d, D, cond):
    """num_iters >= d: within 1e-3 relative error in float32 for condition numbers up to 1e3, from a
    random start and from a warm start, and the value is the same for any count above d."""
    fn = spectrum_map(d, D, cond, seed=d)
    z = normal(d + 1, (d,))
    jac = np.asarray(jax.jacfwd(fn)(z), np.float64)
    s_ref = np.linalg.svd(jac, compute_uv=False)
    assert s_ref[0] / s_ref[-1] > 0.5 * cond
    run = jax.jit(lambda zz, k, v0, n: smallest_singular_value(fn, zz, k, n, v0), static_argnums=3)
    for k_iter in (d, 2 * d):
        for start in (None, normal(d + 2, (d,))):
            s_min, v = run(z, jax.random.PRNGKey(d), start, k_iter)
            assert rel(s_min, s_ref[-1]) < 1e-3, (k_iter, float(s_min), s_ref[-1])
            assert abs(np.linalg.norm(np.asarray(v)) - 1.0) < 1e-5
    # LOBPCG with the same number of products is far from it on this spectrum (the reason for the default)
    s_lob, _ = jax.jit(lambda zz: smallest_singular_value(fn, zz, jax.random.PRNGKey(0), d // 2, None, "lobpcg"))(z)
    assert rel(s_lob, s_ref[-1]) > 1e-2


def test_relative_residual_against_numpy():
    params = init_mlp(30, [5, 32, 20])
    z = normal(31, (5,))
    jac, s, vt = mlp_svd(params, z)
    fn = lambda x: mlp(params, x)  # noqa: E731
    # at a right singular vector the residual is zero up to round-off
    assert float(relative_residual(fn, z, jnp.asarray(vt[-1], jnp.float32))) < 1e-4
    # anywhere else it is ||J^T J v - s^2 v|| / s^2 with s = ||J v||
    v = np.asarray(normal(32, (5,)), np.float64)
    v /= np.linalg.norm(v)
    s2 = np.sum((jac @ v) ** 2)
    expected = np.linalg.norm(jac.T @ (jac @ v) - s2 * v) / s2
    np.testing.assert_allclose(float(relative_residual(fn, z, jnp.asarray(v, jnp.float32))), expected, rtol=1e-4)
    # the same from the explicit Jacobian (the 'svd' entropy path)
    np.testing.assert_allclose(float(relative_residual_from_jacobian(jnp.asarray(jac, jnp.float32),
                                                                     jnp.asarray(v, jnp.float32))), expected, rtol=1e-4)
    # no gradient flows through it
    grads = jax.grad(lambda p: relative_residual(lambda x: mlp(p, x), z, jnp.asarray(v, jnp.float32)))(params)
    assert all(float(jnp.max(jnp.abs(g))) == 0.0 for g in jax.tree_util.tree_leaves(grads))


@pytest.mark.parametrize("d,D", [(1, 3), (2, 2), (2, 7), (5, 30)])
def test_smallest_singular_value_from_jacobian(d, D):
    """Closed forms (d <= 2) and the SVD path against numpy, and the gradient in J is u v^T (the
    derivative of a simple singular value), checked by central differences in float64."""
    rng = np.random.default_rng(d * 10 + D)
    jac = rng.normal(size=(D, d))
    u, s, vt = np.linalg.svd(jac, full_matrices=False)
    s_min, v = jax.jit(smallest_singular_value_from_jacobian)(jnp.asarray(jac, jnp.float32))
    assert rel(s_min, s[-1]) < 1e-5
    assert abs(abs(float(np.asarray(v, np.float64) @ vt[-1])) - 1.0) < 1e-5
    with jax.enable_x64(True):
        j64 = jnp.asarray(jac, jnp.float64)
        grad = np.asarray(jax.grad(lambda j: smallest_singular_value_from_jacobian(j)[0])(j64))
        np.testing.assert_allclose(grad, np.outer(u[:, -1], vt[-1]) * np.sign(u[:, -1] @ jac @ vt[-1]),
                                   atol=1e-10)
    # an ill-conditioned 2x2 in float32 (s_max / s_1 = 1e3): the closed form keeps s_1
    if d == 2 and D == 2:
        q, _ = np.linalg.qr(rng.normal(size=(2, 2)))
        bad = q @ np.diag([1.0, 1e-3]) @ q.T
        s_bad, _ = smallest_singular_value_from_jacobian(jnp.asarray(bad, jnp.float32))
        assert rel(s_bad, 1e-3) < 1e-3


def test_batch_matches_per_point_and_jit():
    d, D, batch, iters = 6, 40, 5, 7
    params = init_mlp(11, [d, 32, D])
    zs = normal(12, (batch, d))
    v0 = normal(14, (batch, d))
    key = jax.random.PRNGKey(13)
    keys = jax.random.split(key, batch)

    @partial(jax.jit, static_argnums=3)
    def run_batch(p, z, v0, num_iters):
        # Any output shape is treated as a flat vector.
        return smallest_singular_value_batch(lambda x: mlp(p, x).reshape(5, 8), z, key,
                                             num_iters, v0)

    @jax.jit
    def run_vmap(p, z, k, v0):  # vmap over (z, key, v0) directly
        return jax.vmap(lambda zi, ki, vi: smallest_singular_value(
            lambda x: mlp(p, x).reshape(5, 8), zi, ki, iters, vi))(z, k, v0)

    for start in (None, v0):
        s_b, v_b = run_batch(params, zs, start, iters)
        assert s_b.shape == (batch,) and v_b.shape == (batch, d)
        for i in range(batch):
            s_i, v_i = mlp_ssv(params, zs[i], keys[i], iters, None if start is None else start[i])
            np.testing.assert_allclose(float(s_b[i]), float(s_i), rtol=1e-5)
            np.testing.assert_allclose(np.asarray(v_b[i]), np.asarray(v_i), atol=1e-5)
    s_v, v_v = run_vmap(params, zs, keys, v0)
    np.testing.assert_allclose(np.asarray(s_v), np.asarray(s_b), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(v_v), np.asarray(v_b), atol=1e-5)

    # Converged batch values are the per-point smallest singular values.
    s_c, _ = run_batch(params, zs, None, 60)
    for i in range(batch):
        assert rel(s_c[i], mlp_svd(params, zs[i])[1][-1]) < 1e-4

    # Gradient w.r.t. the parameters through the batched, jitted estimator is finite.
    grads = jax.jit(jax.grad(lambda p: jnp.sum(jnp.log(run_batch(p, zs, None, 5)[0]))))(params)
    assert all(np.all(np.isfinite(np.asarray(g))) for g in jax.tree_util.tree_leaves(grads))
    assert np.any(np.asarray(grads[0][0]) != 0)


@partial(jax.jit, static_argnames="act")
def mlp_log_det(params, z, act="softplus"):
    return log_det_jacobian(lambda x: mlp(params, x, act), z)


@pytest.mark.parametrize("d,D", [(1, 5), (2, 2), (2, 9), (3, 7), (8, 64)])
def test_log_det_jacobian(d, D):
    params = init_mlp(20 + d, [d, 32, D])
    z = normal(21, (d,))
    jac, s_ref, _ = mlp_svd(params, z, "softplus")
    sign, logdet = np.linalg.slogdet(jac.T @ jac)
    assert sign > 0
    got = float(mlp_log_det(params, z))
    np.testing.assert_allclose(got, 0.5 * logdet, rtol=1e-4, atol=1e-4)
    s_min = float(mlp_ssv(params, z, jax.random.PRNGKey(22), 100, act="softplus")[0])
    assert got >= d * np.log(s_min) - 1e-4  # Eq. 10
    if d > 1 and s_ref[0] / s_ref[-1] > 1.1:  # the bound is strict unless all s_i are equal
        assert got > d * np.log(s_min) + 1e-3


def test_log_det_of_nearly_parallel_columns_by_hand_matches_qr():
    """d = 2 goes by hand (Gram-Schmidt on two columns): on an ill-conditioned J (columns 1e-4 apart,
    cond ~ 1e4) it equals LAPACK's QR path and float64 slogdet(J^T J)."""
    from ebm_jax.estimators.singular_values import log_det_from_jacobian
    rng = np.random.default_rng(3)
    a = rng.normal(size=9)
    jac = np.stack([a, a + 1e-4 * rng.normal(size=9)], axis=1)
    want = 0.5 * np.linalg.slogdet(jac.T @ jac)[1]
    got = float(log_det_from_jacobian(jnp.asarray(jac, jnp.float32)))
    r = np.linalg.qr(jac.astype(np.float32), mode="r")
    assert abs(got - want) < 1e-3
    assert abs(got - float(np.sum(np.log(np.abs(np.diag(r)))))) < 1e-3


@pytest.mark.parametrize("dims", [[3, 16, 6], [2, 16, 5]])
def test_log_det_jacobian_gradient_x64(dims):
    with jax.enable_x64(True):
        params = init_mlp(30, dims, jnp.float64)
        z = jnp.array([0.1, -0.4, 0.7][:dims[0]], jnp.float64)

        def exact(p):
            jac = mlp_svd(p, z, "softplus")[0]
            return 0.5 * np.linalg.slogdet(jac.T @ jac)[1]

        g = jax.jit(jax.grad(mlp_log_det))(params, z)
        w = params[0][0]
        h = 1e-6
        for idx in [(0, 0), (dims[0] - 1, 9)]:
            up = [(w.at[idx].add(h), params[0][1]), params[1]]
            dn = [(w.at[idx].add(-h), params[0][1]), params[1]]
            fd = (exact(up) - exact(dn)) / (2 * h)
            assert abs(float(g[0][0][idx]) - fd) <= 1e-5 * abs(fd) + 1e-8


@partial(jax.jit, static_argnames=("num_probes", "shaped"))
def mlp_hutchinson(params, z, u, key, w, num_probes, shaped=False):
    if shaped:  # output and u in a (4, 5) shape instead of flat
        return hutchinson_squared_norm(lambda x: mlp(params, x).reshape(4, 5), z, u.reshape(4, 5),
                                       key, num_probes, w)
    return hutchinson_squared_norm(lambda x: mlp(params, x), z, u, key, num_probes, w)


def test_hutchinson_unbiased():
    d, D = 6, 20
    params = init_mlp(40, [d, 16, D])
    z, u, w = normal(41, (d,)), normal(42, (D,)), normal(43, (d,))
    jac = np.asarray(mlp_jacobian(params, z), np.float64)
    one_probe = jax.jit(jax.vmap(lambda k, w: mlp_hutchinson(params, z, u, k, w, 1),
                                 in_axes=(0, None)))

    for extra in (None, w):
        a = np.asarray(u, np.float64) @ jac + (0.0 if extra is None else np.asarray(extra, np.float64))
        exact = float(a @ a)
        # (a.v)^2 with v ~ N(0, I) is ||a||^2 times a chi^2_1 variable: variance 2 ||a||^4.
        sd_one = np.sqrt(2.0) * exact

        k = 20000
        est = float(mlp_hutchinson(params, z, u, jax.random.PRNGKey(44), extra, k))
        assert abs(est - exact) < 4.0 * sd_one / np.sqrt(k), (est, exact)

        # One probe per key, many independent keys: mean unbiased, variance finite and ~ 2||a||^4.
        one = np.asarray(one_probe(jax.random.split(jax.random.PRNGKey(45), 4000), extra),
                         np.float64)
        assert np.all(np.isfinite(one)) and np.all(one >= 0)
        assert abs(one.mean() - exact) < 4.0 * sd_one / np.sqrt(len(one))
        assert 0.5 * sd_one ** 2 < one.var() < 2.0 * sd_one ** 2

    # u may also be given in fn's output shape.
    np.testing.assert_allclose(
        float(mlp_hutchinson(params, z, u, jax.random.PRNGKey(46), w, 8, shaped=True)),
        float(mlp_hutchinson(params, z, u, jax.random.PRNGKey(46), w, 8)), rtol=1e-6)


def test_hutchinson_gradients():
    d, D = 6, 20
    params = init_mlp(50, [d, 16, D])
    z, u, w = normal(51, (d,)), normal(52, (D,)), normal(53, (d,))
    jac = np.asarray(mlp_jacobian(params, z), np.float64)
    a = np.asarray(u, np.float64) @ jac + np.asarray(w, np.float64)

    k = 20000
    g_p, g_u, g_w = jax.jit(jax.grad(lambda p, uu, ww: mlp_hutchinson(
        p, z, uu, jax.random.PRNGKey(54), ww, k), argnums=(0, 1, 2)))(params, u, w)
    # d/dw ||a||^2 = 2a and d/du ||a||^2 = 2 J a, up to Monte-Carlo error (sd ~ 2||a|| sqrt(2/k)).
    tol = 5 * 2 * np.linalg.norm(a) * np.sqrt(2.0 / k)
    assert np.max(np.abs(np.asarray(g_w) - 2 * a)) < tol
    assert np.max(np.abs(np.asarray(g_u) - 2 * jac @ a)) < tol * np.linalg.norm(jac, 2)
    assert all(np.all(np.isfinite(np.asarray(t))) for t in jax.tree_util.tree_leaves(g_p))
    assert np.any(np.asarray(g_p[0][0]) != 0)


def test_anisotropy_index():
    ani = jax.jit(lambda p, z: anisotropy_index(lambda x: mlp(p, x), z))
    for d, D in [(2, 2), (8, 64)]:
        params = init_mlp(60 + d, [d, 32, D])
        z = normal(61, (d,))
        col_norms = np.linalg.norm(np.asarray(mlp_jacobian(params, z), np.float64), axis=0)
        np.testing.assert_allclose(float(ani(params, z)), np.std(col_norms), rtol=1e-4)
        np.testing.assert_allclose(float(anisotropy_from_jacobian(mlp_jacobian(params, z))), np.std(col_norms), rtol=1e-4)
    # Orthogonal columns of equal norm: isotropic, C_z = 0; unequal norms 1 and 3: std = 1.
    assert abs(float(anisotropy_index(lambda x: 2.0 * x, jnp.ones(3)))) < 1e-6
    assert abs(float(anisotropy_index(lambda x: jnp.array([1.0, 3.0]) * x, jnp.ones(2))) - 1.0) < 1e-6
