"""MEG's losses equal the paper's formulas on hand-checkable cases (Algorithm 1, Eqs. 7-9)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from ebm_jax.methods import meg


def softplus(a):
    return np.log1p(np.exp(a))


def test_energy_loss_linear_energy_by_hand():
    # E(x) = w.x + c: mean E(real) - mean E(fake) + lambda * ||w||^2 (the gradient is w everywhere).
    w, c, lam = np.array([2.0, -1.0]), 0.5, 0.1
    x_real = np.array([[1.0, 0.0], [0.0, 1.0]])   # E = 2.5, -0.5 -> mean 1.0
    x_fake = np.array([[1.0, 1.0], [2.0, 0.0]])   # E = 1.5, 4.5 -> mean 3.0
    energy = lambda x: x @ w + c
    loss, aux = meg.energy_loss(energy, x_real, x_fake, lam)
    assert float(aux["energy_real"]) == pytest.approx(1.0)
    assert float(aux["energy_fake"]) == pytest.approx(3.0)
    assert float(aux["penalty"]) == pytest.approx(5.0)  # ||(2, -1)||^2
    assert float(loss) == pytest.approx(1.0 - 3.0 + 0.1 * 5.0)


def test_energy_regulariser_by_hand_and_bad_values():
    # the linear energy above with alpha = 0.2: + alpha (mean(2.5^2, 0.5^2) + mean(1.5^2, 4.5^2))
    w, c = np.array([2.0, -1.0]), 0.5
    x_real, x_fake = np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([[1.0, 1.0], [2.0, 0.0]])
    loss, aux = meg.energy_loss(lambda x: x @ w + c, x_real, x_fake, 0.1, 0.2)
    assert float(aux["regulariser"]) == pytest.approx(3.25 + 11.25)
    assert float(loss) == pytest.approx(1.0 - 3.0 + 0.1 * 5.0 + 0.2 * 14.5)
    from ebm_jax.methods import ConfigError, get_method
    with pytest.raises(ConfigError, match=r"config.method.energy_reg=-1.0 is invalid; it must be a finite number >= 0"):
        get_method(tiny_config(**{"method.energy_reg": -1.0}), (2,))


def test_energy_loss_penalty_is_on_real_data_only():
    # E(x) = 0.5 ||x||^2 has gradient x: the penalty is the mean squared norm of the REAL points.
    x_real = np.array([[3.0, 4.0]])   # ||x||^2 = 25
    x_fake = np.array([[100.0, 0.0]])
    loss, aux = meg.energy_loss(lambda x: 0.5 * jnp.sum(x ** 2, axis=1), x_real, x_fake, 1.0)
    assert float(aux["penalty"]) == pytest.approx(25.0)
    assert float(loss) == pytest.approx(12.5 - 5000.0 + 25.0)


def test_generator_loss_by_hand():
    # T(x, z) = x0 * z0 makes the joint / marginal statistics explicit numbers.
    x = np.array([[1.0, 0.0], [2.0, 0.0]])
    z = np.array([[1.0], [-1.0]])
    z_shuffled = np.array([[-1.0], [1.0]])
    statistics = lambda xx, zz: xx[:, 0] * zz[:, 0]
    energy = lambda xx: xx[:, 0] + 10.0
    loss, aux = meg.generator_loss(energy, statistics, x, z, z_shuffled)
    t_joint, t_marg = np.array([1.0, -2.0]), np.array([-1.0, 2.0])
    mi = np.mean(-softplus(-t_joint)) - np.mean(softplus(t_marg))   # Eq. 7
    assert float(aux["mutual_information"]) == pytest.approx(mi, rel=1e-6)
    assert float(aux["energy_generated"]) == pytest.approx(11.5)
    assert float(loss) == pytest.approx(11.5 - mi, rel=1e-6)          # Eq. 8


def test_one_iteration_is_n_critic_sgd_steps_then_generator_step():
    """With SGD, one compiled iteration equals Algorithm 1 written out step by step."""
    config = tiny_config(**{"optim.name": "sgd", "optim.lr": 0.1, "optim.schedule": "constant", "method.n_critic": 3})
    method = meg.MEG(config, (2,))
    state = method.init(jax.random.PRNGKey(0), None)
    batch = jax.random.normal(jax.random.PRNGKey(1), (3, 8, 2))
    key = jax.random.PRNGKey(2)
    new_state, metrics = jax.jit(method.train_step)(state, batch, key)

    # Algorithm 1 by hand, drawing the same random numbers as train_step documents.
    p = jax.tree_util.tree_map(np.asarray, state["params"])
    k_critic, k_z, k_shuffle = jax.random.split(key, 3)
    e = p["energy"]
    for i, k in enumerate(jax.random.split(k_critic, 3)):
        x_fake = method.generate(p, jax.random.normal(k, (8, 2)))
        g = jax.grad(lambda q: meg.energy_loss(lambda v: method.energy({"energy": q}, v),
                                               batch[i], x_fake, config.method.penalty_weight)[0])(e)
        e = jax.tree_util.tree_map(lambda a, b: a - 0.1 * b, e, g)
    z = jax.random.normal(k_z, (8, 2))
    from ebm_jax.estimators import shuffle_per_dimension
    zs = shuffle_per_dimension(k_shuffle, z)

    def lg(gp, tp):
        x = method.generate({"generator": gp}, z)
        return meg.generator_loss(lambda v: method.energy({"energy": e}, v),
                                  lambda a, b: method.statistics_net.apply({"params": tp}, a, b), x, z, zs,
                                  config.method.entropy_weight)[0]   # 10 in the toy default
    gg, gt = jax.grad(lg, argnums=(0, 1))(p["generator"], p["statistics"])
    expect = {"energy": e,
              "generator": jax.tree_util.tree_map(lambda a, b: a - 0.1 * b, p["generator"], gg),
              "statistics": jax.tree_util.tree_map(lambda a, b: a - 0.1 * b, p["statistics"], gt)}
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                           new_state["params"], expect)
    assert set(metrics) >= {"energy_loss", "generator_loss", "mutual_information", "penalty"}
