"""Convolutions that stay fast on XLA's CPU backend (used where ebm_jax.kernels says: on a CPU by default).

XLA:CPU runs some convolutions whose output is only a few pixels wide orders of magnitude below the
machine's matmul rate (measured here, batch 64: a 5x5 stride-2 convolution from 4x4x256 to 2x2x512
took 596 ms forward where the same product as a matrix multiply takes 4.7 ms; the gradient of a
7x7x128 -> 4x4x256 one took 272 ms against 14 ms). MEG's MNIST networks and the last layers of every
DCGAN energy have exactly such layers, and they made an MNIST iteration take seconds. For outputs of
at most SMALL_OUTPUT pixels the convolution is therefore computed as patches (im2col, strided slices
of the padded input) times the reshaped kernel: the same numbers, as one matrix multiply. Larger
outputs use lax.conv_general_dilated, which is fast there, except strided ones on a CPU: im2col too,
because the gradient of a gradient penalty through lax's strided form is a kernel-dilated convolution
that XLA:CPU runs 6-14x slower than the matrix products im2col differentiates into.

`conv_general_dilated` has lax's signature and is passed to flax's nn.Conv; `ConvTranspose` is a
drop-in for nn.ConvTranspose (same parameter names and shapes). Under model.kernels='native' (the
default on GPUs and TPUs) both are lax's own.
"""
from typing import Sequence, Tuple, Union

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

from ebm_jax import kernels

SMALL_OUTPUT = 16   # output pixels (H * W) at or below which im2col is used


def _is_nhwc(dimension_numbers) -> bool:
    if dimension_numbers is None:
        return False
    if isinstance(dimension_numbers, lax.ConvDimensionNumbers):
        return tuple(dimension_numbers) == ((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))
    return tuple(dimension_numbers) == ("NHWC", "HWIO", "NHWC")


def _im2col(x, kernel, strides, pads, lhs_dilation):
    kh, kw, cin, cout = kernel.shape
    if any(d != 1 for d in lhs_dilation):
        dh, dw = lhs_dilation
        b, h, w, c = x.shape
        x = jnp.zeros((b, (h - 1) * dh + 1, (w - 1) * dw + 1, c), x.dtype).at[:, ::dh, ::dw, :].set(x)
    x = lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), (pads[0][0], pads[0][1], 0), (pads[1][0], pads[1][1], 0),
                                             (0, 0, 0)))
    sh, sw = strides
    ho = (x.shape[1] - kh) // sh + 1
    wo = (x.shape[2] - kw) // sw + 1
    cols = [x[:, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw, :] for i in range(kh) for j in range(kw)]
    patches = jnp.concatenate(cols, axis=-1)                        # (B, ho, wo, kh * kw * cin), (i, j, c) order
    out = patches.reshape(-1, kh * kw * cin) @ kernel.reshape(kh * kw * cin, cout)
    return out.reshape(x.shape[0], ho, wo, cout)


def conv_transpose_matmul(x, kernel, strides, pads):
    """lax.conv_transpose(x, kernel, strides, pads) (no kernel flip) as one matrix multiply and an
    overlap-add: every input pixel n times every tap k lands on output s * n + lo - k. XLA:CPU's own
    transposed convolution and its gradient took 0.3-0.9 s on the DCGAN / MEG generator layers at
    batch 64, this 6-60 ms."""
    kh, kw, cin, cout = kernel.shape
    b, h, w, _ = x.shape
    sh, sw = strides
    taps = (x.reshape(-1, cin) @ kernel.transpose(2, 0, 1, 3).reshape(cin, kh * kw * cout))
    taps = taps.reshape(b, h, w, kh, kw, cout)
    full_h, full_w = sh * (h - 1) + kh, sw * (w - 1) + kw
    zero = jnp.zeros((), x.dtype)
    total = None
    for i in range(kh):
        for j in range(kw):
            oi, oj = kh - 1 - i, kw - 1 - j     # tap (i, j) of input pixel n lands on full index s n + (k - 1 - i)
            part = lax.pad(taps[:, :, :, i, j, :], zero,
                           ((0, 0, 0), (oi, full_h - oi - sh * (h - 1) - 1, sh - 1),
                            (oj, full_w - oj - sw * (w - 1) - 1, sw - 1), (0, 0, 0)))
            total = part if total is None else total + part
    (lo_h, hi_h), (lo_w, hi_w) = pads
    out_h = (h - 1) * sh + 1 + lo_h + hi_h - kh + 1
    out_w = (w - 1) * sw + 1 + lo_w + hi_w - kw + 1
    start_h, start_w = kh - 1 - lo_h, kw - 1 - lo_w
    # output o is full index o + start: crop (negative pads) or extend with zeros
    return lax.pad(total, zero, ((0, 0, 0), (-start_h, start_h + out_h - full_h, 0),
                                 (-start_w, start_w + out_w - full_w, 0), (0, 0, 0)))


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, batch_group_count=1, precision=None,
                         preferred_element_type=None):
    """lax.conv_general_dilated, computed by im2col when the output has at most SMALL_OUTPUT pixels, or
    when it is strided and the backend is a CPU (2-D, NHWC / HWIO, no kernel dilation or groups);
    otherwise lax's own."""
    nd = lhs.ndim - 2
    lhs_dilation = tuple(lhs_dilation or (1,) * nd)
    simple = (nd == 2 and _is_nhwc(dimension_numbers) and feature_group_count == 1 and batch_group_count == 1
              and all(d == 1 for d in (rhs_dilation or (1, 1))) and kernels.cpu_rewrites())
    if simple:
        in_sizes = [(s - 1) * d + 1 for s, d in zip(lhs.shape[1:3], lhs_dilation)]
        pads = (lax.padtype_to_pads(in_sizes, rhs.shape[:2], window_strides, padding)
                if isinstance(padding, str) else [tuple(p) for p in padding])
        out = [(n + p[0] + p[1] - k) // s + 1 for n, p, k, s in zip(in_sizes, pads, rhs.shape[:2], window_strides)]
        if out[0] * out[1] <= SMALL_OUTPUT:
            return _im2col(lhs, rhs, tuple(window_strides), pads, lhs_dilation)
        strided = any(st > 1 for st in window_strides) and all(d == 1 for d in lhs_dilation)
        if strided:
            # lax's strided convolution differentiates into an lhs-dilated one, and that (the input
            # gradient inside a gradient penalty) differentiates into a kernel-dilated one, which
            # XLA:CPU runs slowly: the parameter gradient of ||grad_x E||^2 through a 4x4 stride-2 layer,
            # 32x32x64 -> 16x16x128 at batch 8, took 251 ms with lax's form and 39 ms with im2col, whose
            # derivatives are matrix products and pads (docs/performance.md). GPUs and TPUs keep lax's form.
            return _im2col(lhs, rhs, tuple(window_strides), pads, lhs_dilation)
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                    dimension_numbers, feature_group_count, batch_group_count, precision=precision,
                                    preferred_element_type=preferred_element_type)


def Conv(features: int, kernel_size, strides=(1, 1), padding="SAME", **kwargs) -> nn.Conv:
    """flax's nn.Conv (same parameters), with this module's convolution."""
    return nn.Conv(features, kernel_size, strides=strides, padding=padding,
                   conv_general_dilated=conv_general_dilated, **kwargs)


class ConvTranspose(nn.Module):
    """flax's nn.ConvTranspose (no kernel flip): with explicit (low, high) padding pairs computed by
    conv_transpose_matmul, with 'SAME' / 'VALID' by lax.conv_transpose. Parameters 'kernel'
    (kh, kw, cin, features) and 'bias' as flax's."""
    features: int
    kernel_size: Tuple[int, int]
    strides: Tuple[int, int] = (1, 1)
    padding: Union[str, Sequence[Tuple[int, int]]] = "SAME"
    use_bias: bool = True
    kernel_init: object = nn.initializers.lecun_normal()
    bias_init: object = nn.initializers.zeros

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", self.kernel_init, tuple(self.kernel_size) + (x.shape[-1], self.features))
        if isinstance(self.padding, str):  # lax's own transpose padding rules
            y = lax.conv_transpose(x, kernel, tuple(self.strides), self.padding,
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
        elif kernels.cpu_rewrites():
            y = conv_transpose_matmul(x, kernel, tuple(self.strides), [tuple(p) for p in self.padding])
        else:
            y = lax.conv_transpose(x, kernel, tuple(self.strides), [tuple(p) for p in self.padding],
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
        if self.use_bias:
            y = y + self.param("bias", self.bias_init, (self.features,))
        return y
