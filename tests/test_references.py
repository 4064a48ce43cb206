"""The reference methods (exact maximum likelihood, PCD) go through the same loop, checkpoints, API and
evaluation as every method; PCD's replay buffer survives a checkpoint round trip and resume is exact."""
import os

import jax
import numpy as np
import pytest

from conftest import REPO, apply_overrides
from ebm_jax import api, configlib, train

SMALL = {"model.energy.hidden": (16, 16), "data.batch_size": 32, "data.num_train": 2000, "data.num_test": 500,
         "train.log_every": 2, "train.progress_bar": False, "eval.grid_size": 40, "eval.num_samples": 200,
         "sampling.mcmc_steps": 5}


def small(name, **extra):
    c = configlib.load_config(os.path.join(REPO, "configs", name))
    return apply_overrides(c, {**SMALL, **extra})


def test_pcd_buffer_survives_a_checkpoint_and_resume_is_exact(tmp_path):
    over = {"train.num_steps": 6, "train.checkpoint_every": 3, "method.buffer_size": 100, "method.langevin_steps": 3}
    straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
    final = train.train_and_evaluate(small("pcd.py", **over), straight)
    train.train_and_evaluate(small("pcd.py", **over), resumed, stop_after=3)
    _, at3, _, step = api.restore(resumed)
    assert step == 3
    # the buffer was written to: rows moved away from their uniform initialisation
    init = train.Trainer(small("pcd.py", **over)).init_state()
    assert not np.allclose(np.asarray(at3["buffer"]), np.asarray(init["buffer"]))
    train.train_and_evaluate(small("pcd.py", **over), resumed)
    _, restored, _, _ = api.restore(resumed)
    np.testing.assert_array_equal(np.asarray(restored["buffer"]), np.asarray(jax.device_get(final["buffer"])))
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
                           api.load(resumed).params, api.load(straight).params)


def test_mle_trains_evaluates_loads_and_samples(tmp_path):
    wd = str(tmp_path / "mle")
    train.train_and_evaluate(small("mle.py", **{"train.num_steps": 4, "train.checkpoint_every": 4,
                                                "method.importance_samples": 64}), wd)
    model = api.load(wd)
    x, rate = model.sample(jax.random.PRNGKey(0), 16, return_acceptance=True)
    assert x.shape == (16, 2) and 0.0 < float(rate) <= 1.0
    with pytest.raises(Exception, match="without a generator"):
        model.generate(np.zeros((2, 2), np.float32))


def test_mle_refuses_data_it_cannot_normalise():
    from ebm_jax.methods import ConfigError, get_method
    with pytest.raises(ConfigError, match="2-D points"):
        get_method(small("mle.py"), (4,))
    with pytest.raises(ConfigError, match="grid_extent"):
        get_method(small("mle.py", **{"data.path": "mine.npy"}), (2,))
    with pytest.raises(ConfigError, match="valid normalisers"):
        get_method(small("mle.py", **{"method.normaliser": "sum"}), (2,))


def test_mle_net_variant_trains_another_methods_energy_network():
    """configs/mle.py:TOY,net=METHOD: maximum likelihood of that method's own toy energy network (its
    config's model.energy, the same parameters), and a name without such a network is refused."""
    from ebm_jax.methods import get_method
    for net, spec in (("steingan", "steingan.py:sevenaniso"), ("ddgm", "ddgm.py:sevenaniso"),
                      ("cd", "steincd.py:sevenaniso,cd1")):
        config = configlib.load_config(os.path.join(REPO, "configs", f"mle.py:sevenaniso,net={net}"))
        source = configlib.load_config(os.path.join(REPO, "configs", spec))
        assert config.method.name == "mle" and config.data.name == "sevenaniso"
        assert config.model.energy.to_dict() == source.model.energy.to_dict()
        key, x = jax.random.PRNGKey(0), np.zeros((2, 2), np.float32)
        mle_params = get_method(config, (2,)).init(key, x)["params"]["energy"]
        own = get_method(source, (2,))
        own_params = own.energy_net.init(key, x)["params"]
        assert jax.tree_util.tree_structure(mle_params) == jax.tree_util.tree_structure(own_params)
    with pytest.raises(ValueError, match="net= takes one of"):
        configlib.load_config(os.path.join(REPO, "configs", "mle.py:sevenaniso,net=triangle"))

