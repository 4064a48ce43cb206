"""Registry of training methods: config.method.name -> method class.

The training loop only ever goes through this dict, never through the name itself.
"""
from ebm_jax.methods.base import ConfigError, GeneratorEnergyMethod
from ebm_jax.methods.ebm_bb import BidirectionalBounds, WGANZeroGP, ZeroGPBounds
from ebm_jax.methods.meg import MEG

METHODS = {
    "meg": MEG,
    "ebm_bb": BidirectionalBounds,
    "ebm_0gp": ZeroGPBounds,
    "wgan_0gp": WGANZeroGP,
}


def get_method(config, data_shape):
    name = config.method.name
    if name not in METHODS:
        raise ConfigError(f"method.name {name!r} is unknown; valid methods are {sorted(METHODS)}.")
    return METHODS[name](config, data_shape)


__all__ = ["METHODS", "get_method", "ConfigError", "GeneratorEnergyMethod"]
