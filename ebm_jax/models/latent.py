"""Networks of the divergence triangle (Han et al. 2020): the Gaussian inference model q(z|x), the
latent EBM f(x, z), and the x-encoders both use (an MLP on flattened x, or DCGAN-style strided
convolutions for images).

The latent EBM follows Sec. 3.5: "we first encode x into a vector and then concatenate this vector
with the vector z, and then get f(x, z) by a network defined on the concatenated vector".
"""
import math
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from ebm_jax.errors import ConfigError
from ebm_jax.models.conv import Conv, conv_general_dilated
from ebm_jax.models.mlp import MLP, _activate, spectral_normalise

ENCODER_KINDS = ("mlp", "conv")


class SpectralConv(nn.Module):
    """Conv with the kernel divided by the spectral norm of its (kh*kw*cin, cout) reshaping, as
    torch.nn.utils.spectral_norm treats a convolution (Miyato et al. 2018). `padding` is 'SAME',
    'VALID' or ((lo, hi), (lo, hi)) as in flax.linen.Conv."""
    features: int
    kernel_size: Sequence[int]
    strides: Sequence[int]
    padding: Any = "SAME"

    @nn.compact
    def __call__(self, x):
        shape = tuple(self.kernel_size) + (x.shape[-1], self.features)
        kernel = self.param("kernel", nn.initializers.lecun_normal(), shape)
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        w = spectral_normalise(self, kernel)
        padding = self.padding if isinstance(self.padding, str) else tuple(tuple(p) for p in self.padding)
        y = conv_general_dilated(x, w, tuple(self.strides), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return y + bias


class ConvEncoder(nn.Module):
    """x (B, H, W, C) -> (B, out_dim): a 3x3 stride-1 convolution, then 4x4 stride-2 convolutions
    doubling the channels, LeakyReLU(0.2), flatten, Dense (the "mirror" of a DCGAN generator, as the
    triangle's inference model and energy encoder are in the official code)."""
    out_dim: int
    channels: int = 32
    num_down: int = 2
    spectral_norm: bool = False

    @nn.compact
    def __call__(self, x):
        def conv(features, k, s):
            if self.spectral_norm:
                return SpectralConv(features, (k, k), (s, s))
            return Conv(features, (k, k), strides=(s, s), padding="SAME")
        h = nn.leaky_relu(conv(self.channels, 3, 1)(x), 0.2)
        for i in range(self.num_down):
            h = nn.leaky_relu(conv(self.channels * 2 ** (i + 1), 4, 2)(h), 0.2)
        h = h.reshape(h.shape[0], -1)
        return MLP((), self.out_dim, spectral_norm=self.spectral_norm)(h)


def build_x_encoder(kind: str, hidden, out_dim: int, activation: str, data_shape, channels: int = 32,
                    spectral_norm: bool = False):
    if kind == "mlp":
        return MLP(tuple(int(h) for h in hidden), int(out_dim), activation, spectral_norm)
    if kind == "conv":
        if len(data_shape) != 3:
            raise ConfigError(f"encoder kind 'conv' needs image data (H, W, C); the data have shape {tuple(data_shape)}.")
        return ConvEncoder(int(out_dim), int(channels), spectral_norm=spectral_norm)
    raise ConfigError(f"encoder kind {kind!r} is unknown; valid kinds are {list(ENCODER_KINDS)}.")


class GaussianInference(nn.Module):
    """q(z|x) = N(mu(x), diag V(x)) (Sec. 3.2): one encoder with 2d outputs, (mu, log V)."""
    kind: str
    hidden: Sequence[int]
    latent_dim: int
    activation: str
    data_shape: Sequence[int]
    channels: int = 32

    @nn.compact
    def __call__(self, x):
        x = x if self.kind == "conv" else x.reshape(x.shape[0], -1)
        out = build_x_encoder(self.kind, self.hidden, 2 * self.latent_dim, self.activation, self.data_shape,
                              self.channels)(x)
        return out[:, :self.latent_dim], out[:, self.latent_dim:]


class LatentEnergy(nn.Module):
    """f(x, z) (Sec. 3.5; pi(x, z) proportional to exp f): x encoded to `features` numbers, concatenated with
    z, then an MLP of `hidden` widths to a scalar. Returns f (higher = more likely); the library's
    energy is -f. spectral_norm applies to every layer, as the paper uses (Sec. 5).

    With spectral_norm every layer is 1-Lipschitz, so f could change by at most ~1 per unit distance in
    (x, z): a 25-Gaussians density (modes of std 0.018) spans ~1,000 nats over the square, and without
    a scale the model stayed nearly uniform. So f ends in a learnable scale exp(log_scale), as
    models.EnergyMLP ends in one, parametrised by its logarithm so that Adam's steps of about lr
    change it by a factor, not by an amount (scale_init: its value at initialisation)."""
    kind: str
    encoder_hidden: Sequence[int]
    features: int
    hidden: Sequence[int]
    activation: str
    data_shape: Sequence[int]
    channels: int = 32
    spectral_norm: bool = False
    scale_init: float = 1.0

    @nn.compact
    def __call__(self, x, z):
        x = x if self.kind == "conv" else x.reshape(x.shape[0], -1)
        h = build_x_encoder(self.kind, self.encoder_hidden, self.features, self.activation, self.data_shape,
                            self.channels, self.spectral_norm)(x)
        h = _activate(self.activation, h)
        hz = jnp.concatenate([h, z.reshape(z.shape[0], -1)], axis=-1)
        f = MLP(tuple(int(w) for w in self.hidden), 1, self.activation, self.spectral_norm)(hz)[:, 0]
        if self.spectral_norm:
            log_scale = self.param("log_scale", nn.initializers.constant(math.log(self.scale_init)), ())
            f = f * jnp.exp(log_scale)
        return f
