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
