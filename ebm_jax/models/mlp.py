"""Fully connected networks used on 2-D toys and flat vector data.

MEG's reference toy networks (networks/toy.py of the official code) are 3 hidden layers of width
`dim`: ReLU for the generator, LeakyReLU(0.2) for the energy and the statistics network T(x, z).
"""
import math
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ebm_jax import kernels
from ebm_jax.errors import ConfigError
from ebm_jax.models.batchnorm import BatchNormLayers

ACTIVATIONS = {
    "relu": nn.relu,
    "leaky_relu": lambda x: nn.leaky_relu(x, 0.2),
    "elu": nn.elu,
    "softplus": nn.softplus,
    "swish": nn.swish,
    "tanh": jnp.tanh,
}


def get_activation(name: str) -> Callable:
    if name not in ACTIVATIONS:
        raise ConfigError(
            f"model activation {name!r} is unknown; valid activations are {sorted(ACTIVATIONS) + ['prelu']}.")
    return ACTIVATIONS[name]


def _activate(name: str, x):
    if name == "prelu":
        # Learnable slope, one per layer, initialised as torch.nn.PReLU (0.25) (EBM-BB Tables 6-7).
        return nn.PReLU(negative_slope_init=0.25)(x)
    return get_activation(name)(x)


GRAM_MAX_SIDE = 128   # fan_out up to which the power iteration runs on the fan_out x fan_out W^T W


def _top_eigenvector_2x2(g):
    """Unit eigenvector of the largest eigenvalue of a symmetric 2x2 matrix [[a, c], [c, b]], in closed
    form: (c, lam - a) or (lam - b, c), whichever is longer (one of them vanishes when c = 0)."""
    a, b, c = g[0, 0], g[1, 1], g[0, 1]
    lam = 0.5 * (a + b) + jnp.sqrt(0.25 * (a - b) ** 2 + c ** 2)
    x1, x2 = jnp.stack([c, lam - a]), jnp.stack([lam - b, c])
    x = jnp.where(jnp.linalg.norm(x1) >= jnp.linalg.norm(x2), x1, x2)
    n = jnp.linalg.norm(x)
    return jnp.where(n > 0, x / jnp.where(n > 0, n, 1.0), jnp.array([1.0, 0.0], g.dtype))  # g = 0: any vector


def _unit(a):
    return a / (jnp.linalg.norm(a) + 1e-12)


def _power_step(w_sg, v):
    """One power iteration of a (fan_in, fan_out) matrix held fixed: (u, v') = (W v, W^T u), normalised."""
    u = _unit(w_sg @ v)
    return u, _unit(w_sg.T @ u)


def spectral_norm_estimate(kernel, num_iters: int = 20, return_vector: bool = False):
    """Largest singular value of a (fan_in, fan_out) kernel, differentiable as torch's spectral_norm
    is: sigma = u^T W v with the singular vectors u and v held fixed (stop_gradient).

    Stateless: nothing is threaded through the train state (spectral_normalise below runs one iteration a
    call instead, from a vector a method keeps in its state). A kernel with a side of 1 or 2 (the input
    and output layers of every 2-D toy energy) gets its exact singular vectors in closed form (of the
    1x1 or 2x2 Gram matrix); any other runs `num_iters` power iterations from the same fixed vector
    every call. The closed forms are not only exact: they replace 20 rounds of tiny sequential
    matrix-vector products, which on a CPU cost more than the network they normalise
    (bench/iteration_profile.py on the EBM-BB toys). Where the
    top two singular values are close the iteration falls short of sigma (by 7% after 10 iterations
    on a random 100x100 Gaussian matrix, 0.01% after 50): the layer is then slightly more than
    1-Lipschitz, but the energy is still one deterministic, differentiable function of the parameters.
    return_vector: (sigma, the right singular vector estimate v (fan_out,), held fixed) instead."""
    w = kernel.reshape(-1, kernel.shape[-1])
    w_sg = jax.lax.stop_gradient(w)
    if min(w.shape) <= 2:
        tall = w.shape[0] >= w.shape[1]       # the Gram matrix of the short side is 1x1 or 2x2
        g = w_sg.T @ w_sg if tall else w_sg @ w_sg.T
        x = jnp.ones((1,), w.dtype) if g.shape[0] == 1 else _top_eigenvector_2x2(g)
        if tall:
            v, u = x, _unit(w_sg @ x)
        else:
            u, v = x, _unit(w_sg.T @ x)
        return (u @ w @ v, v) if return_vector else u @ w @ v
    v = jnp.full((w.shape[1],), 1.0 / jnp.sqrt(w.shape[1]), w.dtype)
    v = v + 0.01 * jnp.sin(jnp.arange(w.shape[1], dtype=w.dtype))  # not orthogonal to a top vector by symmetry
    if w.shape[1] <= GRAM_MAX_SIDE and kernels.cpu_rewrites():
        # the same iteration on W^T W formed once: v <- W^T W v / ||.|| is the direction the two
        # matrix-vector products give, with one product and one normalisation per step instead of two.
        # A CPU rewrite (ebm_jax.kernels): fewer sequential steps, which is what a CPU runs slowly, for
        # a fan_in x fan_out^2 product that is parameter-side work every device repeats (2 MFLOP of the
        # 100-wide toy layers' ~2.4 MFLOP a call; docs/scaling.md), so the native path keeps the pair
        # of matrix-vector products.
        gram = w_sg.T @ w_sg
        for _ in range(num_iters):
            v = _unit(gram @ v)
        sigma = _unit(w_sg @ v) @ w @ v
        return (sigma, v) if return_vector else sigma
    for _ in range(num_iters):
        u, v = _power_step(w_sg, v)
    return (u @ w @ v, v) if return_vector else u @ w @ v


def spectral_normalise(module: nn.Module, kernel):
    """kernel / sigma(kernel) inside `module`'s __call__, with sigma from spectral_norm_estimate, or, where
    the caller passes the module's 'spectral' collection (a method that keeps it in its train state),
    from ONE power iteration a call that starts at the right singular vector v stored there, as
    torch.nn.utils.spectral_norm keeps its vector between forward passes; with the collection mutable
    the new v is stored (a first call with none stored starts it from the stateless estimate's).

    Why: the stateless estimate's 20 iterations are parameter-side work that every device repeats;
    on the divergence triangle's MNIST energy they were the part of its iteration that did not split
    over devices (docs/scaling.md). One iteration a step from a vector that follows the slowly changing
    kernel is at least as close, at a twentieth of the work: on the triangle's trained toy energies (top two
    singular values within 1-3% of each other) it fell short of sigma by 0-5%, the 20 fresh iterations
    by 1-10%. Kernels with a side of 1 or 2 keep their
    exact closed form, and `init` stores nothing, so a method that never asks for the collection runs
    exactly as before."""
    w = kernel.reshape(-1, kernel.shape[-1])
    if min(w.shape) <= 2 or module.is_initializing():
        return kernel / spectral_norm_estimate(kernel)
    stored = module.has_variable("spectral", "v")
    mutable = module.is_mutable_collection("spectral")
    if not stored and not mutable:
        return kernel / spectral_norm_estimate(kernel)
    if stored:
        v_stored = jax.lax.stop_gradient(module.get_variable("spectral", "v")).astype(w.dtype)
        u, v = _power_step(jax.lax.stop_gradient(w), v_stored)
        sigma = u @ w @ v
    else:
        sigma, v = spectral_norm_estimate(kernel, return_vector=True)
    if mutable:
        module.put_variable("spectral", "v", v)
    return kernel / sigma


class SpectralDense(nn.Module):
    """Dense layer with the kernel divided by its spectral norm (Miyato et al. 2018), as the
    EBM-BB reference's toy energy wraps every Linear in torch.nn.utils.spectral_norm."""
    features: int

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        return x @ spectral_normalise(self, kernel) + bias


class MLP(nn.Module):
    """Dense layers of `hidden` widths with `activation`, then a Dense(out_dim) with no activation."""
    hidden: Sequence[int]
    out_dim: int
    activation: str = "relu"
    spectral_norm: bool = False

    @nn.compact
    def __call__(self, x):
        if self.activation != "prelu":
            get_activation(self.activation)  # fail early on an unknown name
        dense = SpectralDense if self.spectral_norm else nn.Dense
        x = x.reshape(x.shape[0], -1)
        for width in self.hidden:
            x = _activate(self.activation, dense(width)(x))
        return dense(self.out_dim)(x)


class EnergyMLP(nn.Module):
    """E(x): R^D -> R, one scalar energy per row (low energy = high density).

    quadratic > 0 adds q ||x||^2 (a Gaussian base measure of variance 1/(2q)).
    With spectral_norm every layer is 1-Lipschitz, so a learnable output scale follows (init 1), as
    the EBM-BB reference's Disc ends in Linear(1, 1, bias=False): the energy's sharpness is then one
    parameter instead of being capped by the normalisation. log_output_scale makes it exp(s) with s
    learned (init 0): Adam moves a parameter by about lr a step, so a linear scale grows by about
    lr x steps at most (1e-3 x 10k: |grad E| <~ 11 for the 1-Lipschitz network, where a 25-Gaussians
    mode of std 0.018 needs ~55 at one std), while exp(s) can grow e-fold every 1/lr steps. Off by
    default: on the CD-1 and SteinGAN toys it let the contrastive updates diverge (docs/density_benchmark.md).
    output_scale_init starts the scale (or exp(s)) elsewhere than 1 instead: the SteinGAN and CD-1 toy
    configs start it at 30 and 10, measured in configs/steincd.py."""
    hidden: Sequence[int]
    activation: str = "leaky_relu"
    spectral_norm: bool = False
    quadratic: float = 0.0
    log_output_scale: bool = False
    output_scale_init: float = 1.0

    @nn.compact
    def __call__(self, x):
        e = MLP(self.hidden, 1, self.activation, self.spectral_norm)(x)[:, 0]
        if self.spectral_norm and self.log_output_scale:
            e = e * jnp.exp(self.param("log_output_scale", nn.initializers.constant(math.log(self.output_scale_init)), ()))
        elif self.spectral_norm:
            e = e * self.param("output_scale", nn.initializers.constant(self.output_scale_init), ())
        if self.quadratic:
            # + q ||x||^2 keeps exp(-E) integrable whatever the network does far from the data (the
            # RBM's -||x||^2/2 and Kim & Bengio's ||x||^2/sigma^2 term play the same role)
            e = e + self.quadratic * jnp.sum(x.reshape(x.shape[0], -1) ** 2, axis=1)
        return e


class GeneratorMLP(nn.Module):
    """G(z): R^d -> R^D, reshaped to `out_shape`."""
    hidden: Sequence[int]
    out_shape: Sequence[int]
    activation: str = "relu"

    @nn.compact
    def __call__(self, z):
        size = 1
        for s in self.out_shape:
            size *= s
        x = MLP(self.hidden, size, self.activation)(z)
        return x.reshape((z.shape[0],) + tuple(self.out_shape))


class StatisticsMLP(nn.Module):
    """T(x, z): the critic of the mutual-information estimator, on the concatenation [x, z]."""
    hidden: Sequence[int]
    activation: str = "leaky_relu"

    @nn.compact
    def __call__(self, x, z):
        h = jnp.concatenate([x.reshape(x.shape[0], -1), z.reshape(z.shape[0], -1)], axis=-1)
        return MLP(self.hidden, 1, self.activation)(h)[:, 0]


def build_mlp(kind: str, hidden, activation, out_shape=None, spectral_norm: bool = False, quadratic: float = 0.0,
              log_output_scale: bool = False, output_scale_init: float = 1.0):
    """Builds one of the MLP families by name ('energy', 'generator', 'statistics')."""
    hidden = tuple(int(h) for h in hidden)
    if kind == "energy":
        return EnergyMLP(hidden, activation, bool(spectral_norm), float(quadratic), bool(log_output_scale),
                         float(output_scale_init))
    if kind == "generator":
        return GeneratorMLP(hidden, tuple(out_shape), activation)
    if kind == "statistics":
        return StatisticsMLP(hidden, activation)
    raise ConfigError(f"unknown MLP kind {kind!r}; valid kinds are ['energy', 'generator', 'statistics'].")


class NormalizedGeneratorMLP(nn.Module):
    """G(z) with Dense -> activation -> BatchNorm hidden layers (EBM-BB Table 6: Linear, PReLU, BN).

    Batch normalisation is written out (models.batchnorm.BatchNormLayers, shared with the image
    generators) so that its statistics can be passed in. `mode`:
      'batch'   normalise with this batch's mean/variance (training); returns them, and updates the
                running averages when the 'batch_stats' collection is mutable;
      'running' normalise with the running averages (sampling, evaluation);
      'given'   normalise with `stats` from a 'batch' call: the map z -> G(z) of ONE sample with the
                batch's statistics held fixed. Its Jacobian is what EBM-BB's entropy uses, as the
                reference code's analytic Jacobians (stochman nnj.BatchNorm1d) treat BN as a
                per-sample affine map.
    """
    hidden: Sequence[int]
    out_shape: Sequence[int]
    activation: str = "prelu"
    batch_norm: bool = True
    momentum: float = 0.9   # running = momentum * running + (1 - momentum) * batch (torch's 0.1)
    epsilon: float = 1e-5
    output: str = "linear"  # or 'tanh': outputs in (-1, 1), the range of the library's images

    @nn.compact
    def __call__(self, z, mode: str = "batch", stats=None):
        bn = BatchNormLayers(self, mode, stats, self.momentum, self.epsilon)
        h = z.reshape(z.shape[0], -1)
        for width in self.hidden:
            h = _activate(self.activation, nn.Dense(width)(h))
            if self.batch_norm:
                h = bn(h)
        size = 1
        for s in self.out_shape:
            size *= s
        x = nn.Dense(size)(h).reshape((z.shape[0],) + tuple(self.out_shape))
        if self.output == "tanh":
            x = jnp.tanh(x)
        elif self.output != "linear":
            raise ConfigError(f"model.generator.output {self.output!r} is unknown; valid outputs are ['linear', 'tanh'].")
        return x, bn.finish()
