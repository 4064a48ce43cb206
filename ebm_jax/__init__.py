"""ebm_jax: energy-based models trained with amortized samplers, in JAX/Flax."""
from ebm_jax import estimators
from ebm_jax.api import Model, load

__version__ = "0.1.0"
__all__ = ["load", "Model", "estimators", "__version__"]
