"""Bad input stops with one sentence naming the problem and never harms a saved checkpoint."""
import hashlib
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO, cli_flags, tiny_config
from ebm_jax import checkpointing, train
from ebm_jax.data import DataError
from ebm_jax.methods import METHODS, ConfigError


def tree_digest(path):
    h = hashlib.sha256()
    for root, dirs, files in sorted(os.walk(path)):
        dirs.sort()
        for name in sorted(files):
            full = os.path.join(root, name)
            h.update(full.encode())
            h.update(open(full, "rb").read())
    return h.hexdigest()


def one_sentence(msg):
    assert "\n" not in str(msg).strip()


def test_unknown_method_lists_valid_ones(tmp_path):
    config = tiny_config()
    config.method.name = "nope"
    with pytest.raises(ConfigError, match=r"method.name 'nope' is unknown; valid methods are \[") as e:
        train.train_and_evaluate(config, str(tmp_path))
    one_sentence(e.value)
    # every registered method is listed, so the message stays right as methods are added
    for name in METHODS:
        assert repr(name) in str(e.value)


def test_unknown_dataset_lists_valid_ones(tmp_path):
    config = tiny_config()
    config.data.name = "mnistt"
    with pytest.raises(ValueError, match=r"'mnistt' is not a known dataset; valid names are .*25gaussians"):
        train.train_and_evaluate(config, str(tmp_path))


def test_unknown_variant_lists_valid_ones():
    from configs import meg
    with pytest.raises(ValueError, match=r"variant 'moons' is unknown; valid variants are datasets"):
        meg.get_config("moons")
    assert meg.get_config("swissroll").data.name == "swissroll"
    paper = meg.get_config("8gaussians,paper")
    assert paper.data.name == "8gaussians" and paper.model.energy.hidden == (512, 512, 512)
    from ebm_jax import configlib
    loaded = configlib.load_config(os.path.join(REPO, "configs", "meg.py") + ":swissroll,paper")
    assert loaded.data.name == "swissroll" and loaded.method.penalty_weight == 0.1


def test_cli_unknown_variant_and_field_fail(tmp_path):
    env = {**os.environ, "PYTHONPATH": REPO}
    r = subprocess.run([sys.executable, "-m", "ebm_jax.main", "--config=configs/meg.py:moons",
                        f"--workdir={tmp_path}"], cwd=REPO, env=env, capture_output=True, text=True)
    assert r.returncode != 0 and "valid variants" in r.stderr
    r = subprocess.run([sys.executable, "-m", "ebm_jax.main", "--config=configs/meg.py",
                        "--config.optim.learning_rate=1", f"--workdir={tmp_path}"],
                       cwd=REPO, env=env, capture_output=True, text=True)
    assert r.returncode != 0 and "learning_rate" in r.stderr


@pytest.mark.parametrize("field,value,pattern", [
    ("data.batch_size", 0, r"config.data.batch_size=0 is invalid; it must be a finite integer > 0"),
    ("optim.lr", -1.0, r"config.optim.lr=-1.0 is invalid"),
    ("method.n_critic", 0, r"config.method.n_critic=0 is invalid; it must be a finite integer > 0"),
    ("sampling.space", "visible", r"config.sampling.space='visible' is invalid; valid spaces are \['latent', 'data'\]"),
    ("optim.name", "rmsprop", r"optim.name 'rmsprop' is unknown; valid optimisers are"),
    ("optim.schedule", "step", r"optim.schedule 'step' is unknown; valid schedules are"),
    ("model.energy.activation", "gelu2", r"model activation 'gelu2' is unknown; valid activations are"),
])
def test_bad_config_fields(tmp_path, field, value, pattern):
    config = tiny_config(**{field: value})
    with pytest.raises(ConfigError, match=pattern) as e:
        train.train_and_evaluate(config, str(tmp_path))
    one_sentence(e.value)
    assert not os.path.exists(os.path.join(tmp_path, "checkpoints", "0"))


def _write(tmp_path, name, arr=None, raw=None):
    path = str(tmp_path / name)
    if raw is not None:
        open(path, "wb").write(raw)
    elif name.endswith(".npz"):
        np.savez(path, **arr) if isinstance(arr, dict) else np.savez(path, arr)
    else:
        np.save(path, arr)
    return path


@pytest.mark.parametrize("make,pattern", [
    (lambda t: str(t / "missing.npy"), r"does not exist; give a .npy or .npz file"),
    (lambda t: _write(t, "x.csv", raw=b"1,2\n3,4\n"), r"has extension '.csv'; valid extensions are '.npy' and '.npz'"),
    (lambda t: _write(t, "x.npy", np.zeros((10, 2, 2, 1, 1))),
     r"holds an array of shape \(10, 2, 2, 1, 1\); valid are vectors \(N, D\) or images"),
    (lambda t: _write(t, "x.npy", np.array([[0.0, np.nan], [1.0, 2.0]])), r"contains NaN or infinite values"),
    (lambda t: _write(t, "x.npz", {"a": np.zeros((5, 2)), "b": np.zeros((5, 2))}), r"holds arrays \['a', 'b'\]; name the data array 'x'"),
    (lambda t: _write(t, "x.npy", raw=b"not a numpy file"), r"could not be read as a numpy array"),
])
def test_bad_data_files(tmp_path, make, pattern):
    config = tiny_config(**{"data.path": make(tmp_path)})
    with pytest.raises(DataError, match=pattern) as e:
        train.train_and_evaluate(config, str(tmp_path / "wd"))
    one_sentence(e.value)


def test_user_data_file_trains(tmp_path):
    rng = np.random.default_rng(0)
    path = _write(tmp_path, "mine.npz", {"x": rng.normal(size=(300, 3)).astype(np.float32)})
    state = train.train_and_evaluate(tiny_config(**{"data.path": path}), str(tmp_path / "wd"))
    assert int(state["step"]) == 6
    import ebm_jax
    model = ebm_jax.load(str(tmp_path / "wd"))
    assert model.sample(__import__("jax").random.PRNGKey(0), 5).shape == (5, 3)
    with pytest.raises(ValueError, match=r"x has shape \(4, 2\); this model expects \(B, 3\)"):
        model.energy(np.zeros((4, 2), np.float32))


@pytest.fixture
def trained(tmp_path):
    wd = str(tmp_path / "wd")
    train.train_and_evaluate(tiny_config(), wd)
    return wd


def test_workdir_with_other_shapes_is_refused_untouched(trained):
    before = tree_digest(os.path.join(trained, "checkpoints"))
    config = tiny_config(**{"model.energy.hidden": (8, 8), "train.num_steps": 12})
    with pytest.raises(checkpointing.CheckpointError, match=r"state entry \['params'\]\['energy'\]\['MLP_0'\]"
                                                            r"\['Dense_0'\]\['bias'\] has shape \[16\], but the "
                                                            r"config builds \[8\]") as e:
        train.train_and_evaluate(config, trained)
    one_sentence(e.value)
    assert tree_digest(os.path.join(trained, "checkpoints")) == before


def test_checkpoint_without_a_state_entry_the_config_builds_is_named():
    """A state entry only one side has (e.g. the divergence triangle's singular vectors, absent from a
    checkpoint of an earlier version) is named as missing, in one sentence, whichever side lacks it."""
    meta = dict(method="triangle", data_shape=[2], latent_shape=[2], state_shapes={"['params']": [3]})
    extra = {**meta, "state_shapes": {"['params']": [3], "['energy_spectral']['v']": [128]}}
    with pytest.raises(checkpointing.CheckpointError, match=r"^wd: the config builds a state entry "
                       r"\['energy_spectral'\]\['v'\] that the checkpoint does not have") as e:
        checkpointing.check_meta(meta, extra, "wd")
    one_sentence(e.value)
    with pytest.raises(checkpointing.CheckpointError, match=r"the checkpoint holds a state entry "
                       r"\['energy_spectral'\]\['v'\] that the config does not have"):
        checkpointing.check_meta(extra, meta, "wd")


def test_workdir_with_other_data_shape_is_refused(trained, tmp_path):
    path = _write(tmp_path, "three.npy", np.zeros((100, 3), np.float32))
    with pytest.raises(checkpointing.CheckpointError, match=r"data_shape \[2\], but the config gives \[3\]"):
        train.train_and_evaluate(tiny_config(**{"data.path": path, "train.num_steps": 12}), trained)


def test_workdir_of_another_method_is_refused_by_cli(trained):
    meta_file = os.path.join(trained, "checkpoints", "6", "meta", "metadata")
    meta = json.load(open(meta_file))
    meta["method"] = "ebm_bb"
    json.dump(meta, open(meta_file, "w"))
    r = subprocess.run([sys.executable, "-m", "ebm_jax.main", "--config=configs/meg.py", f"--workdir={trained}",
                        *cli_flags(**{"train.num_steps": 12})], cwd=REPO,
                       env={**os.environ, "PYTHONPATH": REPO}, capture_output=True, text=True)
    assert r.returncode == 2
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "checkpoint of method 'ebm_bb', but the config asks for 'meg'" in last
    assert sorted(os.listdir(os.path.join(trained, "checkpoints"))) == ["3", "6"]


def test_corrupt_latest_checkpoint_is_reported_and_kept(trained):
    ckpt = os.path.join(trained, "checkpoints")
    for root, _, files in os.walk(os.path.join(ckpt, "6", "state")):
        for name in files:
            open(os.path.join(root, name), "wb").write(b"garbage")
    before = tree_digest(ckpt)
    with pytest.raises(checkpointing.CheckpointError, match=r"checkpoints/6 is unreadable .*move that directory aside") as e:
        train.train_and_evaluate(tiny_config(**{"train.num_steps": 12}), trained)
    one_sentence(e.value)
    assert tree_digest(ckpt) == before
    import ebm_jax
    assert ebm_jax.load(trained, step=3).step == 3   # the earlier good checkpoint still restores


def stops_keeping_step_6(trained, config, match):
    """Training on from the `trained` workdir (checkpoints 3 and 6) stops with one NonFiniteLossError
    sentence matching `match`, and checkpoint 6 stays the latest, byte for byte."""
    before = tree_digest(os.path.join(trained, "checkpoints", "6"))
    with pytest.raises(train.NonFiniteLossError, match=match) as e:
        train.train_and_evaluate(config, trained)
    one_sentence(e.value)
    assert sorted(os.listdir(os.path.join(trained, "checkpoints"))) == ["3", "6"]
    assert tree_digest(os.path.join(trained, "checkpoints", "6")) == before


def test_non_finite_loss_names_step_and_keeps_last_good_checkpoint(trained):
    config = tiny_config(**{"optim.lr": 1e38, "train.num_steps": 20, "train.checkpoint_every": 2,
                            "train.log_every": 1})
    stops_keeping_step_6(trained, config, r"became non-finite at step (\d+); the last good checkpoint "
                                          r"\(step 6\) .* is kept")


def test_state_overflow_under_a_finite_loss_stops_and_keeps_last_good_checkpoint(trained, monkeypatch):
    """A loss can stay finite while the state overflows (Adam's second moment at inf once gradients pass
    ~1e19): the run stops as for a non-finite loss, and nothing from that step on is saved, so the last
    checkpoint still restores. Injected: every iteration's new optimiser state has an inf entry."""
    from ebm_jax.methods import meg
    real = meg.MEG.train_step

    def overflowing(self, state, batch, key):
        new, metrics = real(self, state, batch, key)
        leaves, tree = jax.tree_util.tree_flatten(new["opt_state"])
        i = next(i for i, v in enumerate(leaves) if v.ndim == 2)
        leaves[i] = leaves[i].at[0, 0].set(jnp.inf)
        return {**new, "opt_state": jax.tree_util.tree_unflatten(tree, leaves)}, metrics

    monkeypatch.setattr(meg.MEG, "train_step", overflowing)
    config = tiny_config(**{"train.num_steps": 12, "train.checkpoint_every": 2, "train.log_every": 1})
    stops_keeping_step_6(trained, config, r"loss or state became non-finite at step 6; the last good "
                                          r"checkpoint \(step 6\) .* is kept")


def test_load_errors(tmp_path, trained):
    import ebm_jax
    with pytest.raises(checkpointing.CheckpointError, match=r"holds no checkpoints"):
        ebm_jax.load(str(tmp_path / "empty"))
    with pytest.raises(checkpointing.CheckpointError, match=r"has no checkpoint of step 5; available steps are \[3, 6\]"):
        ebm_jax.load(trained, step=5)
    model = ebm_jax.load(trained)
    with pytest.raises(ValueError, match=r"anomaly score kind 'nll' is unknown"):
        model.anomaly_score(np.zeros((2, 2), np.float32), kind="nll")
