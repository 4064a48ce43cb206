"""model.kernels: the CPU rewrites (im2col and matmul transposed convolutions, the Python critic loop,
the bisection median, reverse-mode Jacobians) against the native forms (lax convolutions, lax.scan,
jnp.median, forward mode) that GPUs and TPUs use, computed here on one machine."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO, apply_overrides
from ebm_jax import configlib, kernels
from ebm_jax.methods import get_method


def both(fn):
    """fn() traced and run with each choice: (cpu result, native result)."""
    out = []
    for choice in ("cpu", "native"):
        with kernels.use(choice):
            out.append(jax.device_get(fn()))
    return out


def close(a, b, rtol=2e-4, atol=2e-5):
    jax.tree_util.tree_map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol),
                           a, b)


def test_auto_is_the_rewrites_on_a_cpu_and_bad_choices_are_refused():
    assert jax.default_backend() == "cpu"
    with kernels.use("auto"):
        assert kernels.cpu_rewrites()
    with kernels.use("native"):
        assert not kernels.cpu_rewrites()
    with pytest.raises(ValueError, match="valid values are"):
        with kernels.use("gpu"):
            pass
    from ebm_jax.methods import ConfigError
    c = configlib.load_config(f"{REPO}/configs/meg.py")
    c.model.kernels = "gpu"
    with pytest.raises(ConfigError, match="model.kernels='gpu' is invalid"):
        configlib.validate(c)


def test_convolutions_and_their_penalty_gradients_agree():
    """The DCGAN energy's zero-centred penalty gradient (second order through strided and small-output
    convolutions) and the DCGAN generator's transposed convolutions, both ways."""
    from ebm_jax.models import images
    x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (3, 32, 32, 3)), jnp.float32)
    z = jnp.asarray(np.random.default_rng(1).normal(size=(3, 8)), jnp.float32)
    energy, gen = images.DCGANEnergy(width=4), images.DCGANGenerator((32, 32, 3), width=4)
    with kernels.use("native"):
        pe, pg = energy.init(jax.random.PRNGKey(0), x), gen.init(jax.random.PRNGKey(1), z)

    def penalty_grad():
        def penalty(p):
            g = jax.grad(lambda v: jnp.sum(energy.apply(p, v)))(x)
            return jnp.mean(jnp.sum(g ** 2, axis=(1, 2, 3)))
        return jax.jit(jax.value_and_grad(penalty))(pe)

    close(*both(penalty_grad))
    close(*both(lambda: jax.jit(lambda p: gen.apply(p, z, mode="batch")[0])(pg)), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("spec", ["meg.py:cifar10", "ebm_bb.py:cifar10"])
def test_an_image_iteration_agrees(spec):
    """One whole iteration (two critic steps: a Python loop against lax.scan) at 32x32 on tiny DCGANs."""
    c = configlib.load_config(f"{REPO}/configs/{spec}")
    over = {"data.batch_size": 4, "method.n_critic": 2, "model.latent_dim": 8}
    for role in ("energy", "generator", "statistics"):
        if role in c.model and "width" in c.model[role]:
            over[f"model.{role}.width"] = 4
    c = apply_overrides(c, over)
    if "lobpcg_iters" in c.method:
        c.method.lobpcg_iters = 2
    method = get_method(c, (32, 32, 3))
    state = method.init(jax.random.PRNGKey(0), None)
    batch = jnp.asarray(np.random.default_rng(2).uniform(-1, 1, (2, 4, 32, 32, 3)), jnp.float32)
    cpu, native = both(lambda: jax.jit(method.train_step)(state, batch, jax.random.PRNGKey(3)))
    close(cpu[0]["params"], native[0]["params"], rtol=1e-3, atol=1e-4)


def test_svgd_median_and_explicit_jacobians_agree():
    from configs import ebm_bb as bounds
    from ebm_jax.estimators import stein
    from ebm_jax.methods.ebm_bb import batch_jacobian
    x = jnp.asarray(np.random.default_rng(4).normal(size=(33, 2)), jnp.float32)
    a, b = both(lambda: jax.jit(stein.median_bandwidth)(x))
    assert float(a) == pytest.approx(float(b), rel=1e-6)
    method = get_method(bounds.make_config("ebm_bb"), (2,))
    state = method.init(jax.random.PRNGKey(0), None)
    z = jax.random.normal(jax.random.PRNGKey(1), (5, 2))
    _, stats, _ = method.gen.train_batch(state["params"]["generator"], state["batch_stats"], z, False)
    fb = method.gen.given_batch(state["params"]["generator"], state["batch_stats"], stats)
    close(*both(lambda: jax.jit(lambda zz: batch_jacobian(fb, zz))(z)), rtol=1e-5, atol=1e-6)
