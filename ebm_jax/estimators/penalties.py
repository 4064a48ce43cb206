"""Penalties on the energy: gradient penalties and the energy-magnitude regulariser."""
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


def energy_magnitude_penalty(e_data: jax.Array, e_negative: jax.Array) -> jax.Array:
    """mean E(x+)^2 + mean E(x-)^2 (Du & Mordatch 2019, "Implicit Generation and Generalization in
    Energy-Based Models"): with weight alpha added to a contrastive loss mean E(x+) - mean E(x-), it
    bounds the energies (the optimum of the two terms over free values is E(x+) = -1/(2 alpha),
    E(x-) = 1/(2 alpha)) where the contrast alone keeps deepening the data's wells whenever the
    negatives cannot match the data."""
    return jnp.mean(e_data ** 2) + jnp.mean(e_negative ** 2)
