"""Registry of training methods: config.method.name -> method class.

The training loop only ever goes through this dict, never through the name itself.
"""
from ebm_jax.methods.base import ConfigError, GeneratorEnergyMethod
from ebm_jax.methods.ebm_bb import BidirectionalBounds, WGANZeroGP, ZeroGPBounds
from ebm_jax.methods.ddgm import DeepDirectedGenerativeModel
from ebm_jax.methods.meg import MEG
from ebm_jax.methods.references import ExactLikelihood, PersistentContrastiveDivergence
from ebm_jax.methods.stein import SteinCD, SteinGAN
from ebm_jax.methods.triangle import DivergenceTriangle

METHODS = {
    "meg": MEG,
    "ebm_bb": BidirectionalBounds,
    "ebm_0gp": ZeroGPBounds,
    "wgan_0gp": WGANZeroGP,
    "steincd": SteinCD,
    "cd": SteinCD,          # CD-k with Langevin dynamics: SteinCD's class with method.sampler='langevin'
    "steingan": SteinGAN,   # method.alpha > 0: SteinCD-GAN(alpha)
    "ddgm": DeepDirectedGenerativeModel,   # Kim & Bengio 2016
    "triangle": DivergenceTriangle,        # Han et al. 2020: VAE + latent EBM f(x, z)
    "mle": ExactLikelihood,                # reference: exact maximum likelihood of 2-D data (log Z on a grid)
    "pcd": PersistentContrastiveDivergence,  # reference: Du & Mordatch 2019, short-run Langevin from a buffer
}


def get_method(config, data_shape):
    name = config.method.name
    if name not in METHODS:
        raise ConfigError(f"method.name {name!r} is unknown; valid methods are {sorted(METHODS)}.")
    return METHODS[name](config, data_shape)


__all__ = ["METHODS", "get_method", "ConfigError", "GeneratorEnergyMethod"]
