"""Mixed precision for the image networks: bfloat16 compute, float32 parameters.

model.compute_dtype picks the dtype the image networks (kinds dcgan, resnet, meg_mnist, ddgm_conv and the
product of experts with conv feature_extractor; the divergence triangle's conv encoders) compute in:
  'auto'      bfloat16 on GPU and TPU, float32 on CPU (XLA:CPU has no fast bfloat16 matmuls or convs);
  'float32'   always float32;
  'bfloat16'  always bfloat16 (also on CPU, e.g. to test it).
MLP-only configs (the toys, KDD99, Table 7's MNIST MLPs) always compute in float32: their matmuls are
too small for bfloat16 to pay, and the Jacobian estimators on them (LOBPCG, exact log-det) need float32.

How: `MixedPrecision` wraps a built network and, at every apply, casts the float32 parameters and the
floating inputs to bfloat16 and every floating output back to float32. The parameters, and so the
optimiser state and the checkpoints, stay float32: gradients flow back through the casts as float32,
and a checkpoint trained in one dtype restores and runs in the other. Batch-norm statistics are
computed in float32 whatever the compute dtype (models.batchnorm), so the running averages in the
state stay float32 too.
"""
from typing import Any

import jax
import jax.numpy as jnp

from ebm_jax.errors import ConfigError

COMPUTE_DTYPES = ("auto", "float32", "bfloat16")
IMAGE_KINDS = ("dcgan", "resnet", "meg_mnist", "ddgm_conv")


def resolve_compute_dtype(model_config, backend: str = None):
    """The dtype image networks compute in, from model.compute_dtype and the default backend."""
    value = model_config.get("compute_dtype", "auto")
    if value not in COMPUTE_DTYPES:
        raise ConfigError(f"config.model.compute_dtype={value!r} is invalid; valid values are {list(COMPUTE_DTYPES)}.")
    if value == "auto":
        backend = backend or jax.default_backend()
        return jnp.bfloat16 if backend in ("gpu", "tpu", "cuda", "rocm") else jnp.float32
    return jnp.bfloat16 if value == "bfloat16" else jnp.float32


def _cast(tree, dtype):
    def cast(x):
        if isinstance(x, (jax.Array, jnp.ndarray)) and jnp.issubdtype(x.dtype, jnp.floating) and x.dtype != dtype:
            return x.astype(dtype)
        return x
    return jax.tree_util.tree_map(cast, tree)


class MixedPrecision:
    """A Flax network (anything with init / apply) whose apply computes in `dtype`.

    init is the wrapped network's (float32 parameters). apply(variables, *args, **kwargs) casts
    variables['params'] and the floating positional arguments (x, z) to `dtype`; keyword arguments
    (batch-norm `stats`, `mode`, `mutable`, `method`) pass unchanged; floating outputs come back as
    float32. Every other attribute is the wrapped network's."""

    def __init__(self, net, dtype):
        self.net = net
        self.dtype = jnp.dtype(dtype)

    def init(self, *args, **kwargs):
        return self.net.init(*args, **kwargs)

    def apply(self, variables, *args, **kwargs) -> Any:
        variables = dict(variables)
        variables["params"] = _cast(variables["params"], self.dtype)
        out = self.net.apply(variables, *_cast(args, self.dtype), **kwargs)
        return _cast(out, jnp.float32)

    def __getattr__(self, name):
        return getattr(self.net, name)


def with_compute_dtype(net, dtype, is_image: bool):
    """net, wrapped to compute in `dtype` when that is not float32 and net is an image network."""
    if not is_image or jnp.dtype(dtype) == jnp.dtype(jnp.float32):
        return net
    return MixedPrecision(net, dtype)


def unwrap(net):
    """The Flax module under a MixedPrecision wrapper (or net itself)."""
    return net.net if isinstance(net, MixedPrecision) else net
