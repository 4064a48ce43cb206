"""Energy models beyond the MLP: the Gaussian-Bernoulli RBM with an exact partition function and the
autoencoder energy (SteinGAN, Liu & Wang 2017, Sections 5.1-5.2), a small deconvolutional
generator (SteinGAN's MNIST sampler: 2 fully connected layers, then 2 deconvolutions with 5x5 filters),
and the registry (build_energy, build_generator, build_statistics) of every network kind, including the
image networks of models/images.py.

Energies follow the library's sign: E(x) = -f(x), p(x) = exp(-E(x)) / Z.
"""
import itertools
import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ebm_jax.errors import ConfigError
from ebm_jax.models import images
from ebm_jax.models.mlp import MLP
from ebm_jax.models.precision import IMAGE_KINDS, with_compute_dtype

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

    with f a feature extractor and `num_experts` experts: feature_extractor='mlp', an MLP (`hidden` widths, each
    followed by `activation`); feature_extractor='conv', Sec. 4's convolutional DEM for colour images
    (models.images.DDGMConvFeatures with `width`: 128-256-512-1024 feature maps at 64x64, 5x5 filters),
    then the `hidden` Dense layers (none in the paper). Each expert grows at most linearly in ||f(x)||,
    and f grows at most linearly in ||x||, so the quadratic term dominates and exp(-E) is integrable."""
    hidden: Sequence[int]
    num_experts: int
    sigma: float = 1.0
    activation: str = "relu"
    feature_extractor: str = "mlp"
    width: int = 128

    @nn.compact
    def __call__(self, x):
        from ebm_jax.models.mlp import _activate
        v = x.reshape(x.shape[0], -1)
        h = images.DDGMConvFeatures(self.width)(x) if self.feature_extractor == "conv" else v
        for width in self.hidden:
            h = _activate(self.activation, nn.Dense(width)(h))
        experts = nn.Dense(self.num_experts, name="experts")(h)
        b = self.param("b", nn.initializers.zeros, (v.shape[1],))
        return jnp.sum(v ** 2, axis=1) / self.sigma ** 2 - v @ b - jnp.sum(jax.nn.softplus(experts), axis=1)


# Fields of the image (and KDD99) network kinds with their defaults: the builders read them from the
# config with these defaults, and `network_config` returns them as a ConfigDict for a config file to
# start from (ml_collections refuses command-line overrides of fields a config does not declare).
# () for channel_multipliers / downsample / head_hidden means "the default for this image size / trunk";
# features = 0 means "the latent size", as MEG's statistics networks do.
NETWORK_FIELDS = {
    "energy": {
        "dcgan": {"width": 64, "negative_slope": images.DCGAN_SLOPE, "spectral_norm": False},
        "resnet": {"width": 64, "channel_multipliers": (), "downsample": (), "batch_norm": False,
                   "negative_slope": images.DCGAN_SLOPE, "spectral_norm": False},
        "meg_mnist": {"width": 512, "negative_slope": images.MEG_MNIST_SLOPE},
        "meg_kdd": {},
    },
    "generator": {
        "dcgan": {"width": 64, "batch_norm": True},
        "resnet": {"width": 64, "channel_multipliers": (), "batch_norm": True},
        "meg_mnist": {"width": 512, "batch_norm": True},
        "meg_kdd": {},
        "ddgm_conv": {"width": 128, "batch_norm": True},
    },
    "statistics": {
        "dcgan": {"width": 64, "head_hidden": (), "features": 0, "negative_slope": images.DCGAN_SLOPE},
        "meg_mnist": {"width": 512, "head_hidden": (), "features": 0, "negative_slope": images.MEG_MNIST_SLOPE},
        "meg_kdd": {},
    },
}
ENERGY_KINDS = ("mlp", "rbm", "autoencoder", "product_of_experts") + tuple(NETWORK_FIELDS["energy"])
GENERATOR_KINDS = ("mlp", "deconv") + tuple(NETWORK_FIELDS["generator"])
STATISTICS_KINDS = ("mlp",) + tuple(NETWORK_FIELDS["statistics"])
# Generators of these kinds return (x, used_stats) and take mode / stats (see models.batchnorm); the
# others ('mlp', 'deconv', 'meg_kdd') return x.
NORMALIZED_GENERATOR_KINDS = ("dcgan", "resnet", "meg_mnist", "ddgm_conv")


def network_config(role: str, kind: str) -> ml_collections.ConfigDict:
    """{'kind': kind, **fields with their defaults} for model.<role> (role: energy, generator, statistics)."""
    if role not in NETWORK_FIELDS:
        raise ConfigError(f"network role {role!r} is unknown; valid roles are {list(NETWORK_FIELDS)}.")
    if kind not in NETWORK_FIELDS[role]:
        raise ConfigError(f"model.{role}.kind {kind!r} has no preset; kinds with presets are {list(NETWORK_FIELDS[role])}.")
    return ml_collections.ConfigDict({"kind": kind, **NETWORK_FIELDS[role][kind]})


def is_normalized_generator(module) -> bool:
    """Whether a generator returns (x, used_stats) and takes mode / stats, as NormalizedGeneratorMLP
    (also under a models.precision.MixedPrecision wrapper)."""
    from ebm_jax.models.mlp import NormalizedGeneratorMLP
    from ebm_jax.models.precision import unwrap
    module = unwrap(module)
    return isinstance(module, (NormalizedGeneratorMLP, images.DCGANGenerator, images.ResNetGenerator,
                               images.MEGMNISTGenerator, images.DDGMConvGenerator))


class _Fields:
    """Reads model.<role>.<field> with the defaults of NETWORK_FIELDS and checks each value."""

    def __init__(self, role: str, kind: str, config):
        self.role, self.kind, self.config = role, kind, config
        self.defaults = NETWORK_FIELDS[role][kind]

    def _get(self, name):
        return self.config.get(name, self.defaults[name])

    def _bad(self, name, value, valid):
        return ConfigError(f"model.{self.role}.{name}={value!r} is invalid for kind {self.kind!r}; it must be {valid}.")

    def positive_int(self, name) -> int:
        v = self._get(name)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not float(v).is_integer() or v < 1:
            raise self._bad(name, v, "a positive integer")
        return int(v)

    def non_negative_int(self, name) -> int:
        v = self._get(name)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not float(v).is_integer() or v < 0:
            raise self._bad(name, v, "an integer >= 0")
        return int(v)

    def slope(self, name="negative_slope") -> float:
        v = self._get(name)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1:
            raise self._bad(name, v, "a LeakyReLU slope in [0, 1)")
        return float(v)

    def flag(self, name) -> bool:
        v = self._get(name)
        if not isinstance(v, bool):
            raise self._bad(name, v, "True or False")
        return v

    def int_tuple(self, name):
        """A tuple of positive integers, or None for an empty tuple (the default for the image size)."""
        v = self._get(name)
        v = () if v is None else v
        if not isinstance(v, (tuple, list)) or not all(
                isinstance(m, (int, float)) and not isinstance(m, bool) and float(m).is_integer() and m >= 1 for m in v):
            raise self._bad(name, v, "a tuple of positive integers (empty for the default)")
        return tuple(int(m) for m in v) or None

    def bool_tuple(self, name):
        v = self._get(name)
        v = () if v is None else v
        if not isinstance(v, (tuple, list)) or not all(isinstance(d, bool) or d in (0, 1) for d in v):
            raise self._bad(name, v, "a tuple of booleans (empty for the default)")
        return tuple(bool(d) for d in v) or None


def _image_shape(role: str, kind: str, data_shape):
    if len(data_shape) != 3:
        raise ConfigError(f"model.{role}.kind {kind!r} needs image data (H, W, C); the data have shape {tuple(data_shape)}.")
    H, W, C = (int(s) for s in data_shape)
    if kind == "dcgan" and images.dcgan_num_halvings(H, W) == 0:
        raise ConfigError(f"model.{role}.kind 'dcgan' needs image sides that can be halved at least once down to "
                          f"{images.DCGAN_MIN_BOTTOM} or fewer pixels (e.g. 28, 32, 64); the images are {H}x{W}.")
    if kind == "meg_mnist" and role == "generator" and (H, W) != images.MEG_MNIST_SHAPE:
        raise ConfigError(f"model.generator.kind 'meg_mnist' generates 28x28 images (MEG's MNIST network); "
                          f"the images are {H}x{W}.")
    return H, W, C


def _kind(role: str, config, valid):
    kind = config.get("kind", "mlp")
    if kind not in valid:
        raise ConfigError(f"model.{role}.kind {kind!r} is unknown; valid kinds are {list(valid)}.")
    return kind


# a config whose network kind needs fields it does not declare (its config is locked, so they cannot be
# added by an override): the configs that declare them
KIND_CONFIGS = {"rbm": "configs/steincd.py:mnist", "autoencoder": "configs/steingan.py:cifar10",
                "product_of_experts": "configs/ddgm.py"}


def _missing_field(role: str, config, error: BaseException):
    """A ConfigError for a network kind whose config lacks a field (AttributeError / KeyError of it)."""
    import re
    kind = config.get("kind", "mlp")
    inner = error.args[0] if isinstance(error, AttributeError) and error.args else error
    text = inner.args[0] if isinstance(inner, KeyError) and inner.args else str(inner)
    found = re.findall(r"'([A-Za-z_]+)'", str(text))
    field = found[0] if found else "?"
    where = KIND_CONFIGS.get(kind)
    hint = f"start from a config that declares it, e.g. {where}" if where else "start from a config of that kind"
    return ConfigError(f"model.{role}.kind={kind!r} needs model.{role}.{field}, which this config does not have "
                       f"(a locked config takes no new fields); {hint}.")


def build_energy(energy_config, data_shape, compute_dtype=None):
    """The energy network named by model.energy.kind: 'mlp' (EnergyMLP), 'rbm' (RBMEnergy, exact log Z),
    'autoencoder' (AutoencoderEnergy, Eq. 24), 'product_of_experts' (Kim & Bengio Eq. 11), 'dcgan'
    (EBM-BB Table 8), 'resnet' (Table 9), 'meg_mnist' (MEG's MNIST energy) or 'meg_kdd' (MEG's KDD99 MLP).
    Each returns one energy per row, apply({'params': p}, x) -> (B,); a 'resnet' energy with
    batch_norm=True also needs its 'batch_stats' (see models.images.ResNetEnergy)."""
    try:
        net = _energy_network(energy_config, data_shape)
    except (AttributeError, KeyError) as e:
        raise _missing_field("energy", energy_config, e) from None
    kind = energy_config.get("kind", "mlp")
    image = kind in IMAGE_KINDS or (kind == "product_of_experts" and energy_config.get("feature_extractor", "mlp") == "conv")
    return with_compute_dtype(net, compute_dtype or jnp.float32, image)


def _flag(energy_config, name):
    v = energy_config.get(name, False)
    if not isinstance(v, bool):
        raise ConfigError(f"model.energy.{name}={v!r} is invalid; it must be True or False.")
    return v


def _output_scale_init(energy_config):
    v = energy_config.get("output_scale_init", 1.0)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < float("inf"):
        raise ConfigError(f"model.energy.output_scale_init={v!r} is invalid; it must be a finite number > 0.")
    return float(v)


def _energy_network(energy_config, data_shape):
    from ebm_jax.models.mlp import EnergyMLP, build_mlp
    kind = _kind("energy", energy_config, ENERGY_KINDS)
    if kind == "mlp":
        return build_mlp("energy", energy_config.hidden, energy_config.activation,
                         spectral_norm=energy_config.get("spectral_norm", False),
                         quadratic=float(energy_config.get("quadratic", 0.0)),
                         log_output_scale=_flag(energy_config, "log_output_scale"),
                         output_scale_init=_output_scale_init(energy_config))
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
        features = energy_config.get("feature_extractor", "mlp")
        if features not in ("mlp", "conv"):
            raise ConfigError(f"model.energy.feature_extractor={features!r} is invalid; valid feature extractors "
                              "are ['mlp', 'conv'].")
        if features == "conv":
            H, W, _ = _image_shape("energy", "product_of_experts", data_shape)
            if images.ddgm_num_stages(H, W) == 0:
                raise ConfigError(f"model.energy.feature_extractor='conv' halves the images down to 4x4 (e.g. 32 or 64 "
                                  f"pixels a side); the images are {H}x{W}.")
        return ProductOfExpertsEnergy(tuple(int(h) for h in energy_config.hidden), int(energy_config.num_experts),
                                      sigma, energy_config.activation, features, int(energy_config.get("width", 128)))
    if kind == "meg_kdd":
        return EnergyMLP(images.MEG_KDD_ENERGY_HIDDEN, "leaky_relu")
    f = _Fields("energy", kind, energy_config)
    H, _, _ = _image_shape("energy", kind, data_shape)
    if kind == "dcgan":
        return images.DCGANEnergy(f.positive_int("width"), f.slope(), f.flag("spectral_norm"))
    if kind == "resnet":
        mults, downs = f.int_tuple("channel_multipliers"), f.bool_tuple("downsample")
        images.resnet_energy_plan(H, mults, downs)  # config errors now, not at the first call
        return images.ResNetEnergy(f.positive_int("width"), mults, downs, f.flag("batch_norm"), f.slope(),
                                   f.flag("spectral_norm"))
    return images.MEGMNISTEnergy(f.positive_int("width"), f.slope())


def build_generator(generator_config, data_shape, compute_dtype=None):
    """'mlp' (GeneratorMLP), 'deconv' (DeconvGenerator), 'meg_kdd' (MEG's KDD99 MLP): apply -> x;
    'dcgan' (EBM-BB Table 8), 'resnet' (Table 10), 'meg_mnist' (MEG's MNIST generator): batch-normalised,
    apply(variables, z, mode=..., stats=...) -> (x, used_stats) as NormalizedGeneratorMLP."""
    try:
        net = _generator_network(generator_config, data_shape)
    except (AttributeError, KeyError) as e:
        raise _missing_field("generator", generator_config, e) from None
    return with_compute_dtype(net, compute_dtype or jnp.float32, generator_config.get("kind", "mlp") in IMAGE_KINDS)


def _generator_network(generator_config, data_shape):
    from ebm_jax.models.mlp import GeneratorMLP, build_mlp
    kind = _kind("generator", generator_config, GENERATOR_KINDS)
    if kind == "mlp":
        return build_mlp("generator", generator_config.hidden, generator_config.activation, out_shape=data_shape)
    if kind == "deconv":
        if len(data_shape) != 3:
            raise ConfigError(f"model.generator.kind 'deconv' needs image data (H, W, C); the data have shape {tuple(data_shape)}.")
        return DeconvGenerator(tuple(data_shape), int(generator_config.get("width", 1024)),
                               int(generator_config.get("channels", 64)))
    if kind == "meg_kdd":
        return GeneratorMLP(images.MEG_KDD_GENERATOR_HIDDEN, tuple(data_shape), "relu")
    f = _Fields("generator", kind, generator_config)
    H, W, C = _image_shape("generator", kind, data_shape)
    if kind == "dcgan":
        return images.DCGANGenerator((H, W, C), f.positive_int("width"), f.flag("batch_norm"))
    if kind == "resnet":
        mults = f.int_tuple("channel_multipliers")
        images.resnet_generator_plan(H, W, mults)
        return images.ResNetGenerator((H, W, C), f.positive_int("width"), mults, f.flag("batch_norm"))
    if kind == "ddgm_conv":
        if images.ddgm_num_stages(H, W) < 2:
            raise ConfigError(f"model.generator.kind 'ddgm_conv' doubles a 4x4 map at least twice (e.g. to 32 or 64 "
                              f"pixels a side); the images are {H}x{W}.")
        return images.DDGMConvGenerator((H, W, C), f.positive_int("width"), f.flag("batch_norm"))
    return images.MEGMNISTGenerator(C, f.positive_int("width"), f.flag("batch_norm"))


def build_statistics(statistics_config, data_shape, compute_dtype=None):
    """The statistics network T(x, z) of MEG's mutual-information estimator, apply({'params': p}, x, z)
    -> (B,): 'mlp' (StatisticsMLP on [x, z]), 'dcgan' or 'meg_mnist' (models.images.ConvStatistics with
    that energy's convolutional trunk) or 'meg_kdd' (MEG's KDD99 MLP)."""
    try:
        net = _statistics_network(statistics_config, data_shape)
    except (AttributeError, KeyError) as e:
        raise _missing_field("statistics", statistics_config, e) from None
    return with_compute_dtype(net, compute_dtype or jnp.float32, statistics_config.get("kind", "mlp") in IMAGE_KINDS)


def _statistics_network(statistics_config, data_shape):
    from ebm_jax.models.mlp import StatisticsMLP, build_mlp
    kind = _kind("statistics", statistics_config, STATISTICS_KINDS)
    if kind == "mlp":
        return build_mlp("statistics", statistics_config.hidden, statistics_config.activation)
    if kind == "meg_kdd":
        return StatisticsMLP(images.MEG_KDD_STATISTICS_HIDDEN, "leaky_relu")
    f = _Fields("statistics", kind, statistics_config)
    _image_shape("statistics", kind, data_shape)
    return images.ConvStatistics(kind, f.positive_int("width"), f.int_tuple("head_hidden"),
                                 f.non_negative_int("features"), f.slope())
