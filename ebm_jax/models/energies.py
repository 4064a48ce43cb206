"""Energy models beyond the MLP: the Gaussian-Bernoulli RBM with an exact partition function and the
autoencoder energy (SteinGAN, Wang & Liu 2017, Sections 5.1-5.2), and a small deconvolutional
generator (SteinGAN's MNIST sampler: 2 fully connected layers, then 2 deconvolutions with 5x5 filters).

Energies follow the library's sign: E(x) = -f(x), p(x) = exp(-E(x)) / Z.
"""
import itertools
import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ebm_jax.errors import ConfigError
from ebm_jax.models.mlp import MLP

MAX_EXACT_HIDDEN = 20  # 2^20 hidden states is where the exact sum stops being cheap


def hidden_states(num_hidden: int) -> np.ndarray:
    """All 2^l vectors s in {-1, +1}^l, shape (2^l, l)."""
    return np.array(list(itertools.product((-1.0, 1.0), repeat=num_hidden)), np.float32).reshape(-1, num_hidden)


class RBMEnergy(nn.Module):
    """Gaussian-Bernoulli RBM (Sec. 5.1) on flattened x, E(x) = -f(x) with

        f(x) = b^T x - ||x||^2 / 2 + sum_i log(exp(h_i) + exp(-h_i)),  h = B^T x + c.

    Hidden units take values in {-1, +1}; log(e^h + e^-h) = log sum_{s = +-1} e^{s h} sums them out.
    Visible units are Gaussian with unit variance, so data should be on a scale of about 1 (the
    library's images are in [-1, 1]). rbm_log_partition gives the exact log Z."""
    num_hidden: int = 10

    @nn.compact
    def __call__(self, x):
        f = x.reshape(x.shape[0], -1)
        d = f.shape[1]
        B = self.param("B", nn.initializers.normal(0.01), (d, self.num_hidden))
        b = self.param("b", nn.initializers.zeros, (d,))
        c = self.param("c", nn.initializers.zeros, (self.num_hidden,))
        h = f @ B + c
        neg_energy = f @ b - 0.5 * jnp.sum(f ** 2, axis=1) + jnp.sum(jnp.logaddexp(h, -h), axis=1)
        return -neg_energy


def rbm_log_partition(params, num_hidden: int):
    """Exact log Z of RBMEnergy by summing over the 2^l hidden states:

    Z = sum_s int exp(-||x||^2/2 + (b + B s)^T x + c^T s) dx
      = (2 pi)^{d/2} sum_s exp(||b + B s||^2 / 2 + c^T s).
    """
    if num_hidden > MAX_EXACT_HIDDEN:
        raise ConfigError(f"model.energy.num_hidden={num_hidden} is too large for the exact partition "
                          f"function (2^{num_hidden} terms); use at most {MAX_EXACT_HIDDEN}.")
    B, b, c = params["B"], params["b"], params["c"]
    s = jnp.asarray(hidden_states(num_hidden))
    mean = b[None, :] + s @ B.T                                   # (2^l, d)
    terms = 0.5 * jnp.sum(mean ** 2, axis=1) + s @ c
    d = B.shape[0]
    return 0.5 * d * math.log(2.0 * math.pi) + jax.scipy.special.logsumexp(terms)


class AutoencoderEnergy(nn.Module):
    """E(x) = ||x - D(Enc(x))||  (SteinGAN Eq. 24, the Euclidean norm, not its square).

    With num_classes > 0 a linear classifier on the code gives the joint energy of Eq. 25,
    E(x, y) = ||x - D(Enc(x))|| + max(margin, CE(y, W Enc(x) + a)), through `joint_energy`.
    """
    hidden: Sequence[int]
    code_dim: int
    out_dim: int
    activation: str = "leaky_relu"
    num_classes: int = 0
    margin: float = 1.0

    def setup(self):
        self.encoder = MLP(tuple(self.hidden), self.code_dim, self.activation)
        self.decoder = MLP(tuple(reversed(tuple(self.hidden))), self.out_dim, self.activation)
        self.classifier = nn.Dense(self.num_classes) if self.num_classes else None

    def encode(self, x):
        return self.encoder(x.reshape(x.shape[0], -1))

    def __call__(self, x):
        f = x.reshape(x.shape[0], -1)
        code = self.encode(x)
        if self.classifier is not None and self.is_initializing():
            self.classifier(code)  # create its parameters with the rest
        # sqrt with a floor: the norm's gradient is undefined at a perfect reconstruction
        return jnp.sqrt(jnp.sum((f - self.decoder(code)) ** 2, axis=1) + 1e-12)

    def joint_energy(self, x, y):
        """Eq. 25: y are integer labels (B,)."""
        if self.classifier is None:
            raise ConfigError("model.energy.num_classes is 0; the joint energy of Eq. 25 needs the number of classes.")
        logits = self.classifier(self.encode(x))
        ce = -jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None].astype(jnp.int32), axis=1)[:, 0]
        return self(x) + jnp.maximum(self.margin, ce)


class DeconvGenerator(nn.Module):
    """G(z): Dense(hidden) -> Dense(C * s/4 * s/4) -> two 5x5 stride-2 transposed convolutions -> tanh.

    SteinGAN's MNIST sampler (Sec. 5.1: "2 fully connected layers, followed by 2 deconvolution layers
    with 5 x 5 filters"); out_shape (H, W, C) with H and W divisible by 4; outputs in [-1, 1]."""
    out_shape: Sequence[int]
    hidden: int = 1024
    channels: int = 64

    @nn.compact
    def __call__(self, z):
        H, W, C = self.out_shape
        if H % 4 or W % 4:
            raise ConfigError(f"the deconvolutional generator needs image sides divisible by 4; got {tuple(self.out_shape)}.")
        h = nn.relu(nn.Dense(self.hidden)(z))
        h = nn.relu(nn.Dense(2 * self.channels * (H // 4) * (W // 4))(h))
        h = h.reshape(z.shape[0], H // 4, W // 4, 2 * self.channels)
        h = nn.relu(nn.ConvTranspose(self.channels, (5, 5), strides=(2, 2), padding="SAME")(h))
        return jnp.tanh(nn.ConvTranspose(C, (5, 5), strides=(2, 2), padding="SAME")(h))


class ProductOfExpertsEnergy(nn.Module):
    """Kim & Bengio's deep energy model, Eq. 11:

        E(x) = ||x||^2 / sigma^2 - b^T x - sum_i softplus(W_i^T f(x) + b_i)

    with f an MLP feature extractor (`hidden` widths, each followed by `activation`) and `num_experts`
    experts. Each expert grows at most linearly in ||f(x)||, and f grows at most linearly in ||x||, so
    the quadratic term dominates and exp(-E) is integrable."""
    hidden: Sequence[int]
    num_experts: int
    sigma: float = 1.0
    activation: str = "relu"

    @nn.compact
    def __call__(self, x):
        from ebm_jax.models.mlp import _activate
        v = x.reshape(x.shape[0], -1)
        h = v
        for width in self.hidden:
            h = _activate(self.activation, nn.Dense(width)(h))
        experts = nn.Dense(self.num_experts, name="experts")(h)
        b = self.param("b", nn.initializers.zeros, (v.shape[1],))
        return jnp.sum(v ** 2, axis=1) / self.sigma ** 2 - v @ b - jnp.sum(jax.nn.softplus(experts), axis=1)


ENERGY_KINDS = ("mlp", "rbm", "autoencoder", "product_of_experts")
GENERATOR_KINDS = ("mlp", "deconv")


def build_energy(energy_config, data_shape):
    """The energy network named by model.energy.kind: 'mlp' (EnergyMLP), 'rbm' (RBMEnergy, exact log Z)
    or 'autoencoder' (AutoencoderEnergy, Eq. 24)."""
    from ebm_jax.models.mlp import build_mlp
    kind = energy_config.get("kind", "mlp")
    if kind == "mlp":
        return build_mlp("energy", energy_config.hidden, energy_config.activation,
                         spectral_norm=energy_config.get("spectral_norm", False),
                         quadratic=float(energy_config.get("quadratic", 0.0)))
    if kind == "rbm":
        n = int(energy_config.num_hidden)
        if n < 1:
            raise ConfigError(f"model.energy.num_hidden={n} is invalid; the RBM needs at least 1 hidden unit.")
        return RBMEnergy(n)
    if kind == "autoencoder":
        return AutoencoderEnergy(tuple(int(h) for h in energy_config.hidden), int(energy_config.code_dim),
                                 int(np.prod(data_shape)), energy_config.activation,
                                 int(energy_config.get("num_classes", 0)), float(energy_config.get("margin", 1.0)))
    if kind == "product_of_experts":
        sigma = float(energy_config.sigma)
        if not sigma > 0:
            raise ConfigError(f"model.energy.sigma={sigma} is invalid; it must be > 0 (Eq. 11's ||x||^2 / sigma^2).")
        return ProductOfExpertsEnergy(tuple(int(h) for h in energy_config.hidden), int(energy_config.num_experts),
                                      sigma, energy_config.activation)
    raise ConfigError(f"model.energy.kind {kind!r} is unknown; valid kinds are {list(ENERGY_KINDS)}.")


def build_generator(generator_config, data_shape):
    """'mlp' (GeneratorMLP) or 'deconv' (DeconvGenerator, images (H, W, C) only)."""
    from ebm_jax.models.mlp import build_mlp
    kind = generator_config.get("kind", "mlp")
    if kind == "mlp":
        return build_mlp("generator", generator_config.hidden, generator_config.activation, out_shape=data_shape)
    if kind == "deconv":
        if len(data_shape) != 3:
            raise ConfigError(f"model.generator.kind 'deconv' needs image data (H, W, C); the data have shape {tuple(data_shape)}.")
        return DeconvGenerator(tuple(data_shape), int(generator_config.get("width", 1024)),
                               int(generator_config.get("channels", 64)))
    raise ConfigError(f"model.generator.kind {kind!r} is unknown; valid kinds are {list(GENERATOR_KINDS)}.")
