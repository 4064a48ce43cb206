"""Batch normalisation written out, so that the statistics a layer uses can be returned and passed back in.

Every generator with batch norm (NormalizedGeneratorMLP, the DCGAN, ResNet and MEG-MNIST generators
of models/images.py) calls `__call__(z, mode="batch", stats=None) -> (x, used_stats)` and normalises
through one `BatchNormLayers` object:

  'batch'   normalise with this batch's statistics (training); they are returned, and the running
            averages in the 'batch_stats' collection are updated when that collection is mutable;
  'running' normalise with the running averages (sampling, evaluation);
  'given'   normalise with `stats` returned by a 'batch' call. Applied to ONE sample z[None] this is
            the map z -> G(z) with the batch's statistics held fixed, whose per-sample Jacobian EBM-BB's
            entropy estimator needs (the reference code's stochman nnj.BatchNorm layers treat batch
            norm as the same per-sample affine map).

`used_stats` is a list with one (mean, var) pair per batch-norm layer, in the order the layers run,
each of shape (C,): the statistics are per feature for dense layers and per channel over
(batch, H, W) for convolutions (torch's BatchNorm1d / BatchNorm2d).

Parameters are created on the calling module with flat names bn_scale_<i>, bn_bias_<i> (params) and
mean_<i>, var_<i> (batch_stats), i counting the layers from 0, so that every generator's batch-norm
scales sit at the top of its parameter tree (Kim & Bengio's Eq. 15 entropy reads them there).
"""
from typing import Callable, List, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

BN_MODES = ("batch", "running", "given")


def check_mode(mode: str, stats) -> None:
    if mode not in BN_MODES:
        raise ValueError(f"generator mode {mode!r} is unknown; valid modes are {list(BN_MODES)}.")
    if mode == "given" and stats is None:
        raise ValueError("generator mode 'given' needs the `stats` returned by a mode='batch' call.")


class BatchNormLayers:
    """The batch-norm layers of one module call: `bn(h)` normalises h (..., C) over every axis but the
    last with layer number `bn.count`, and records the statistics it used in `bn.used`.

    momentum follows flax's convention, running = momentum * running + (1 - momentum) * batch, so the
    default 0.9 is torch's momentum=0.1; the running variance is the unbiased one, as torch keeps it.
    Create it inside a compact `__call__` of `module` (it creates parameters on that module)."""

    def __init__(self, module: nn.Module, mode: str = "batch", stats: Optional[Sequence[Tuple]] = None,
                 momentum: float = 0.9, epsilon: float = 1e-5, scale_init: Callable = nn.initializers.ones):
        check_mode(mode, stats)
        self.module, self.mode, self.stats = module, mode, stats
        self.momentum, self.epsilon, self.scale_init = momentum, epsilon, scale_init
        self.used: List[Tuple[jax.Array, jax.Array]] = []

    @property
    def count(self) -> int:
        return len(self.used)

    def __call__(self, h):
        m, i = self.module, self.count
        width = h.shape[-1]
        scale = m.param(f"bn_scale_{i}", self.scale_init, (width,))
        bias = m.param(f"bn_bias_{i}", nn.initializers.zeros, (width,))
        ra_mean = m.variable("batch_stats", f"mean_{i}", lambda: jnp.zeros((width,), jnp.float32))
        ra_var = m.variable("batch_stats", f"var_{i}", lambda: jnp.ones((width,), jnp.float32))
        axes = tuple(range(h.ndim - 1))
        if self.mode == "batch":
            # statistics in float32 also when the network computes in bfloat16 (models.precision): a
            # bfloat16 variance loses most of its digits, and the running averages stay float32
            hf = h.astype(jnp.promote_types(h.dtype, jnp.float32))
            mean, var = jnp.mean(hf, axis=axes), jnp.var(hf, axis=axes)
            if m.is_mutable_collection("batch_stats") and not m.is_initializing():
                n = h.size // width  # values per channel: batch (x H x W)
                ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
                ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var * n / max(n - 1, 1)
        elif self.mode == "running":
            mean, var = ra_mean.value, ra_var.value
        else:
            if i >= len(self.stats):
                raise ValueError(f"generator mode 'given' got statistics for {len(self.stats)} batch-norm layers; "
                                 f"the network has more (layer {i} has none).")
            mean, var = self.stats[i]
        self.used.append((mean, var))
        return ((h - mean) * jax.lax.rsqrt(var + self.epsilon) * scale + bias).astype(h.dtype)

    def finish(self):
        """The statistics used, after checking that 'given' statistics matched the layers one to one."""
        if self.mode == "given" and len(self.stats) != self.count:
            raise ValueError(f"generator mode 'given' got statistics for {len(self.stats)} batch-norm layers; "
                             f"the network has {self.count}.")
        return self.used
