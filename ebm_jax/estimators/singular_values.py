"""Jacobian spectral quantities of a generator G: R^d -> R^D for the EBM-BB entropy bounds.

Geng et al. (2021), "Bounds all around", Sections 2-3. With x = G(z) and J = dG/dz (D x d),

    log p_g(G(z)) = log p_0(z) - 1/2 log det(J^T J)                          (Eq. 8)
    1/2 log det(J^T J) = sum_i log s_i >= d log s_1                          (Eq. 10)

so the generator's entropy lower bound (Eq. 11) needs only s_1, the SMALLEST singular value of J.
It is found here without ever forming J: single-vector LOBPCG (Knyazev 1998/2001) minimises the
Rayleigh quotient rho(v) = v^T J^T J v / v^T v (Eq. 16), using J^T J v = vjp(jvp(v)) (Eq. 17).

Public functions (all act on ONE latent point z of shape (d,); `fn` maps it to an output of any
shape, which is treated as a flat vector in R^D):

* `smallest_singular_value(fn, z, key, num_iters, v0=None) -> (s_min, v)` -- LOBPCG estimate; s_min
  is differentiable (w.r.t. z and everything fn closes over), v is a stop-gradient unit vector for
  warm-starting the next training step. `smallest_singular_value_batch` vmaps it over a batch.
* `log_det_jacobian(fn, z)` -- exact 1/2 log det(J^T J) via an explicit Jacobian (small d only).
* `hutchinson_squared_norm(fn, z, u, key, num_probes, w=None)` -- Hutchinson estimate of
  ||u^T J + w^T||^2 (Eq. 19), the numerator of the upper-bound penalty (Eq. 18).
* `anisotropy_index(fn, z)` -- C_z = std_i ||J e_i|| (Eq. 21), population std.
"""
import math
from typing import Callable, Optional, Tuple

import jax
import jax.numpy as jnp
from jax import lax


def _flat(fn: Callable) -> Callable:
    """fn with its output flattened, so that J is always a (D, d) matrix."""
    return lambda z: jnp.ravel(fn(z))


def _frozen(fn: Callable, z: jax.Array) -> Callable:
    """A copy of fn through which NO gradient flows, neither to z nor to anything fn closes over.

    WHY: the LOBPCG iterations only have to find the direction v; the gradient of s_min is taken
    afterwards through ||J v|| with v fixed (see `smallest_singular_value`). Differentiating the
    loop would be wrong (it is not the derivative of s_1) and expensive (a scan keeps residuals
    for every iteration). `jax.closure_convert` hoists the (possibly traced) values fn closes
    over -- the generator parameters -- into explicit arguments so they can be stop-gradient'ed.
    """
    converted, consts = jax.closure_convert(fn, z)
    consts = [lax.stop_gradient(c) for c in consts]
    return lambda x: converted(x, *consts)


def _safe_norm(x: jax.Array) -> jax.Array:
    """||x||_2 with a finite (zero) gradient at x = 0 instead of NaN (double-where trick)."""
    sq = jnp.sum(x * x)
    pos = sq > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, sq, 1.0)), 0.0)


def _lobpcg_step(matvec2, eps, state):
    """One single-vector LOBPCG iteration: Rayleigh-Ritz on span{v, r, p} (Knyazev 2001).

    state = (v, Av, p): v is a unit vector, Av its image under A = J^T J, p the previous search
    direction (0 before the first step). matvec2 applies A to a (2, d) stack of vectors at once.

    Why A is applied to the orthonormalised r AND p every step (one batched product of two
    vectors) instead of tracking Ap by linear recurrences as in the textbook one-product variant:
    near convergence p is nearly in span{v, r}, and orthogonalising it divides the round-off in a
    tracked Ap by ||p_perp|| / ||p||; these amplifications compound from step to step, and in
    float32 the iteration first stalls and then drifts AWAY from the converged vector (observed:
    1e-8 relative error after 100 steps, 4e-2 after 300, cond(J) = 10). With fresh images of an
    orthonormal basis the only tracked quantity is Av, updated with coefficients of modulus <= 1,
    so its round-off grows additively and never feeds back multiplicatively.
    """
    v, av, p = state
    rho = jnp.vdot(v, av)                          # Rayleigh quotient, Eq. 16 (||v|| = 1)
    r = av - rho * v                               # residual = gradient direction of rho(v)
    scale = jnp.linalg.norm(av)                    # ||A v||: sets the round-off level of r

    # Column 1: r, re-orthogonalised against v (it is orthogonal only up to round-off). A residual
    # that is exactly zero (v exact eigenvector, or Av = 0 for a singular J) or below round-off
    # level carries no direction: it is masked out instead of normalised (0 / 0 = NaN).
    r = r - jnp.vdot(v, r) * v
    r_norm = jnp.linalg.norm(r)
    r_ok = r_norm > eps * scale
    r_hat = jnp.where(r_ok, r / jnp.where(r_ok, r_norm, 1.0), 0.0)

    # Column 2: p, orthogonalised against v and r_hat by Gram-Schmidt applied twice ("twice is
    # enough" for orthogonality to working precision). p is missing (zero) at the first step;
    # when ||p_perp|| / ||p|| is below sqrt(eps) the remaining direction is mostly round-off and is
    # not orthogonal to the others to better than ~eps / (||p_perp|| / ||p||), so it is dropped
    # (the step is then a steepest-descent Rayleigh-Ritz step, which loses little since such a p
    # adds almost nothing to span{v, r}).
    p_norm0 = jnp.linalg.norm(p)
    for _ in range(2):  # two Gram-Schmidt passes, not iterations of the method
        p = p - jnp.vdot(v, p) * v
        p = p - jnp.vdot(r_hat, p) * r_hat
    p_norm = jnp.linalg.norm(p)
    p_ok = (p_norm0 > 0) & (p_norm > jnp.sqrt(eps) * p_norm0)
    p_hat = jnp.where(p_ok, p / jnp.where(p_ok, p_norm, 1.0), 0.0)

    a_rp = matvec2(jnp.stack([r_hat, p_hat]))      # (2, d); A 0 = 0 for a masked column

    # Rayleigh-Ritz: the basis S = [v, r_hat, p_hat] has orthonormal or zero columns, so the
    # reduced problem is the ordinary 3x3 symmetric eigenproblem of S^T A S. A masked (zero)
    # column would contribute a spurious Ritz value 0 that would always win the minimum, so its
    # diagonal entry is set above every admissible Ritz value; its row/column are zero, so the
    # spurious eigenvalue is exactly that entry and its eigenvector has no weight elsewhere.
    s = jnp.stack([v, r_hat, p_hat], axis=1)       # (d, 3)
    a_s = jnp.concatenate([av[:, None], a_rp.T], axis=1)
    gram = s.T @ a_s
    gram = 0.5 * (gram + gram.T)                   # symmetric only up to round-off
    mask = jnp.stack([jnp.ones((), bool), r_ok, p_ok]).astype(gram.dtype)
    big = 2.0 * jnp.sum(jnp.abs(gram)) + 1.0
    gram = gram * jnp.outer(mask, mask) + jnp.diag((1.0 - mask) * big)
    _, vecs = jnp.linalg.eigh(gram)
    c = vecs[:, 0] * mask                          # smallest Ritz pair; masked weights are 0

    # Knyazev's implicit search direction: the part of the update NOT along the old v. Taking
    # p = v_new - v_old instead makes the basis ill-conditioned as the method converges.
    p_new = s[:, 1:] @ c[1:]
    v_new = c[0] * v + p_new
    av_new = c[0] * av + a_s[:, 1:] @ c[1:]
    # ||v_new|| = ||c|| = 1 in exact arithmetic; renormalise against slow drift.
    n = jnp.linalg.norm(v_new)
    return v_new / n, av_new / n, p_new


ALGORITHMS = ("lanczos", "lobpcg")


def _unit_start(key, v0, d, dtype):
    """The start vector: v0 normalised, or a random unit vector when v0 is None or zero.

    A zero (or underflowed) warm start cannot be normalised: it falls back to the random start (not
    to a basis vector, which is an exact, possibly wrong, eigenvector whenever J has orthogonal
    columns, and which LOBPCG cannot leave)."""
    v_rand = jax.random.normal(key, (d,), dtype)
    v_rand = v_rand / jnp.linalg.norm(v_rand)
    if v0 is None:
        return v_rand
    v0 = lax.stop_gradient(jnp.asarray(v0, dtype))
    n0 = jnp.linalg.norm(v0)
    return jnp.where(n0 > 0, v0 / jnp.where(n0 > 0, n0, 1.0), v_rand)


def _reorthogonalise(x, basis):
    """x minus its projection on the rows of `basis` (orthonormal or zero rows), applied twice:
    classical Gram-Schmidt run twice is orthogonal to working precision ("twice is enough")."""
    for _ in range(2):
        x = x - basis.T @ (basis @ x)
    return x


def _golub_kahan(jv, jtu, v1, key, num_iters, size: int, eps):
    """Golub-Kahan-Lanczos bidiagonalisation of J from v1, with full reorthogonalisation.

    After k steps J V_k = U_k B_k with V_k (d x k) and U_k (D x k) orthonormal and B_k upper
    bidiagonal (diagonal alpha, super-diagonal beta), so the singular values of B_k are those of
    J V_k: its smallest is >= s_1(J) and equals it once V_k spans R^d (k = d). Unlike Lanczos on
    J^T J (or LOBPCG), the products are with J and J^T separately, so s_1 keeps about
    eps * s_max of absolute accuracy instead of eps * s_max^2 / s_1 (float32 squares lose s_1 once
    s_1 / s_max nears 1e-3.5).

    `size` (static) rows are allocated; num_iters <= size steps run (it may be traced). Unused rows
    are zero. Returns (V (size, d), alpha (size,), beta (size,), steps run)."""
    d = v1.shape[0]
    u0 = jax.eval_shape(jv, v1)
    V = jnp.zeros((size + 1, d), v1.dtype).at[0].set(v1)
    U = jnp.zeros((size,) + tuple(u0.shape), u0.dtype)
    alpha = jnp.zeros((size,), v1.dtype)
    beta = jnp.zeros((size,), v1.dtype)
    steps = jnp.minimum(num_iters, size)

    def body(j, carry):
        V, U, alpha, beta, scale = carry
        v = V[j]
        u_prev = jnp.where(j > 0, U[jnp.maximum(j - 1, 0)], 0.0)
        b_prev = jnp.where(j > 0, beta[jnp.maximum(j - 1, 0)], 0.0)
        p = _reorthogonalise(jv(v) - b_prev * u_prev, U)
        a = jnp.linalg.norm(p)
        u = jnp.where(a > 0, p / jnp.where(a > 0, a, 1.0), 0.0)
        r = _reorthogonalise(jtu(u) - a * v, V)
        b = jnp.linalg.norm(r)
        scale = jnp.maximum(scale, jnp.maximum(a, b))
        # r at round-off level is an invariant subspace (exactly zero e.g. for orthogonal columns
        # started at a basis vector): continue from a random direction orthogonal to V instead, which
        # starts a new Krylov sequence (beta ~ 0 decouples it in B)
        w = _reorthogonalise(jax.random.normal(jax.random.fold_in(key, j), (d,), v.dtype), V)
        restart = b <= eps * scale
        nxt = jnp.where(restart, w, r)
        n = jnp.linalg.norm(nxt)
        nxt = jnp.where(n > 0, nxt / jnp.where(n > 0, n, 1.0), 0.0)
        return (V.at[j + 1].set(nxt), U.at[j].set(u), alpha.at[j].set(a), beta.at[j].set(b), scale)

    V, U, alpha, beta, _ = lax.fori_loop(0, steps, body, (V, U, alpha, beta, jnp.zeros((), v1.dtype)))
    return V[:size], alpha, beta, steps


def _lanczos_vector(jv, jtu, v1, key, num_iters, d: int, eps):
    """The right singular vector estimate of s_1 from `num_iters` Golub-Kahan steps (d at most)."""
    size = min(int(num_iters), d) if isinstance(num_iters, int) else d
    if size == 0:
        return v1
    V, alpha, beta, steps = _golub_kahan(jv, jtu, v1, key, num_iters, size, eps)
    # B_k, padded to `size` with a diagonal above every singular value when fewer steps ran (a traced
    # num_iters), so that the padding never supplies the smallest one
    used = jnp.arange(size) < steps
    big = 2.0 * (jnp.sum(alpha) + jnp.sum(beta)) + 1.0
    diag = jnp.where(used, alpha, big)
    sup = jnp.where(jnp.arange(size)[:-1] + 1 < steps, beta[:-1], 0.0)
    bidiag = jnp.diag(diag) + jnp.diag(sup, 1)
    _, _, qt = jnp.linalg.svd(bidiag)          # singular values in decreasing order
    v = (qt[-1] * used) @ V
    n = jnp.linalg.norm(v)
    return jnp.where(steps > 0, v / jnp.where(n > 0, n, 1.0), v1)   # no step: the start vector


def smallest_singular_value(fn: Callable, z: jax.Array, key: jax.Array, num_iters: int,
                            v0: Optional[jax.Array] = None,
                            algorithm: str = "lanczos") -> Tuple[jax.Array, jax.Array]:
    """Smallest singular value s_1 of J = d fn / dz at one point z, without forming J.

    Args:
      fn: maps z of shape (d,) to an output of any shape (flattened: R^D, D >= d for s_1 > 0).
        May close over generator parameters; s_min is differentiable w.r.t. them.
      z: (d,) latent point; its dtype (float32 by default, float64 under x64) is used throughout.
      key: PRNG key for the random start (used only when v0 is None or all zero) and, for
        'lanczos', for restarts after an exactly invariant subspace.
      num_iters: iterations. 'lanczos': Golub-Kahan bidiagonalisation steps, one jvp (J v) and one
        vjp (J^T u) each, with full reorthogonalisation; num_iters >= d is exact up to round-off
        (within 1e-3 relative error in float32 for condition numbers up to 1e3), fewer steps give an
        upper bound on s_1 that decreases towards it. 'lobpcg': single-vector LOBPCG iterations on
        J^T J (Knyazev 2001; what EBM-BB Sec. 3 uses), each applying J^T J to two vectors; it
        converges at about (1 - sqrt(gap ratio)) per iteration, so slowly for the clustered small
        singular values of a wide generator. A Python int, or a traced integer (the loop is never
        differentiated; 'lanczos' then allocates d steps and runs num_iters of them).
      v0: optional (d,) warm start, e.g. the `v` returned at the previous training step.
      algorithm: 'lanczos' (default) or 'lobpcg'.

    Returns:
      (s_min, v): s_min = ||J v|| (scalar, differentiable); v the unit right singular vector
      estimate (d,), under stop_gradient.

    Gradient: with v held fixed, ||J v|| = u^T J v for u = J v / ||J v||, and d s_1 = u^T dJ v is
    exactly the derivative of a simple singular value. So at convergence the surrogate's gradient
    is the exact gradient of s_1, without differentiating through the iterations.
    """
    if algorithm not in ALGORITHMS:
        raise ValueError(f"singular-value algorithm {algorithm!r} is unknown; valid algorithms are {list(ALGORITHMS)}.")
    d = z.shape[-1]
    dtype = z.dtype
    eps = jnp.finfo(dtype).eps
    flat = _flat(fn)

    # Linearise the FROZEN fn once: every product below reuses the same forward residuals;
    # J v is one linear forward pass and J^T u one linear backward pass (Eq. 17 of EBM-BB).
    z_sg = lax.stop_gradient(z)
    _, jvp_lin = jax.linearize(_frozen(flat, z_sg), z_sg)
    vjp_lin = jax.linear_transpose(jvp_lin, z_sg)
    v = _unit_start(key, v0, d, dtype)

    if algorithm == "lanczos":
        v = _lanczos_vector(jvp_lin, lambda u: vjp_lin(u)[0], v, jax.random.fold_in(key, 1), num_iters, d, eps)
    else:
        def matvec(x):
            (out,) = vjp_lin(jvp_lin(x))
            return out

        state = (v, matvec(v), jnp.zeros_like(v))
        state = lax.fori_loop(0, num_iters, lambda _, s: _lobpcg_step(jax.vmap(matvec), eps, s), state)
        v = state[0]
    v = lax.stop_gradient(v)

    # Differentiable value, recomputed with the ORIGINAL fn (not the frozen copy) so that
    # gradients reach z and the parameters: s_min = ||J v|| with v fixed (see docstring).
    _, jv = jax.jvp(flat, (z,), (v,))
    return _safe_norm(jv), v


def relative_residual(fn: Callable, z: jax.Array, v: jax.Array) -> jax.Array:
    """||J^T J v - s^2 v|| / s^2 with s = ||J v||, for a unit v: 0 exactly when v is a right singular
    vector, and a bound on how far s^2 can be from an eigenvalue of J^T J, relative to s^2. One jvp
    and one vjp; no gradient flows."""
    z = lax.stop_gradient(z)
    v = lax.stop_gradient(v)
    # one linearisation serves both products, as in smallest_singular_value
    _, jvp_lin = jax.linearize(_frozen(_flat(fn), z), z)
    jv = jvp_lin(v)
    (jtjv,) = jax.linear_transpose(jvp_lin, z)(jv)
    return _residual(jv, jtjv, v)


def _residual(jv, jtjv, v):
    s2 = jnp.sum(jv * jv)
    return jnp.linalg.norm(jtjv - s2 * v) / jnp.maximum(s2, jnp.finfo(v.dtype).tiny)


def relative_residual_from_jacobian(jac: jax.Array, v: jax.Array) -> jax.Array:
    """`relative_residual` from an explicit (D, d) Jacobian: two small matrix products, no pass
    through the network."""
    jac, v = lax.stop_gradient(jac), lax.stop_gradient(v)
    jv = jac @ v
    return _residual(jv, jac.T @ jv, v)


def smallest_singular_value_from_jacobian(jac: jax.Array) -> Tuple[jax.Array, jax.Array]:
    """(s_1, v) of an explicit (D, d) Jacobian: s_1 = ||J v|| differentiable in J, v its right
    singular vector under stop_gradient (so d s_1 = u^T dJ v, the exact derivative).

    d <= 2 in closed form (the 2-D toys: no LAPACK call per sample): for d = 2, v is orthogonal to the
    top eigenvector of the 2x2 J^T J, which is well separated and so accurate to ~eps in angle,
    keeping s_1 to ~eps * s_max; otherwise the SVD of J itself (jnp.linalg.svd), not of J^T J."""
    d = jac.shape[1]
    j_sg = lax.stop_gradient(jac)
    if d == 1:
        v = jnp.ones((1,), jac.dtype)
    elif d == 2:
        from ebm_jax.models.mlp import _top_eigenvector_2x2
        top = _top_eigenvector_2x2(j_sg.T @ j_sg)
        v = jnp.stack([-top[1], top[0]])
    else:
        _, _, vt = jnp.linalg.svd(j_sg, full_matrices=False)
        v = vt[-1]
    return _safe_norm(jac @ v), v


def jacobian(fn: Callable, z: jax.Array) -> jax.Array:
    """The explicit (D, d) Jacobian of fn at one point z (d,): D reverse passes when D <= d (the 2-D
    toys), else d forward passes."""
    flat = _flat(fn)
    D = int(math.prod(jax.eval_shape(flat, z).shape))
    return jax.jacrev(flat)(z) if D <= z.shape[-1] else jax.jacfwd(flat)(z)


def smallest_singular_value_exact(fn: Callable, z: jax.Array) -> Tuple[jax.Array, jax.Array]:
    """Exact s_1 at one point z through the explicit Jacobian (what the EBM-BB reference toy script
    does with torch.svd of its analytic Jacobian). J is formed without gradient (d jvps, or D vjps),
    its right singular vector v found by `smallest_singular_value_from_jacobian`, and s_1 = ||J v||
    recomputed by one differentiable jvp, so that the gradient costs one pass instead of d."""
    z_sg = lax.stop_gradient(z)
    jac = jacobian(_frozen(fn, z_sg), z_sg)
    _, v = smallest_singular_value_from_jacobian(jac)
    v = lax.stop_gradient(v)
    _, jv = jax.jvp(_flat(fn), (z,), (v,))
    return _safe_norm(jv), v


def smallest_singular_value_batch(fn: Callable, z: jax.Array, key: jax.Array, num_iters: int,
                                  v0: Optional[jax.Array] = None,
                                  algorithm: str = "lanczos") -> Tuple[jax.Array, jax.Array]:
    """`smallest_singular_value` for every row of z (B, d); fn maps ONE point (d,) -> output.

    key is split into B independent keys (used only for random starts); v0 is (B, d) or None.
    Returns (s_min (B,), v (B, d)).
    """
    keys = jax.random.split(key, z.shape[0])
    if v0 is None:
        return jax.vmap(lambda zi, ki: smallest_singular_value(fn, zi, ki, num_iters, algorithm=algorithm))(z, keys)
    return jax.vmap(lambda zi, ki, vi: smallest_singular_value(fn, zi, ki, num_iters, vi, algorithm))(z, keys, v0)


def log_det_jacobian(fn: Callable, z: jax.Array) -> jax.Array:
    """Exact 1/2 log det(J^T J) at one point z (d,) (the term of Eqs. 8-9), differentiable.

    Forms J (D x d) with jax.jacfwd (d forward passes), so it is meant for small d (the toy path).
    Computed as sum_i log |R_ii| of the thin QR of J, since det(J^T J) = det(R^T R) = prod R_ii^2:
    unlike a slogdet of J^T J this never squares J's condition number.
    """
    return log_det_from_jacobian(jax.jacfwd(_flat(fn))(z))


def log_det_from_jacobian(jac: jax.Array) -> jax.Array:
    """1/2 log det(J^T J) of an explicit (D, d) Jacobian: sum_i log |R_ii| of its thin QR.

    d <= 2 (the 2-D toys) by hand, Gram-Schmidt on the columns a, b: |R_00| = ||a||, |R_11| = ||b -
    (a.b / a.a) a||, the same numbers as the QR without a LAPACK call per sample (those calls and the
    QR's derivative were ~40 of the ~1000 operations of a whole EBM-BB toy iteration)."""
    d = jac.shape[1]
    if d == 1:
        return jnp.log(jnp.linalg.norm(jac[:, 0]))
    if d == 2:
        a, b = jac[:, 0], jac[:, 1]
        aa = jnp.vdot(a, a)
        b_perp = b - (jnp.vdot(a, b) / aa) * a
        return 0.5 * jnp.log(aa) + jnp.log(jnp.linalg.norm(b_perp))
    r = jnp.linalg.qr(jac, mode="r")
    return jnp.sum(jnp.log(jnp.abs(jnp.diagonal(r))))


def hutchinson_squared_norm(fn: Callable, z: jax.Array, u: jax.Array, key: jax.Array,
                            num_probes: int, w: Optional[jax.Array] = None) -> jax.Array:
    """Hutchinson estimate of ||u^T J + w^T||^2 at one point z (Eq. 19), differentiable.

    For a row vector a (here a = u^T J + w^T, shape (d,)), E_v[(a v)^2] = a E[v v^T] a^T = ||a||^2
    with v ~ N(0, I_d), so mean_k (u^T J v_k + w^T v_k)^2 is unbiased. Each u^T J v_k needs one
    jvp (J v_k, then a dot with u) and never forms J. In EBM-BB u = grad_x E(G(z)) and
    w = grad_z log p_g(G(z)) (Eqs. 18-19).

    Args:
      u: (D,) or fn's output shape. w: optional (d,); None means w = 0.
      num_probes: static number of Gaussian probes averaged.
    """
    flat = _flat(fn)
    u = jnp.ravel(u)
    probes = jax.random.normal(key, (num_probes, z.shape[-1]), z.dtype)
    # The primal is not batched, so vmap over tangents runs the forward pass once.
    jv = jax.vmap(lambda t: jax.jvp(flat, (z,), (t,))[1])(probes)          # (K, D)
    proj = jv @ u
    if w is not None:
        proj = proj + probes @ w
    return jnp.mean(proj ** 2)


def anisotropy_from_jacobian(jac: jax.Array) -> jax.Array:
    """C_z of Eq. 21 from an explicit (D, d) Jacobian: the population std of its column norms."""
    return jnp.std(jnp.linalg.norm(jac, axis=0))


def anisotropy_index(fn: Callable, z: jax.Array) -> jax.Array:
    """Anisotropy index C_z = std({||J e_i||}_{i=1..d}) at one point z (Eq. 21).

    Uses d jvp's of the standard basis vectors (vmapped). The std is the POPULATION standard
    deviation (ddof=0, numpy's default), the paper does not say which one it uses.
    """
    flat = _flat(fn)
    basis = jnp.eye(z.shape[-1], dtype=z.dtype)
    cols = jax.vmap(lambda t: jax.jvp(flat, (z,), (t,))[1])(basis)         # (d, D) = J^T
    return jnp.std(jnp.linalg.norm(cols, axis=1))
