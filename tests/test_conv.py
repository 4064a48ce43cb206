"""The CPU-fast convolutions of models/conv.py equal lax's, values and gradients."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from ebm_jax.models import conv

DN = ("NHWC", "HWIO", "NHWC")


def rand(shape, seed):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


@pytest.mark.parametrize("h,cin,cout,k,s,pad", [
    (4, 6, 5, 5, 2, ((2, 2), (2, 2))),      # output 2x2 (MEG's last MNIST layer): im2col
    (7, 3, 4, 5, 2, ((2, 2), (2, 2))),      # output 4x4: im2col
    (5, 3, 2, 3, 1, "SAME"),                # output 5x5 = 25 > 16: lax
    (3, 2, 3, 4, 1, ((1, 2), (2, 1))),      # asymmetric padding, output 2x2
    (6, 2, 3, 3, 2, "VALID"),               # output 2x2 from a string padding
    (12, 3, 4, 4, 2, ((1, 1), (1, 1))),     # output 6x6, strided: im2col on a CPU (DCGAN's 4x4 stride 2)
    (11, 2, 3, 5, 3, ((1, 0), (2, 1))),     # output 3x4, stride 3, asymmetric
])
def test_conv_equals_lax_with_gradients(h, cin, cout, k, s, pad):
    x, w = rand((3, h, h, cin), 0), rand((k, k, cin, cout), 1)
    ours = lambda x, w: conv.conv_general_dilated(x, w, (s, s), pad, dimension_numbers=DN)  # noqa: E731
    ref = lambda x, w: lax.conv_general_dilated(x, w, (s, s), pad, dimension_numbers=DN)    # noqa: E731
    np.testing.assert_allclose(ours(x, w), ref(x, w), rtol=1e-5, atol=1e-5)
    loss = lambda f: lambda x, w: jnp.sum(jnp.sin(f(x, w)))                                  # noqa: E731
    for a, b in zip(jax.grad(loss(ours), (0, 1))(x, w), jax.grad(loss(ref), (0, 1))(x, w)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)  # float32 sums in another order


def test_strided_conv_second_order_gradient_equals_lax():
    """The parameter gradient of a zero-centred penalty ||grad_x E||^2 through a large strided layer
    (the path im2col takes on a CPU because lax's is slow there) equals lax's."""
    x, w, r = rand((2, 12, 12, 3), 5), rand((4, 4, 3, 5), 6), rand((2, 6, 6, 5), 7)

    def penalty(f):
        energy = lambda w, x: jnp.sum(jax.nn.leaky_relu(f(x, w), 0.1) * r)                  # noqa: E731
        return lambda w: jnp.sum(jax.grad(energy, argnums=1)(w, x) ** 2)
    ours = lambda x, w: conv.conv_general_dilated(x, w, (2, 2), ((1, 1), (1, 1)), dimension_numbers=DN)  # noqa: E731
    ref = lambda x, w: lax.conv_general_dilated(x, w, (2, 2), ((1, 1), (1, 1)), dimension_numbers=DN)    # noqa: E731
    assert "conv_general_dilated" not in str(jax.make_jaxpr(ours)(x, w)) or jax.default_backend() != "cpu"
    np.testing.assert_allclose(jax.grad(penalty(ours))(w), jax.grad(penalty(ref))(w), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("h,k,s,pads", [
    (2, 5, 2, ((2, 3), (2, 3))),            # torch ConvTranspose2d(5, 2, padding 2, output_padding 1)
    (4, 4, 2, ((2, 2), (2, 2))),            # DCGAN's (4, 2, padding 1)
    (3, 3, 1, ((1, 1), (1, 1))),
    (3, 4, 3, ((0, 1), (3, 0))),            # asymmetric, a crop on one side
    (2, 3, 2, ((4, 4), (4, 4))),            # padding beyond the kernel: zero rows are added
])
def test_conv_transpose_equals_lax_with_gradients(h, k, s, pads):
    x, w = rand((2, h, h + 1, 3), 2), rand((k, k, 3, 4), 3)
    ours = lambda x, w: conv.conv_transpose_matmul(x, w, (s, s), pads)                         # noqa: E731
    ref = lambda x, w: lax.conv_transpose(x, w, (s, s), pads, dimension_numbers=DN)           # noqa: E731
    np.testing.assert_allclose(ours(x, w), ref(x, w), rtol=1e-5, atol=1e-5)
    loss = lambda f: lambda x, w: jnp.sum(jnp.cos(f(x, w)))                                  # noqa: E731
    for a, b in zip(jax.grad(loss(ours), (0, 1))(x, w), jax.grad(loss(ref), (0, 1))(x, w)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)  # float32 sums in another order


def test_modules_keep_flax_parameter_layout():
    import flax.linen as nn
    x = rand((2, 4, 4, 3), 4)
    for ours, theirs in ((conv.Conv(5, (3, 3)), nn.Conv(5, (3, 3))),
                         (conv.ConvTranspose(5, (3, 3), (2, 2), ((1, 2), (1, 2))),
                          nn.ConvTranspose(5, (3, 3), (2, 2), ((1, 2), (1, 2))))):
        p = ours.init(jax.random.PRNGKey(0), x)
        q = theirs.init(jax.random.PRNGKey(0), x)
        assert jax.tree_util.tree_map(jnp.shape, p) == jax.tree_util.tree_map(jnp.shape, q)
        np.testing.assert_allclose(ours.apply(p, x), theirs.apply(p, x), rtol=1e-5, atol=1e-5)
