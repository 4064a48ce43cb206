"""Stein variational gradient descent (Liu & Wang 2016) and Stein score matching (Liu & Wang 2017,
"Learning Deep Energy Models: Contrastive Divergence vs. Amortized MLE", Eq. 15).

    phi*(x_i) = (1/m) sum_j [ k(x_j, x_i) grad log p(x_j) + grad_{x_j} k(x_j, x_i) ]      (Eq. 5)

with the RBF kernel k(x, x') = exp(-||x - x'||^2 / h) and h = med^2 / log m, med the median distance
over the m(m-1)/2 distinct pairs. (The SteinGAN reference takes the median over the whole m x m matrix,
zero diagonal included, which shrinks h; the paper's h is over pairs.)
"""
from typing import Callable, Optional

import jax
import jax.numpy as jnp

from ebm_jax import kernels

KERNELS = ("rbf", "constant", "gradient")
SCORE_MATCHING_FORMS = ("exact", "forward", "central")


def _flat(x):
    return x.reshape(x.shape[0], -1)


def pairwise_sq_distances(f):
    """(m, m) squared Euclidean distances between the rows of f (m, F)."""
    sq = jnp.sum(f ** 2, axis=1)
    return jnp.maximum(sq[:, None] + sq[None, :] - 2.0 * f @ f.T, 0.0)


def nonnegative_median(v):
    """jnp.median of a vector of non-negative floats, found by bisection on the floats' bit patterns
    instead of a sort.

    For x >= 0 the int32 view of a float32 is monotone in its value, so the k-th smallest value is the
    smallest bit pattern b with #{v_i <= b} > k: 31 halvings of the pattern range, each one comparison
    and count over v, find it exactly. XLA:CPU's sort of the 32,640 pairwise distances of a 256-point
    SVGD batch took 4.9 of the 6.3 ms of a whole SteinCD toy iteration; this takes a small fraction.
    Like jnp.median, an even count averages the two middle values (float32 only; other dtypes sort)."""
    v = jnp.ravel(v)
    n = v.shape[0]
    if v.dtype != jnp.float32:
        return jnp.median(v)
    bits = jax.lax.bitcast_convert_type(jnp.abs(v), jnp.int32)     # abs: -0.0 -> +0.0
    ranks = jnp.array([(n - 1) // 2, n // 2], jnp.int32)           # the two middle order statistics

    def halve(_, bounds):
        lo, hi = bounds
        mid = lo + (hi - lo) // 2
        count = jnp.sum(bits[None, :] <= mid[:, None], axis=1, dtype=jnp.int32)
        found = count > ranks
        return jnp.where(found, lo, mid + 1), jnp.where(found, mid, hi)

    lo = jnp.zeros((2,), jnp.int32)
    hi = jnp.full((2,), jnp.max(bits), jnp.int32)
    lo, _ = jax.lax.fori_loop(0, 32, halve, (lo, hi))
    a, b = jax.lax.bitcast_convert_type(lo, jnp.float32)
    return a * 0.5 + b * 0.5


def median_bandwidth(x, scale: float = 1.0):
    """h = (scale * med)^2 / log m, med the median of ||x_i - x_j|| over the pairs i < j (Sec. 5.1).

    m = 2 has log m = 0.69; m = 1 has no pair and log 1 = 0, so h = 1 there (any h gives phi = score).
    Rows are flattened; h is held fixed under differentiation (a heuristic, not part of the model)."""
    return _median_bandwidth_of(pairwise_sq_distances(_flat(x)), scale)


def _median_bandwidth_of(sq, scale: float = 1.0):
    """median_bandwidth from the (m, m) squared distances of the particles (held fixed)."""
    sq = jax.lax.stop_gradient(sq)
    m = sq.shape[0]
    if m < 2:
        return jnp.asarray(1.0, sq.dtype)
    iu = jnp.triu_indices(m, k=1)
    dist = jnp.sqrt(sq[iu])
    # the bisection replaces a sort that was most of a SteinCD toy iteration on a CPU; elsewhere jnp.median
    med = nonnegative_median(dist) if kernels.cpu_rewrites() else jnp.median(dist)
    return jnp.maximum((scale * med) ** 2 / jnp.log(float(m)), 1e-8)


def svgd_direction(x, score, bandwidth: Optional[float] = None, kernel: str = "rbf",
                   features: Optional[Callable] = None, bandwidth_scale: float = 1.0):
    """phi*(x_i) of Eq. 5 for every particle: x and score (= grad log p at x) of shape (m, ...).

    bandwidth: h of k = exp(-||a - b||^2 / h); None = median heuristic (scaled by bandwidth_scale,
      SteinGAN Sec. 5.2 uses 0.5) over the kernel's inputs.
    kernel: 'rbf'; 'constant' (k = 1: phi is the mean score, the same for every particle); or
      'gradient' (phi = score, the paper's "no repulsive force" ablation of Figure 1(d), which it
      describes as replacing phi* by the plain gradient).
    features: optional map of ONE particle to a vector; the kernel is then exp(-||F(a) - F(b)||^2 / h)
      (SteinGAN Sec. 5.2, the autoencoder's code) and its x-gradient goes through F. Costs m^2 feature
      evaluations.

    Without features the RBF direction is computed in closed form with m x m matrices; with features
    the pairs are computed with vmap over (j, i) and jax.grad of the kernel in its first argument, so
    the same code serves any feature map (tests check the two agree).
    """
    if kernel not in KERNELS:
        raise ValueError(f"SVGD kernel {kernel!r} is unknown; valid kernels are {list(KERNELS)}.")
    if x.shape != score.shape:
        raise ValueError(f"x {x.shape} and score {score.shape} must have the same shape (m, ...).")
    if kernel == "gradient":
        return score
    m = x.shape[0]
    if kernel == "constant":
        return jnp.broadcast_to(jnp.mean(score, axis=0), score.shape)
    fixed_h = None if bandwidth is None else jnp.asarray(bandwidth, x.dtype)
    if features is None:
        # The RBF kernel on the particles themselves in closed form, with m x m matrices only:
        # grad_{x_j} k(x_j, x_i) = -(2/h) (x_j - x_i) k(x_j, x_i), so the repulsive term of particle i is
        # (2/h) (x_i sum_j k_ji - sum_j k_ji x_j). The pairwise vmap below would build (m, m, D) arrays
        # (100 x 100 x 784 floats for SteinCD's MNIST batch) for the same numbers.
        f = _flat(x)
        # one distance matrix for the bandwidth and the kernel: on one device XLA merged two copies,
        # but with the batch split over devices each was computed (SteinCD's MNIST RBM iteration: 15
        # MFLOP, a third more work a device at 2 devices)
        sq = pairwise_sq_distances(f)
        h = _median_bandwidth_of(sq, bandwidth_scale) if fixed_h is None else fixed_h
        kv = jnp.exp(-sq / h)             # symmetric: kv[j, i] = k(x_j, x_i)
        driving = kv.T @ _flat(score)
        repulsive = (2.0 / h) * (f * jnp.sum(kv, axis=0)[:, None] - kv.T @ f)
        return ((driving + repulsive) / m).reshape(x.shape)

    feat = features
    h = median_bandwidth(jax.vmap(feat)(x), bandwidth_scale) if fixed_h is None else fixed_h

    def k(a, b):
        return jnp.exp(-jnp.sum((feat(a) - feat(b)) ** 2) / h)

    # kv[j, i] = k(x_j, x_i); grad_k[j, i] = grad_{x_j} k(x_j, x_i)
    over_pairs = lambda fn: jax.vmap(jax.vmap(fn, in_axes=(None, 0)), in_axes=(0, None))
    kv = over_pairs(k)(x, x)
    grad_k = over_pairs(jax.grad(k, argnums=0))(x, x)
    driving = jnp.einsum("ji,j...->i...", kv, score)
    repulsive = jnp.sum(grad_k, axis=0)
    return (driving + repulsive) / m


def svgd_step(log_prob: Callable, x, step_size: float, **kwargs):
    """One SVGD update x <- x + eps phi*(x) (Eq. 5), log_prob mapping a batch (m, ...) to (m,)."""
    score = jax.grad(lambda v: jnp.sum(log_prob(v)))(x)
    return x + step_size * svgd_direction(x, score, **kwargs)


def stein_score_matching(f: Callable, x, phi, form: str = "exact", eps: float = 1e-3):
    """Estimate of mean_i grad_x f(x_i) . phi_i whose parameter gradient is the update of Eq. 15.

    f maps a batch to (m,) (the negative energy log p up to a constant); phi is held fixed.
      'exact'   jvp of f at x in direction phi (Eq. 15, the cross derivative by forward mode)
      'forward' (f(x + eps phi) - f(x)) / eps           (Eq. 16: SteinCD's update divided by eps)
      'central' (f(x + eps phi) - f(x - eps phi)) / 2eps (Eq. 17's symmetric difference)
    The update theta <- theta - mu grad_theta of this value is Stein score matching; SteinCD (Eq. 13)
    is eps times the 'forward' form's gradient with the sign of a contrastive update.
    """
    phi = jax.lax.stop_gradient(phi)
    if form == "exact":
        return jnp.mean(jax.jvp(f, (x,), (phi,))[1])
    if form == "forward":
        return jnp.mean(f(x + eps * phi) - f(x)) / eps
    if form == "central":
        return jnp.mean(f(x + eps * phi) - f(x - eps * phi)) / (2.0 * eps)
    raise ValueError(f"score-matching form {form!r} is unknown; valid forms are {list(SCORE_MATCHING_FORMS)}.")
