"""The papers' image networks (NHWC images in [-1, 1]) and MEG's KDD99 networks.

  DCGANEnergy / DCGANGenerator      EBM-BB Table 8 (CIFAR-10), which is also MEG's CIFAR-10 and CelebA
                                    network (networks/cifar.py, networks/celeba.py of the official MEG code)
  ResNetEnergy / ResNetGenerator    EBM-BB Tables 9-10 (ANIMEFACE 64x64), and the reference's 32x32 sizes
  MEGMNISTEnergy / MEGMNISTGenerator  MEG's MNIST / StackedMNIST networks (networks/mnist.py)
  ConvStatistics                    MEG's statistics network T(x, z) for images: a conv encoder of x
                                    (the matching energy's trunk), concatenated with z, an MLP to a scalar
  MEG_KDD_*                         MEG's KDD99 MLP widths (networks/kdd.py), built from models.mlp

Every generator here returns `(x, used_stats)` and takes `mode` in {'batch', 'running', 'given'} and
`stats`, exactly as models.NormalizedGeneratorMLP does (see models.batchnorm): running averages live in
the 'batch_stats' collection, and mode='given' with the stats of a 'batch' call is the per-sample map
whose Jacobian EBM-BB's entropy uses. Batch-norm statistics of convolutions are per channel over
(batch, H, W). Energies return one energy per image, shape (B,).

Convolutions reproduce torch's padding arithmetic: Conv2d(k, s, p) is padding ((p, p), (p, p)), and
ConvTranspose2d(k, s, p, output_padding=op) is flax's ConvTranspose with padding
((k-1-p, k-1-p+op),) * 2 on the stride-dilated input (`torch_conv_transpose`), so that every layer has
the output size of the table it comes from. Flax's transposed convolution does not flip its kernel as
torch's does; with a learned kernel that is only a relabelling of the parameters.

Initialisation is flax's default (LeCun normal kernels, zero biases) except where the reference code
sets its own (MEG's MNIST generator: N(0, 0.02) convolution kernels, N(1, 0.02) batch-norm scales). The
reference codes of Table 8 and MEG's CIFAR networks keep torch's defaults, which are uniform with a
variance 3 times smaller than LeCun normal.
"""
from typing import Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from ebm_jax.errors import ConfigError
from ebm_jax.models.batchnorm import BatchNormLayers
from ebm_jax.models.conv import Conv, ConvTranspose
from ebm_jax.models.latent import SpectralConv
from ebm_jax.models.mlp import SpectralDense

# EBM-BB's DCGAN/ResNet reference code (network/DCGAN.py, network/Resnet.py) and MEG's CIFAR/CelebA
# code use LeakyReLU(0.1); Table 8 only says "LReLU". MEG's MNIST and KDD networks use 0.2.
DCGAN_SLOPE = 0.1
MEG_MNIST_SLOPE = 0.2
# DCGAN channel widths double with every halving of the resolution up to this multiple of `width`
# (Table 8: 64, 128, 256, 512; MEG's 64x64 CelebA network stays at 512 for its extra stage).
DCGAN_MAX_MULTIPLIER = 8
DCGAN_MIN_BOTTOM = 7  # halve the resolution while the side is above this and even: 32->4, 64->4, 28->7


def torch_conv(features: int, kernel: int, stride: int, pad: int, spectral_norm: bool = False,
               kernel_init=nn.initializers.lecun_normal()):
    """torch.nn.Conv2d(cin, features, kernel, stride, pad) in NHWC (optionally spectrally normalised)."""
    padding = ((pad, pad), (pad, pad))
    if spectral_norm:
        return SpectralConv(features, (kernel, kernel), (stride, stride), padding)
    return Conv(features, (kernel, kernel), strides=(stride, stride), padding=padding, kernel_init=kernel_init)


def torch_conv_transpose(features: int, kernel: int, stride: int, pad: int, output_padding: int = 0,
                         kernel_init=nn.initializers.lecun_normal()):
    """torch.nn.ConvTranspose2d(cin, features, kernel, stride, pad, output_padding) in NHWC: output side
    (n - 1) * stride - 2 * pad + kernel + output_padding."""
    lo = kernel - 1 - pad
    return ConvTranspose(features, (kernel, kernel), strides=(stride, stride),
                         padding=((lo, lo + output_padding),) * 2, kernel_init=kernel_init)


def dcgan_num_halvings(height: int, width: int) -> int:
    """How many stride-2 stages take (height, width) down to the DCGAN's bottom resolution (4x4 for 32
    and 64, 7x7 for 28)."""
    n = 0
    while height > DCGAN_MIN_BOTTOM and height % 2 == 0 and width % 2 == 0:
        height, width, n = height // 2, width // 2, n + 1
    return n


def dcgan_channels(level: int, width: int, max_multiplier: int = DCGAN_MAX_MULTIPLIER) -> int:
    """Channels at resolution side / 2^level."""
    return width * min(2 ** level, max_multiplier)


def _check_image(x, who: str):
    if x.ndim != 4:
        raise ConfigError(f"the {who} needs image data (B, H, W, C); got an input of shape {tuple(x.shape)}.")


def _energy_head(module, h, spectral_norm: bool):
    """Flatten, Linear(1); with spectral norm every layer is 1-Lipschitz, so a learnable output scale
    follows (initialised to 1), as models.EnergyMLP does."""
    h = h.reshape(h.shape[0], -1)
    e = (SpectralDense(1) if spectral_norm else nn.Dense(1))(h)[:, 0]
    if spectral_norm:
        e = e * module.param("output_scale", nn.initializers.ones, ())
    return e


# ---------------------------------------------------------------------------------------------------
# DCGAN: EBM-BB Table 8; MEG networks/cifar.py and networks/celeba.py
# ---------------------------------------------------------------------------------------------------
class DCGANTrunk(nn.Module):
    """x -> features of the DCGAN energy before its Linear: for every halving of the resolution a 3x3
    stride-1 and a 4x4 stride-2 convolution with the same channels, then a 3x3 convolution at the
    bottom resolution, each followed by LeakyReLU. 32x32: 64, 64, 128, 128, 256, 256, 512 channels to
    4x4x512 (Table 8); 64x64: 64, 64, ..., 512, 512, 512 to 4x4x512 (MEG's CelebA energy); 28x28: 64,
    64, 128, 128, 256 to 7x7x256. Returns the flattened features."""
    width: int = 64
    negative_slope: float = DCGAN_SLOPE
    spectral_norm: bool = False

    @nn.compact
    def __call__(self, x):
        _check_image(x, "DCGAN energy")
        n = dcgan_num_halvings(x.shape[1], x.shape[2])
        act = lambda v: nn.leaky_relu(v, self.negative_slope)
        h = x
        for level in range(n):
            c = dcgan_channels(level, self.width)
            h = act(torch_conv(c, 3, 1, 1, self.spectral_norm)(h))
            h = act(torch_conv(c, 4, 2, 1, self.spectral_norm)(h))
        h = act(torch_conv(dcgan_channels(n, self.width), 3, 1, 1, self.spectral_norm)(h))
        return h.reshape(h.shape[0], -1)


class DCGANEnergy(nn.Module):
    """E(x) of EBM-BB Table 8 (and MEG's CIFAR-10 / CelebA energy): DCGANTrunk, flatten, Linear(1).

    `width` is the first layer's channels (64 in the table); the image size sets the number of stages.
    spectral_norm (not in the papers) normalises every layer and adds a learnable output scale."""
    width: int = 64
    negative_slope: float = DCGAN_SLOPE
    spectral_norm: bool = False

    @nn.compact
    def __call__(self, x):
        h = DCGANTrunk(self.width, self.negative_slope, self.spectral_norm)(x)
        return _energy_head(self, h, self.spectral_norm)


class DCGANGenerator(nn.Module):
    """G(z) of EBM-BB Table 8: Linear to bottom x bottom x C_bottom (no BN or activation after it, as in
    the table and both reference codes), then per resolution doubling a 4x4 stride-2 ConvTranspose,
    BN, ReLU, and a final 3x3 convolution with tanh. 32x32: 4x4x512 -> 256 -> 128 -> 64 -> 3 (Table 8);
    64x64: 4x4x512 -> 512 -> 256 -> 128 -> 64 -> 3 (MEG's CelebA generator); 28x28: 7x7x256 -> 128 ->
    64 -> C. Channels mirror DCGANTrunk's. MEG's CIFAR code ends in a 3x3 stride-1 ConvTranspose
    instead of a Conv: the same family of maps.

    __call__(z, mode='batch', stats=None) -> (x, used_stats), as NormalizedGeneratorMLP."""
    out_shape: Sequence[int]
    width: int = 64
    batch_norm: bool = True
    momentum: float = 0.9   # flax convention; torch's momentum=0.1
    epsilon: float = 1e-5   # torch's BatchNorm2d default (the references use it)

    @nn.compact
    def __call__(self, z, mode: str = "batch", stats=None):
        bn = BatchNormLayers(self, mode, stats, self.momentum, self.epsilon)
        H, W, C = self.out_shape
        n = dcgan_num_halvings(H, W)
        bh, bw = H // 2 ** n, W // 2 ** n
        c = dcgan_channels(n, self.width)
        h = nn.Dense(bh * bw * c)(z.reshape(z.shape[0], -1)).reshape(z.shape[0], bh, bw, c)
        for level in reversed(range(n)):
            h = torch_conv_transpose(dcgan_channels(level, self.width), 4, 2, 1)(h)
            if self.batch_norm:
                h = bn(h)
            h = nn.relu(h)
        x = jnp.tanh(torch_conv(C, 3, 1, 1)(h))
        return x, bn.finish()


# ---------------------------------------------------------------------------------------------------
# ResNet: EBM-BB Tables 9-10 (reference network/Resnet.py, itself the SNGAN / BigGAN layout)
# ---------------------------------------------------------------------------------------------------
# Channel multipliers of `width` per residual block, and whether the block halves the resolution.
# 64x64: Table 9 (64, 128, 256, 512, 1024; the last block keeps 4x4) and Table 10 (a Linear to
# 4x4x1024, then blocks to 512, 256, 128, 64). 32x32: the reference's sizes (network/Resnet.py,
# d_in_dims_collection["32"] etc.), four 128-channel energy blocks 32 -> 16 -> 8 -> 8 -> 8 and a
# 4x4x256 generator with three 256-channel blocks.
RESNET_ENERGY_DEFAULTS = {32: ((2, 2, 2, 2), (True, True, False, False)),
                          64: ((1, 2, 4, 8, 16), (True, True, True, True, False))}
RESNET_GENERATOR_DEFAULTS = {32: (4, 4, 4, 4), 64: (16, 8, 4, 2, 1)}
RESNET_EPSILON = 1e-4   # the reference's BatchNorm2d(eps=1e-4)


def _avg_pool(h):
    return nn.avg_pool(h, (2, 2), strides=(2, 2))


def _upsample(h):
    """Nearest-neighbour upsampling by 2 (torch nn.Upsample(scale_factor=2, mode='nearest'))."""
    return jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)


class ResNetEnergy(nn.Module):
    """E(x) of EBM-BB Table 9: residual blocks, LeakyReLU, sum over H and W, Linear(1).

    Block 0 (Table 9 "ResBlock0"): left Conv3x3, [BN], LReLU, Conv3x3, AvgPool; right AvgPool, [BN],
    Conv1x1; added. Later blocks: left [BN], LReLU, Conv3x3, [BN], LReLU, Conv3x3, [AvgPool]; right
    (when the block downsamples or changes channels) [BN], Conv1x1, [AvgPool], else the identity.

    batch_norm defaults to False: with it, one image's energy depends on the other images of its batch
    (mode='batch'), which breaks the per-example energy that a gradient penalty, MCMC and anomaly scores
    assume. Table 9 lists BN, but the paper notes that removing it from the energy stabilised training
    on ANIMEFACE, and the reference code builds every energy block with bn=False. With
    batch_norm=True, `mode` is 'batch' (this batch's statistics; running averages in 'batch_stats'
    updated when it is mutable) or 'running' (the running averages: a per-example energy).

    channel_multipliers / downsample default to RESNET_ENERGY_DEFAULTS for 32x32 and 64x64 images.
    spectral_norm (the reference's --sn option) normalises every convolution and the Linear, followed
    by a learnable output scale as in EnergyMLP."""
    width: int = 64
    channel_multipliers: Optional[Sequence[int]] = None
    downsample: Optional[Sequence[bool]] = None
    batch_norm: bool = False
    negative_slope: float = DCGAN_SLOPE
    spectral_norm: bool = False
    momentum: float = 0.9
    epsilon: float = RESNET_EPSILON

    @nn.compact
    def __call__(self, x, mode: str = "batch"):
        _check_image(x, "ResNet energy")
        if mode == "given":
            raise ValueError("energy mode 'given' is not supported; valid modes are ['batch', 'running'].")
        mults, downs = resnet_energy_plan(x.shape[1], self.channel_multipliers, self.downsample)
        bn = BatchNormLayers(self, mode, None, self.momentum, self.epsilon)
        norm = bn if self.batch_norm else (lambda v: v)
        act = lambda v: nn.leaky_relu(v, self.negative_slope)
        conv = lambda c, k: torch_conv(c, k, 1, (k - 1) // 2, self.spectral_norm)
        h = x
        for j, (m, down) in enumerate(zip(mults, downs)):
            c = self.width * m
            if j == 0:
                left = conv(c, 3)(act(norm(conv(c, 3)(h))))
                right = _avg_pool(h) if down else h
                right = conv(c, 1)(norm(right))
                if down:
                    left = _avg_pool(left)
            else:
                left = conv(c, 3)(act(norm(h)))
                left = conv(c, 3)(act(norm(left)))
                if down:
                    left = _avg_pool(left)
                right = h
                if down or h.shape[-1] != c:
                    right = conv(c, 1)(norm(h))
                    if down:
                        right = _avg_pool(right)
            h = left + right
        h = jnp.sum(act(h), axis=(1, 2))
        return _energy_head(self, h, self.spectral_norm)


class ResNetGenerator(nn.Module):
    """G(z) of EBM-BB Table 10: Linear to 4x4 x (width * m_0), then per m_j a residual block (left:
    BN, ReLU, NN-upsample, Conv3x3, BN, ReLU, Conv3x3; right: NN-upsample, Conv1x1; added) doubling
    the resolution, then BN, ReLU, Conv3x3, tanh. channel_multipliers defaults to
    RESNET_GENERATOR_DEFAULTS (64x64: 16, 8, 4, 2, 1; 32x32: 4, 4, 4, 4); the bottom resolution is the
    image side / 2^(number of blocks).

    __call__(z, mode='batch', stats=None) -> (x, used_stats), as NormalizedGeneratorMLP; the batch-norm
    layers are numbered in the order they run (two per block, then the last one)."""
    out_shape: Sequence[int]
    width: int = 64
    channel_multipliers: Optional[Sequence[int]] = None
    batch_norm: bool = True
    momentum: float = 0.9
    epsilon: float = RESNET_EPSILON

    @nn.compact
    def __call__(self, z, mode: str = "batch", stats=None):
        H, W, C = self.out_shape
        mults = resnet_generator_plan(H, W, self.channel_multipliers)
        bn = BatchNormLayers(self, mode, stats, self.momentum, self.epsilon)
        norm = bn if self.batch_norm else (lambda v: v)
        conv = lambda c, k: torch_conv(c, k, 1, (k - 1) // 2)
        n = len(mults) - 1
        bh, bw = H // 2 ** n, W // 2 ** n
        c0 = self.width * mults[0]
        h = nn.Dense(bh * bw * c0)(z.reshape(z.shape[0], -1)).reshape(z.shape[0], bh, bw, c0)
        for m in mults[1:]:
            c = self.width * m
            left = conv(c, 3)(_upsample(nn.relu(norm(h))))
            left = conv(c, 3)(nn.relu(norm(left)))
            h = left + conv(c, 1)(_upsample(h))
        x = jnp.tanh(conv(C, 3)(nn.relu(norm(h))))
        return x, bn.finish()


def resnet_energy_plan(height: int, multipliers=None, downsample=None) -> Tuple[Tuple[int, ...], Tuple[bool, ...]]:
    if multipliers is None or downsample is None:
        if height not in RESNET_ENERGY_DEFAULTS:
            raise ConfigError(f"the ResNet energy has default blocks for image sides {sorted(RESNET_ENERGY_DEFAULTS)}; "
                              f"for side {height} set model.energy.channel_multipliers and model.energy.downsample.")
        default_m, default_d = RESNET_ENERGY_DEFAULTS[height]
        multipliers = default_m if multipliers is None else multipliers
        downsample = default_d if downsample is None else downsample
    multipliers, downsample = tuple(int(m) for m in multipliers), tuple(bool(d) for d in downsample)
    if len(multipliers) != len(downsample) or not multipliers:
        raise ConfigError(f"model.energy.channel_multipliers {multipliers} and model.energy.downsample {downsample} "
                          f"must have the same non-zero length (one entry per residual block).")
    return multipliers, downsample


def resnet_generator_plan(height: int, width: int, multipliers=None) -> Tuple[int, ...]:
    if multipliers is None:
        if height not in RESNET_GENERATOR_DEFAULTS:
            raise ConfigError(f"the ResNet generator has default blocks for image sides {sorted(RESNET_GENERATOR_DEFAULTS)}; "
                              f"for side {height} set model.generator.channel_multipliers.")
        multipliers = RESNET_GENERATOR_DEFAULTS[height]
    multipliers = tuple(int(m) for m in multipliers)
    n = len(multipliers) - 1
    if n < 1 or height % 2 ** n or width % 2 ** n:
        raise ConfigError(f"model.generator.channel_multipliers {multipliers} gives {n} upsampling blocks, which "
                          f"need at least one block and image sides divisible by {2 ** max(n, 0)}; the images are "
                          f"{height}x{width}.")
    return multipliers


# ---------------------------------------------------------------------------------------------------
# MEG's MNIST / StackedMNIST networks: networks/mnist.py of ritheshkumar95/energy_based_generative_models
# ---------------------------------------------------------------------------------------------------
MEG_MNIST_SHAPE = (28, 28)


class MEGMNISTTrunk(nn.Module):
    """Four 5x5 stride-2 convolutions (padding 2) with LeakyReLU(0.2), channels width/8, /4, /2, width:
    28 -> 14 -> 7 -> 4 -> 2. Returns the flattened 2x2 x width features."""
    width: int = 512
    negative_slope: float = MEG_MNIST_SLOPE

    @nn.compact
    def __call__(self, x):
        _check_image(x, "MEG MNIST energy")
        h = x
        for div in (8, 4, 2, 1):
            h = nn.leaky_relu(torch_conv(self.width // div, 5, 2, 2)(h), self.negative_slope)
        return h.reshape(h.shape[0], -1)


class MEGMNISTEnergy(nn.Module):
    """MEG's MNIST energy (networks/mnist.py EnergyModel): MEGMNISTTrunk, Linear(2*2*width -> 1)."""
    width: int = 512
    negative_slope: float = MEG_MNIST_SLOPE

    @nn.compact
    def __call__(self, x):
        return _energy_head(self, MEGMNISTTrunk(self.width, self.negative_slope)(x), False)


class MEGMNISTGenerator(nn.Module):
    """MEG's MNIST / StackedMNIST generator (networks/mnist.py Generator): Linear(z -> 2*2*width), BN,
    ReLU, then 5x5 stride-2 ConvTranspose layers (padding 2, output_padding 1, 0, 1, 1) to 4, 7, 14 and
    28 pixels with width/2, /4, /8 and `channels` channels, BN + ReLU after all but the last, tanh.
    The reference's weights_init is kept: convolution kernels N(0, 0.02), batch-norm scales N(1, 0.02).

    __call__(z, mode='batch', stats=None) -> (x, used_stats), as NormalizedGeneratorMLP."""
    channels: int = 1
    width: int = 512
    batch_norm: bool = True
    momentum: float = 0.9
    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, z, mode: str = "batch", stats=None):
        scale_init = lambda key, shape, dtype=jnp.float32: 1.0 + 0.02 * jax.random.normal(key, shape, dtype)
        bn = BatchNormLayers(self, mode, stats, self.momentum, self.epsilon, scale_init)
        norm = bn if self.batch_norm else (lambda v: v)
        init = nn.initializers.normal(0.02)
        h = nn.Dense(4 * self.width)(z.reshape(z.shape[0], -1)).reshape(z.shape[0], 2, 2, self.width)
        h = nn.relu(norm(h))
        for div, output_padding in ((2, 1), (4, 0), (8, 1)):
            h = nn.relu(norm(torch_conv_transpose(self.width // div, 5, 2, 2, output_padding, init)(h)))
        x = jnp.tanh(torch_conv_transpose(self.channels, 5, 2, 2, 1, init)(h))
        return x, bn.finish()


# ---------------------------------------------------------------------------------------------------
# Kim & Bengio (2016) Sec. 4: 64x64 colour images with "the convolutional operations and structures
# proposed by" DCGAN, 4 convolutional layers each, all filters 5x5: DEM 128-256-512-1024 feature maps,
# DGM 1024-512-256-128
# ---------------------------------------------------------------------------------------------------
def ddgm_num_stages(height: int, width: int) -> int:
    """Stride-2 stages between a 4x4 bottom and (height, width): 4 for 64x64, 3 for 32x32; 0 if none fits."""
    n = 0
    while height > 4 and height % 2 == 0 and width % 2 == 0:
        height, width, n = height // 2, width // 2, n + 1
    return n if (height, width) == (4, 4) else 0


class DDGMConvFeatures(nn.Module):
    """The DEM's feature extractor f(x): 5x5 stride-2 convolutions with width, 2 width, 4 width, ...
    channels down to 4x4 (64x64 and width 128: 128-256-512-1024), each with LeakyReLU (DCGAN's
    discriminator, without its batch norm: an energy of one image must not depend on the others in the
    batch), flattened. Piecewise linear, so it grows at most linearly and Eq. 11's quadratic term keeps
    exp(-E) integrable."""
    width: int = 128
    negative_slope: float = 0.2

    @nn.compact
    def __call__(self, x):
        _check_image(x, "product-of-experts convolutional energy")
        h = x
        for level in range(ddgm_num_stages(x.shape[1], x.shape[2])):
            h = nn.leaky_relu(torch_conv(self.width * 2 ** level, 5, 2, 2)(h), self.negative_slope)
        return h.reshape(h.shape[0], -1)


class DDGMConvGenerator(nn.Module):
    """The DGM: Linear(z -> 4x4x(width * 2^(n-1))), BN, ReLU, then 5x5 stride-2 transposed convolutions
    halving the channels (64x64, width 128: 1024 -> 512 -> 256 -> 128) with BN + ReLU, and a last one to
    the image's channels with tanh. Every hidden activation is batch-normalised: Eq. 15's entropy is
    the sum over them.

    __call__(z, mode='batch', stats=None) -> (x, used_stats), as NormalizedGeneratorMLP."""
    out_shape: Sequence[int]
    width: int = 128
    batch_norm: bool = True
    momentum: float = 0.9
    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, z, mode: str = "batch", stats=None):
        bn = BatchNormLayers(self, mode, stats, self.momentum, self.epsilon)
        norm = bn if self.batch_norm else (lambda v: v)
        H, W, C = self.out_shape
        n = ddgm_num_stages(H, W)
        c = self.width * 2 ** (n - 1)
        h = nn.Dense(16 * c)(z.reshape(z.shape[0], -1)).reshape(z.shape[0], 4, 4, c)
        h = nn.relu(norm(h))
        for level in range(n - 1):
            h = nn.relu(norm(torch_conv_transpose(c // 2 ** (level + 1), 5, 2, 2, 1)(h)))
        x = jnp.tanh(torch_conv_transpose(C, 5, 2, 2, 1)(h))
        return x, bn.finish()


# ---------------------------------------------------------------------------------------------------
# Statistics network T(x, z) for images (MEG's StatisticsNetwork in networks/cifar.py, celeba.py, mnist.py)
# ---------------------------------------------------------------------------------------------------
STATISTICS_TRUNKS = ("dcgan", "meg_mnist")


class ConvStatistics(nn.Module):
    """T(x, z) of MEG's mutual-information estimator for images: the energy's convolutional trunk
    encodes x, a Linear maps it to `features` numbers (default: z's size, as the reference's
    Linear(4*4*dim, z_dim)), concatenated with z, then Linear + LeakyReLU layers of widths `head_hidden`
    and a Linear to a scalar. head_hidden defaults to (8 * width,) for the DCGAN trunk (the reference's
    dim = 512) and (width,) for MEG's MNIST trunk (dim = 512 there too). Returns (B,)."""
    trunk: str = "dcgan"
    width: int = 64
    head_hidden: Optional[Sequence[int]] = None
    features: int = 0
    negative_slope: Optional[float] = None

    @nn.compact
    def __call__(self, x, z):
        z = z.reshape(z.shape[0], -1)
        if self.trunk == "dcgan":
            slope = DCGAN_SLOPE if self.negative_slope is None else self.negative_slope
            h = DCGANTrunk(self.width, slope)(x)
            hidden = (DCGAN_MAX_MULTIPLIER * self.width,)
        elif self.trunk == "meg_mnist":
            slope = MEG_MNIST_SLOPE if self.negative_slope is None else self.negative_slope
            h = MEGMNISTTrunk(self.width, slope)(x)
            hidden = (self.width,)
        else:
            raise ConfigError(f"statistics trunk {self.trunk!r} is unknown; valid trunks are {list(STATISTICS_TRUNKS)}.")
        if self.head_hidden is not None:
            hidden = tuple(self.head_hidden)
        h = nn.Dense(self.features or z.shape[1])(h)
        h = jnp.concatenate([h, z], axis=-1)
        for w in hidden:
            h = nn.leaky_relu(nn.Dense(w)(h), slope)
        return nn.Dense(1)(h)[:, 0]


# ---------------------------------------------------------------------------------------------------
# MEG's KDD99 networks (networks/kdd.py): 121 features, z_dim 32 in scripts/train/anomaly_kdd.py
# ---------------------------------------------------------------------------------------------------
MEG_KDD_ENERGY_HIDDEN = (256, 128, 128)      # LeakyReLU(0.2)
MEG_KDD_GENERATOR_HIDDEN = (64, 128)         # ReLU, linear output
MEG_KDD_STATISTICS_HIDDEN = (256, 128, 128)  # on [x, z], LeakyReLU(0.2)
MEG_KDD_LATENT_DIM = 32
