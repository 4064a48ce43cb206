"""Registry of training methods: config.method.name -> method class.

The training loop only ever goes through this dict, never through the name itself.
"""
from ebm_jax.methods.base import ConfigError, GeneratorEnergyMethod
from ebm_jax.methods.meg import MEG

METHODS = {
    "meg": MEG,
}


def get_method(config, data_shape):
    name = config.method.name
    if name not in METHODS:
        raise ConfigError(f"method.name {name!r} is unknown; valid methods are {sorted(METHODS)}.")
    return METHODS[name](config, data_shape)


__all__ = ["METHODS", "get_method", "ConfigError", "GeneratorEnergyMethod"]
