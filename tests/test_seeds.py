"""train.num_seeds: S replicas in one compiled program equal S separate runs, resume exactly, and are
evaluated per replica with means and stds."""
import json
import os

import chex
import jax
import numpy as np
import pytest

from conftest import grid_kl, tiny_config
import ebm_jax.api
from ebm_jax import train


def close(a, b, rtol=1e-5, atol=1e-6):
    chex.assert_trees_all_close(a, b, rtol=rtol, atol=atol)


@pytest.fixture(scope="module")
def three_and_three(tmp_path_factory):
    """One run with train.num_seeds = 3 (seed 5) and three runs of seeds 5, 6, 7."""
    base = tmp_path_factory.mktemp("seeds")
    over = {"train.num_steps": 6, "train.checkpoint_every": 3, "train.seed": 5, "eval.num_samples": 100}
    joint = str(base / "joint")
    train.train_and_evaluate(tiny_config(**over, **{"train.num_seeds": 3}), joint)
    singles = []
    for i in range(3):
        wd = str(base / f"single{i}")
        train.train_and_evaluate(tiny_config(**{**over, "train.seed": 5 + i}), wd)
        singles.append(wd)
    return joint, singles


def test_three_seeds_in_one_program_equal_three_runs(three_and_three):
    import ebm_jax
    joint, singles = three_and_three
    for i, wd in enumerate(singles):
        close(jax.device_get(ebm_jax.load(joint, seed=i).params), jax.device_get(ebm_jax.load(wd).params))
    # the replicas differ from each other (different init and sampling keys)
    a, b = (jax.device_get(ebm_jax.load(joint, seed=i).params) for i in (0, 1))
    assert not np.allclose(a["energy"]["MLP_0"]["Dense_0"]["kernel"], b["energy"]["MLP_0"]["Dense_0"]["kernel"])


def test_evaluation_reports_every_replica_and_mean_std(three_and_three):
    joint, singles = three_and_three
    final = json.load(open(os.path.join(joint, "eval_final.json")))
    assert final["num_seeds"] == 3 and len(final["per_seed"]) == 3
    kl = [json.load(open(os.path.join(wd, "eval_final.json")))["kl_data_model"] for wd in singles]
    np.testing.assert_allclose([m["kl_data_model"] for m in final["per_seed"]], kl, rtol=1e-4)
    assert final["kl_data_model"] == pytest.approx(np.mean(kl), rel=1e-4)
    assert final["std"]["kl_data_model"] == pytest.approx(np.std(kl), rel=1e-3, abs=1e-6)
    assert os.path.exists(os.path.join(joint, "density.png"))
    # --mode=eval evaluates every replica too
    _, metrics = ebm_jax.api.evaluate_checkpoint(joint)
    assert metrics["num_seeds"] == 3 and metrics["kl_data_model"] == pytest.approx(final["kl_data_model"], rel=1e-6)


def test_multi_seed_run_resumes_exactly(three_and_three, tmp_path):
    import ebm_jax
    joint, _ = three_and_three
    over = {"train.num_steps": 6, "train.checkpoint_every": 3, "train.seed": 5, "eval.num_samples": 100,
            "train.num_seeds": 3}
    resumed = str(tmp_path / "resumed")
    train.train_and_evaluate(tiny_config(**over), resumed, stop_after=3)
    train.train_and_evaluate(tiny_config(**over), resumed)
    for i in range(3):
        jax.tree_util.tree_map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)),
                               jax.device_get(ebm_jax.load(resumed, seed=i).params),
                               jax.device_get(ebm_jax.load(joint, seed=i).params))


def test_one_seed_is_the_plain_program_and_bad_seeds_are_refused(three_and_three):
    import ebm_jax
    joint, singles = three_and_three
    trainer = train.Trainer(tiny_config())
    assert trainer.num_seeds == 1 and trainer.base_key.shape == (2,)   # no seed axis anywhere
    with pytest.raises(ValueError, match=r"seed=3 is not a replica .* holds 3 .* \[0, 3\)"):
        ebm_jax.load(joint, seed=3)
    with pytest.raises(ValueError, match=r"holds 1 "):
        ebm_jax.load(singles[0], seed=1)
    from ebm_jax.methods import ConfigError
    with pytest.raises(ConfigError, match="num_seeds"):
        train.Trainer(tiny_config(**{"train.num_seeds": 0}))


def test_the_reported_density_is_at_the_sampling_temperature(three_and_three, tmp_path):
    """--mode=eval scores exp(-E/T)/Z_T at T = config.sampling.temperature (the density MCMC samples):
    its KL is written here afresh from the model's energies on the metric grid, `t1/kl_data_model` is
    the T = 1 evaluation's KL, and the fitted temperature's density does not depend on T."""
    import shutil

    import ebm_jax
    _, singles = three_and_three
    wd = str(tmp_path / "run")
    shutil.copytree(singles[0], wd)
    model = ebm_jax.load(wd)
    config = model.config
    _, at_one = ebm_jax.api.evaluate_checkpoint(wd, config=config)
    config.sampling.temperature = 0.5
    _, at_half = ebm_jax.api.evaluate_checkpoint(wd, config=config)

    expect = grid_kl(config.data.name, model.energy, config.eval.grid_size, 1 / 0.5)
    assert at_half["kl_data_model"] == pytest.approx(expect, rel=1e-4, abs=1e-5)
    assert at_half["t1/kl_data_model"] == pytest.approx(at_one["kl_data_model"], rel=1e-6)
    assert "t1/kl_data_model" not in at_one and abs(at_half["kl_data_model"] - at_one["kl_data_model"]) > 0.01
    assert at_half["fitted/kl_data_model"] == pytest.approx(at_one["fitted/kl_data_model"], rel=1e-6)
    # --mode=sample's picture says at which temperature MALA sampled, where it is not 1
    model.config.sampling.temperature = 1.0
    assert "at T = " not in ebm_jax.api.sampling_title(model, 4, 3, 0.5)
    model.config.sampling.temperature = 0.5
    assert "from generator samples at T = 0.5 (acceptance 0.50)" in ebm_jax.api.sampling_title(model, 4, 3, 0.5)
