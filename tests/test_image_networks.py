"""The papers' image networks (models/images.py), their batch-norm modes and the network registry.

Shapes and parameter counts at the papers' widths use jax.eval_shape (nothing is computed); everything
that runs numbers uses tiny widths so that the file takes well under a minute on a busy 2-core CPU.
"""
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from ebm_jax.errors import ConfigError
from ebm_jax.models import (STATISTICS_KINDS, BatchNormLayers, ConvStatistics, DCGANEnergy, DCGANGenerator,
                            MEGMNISTEnergy, MEGMNISTGenerator, NormalizedGeneratorMLP, ResNetEnergy, ResNetGenerator,
                            build_energy, build_generator, build_statistics, is_normalized_generator, network_config)
from ebm_jax.models import images
from ebm_jax.models.mlp import spectral_norm_estimate

# A key of the XLA RngBitGenerator: initialising a network compiles about 3x faster than with threefry
# (which the library's own code keeps); test inputs come from numpy for the same reason.
KEY = jax.random.key(0, impl="unsafe_rbg")
LATENT = 128
IMAGE_SHAPES = [(32, 32, 3), (28, 28, 1), (28, 28, 3), (64, 64, 3)]


def num_params(tree):
    return sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(tree))


def abstract(net, *args, **kwargs):
    """(variables, outputs) as shapes only."""
    variables = jax.eval_shape(lambda *a: net.init(KEY, *a), *args)
    out = jax.eval_shape(lambda v, *a: net.apply(v, *a, **kwargs), variables, *args)
    return variables, out


def normal(seed, shape, dtype=jnp.float32):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), dtype)


def jitted(net, **kwargs):
    """net.apply with fixed keyword arguments, compiled once (op-by-op convolutions compile one by one)."""
    return jax.jit(lambda v, *a: net.apply(v, *a, **kwargs))


def init(net, *args):
    return jax.jit(net.init)(KEY, *args)


def conv_params(k, cin, cout):
    return k * k * cin * cout + cout


def dense_params(fan_in, fan_out):
    return fan_in * fan_out + fan_out


# ---- shapes ------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", IMAGE_SHAPES)
def test_dcgan_shapes_and_bottom_resolution(shape):
    x = jax.ShapeDtypeStruct((5,) + shape, jnp.float32)
    z = jax.ShapeDtypeStruct((5, LATENT), jnp.float32)
    _, e = abstract(DCGANEnergy(), x)
    assert e.shape == (5,)
    variables, (out, stats) = abstract(DCGANGenerator(shape), z)
    assert out.shape == (5,) + shape
    bottom = 7 if shape[0] == 28 else 4
    stages = {28: 2, 32: 3, 64: 4}[shape[0]]
    # Linear to bottom x bottom x C: 4x4x512 for 32 and 64 (Table 8, MEG CelebA), 7x7x256 for 28
    c_bottom = 64 * min(2 ** stages, 8)
    assert variables["params"]["Dense_0"]["kernel"].shape == (LATENT, bottom * bottom * c_bottom)
    assert len(stats) == stages and len(variables["batch_stats"]) == 2 * stages
    # per-channel statistics: the first BN follows the first ConvTranspose
    assert stats[0][0].shape == (64 * min(2 ** (stages - 1), 8),)
    t_vars, t = abstract(ConvStatistics("dcgan", 64), x, z)
    assert t.shape == (5,)


@pytest.mark.parametrize("shape", [(32, 32, 3), (64, 64, 3)])
def test_resnet_shapes(shape):
    x = jax.ShapeDtypeStruct((3,) + shape, jnp.float32)
    z = jax.ShapeDtypeStruct((3, LATENT), jnp.float32)
    variables, e = abstract(ResNetEnergy(), x)
    assert e.shape == (3,) and "batch_stats" not in variables   # no BN in the energy by default
    variables, (out, stats) = abstract(ResNetGenerator(shape), z)
    assert out.shape == (3,) + shape
    blocks = {32: 3, 64: 4}[shape[0]]
    assert len(stats) == 2 * blocks + 1   # two BNs per block, one before the last convolution
    c0 = {32: 256, 64: 1024}[shape[0]]    # Table 10: Linear to 4x4x1024; the reference's 32x32: 4x4x256
    assert variables["params"]["Dense_0"]["kernel"].shape == (LATENT, 16 * c0)


@pytest.mark.parametrize("channels", [1, 3])
def test_meg_mnist_and_kdd_shapes(channels):
    x = jax.ShapeDtypeStruct((4, 28, 28, channels), jnp.float32)
    z = jax.ShapeDtypeStruct((4, LATENT), jnp.float32)
    assert abstract(MEGMNISTEnergy(), x)[1].shape == (4,)
    _, (out, stats) = abstract(MEGMNISTGenerator(channels), z)
    assert out.shape == (4, 28, 28, channels) and len(stats) == 4
    assert abstract(ConvStatistics("meg_mnist", 512), x, z)[1].shape == (4,)
    # KDD99: 121 features, latent 32 (MEG's scripts/train/anomaly_kdd.py)
    xk = jax.ShapeDtypeStruct((4, 121), jnp.float32)
    zk = jax.ShapeDtypeStruct((4, 32), jnp.float32)
    cfg = ml_collections.ConfigDict({"kind": "meg_kdd"})
    e_vars, e = abstract(build_energy(cfg, (121,)), xk)
    assert e.shape == (4,)
    widths = [e_vars["params"]["MLP_0"][f"Dense_{i}"]["kernel"].shape for i in range(4)]
    assert widths == [(121, 256), (256, 128), (128, 128), (128, 1)]   # networks/kdd.py EnergyModel
    g_vars, g = abstract(build_generator(cfg, (121,)), zk)
    assert g.shape == (4, 121)
    assert [g_vars["params"]["MLP_0"][f"Dense_{i}"]["kernel"].shape for i in range(3)] == [(32, 64), (64, 128), (128, 121)]
    t_vars, t = abstract(build_statistics(cfg, (121,)), xk, zk)
    assert t.shape == (4,) and t_vars["params"]["MLP_0"]["Dense_0"]["kernel"].shape == (121 + 32, 256)


# ---- parameter counts against the papers' tables ---------------------------------------------------
def test_dcgan_parameter_counts_match_table_8():
    # Table 8, energy: (kernel, in, out) of the seven convolutions, then Linear(8192, 1)
    convs = [(3, 3, 64), (4, 64, 64), (3, 64, 128), (4, 128, 128), (3, 128, 256), (4, 256, 256), (3, 256, 512)]
    expected = sum(conv_params(*c) for c in convs) + dense_params(4 * 4 * 512, 1)
    variables, _ = abstract(DCGANEnergy(), jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32))
    assert num_params(variables["params"]) == expected == 2_935_873
    # Table 8, generator: Linear(128, 8192); ConvTranspose 4x4 512->256, 256->128, 128->64 each + BN
    # (scale and shift); Conv 3x3 64->3
    expected = (dense_params(LATENT, 8192) + sum(conv_params(4, a, b) + 2 * b for a, b in [(512, 256), (256, 128), (128, 64)])
                + conv_params(3, 64, 3))
    variables, _ = abstract(DCGANGenerator((32, 32, 3)), jax.ShapeDtypeStruct((2, LATENT), jnp.float32))
    assert num_params(variables["params"]) == expected == 3_812_355
    assert num_params(variables["batch_stats"]) == 2 * (256 + 128 + 64)


def test_dcgan_64_matches_meg_celeba_network():
    # MEG networks/celeba.py: nine convolutions to 4x4x512, and a generator 4x4x512 -> 512 -> 256 -> 128 -> 64 -> 3
    convs = [(3, 3, 64), (4, 64, 64), (3, 64, 128), (4, 128, 128), (3, 128, 256), (4, 256, 256), (3, 256, 512),
             (4, 512, 512), (3, 512, 512)]
    variables, _ = abstract(DCGANEnergy(), jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32))
    assert num_params(variables["params"]) == sum(conv_params(*c) for c in convs) + dense_params(8192, 1)
    ups = [(512, 512), (512, 256), (256, 128), (128, 64)]
    variables, _ = abstract(DCGANGenerator((64, 64, 3)), jax.ShapeDtypeStruct((2, LATENT), jnp.float32))
    assert num_params(variables["params"]) == (dense_params(LATENT, 8192) + sum(conv_params(4, a, b) + 2 * b for a, b in ups)
                                               + conv_params(3, 64, 3))


def test_resnet_and_meg_mnist_parameter_counts():
    # Table 9 without BN: per block Conv3x3 in->out, Conv3x3 out->out, Conv1x1 in->out; Linear(1024, 1)
    chans = [3, 64, 128, 256, 512, 1024]
    expected = sum(conv_params(3, a, b) + conv_params(3, b, b) + conv_params(1, a, b) for a, b in zip(chans, chans[1:]))
    variables, _ = abstract(ResNetEnergy(), jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32))
    assert num_params(variables["params"]) == expected + dense_params(1024, 1)
    # Table 10: Linear(128, 16384); blocks 1024->512->256->128->64 (BN on the input and the middle);
    # BN, Conv3x3 64->3
    chans = [1024, 512, 256, 128, 64]
    expected = dense_params(LATENT, 16384) + sum(2 * a + conv_params(3, a, b) + 2 * b + conv_params(3, b, b)
                                                 + conv_params(1, a, b) for a, b in zip(chans, chans[1:]))
    variables, _ = abstract(ResNetGenerator((64, 64, 3)), jax.ShapeDtypeStruct((2, LATENT), jnp.float32))
    assert num_params(variables["params"]) == expected + 2 * 64 + conv_params(3, 64, 3)
    # MEG networks/mnist.py: four 5x5 convolutions 1->64->128->256->512, Linear(2048, 1); generator
    # Linear(128, 2048), BN 512, ConvTranspose 5x5 512->256->128->64 each + BN, 64->1
    variables, _ = abstract(MEGMNISTEnergy(), jax.ShapeDtypeStruct((2, 28, 28, 1), jnp.float32))
    assert num_params(variables["params"]) == (sum(conv_params(5, a, b) for a, b in [(1, 64), (64, 128), (128, 256), (256, 512)])
                                               + dense_params(2048, 1))
    variables, _ = abstract(MEGMNISTGenerator(1), jax.ShapeDtypeStruct((2, LATENT), jnp.float32))
    assert num_params(variables["params"]) == (dense_params(LATENT, 2048) + 2 * 512
                                               + sum(conv_params(5, a, b) + 2 * b for a, b in [(512, 256), (256, 128), (128, 64)])
                                               + conv_params(5, 64, 1))


# ---- torch's padding arithmetic ------------------------------------------------------------------
@pytest.mark.parametrize("k,s,p,op,n", [(4, 2, 1, 0, 3), (5, 2, 2, 1, 2), (5, 2, 2, 0, 4)])
def test_conv_transpose_is_torchs_with_a_flipped_kernel(k, s, p, op, n):
    """torch ConvTranspose2d: y[o] = sum_{i, t: i*s - p + t = o} x[i] W[t], out = (n-1)s - 2p + k + op."""
    layer = images.torch_conv_transpose(2, k, s, p, op)
    x = normal(1, (1, n, n, 3))
    variables = layer.init(KEY, x)
    y = np.asarray(layer.apply(variables, x))[0]
    w = np.asarray(variables["params"]["kernel"])[::-1, ::-1]   # torch's kernel = flax's, flipped
    out = (n - 1) * s - 2 * p + k + op
    ref = np.zeros((out, out, 2)) + np.asarray(variables["params"]["bias"])
    xs = np.asarray(x)[0]
    for i1 in range(n):
        for i2 in range(n):
            for t1 in range(k):
                for t2 in range(k):
                    o1, o2 = i1 * s - p + t1, i2 * s - p + t2
                    if 0 <= o1 < out and 0 <= o2 < out:
                        ref[o1, o2] += xs[i1, i2] @ w[t1, t2]
    assert y.shape == ref.shape
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-5)


# ---- tiny networks that compute ------------------------------------------------------------------
TINY_GENERATORS = {
    "dcgan": lambda: DCGANGenerator((28, 28, 1), width=2),
    "resnet": lambda: ResNetGenerator((8, 8, 1), width=2, channel_multipliers=(2, 1)),
    "meg_mnist": lambda: MEGMNISTGenerator(1, width=16),
}


@pytest.mark.parametrize("kind", list(TINY_GENERATORS))
def test_given_stats_reproduce_the_batch_output_per_sample(kind):
    g = TINY_GENERATORS[kind]()
    z = normal(1, (6, 3))
    variables = init(g, z[:2])
    x, stats = jitted(g, mode="batch")(variables, z)
    assert np.all(np.isfinite(np.asarray(x))) and np.all(np.abs(np.asarray(x)) <= 1.0)   # tanh outputs
    one = lambda mode, st: jax.jit(jax.vmap(lambda zz: g.apply(variables, zz[None], mode=mode, stats=st)[0][0]))
    per_sample = one("given", stats)(z)
    np.testing.assert_allclose(per_sample, x, rtol=1e-4, atol=1e-5)
    # ... which is not what one sample normalised with its own statistics gives
    alone = one("batch", None)(z)
    assert np.max(np.abs(np.asarray(alone) - np.asarray(x))) > 1e-2


def test_running_averages_follow_the_momentum_formula_per_channel():
    g = DCGANGenerator((28, 28, 1), width=2)
    z = normal(2, (5, 3))
    variables = init(g, z)
    (x, stats), new = jitted(g, mode="batch", mutable=["batch_stats", "intermediates"],
                             capture_intermediates=True)(variables, z)
    # the first BN normalises the first ConvTranspose's output (5, 14, 14, 4) per channel over (B, H, W)
    h = np.asarray(new["intermediates"]["ConvTranspose_0"]["__call__"][0])
    assert h.shape == (5, 14, 14, 4)
    n = 5 * 14 * 14
    np.testing.assert_allclose(stats[0][0], h.mean((0, 1, 2)), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(stats[0][1], h.var((0, 1, 2)), rtol=1e-4, atol=1e-6)
    # torch's momentum 0.1 and unbiased running variance, from the initial (0, 1)
    np.testing.assert_allclose(new["batch_stats"]["mean_0"], 0.1 * h.mean((0, 1, 2)), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(new["batch_stats"]["var_0"], 0.9 + 0.1 * h.var((0, 1, 2)) * n / (n - 1), rtol=1e-5)
    # a second update starts from the first one's averages
    (_, stats2), new2 = jitted(g, mode="batch", mutable=["batch_stats"])(
        {"params": variables["params"], "batch_stats": new["batch_stats"]}, 2 * z)
    np.testing.assert_allclose(new2["batch_stats"]["mean_1"], 0.9 * new["batch_stats"]["mean_1"] + 0.1 * stats2[1][0],
                               rtol=1e-4, atol=1e-7)
    # without a mutable collection the averages are left alone (and no error is raised)
    x_again, _ = jitted(g, mode="batch")(variables, z)
    np.testing.assert_allclose(x_again, x, rtol=1e-6)


@pytest.mark.parametrize("kind", ["dcgan", "resnet"])
def test_running_mode_uses_the_running_averages(kind):
    g = TINY_GENERATORS[kind]()
    z = normal(3, (6, 3))
    variables = init(g, z)
    (x, stats), new = jitted(g, mode="batch", mutable=["batch_stats"])(variables, z)
    running = jitted(g, mode="running")
    x_running, used = running({"params": variables["params"], "batch_stats": new["batch_stats"]}, z)
    assert np.max(np.abs(np.asarray(x_running) - np.asarray(x))) > 1e-3
    np.testing.assert_allclose(used[0][0], new["batch_stats"]["mean_0"])
    # running averages set to this batch's statistics give back the batch output
    pinned = {f"{name}_{i}": s for i, (m, v) in enumerate(stats) for name, s in (("mean", m), ("var", v))}
    x_pinned, _ = running({"params": variables["params"], "batch_stats": pinned}, z)
    np.testing.assert_allclose(x_pinned, x, rtol=1e-4, atol=1e-5)


def test_modes_are_checked():
    g = TINY_GENERATORS["dcgan"]()
    z = jax.ShapeDtypeStruct((2, 3), jnp.float32)
    variables = jax.eval_shape(lambda zz: g.init(KEY, zz), z)
    # the checks run while tracing, so shapes are enough
    check = lambda mode="batch", stats=None: jax.eval_shape(
        lambda v, zz, st: g.apply(v, zz, mode=mode, stats=st), variables, z, stats)
    with pytest.raises(ValueError, match="valid modes are"):
        check("train")
    with pytest.raises(ValueError, match="needs the `stats`"):
        check("given")
    _, stats = check()
    assert len(stats) == 2
    check("given", stats)
    with pytest.raises(ValueError, match="got statistics for 1 batch-norm layers; the network has more"):
        check("given", stats[:1])
    with pytest.raises(ValueError, match="got statistics for 4 batch-norm layers; the network has 2"):
        check("given", stats + stats)


def test_per_sample_jacobian_through_given_mode_matches_finite_differences():
    """EBM-BB's J_z: jacfwd of z -> G(z) for one sample with the batch's statistics fixed. In float64, so
    that central differences with a small step neither lose digits nor cross a ReLU kink."""
    g = DCGANGenerator((28, 28, 1), width=2)
    with jax.enable_x64(True):
        z = normal(4, (8, 3), jnp.float64)
        variables = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), init(g, z))
        _, stats = jitted(g, mode="batch")(variables, z)
        fn = jax.jit(lambda zz: g.apply(variables, zz[None], mode="given", stats=stats)[0][0].reshape(-1))
        assert fn(z[2]).dtype == jnp.float64
        jac = np.asarray(jax.jacfwd(fn)(z[2]))     # (784, 3)
        assert jac.shape == (784, 3) and np.abs(jac).max() > 1e-3
        eps = 1e-6
        fd = np.stack([(np.asarray(fn(z[2] + eps * e)) - np.asarray(fn(z[2] - eps * e))) / (2 * eps)
                       for e in np.eye(3)], axis=1)
        np.testing.assert_allclose(jac, fd, rtol=1e-5, atol=1e-8)
        # the batch map's own Jacobian block for sample 2 also moves the statistics, so it differs
        batch_block = jax.jit(jax.jacfwd(lambda zz: g.apply(variables, z.at[2].set(zz), mode="batch")[0][2].reshape(-1)))(z[2])
        assert np.max(np.abs(np.asarray(batch_block) - jac)) > 1e-3


def test_batch_norm_layers_normalise_each_channel_over_batch_and_space():
    import flax.linen as nn

    class Norm(nn.Module):
        @nn.compact
        def __call__(self, h, mode="batch", stats=None):
            bn = BatchNormLayers(self, mode, stats)
            return bn(h), bn.finish()

    h = normal(5, (3, 4, 5, 2)) * jnp.array([1.0, 3.0]) + jnp.array([0.5, -2.0])
    variables = Norm().init(KEY, h)
    assert set(variables["params"]) == {"bn_scale_0", "bn_bias_0"}
    assert set(variables["batch_stats"]) == {"mean_0", "var_0"}
    out, _ = Norm().apply(variables, h)
    np.testing.assert_allclose(np.asarray(out).mean((0, 1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(np.asarray(out).var((0, 1, 2)), 1.0, rtol=1e-3)


def test_normalized_generator_mlp_keeps_its_parameter_names():
    """The shared batch norm keeps NormalizedGeneratorMLP's names (checkpoints, DDGM's Eq. 15 reads bn_scale_*)."""
    variables = jax.eval_shape(lambda z: NormalizedGeneratorMLP((4, 4), (2,)).init(KEY, z), jnp.zeros((2, 2)))
    assert {"bn_scale_0", "bn_bias_0", "bn_scale_1", "bn_bias_1"} <= set(variables["params"])
    assert set(variables["batch_stats"]) == {"mean_0", "var_0", "mean_1", "var_1"}


# ---- energies ----------------------------------------------------------------------------------
def test_resnet_energy_batch_norm_is_off_by_default_and_couples_the_batch_when_on():
    x = normal(6, (4, 8, 8, 1))
    plan = dict(width=2, channel_multipliers=(1, 2), downsample=(True, False))
    plain = ResNetEnergy(**plan)
    variables = init(plain, x)
    assert set(variables) == {"params"}
    e = jitted(plain)(variables, x)
    e_changed = jitted(plain)(variables, x.at[1:].multiply(3.0))
    np.testing.assert_allclose(e_changed[0], e[0], rtol=1e-5)   # one image's energy ignores the rest
    normed = ResNetEnergy(batch_norm=True, **plan)
    variables = init(normed, x)
    assert "batch_stats" in variables
    e, new = jitted(normed, mode="batch", mutable=["batch_stats"])(variables, x)
    e_changed, _ = jitted(normed, mode="batch", mutable=["batch_stats"])(variables, x.at[1:].multiply(3.0))
    assert abs(float(e_changed[0] - e[0])) > 1e-4               # with batch statistics it does not
    running = jitted(normed, mode="running")
    r, r_changed = running(variables, x), running(variables, x.at[1:].multiply(3.0))
    np.testing.assert_allclose(r_changed[0], r[0], rtol=1e-5)
    assert not np.allclose(new["batch_stats"]["mean_0"], variables["batch_stats"]["mean_0"])


def test_spectral_norm_leaves_every_layer_with_largest_singular_value_one():
    x = normal(7, (2, 14, 14, 1))   # one stage: 3x3, 4x4 stride 2, 3x3 convolutions, then the Linear
    energy = DCGANEnergy(width=2, spectral_norm=True)
    params = init(energy, x)["params"]
    trunk = params["DCGANTrunk_0"]
    assert sorted(trunk) == [f"SpectralConv_{i}" for i in range(3)] and "output_scale" in params
    estimate = jax.jit(spectral_norm_estimate)
    for name, layer in list(trunk.items()) + [("head", params["SpectralDense_0"])]:
        kernel = np.asarray(layer["kernel"])
        normalised = kernel / float(estimate(jnp.asarray(kernel)))
        top = np.linalg.svd(normalised.reshape(-1, kernel.shape[-1]), compute_uv=False)[0]
        # power iteration (20 steps from a fixed vector) never overestimates sigma_max, and falls short
        # by a few percent where the top two singular values are close (as spectral_norm_estimate's
        # docstring says): 1.018 for a 4x4x4x4 kernel with singular values 1.080 and 1.057
        assert 1.0 - 1e-4 <= top <= 1.03, name
    # the layer computes a convolution with that normalised kernel (torch's padding: k=4, s=2, p=1)
    conv = trunk["SpectralConv_1"]
    layer = images.torch_conv(2, 4, 2, 1, spectral_norm=True)
    h = normal(8, (1, 6, 6, 2))
    w = np.asarray(conv["kernel"]) / np.linalg.svd(np.asarray(conv["kernel"]).reshape(-1, 2), compute_uv=False)[0]
    expected = jax.lax.conv_general_dilated(h, jnp.asarray(w), (2, 2), ((1, 1), (1, 1)),
                                            dimension_numbers=("NHWC", "HWIO", "NHWC")) + conv["bias"]
    np.testing.assert_allclose(jitted(layer)({"params": conv}, h), expected, rtol=2e-2, atol=1e-5)


def test_statistics_network_concatenates_an_encoding_of_x_with_z():
    x = normal(9, (3, 28, 28, 1))
    z = normal(10, (3, 5))
    t = ConvStatistics("meg_mnist", width=8)
    variables = init(t, x, z)
    p = variables["params"]
    assert p["Dense_0"]["kernel"].shape == (2 * 2 * 8, 5)     # Linear(2*2*dim, z_dim), as the reference
    assert p["Dense_1"]["kernel"].shape == (10, 8)            # Linear(2 * z_dim, dim)
    out = jitted(t)(variables, x, z)
    assert out.shape == (3,)
    # T depends on z: the mutual-information estimator compares (x, z) with shuffled pairs
    assert not np.allclose(jitted(t)(variables, x, z[::-1]), out)


# ---- registry ----------------------------------------------------------------------------------
@pytest.mark.parametrize("role,kind,shape", [
    ("energy", "dcgan", (32, 32, 3)), ("energy", "resnet", (64, 64, 3)), ("energy", "meg_mnist", (28, 28, 1)),
    ("energy", "meg_kdd", (121,)), ("generator", "dcgan", (28, 28, 3)), ("generator", "resnet", (32, 32, 3)),
    ("generator", "meg_mnist", (28, 28, 3)), ("generator", "meg_kdd", (121,)), ("statistics", "dcgan", (64, 64, 3)),
    ("statistics", "meg_mnist", (28, 28, 1)), ("statistics", "meg_kdd", (121,))])
def test_every_kind_builds_from_its_preset_config(role, kind, shape):
    cfg = network_config(role, kind)
    builder = {"energy": build_energy, "generator": build_generator, "statistics": build_statistics}[role]
    net = builder(cfg, shape)
    assert is_normalized_generator(net) == (role == "generator" and kind != "meg_kdd")
    x = jax.ShapeDtypeStruct((2,) + shape, jnp.float32)
    z = jax.ShapeDtypeStruct((2, 16), jnp.float32)
    args = {"energy": (x,), "generator": (z,), "statistics": (x, z)}[role]
    _, out = abstract(net, *args)
    if is_normalized_generator(net):
        out = out[0]
    assert out.shape == ((2,) + shape if role == "generator" else (2,))


def test_registry_reads_fields_and_reports_bad_ones_in_one_sentence():
    cfg = network_config("generator", "dcgan")
    cfg.width = 3
    cfg.batch_norm = False
    g = build_generator(cfg, (32, 32, 3))
    assert g.width == 3 and not g.batch_norm
    resnet = network_config("energy", "resnet")
    resnet.channel_multipliers = (1, 2)
    resnet.downsample = (True, False)
    assert build_energy(resnet, (16, 16, 3)).channel_multipliers == (1, 2)
    cases = [
        (build_energy, {"kind": "convnet"}, (32, 32, 3), "model.energy.kind 'convnet' is unknown; valid kinds are .*'dcgan'.*'resnet'"),
        (build_generator, {"kind": "stylegan"}, (32, 32, 3), "model.generator.kind 'stylegan' is unknown.*'meg_mnist'"),
        (build_statistics, {"kind": "resnet"}, (32, 32, 3), "model.statistics.kind 'resnet' is unknown; valid kinds are " +
         str(list(STATISTICS_KINDS)).replace("[", r"\[").replace("]", r"\]")),
        (build_energy, {"kind": "dcgan", "width": 0}, (32, 32, 3), "model.energy.width=0 is invalid for kind 'dcgan'"),
        (build_energy, {"kind": "dcgan", "negative_slope": 1.5}, (32, 32, 3), "model.energy.negative_slope=1.5"),
        (build_generator, {"kind": "dcgan", "batch_norm": "yes"}, (32, 32, 3), "model.generator.batch_norm='yes'"),
        (build_energy, {"kind": "resnet", "channel_multipliers": (1, 0)}, (64, 64, 3), "model.energy.channel_multipliers"),
        (build_energy, {"kind": "dcgan"}, (784,), "needs image data \\(H, W, C\\); the data have shape \\(784,\\)"),
        (build_energy, {"kind": "dcgan"}, (5, 5, 1), "halved at least once"),
        (build_energy, {"kind": "resnet"}, (48, 48, 3), "for side 48 set model.energy.channel_multipliers"),
        (build_generator, {"kind": "resnet", "channel_multipliers": (4, 4, 4)}, (30, 30, 3), "divisible by 4"),
        (build_generator, {"kind": "meg_mnist"}, (32, 32, 3), "generates 28x28 images"),
        (build_statistics, {"kind": "dcgan", "features": -1}, (32, 32, 3), "model.statistics.features=-1"),
    ]
    for builder, fields, shape, message in cases:
        with pytest.raises(ConfigError, match=message) as info:
            builder(ml_collections.ConfigDict(fields), shape)
        text = str(info.value)
        assert text.endswith(".") and not re.search(r"\. [A-Z]", text), text   # one sentence
    with pytest.raises(ConfigError, match="valid roles are"):
        network_config("critic", "dcgan")
