"""Fully connected networks used on 2-D toys and flat vector data.

MEG's reference toy networks (networks/toy.py of the official code) are 3 hidden layers of width
`dim`: ReLU for the generator, LeakyReLU(0.2) for the energy and the statistics network T(x, z).
"""
from typing import Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

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
        raise ValueError(
            f"model activation {name!r} is unknown; valid activations are {sorted(ACTIVATIONS)}.")
    return ACTIVATIONS[name]


class MLP(nn.Module):
    """Dense layers of `hidden` widths with `activation`, then a Dense(out_dim) with no activation."""
    hidden: Sequence[int]
    out_dim: int
    activation: str = "relu"

    @nn.compact
    def __call__(self, x):
        act = get_activation(self.activation)
        x = x.reshape(x.shape[0], -1)
        for width in self.hidden:
            x = act(nn.Dense(width)(x))
        return nn.Dense(self.out_dim)(x)


class EnergyMLP(nn.Module):
    """E(x): R^D -> R, one scalar energy per row (low energy = high density)."""
    hidden: Sequence[int]
    activation: str = "leaky_relu"

    @nn.compact
    def __call__(self, x):
        return MLP(self.hidden, 1, self.activation)(x)[:, 0]


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


def build_mlp(kind: str, hidden, activation, out_shape=None):
    """Builds one of the MLP families by name ('energy', 'generator', 'statistics')."""
    hidden = tuple(int(h) for h in hidden)
    if kind == "energy":
        return EnergyMLP(hidden, activation)
    if kind == "generator":
        return GeneratorMLP(hidden, tuple(out_shape), activation)
    if kind == "statistics":
        return StatisticsMLP(hidden, activation)
    raise ValueError(f"unknown MLP kind {kind!r}; valid kinds are ['energy', 'generator', 'statistics'].")
