"""Gradient penalties on the energy."""
from typing import Callable

import jax
import jax.numpy as jnp


def input_gradients(energy_fn: Callable, x: jax.Array) -> jax.Array:
    """grad_x E(x) for every row; energy_fn maps (B, ...) to (B,) with independent rows."""
    return jax.grad(lambda v: jnp.sum(energy_fn(v)))(x)


def zero_centered_gradient_penalty(energy_fn: Callable, x: jax.Array) -> jax.Array:
    """(1/m) sum_i ||grad_x E(x_i)||^2 on data points (MEG Algorithm 1; first term of Eq. 10)."""
    g = input_gradients(energy_fn, x)
    return jnp.mean(jnp.sum(g.reshape(g.shape[0], -1) ** 2, axis=1))


def energy_and_gradient_penalty(energy_fn: Callable, x: jax.Array):
    """(E(x) per row, the zero-centred penalty mean_i ||grad_x E(x_i)||^2) from ONE forward pass.

    MEG's critic loss needs both on the real batch; computed apart (E(x), then the penalty's own
    grad) the forward pass runs twice, as in the reference code's score_penalty. One vjp gives the
    energies and, with a cotangent of ones, the per-row input gradients (rows are independent)."""
    e, vjp = jax.vjp(energy_fn, x)
    (g,) = vjp(jnp.ones_like(e))
    return e, jnp.mean(jnp.sum(g.reshape(g.shape[0], -1) ** 2, axis=1))
