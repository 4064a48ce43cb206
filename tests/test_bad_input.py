"""Every bad input a user tried gives one sentence naming what is wrong and what is valid (exit status 2
on the command line) and changes nothing in the workdir; corrupted or mismatched checkpoints are
refused with the earlier ones kept; a run whose losses explode keeps a good checkpoint."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import REPO, cli_flags, tiny_config
from ebm_jax import api, checkpointing, configlib, train
from ebm_jax.methods import ConfigError

ENV = {**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu"}


def cli(*args, workdir):
    return subprocess.run([sys.executable, "-m", "ebm_jax.main", *args, f"--workdir={workdir}"], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=300)


def one_sentence_error(r, *fragments):
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    lines = [line for line in r.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr[-2000:]
    for f in fragments:
        assert f in lines[0], (f, lines[0])


@pytest.mark.parametrize("args,fragments", [
    (["--config=configs/meg.py", "--config.optim.learning_rate=1e-3"],
     ["config.optim has no field 'learning_rate'", "'lr'"]),
    (["--config=configs/meg.py", "--config.optm.lr=1"], ["no field 'optm'", "did you mean 'optim'"]),
    (["--config=configs/meg.py:25gausians"], ["config variant '25gausians' is unknown", "'25gaussians'"]),
    (["--config=configs/nope.py"], ["config file 'configs/nope.py' does not exist"]),
    (["--config=configs/meg.py", "--config.model.energy.hidden=(128,-1)"], ["hidden=(128, -1) is invalid"]),
    (["--config=configs/meg.py", "--config.model.energy.hidden=()"], ["at least one hidden layer"]),
    (["--config=configs/meg.py", "--config.model.energy.kind=rbm"],
     ["kind='rbm' needs model.energy.num_hidden", "configs/steincd.py:mnist"]),
    (["--config=configs/meg.py", "--config.optim.grad_clip=-1"], ["grad_clip=-1.0 is invalid", ">= 0"]),
    (["--config=configs/meg.py", "--config.optim.b1=1.5"], ["b1=1.5 is invalid", "[0, 1)"]),
    (["--config=configs/meg.py", "--config.train.num_steps=abc"], ["num_steps=abc"]),
])
def test_cli_config_mistakes_are_one_sentence_and_touch_nothing(tmp_path, args, fragments):
    wd = tmp_path / "wd"
    one_sentence_error(cli(*args, workdir=str(wd)), *fragments)
    assert not wd.exists()


@pytest.mark.parametrize("where", ["proc", "under_a_file", "a_file"])
def test_unwritable_workdirs(tmp_path, where):
    a_file = tmp_path / "f"
    a_file.write_text("x")
    workdir = {"proc": "/proc/ebm_jax_x", "under_a_file": str(a_file / "run"), "a_file": str(a_file)}[where]
    fragment = "is an existing file" if where == "a_file" else "cannot be created or written"
    with pytest.raises(checkpointing.CheckpointError, match=fragment) as e:
        train.train_and_evaluate(tiny_config(), workdir)
    assert "\n" not in str(e.value)
    assert a_file.read_text() == "x"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    wd = str(tmp_path_factory.mktemp("bad") / "wd")
    train.train_and_evaluate(tiny_config(), wd)
    return wd


def test_full_disk_is_one_sentence_and_keeps_the_checkpoint_before(tmp_path, monkeypatch):
    wd = str(tmp_path / "wd")
    train.train_and_evaluate(tiny_config(), wd, stop_after=3)
    real_save = checkpointing.ocp.CheckpointManager.save

    def full(self, step, *a, **k):
        if step > 3:
            try:
                raise OSError(28, "No space left on device")
            except OSError as e:
                raise RuntimeError("tensorstore write failed: RESOURCE_EXHAUSTED") from e
        return real_save(self, step, *a, **k)

    monkeypatch.setattr(checkpointing.ocp.CheckpointManager, "save", full)
    with pytest.raises(checkpointing.CheckpointError, match=r"could not write the checkpoint of step 6 .*No space "
                                                            r"left on device.*step 3 is kept") as e:
        train.train_and_evaluate(tiny_config(), wd)
    assert "\n" not in str(e.value)
    assert sorted(os.listdir(os.path.join(wd, "checkpoints"))) == ["3"]


@pytest.mark.parametrize("call,fragment", [
    (lambda m, k: m.sample(k, 0), "n=0 is invalid"),
    (lambda m, k: m.sample(k, -3), "n=-3 is invalid"),
    (lambda m, k: m.sample(k, 2.7), "n=2.7 is invalid"),
    (lambda m, k: m.sample(k, 4, mcmc_steps=-5), "mcmc_steps=-5 is invalid"),
    (lambda m, k: m.sample(k, 4, mcmc_steps=2, step_size=0.0), "step_size=0.0 is invalid"),
    (lambda m, k: m.sample(k, 4, mcmc_steps=2, step_size=float("nan")), "step_size=nan is invalid"),
    (lambda m, k: m.sample(k, 4, mcmc_steps=2, temperature=0), "temperature=0 is invalid"),
    (lambda m, k: m.sample(k, 4, mcmc_steps=2, space="z"), "space='z' is invalid"),
    (lambda m, k: m.energy(np.zeros((0, 2), np.float32)), "x has no rows"),
    (lambda m, k: m.interpolate(k, rows=0), "rows=0 is invalid"),
    (lambda m, k: m.interpolate(k, steps=0), "steps=0 is invalid"),
])
def test_api_bad_arguments_are_one_sentence(trained, call, fragment):
    model = api.load(trained)
    with pytest.raises(ValueError, match=fragment.replace("(", r"\(").replace("[", r"\[")) as e:
        call(model, jax.random.PRNGKey(0))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("field,value", [("optim.schedule", "constant"), ("optim.name", "sgd"),
                                         ("optim.grad_clip", 1.0)])
def test_resuming_with_another_optimiser_names_the_field(trained, field, value):
    before = sorted(os.listdir(os.path.join(trained, "checkpoints")))
    config = tiny_config(**{field: value, "train.num_steps": 12})
    with pytest.raises(checkpointing.CheckpointError, match=rf"trained with {field}=.*but the config gives .*resume "
                                                            rf"with --config.{field}=.*or start afresh") as e:
        train.train_and_evaluate(config, trained)
    assert "\n" not in str(e.value) and "corrupt" not in str(e.value)
    assert sorted(os.listdir(os.path.join(trained, "checkpoints"))) == before


def test_large_vector_data_warns_and_names_the_scaling(tmp_path):
    path = str(tmp_path / "big.npy")
    x = np.random.default_rng(0).normal(size=(300, 2)) * 1e19
    np.save(path, x)
    config = tiny_config(**{"data.path": path, "train.num_steps": 0, "data.num_test": 10})
    from ebm_jax.data import get_dataset
    with pytest.warns(UserWarning, match=r"values up to .*e\+19.*--config.data.scaling=standardize"):
        get_dataset(config.data)
    config.data.scaling = "standardize"
    data = get_dataset(config.data)
    assert abs(float(np.mean(data.train))) < 0.1 and abs(float(np.std(data.train)) - 1.0) < 0.1
    config.data.scaling = "unit"
    from ebm_jax.data import DataError
    with pytest.raises(DataError, match=r"data.scaling='unit' is invalid; valid values are"):
        get_dataset(config.data)


def largest_state_file(wd, step):
    files = []
    for root, _, names in os.walk(os.path.join(wd, "checkpoints", str(step), "state")):
        files += [os.path.join(root, n) for n in names]
    return max(files, key=os.path.getsize)


def test_checksums_catch_a_flipped_bit_and_the_earlier_checkpoint_is_kept(tmp_path):
    wd = str(tmp_path / "wd")
    train.train_and_evaluate(tiny_config(), wd)
    meta_file = os.path.join(wd, "checkpoints", "6", "meta", "metadata")
    meta = json.load(open(meta_file))
    assert len(meta["checksums"]) > 10
    # a value that differs from the one saved (as a silent bit flip in the array data would give)
    name = sorted(meta["checksums"])[0]
    meta["checksums"][name] = "00000000" + meta["checksums"][name][8:]
    json.dump(meta, open(meta_file, "w"))
    with pytest.raises(checkpointing.CheckpointError, match=r"checkpoints/6 is corrupt: .* does not match the checksum "
                                                            r"it was saved with; move that directory aside to resume "
                                                            r"from step 3") as e:
        api.load(wd)
    assert "\n" not in str(e.value)
    with pytest.raises(checkpointing.CheckpointError, match="is corrupt"):
        train.train_and_evaluate(tiny_config(**{"train.num_steps": 12}), wd)
    assert sorted(os.listdir(os.path.join(wd, "checkpoints"))) == ["3", "6"]
    assert api.load(wd, step=3).step == 3
    # a real flipped bit in the array data of step 3: refused too (as corrupt or as unreadable)
    path = largest_state_file(wd, 3)
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0x10
    open(path, "wb").write(bytes(data))
    with pytest.raises(checkpointing.CheckpointError, match=r"checkpoints/3 is (corrupt|unreadable)"):
        api.load(wd, step=3)


def test_exploding_run_keeps_its_earliest_checkpoint(tmp_path):
    """max_to_keep = 1 and a run whose updates are huge: the latest checkpoint rotates, the earliest stays."""
    wd = str(tmp_path / "wd")
    config = tiny_config(**{"train.num_steps": 12, "train.checkpoint_every": 2, "train.max_to_keep": 1})
    train.train_and_evaluate(config, wd, stop_after=2)
    config.optim.lr = 1e3
    try:
        train.train_and_evaluate(config, wd)
    except train.NonFiniteLossError:
        pass
    steps = sorted(int(s) for s in os.listdir(os.path.join(wd, "checkpoints")))
    assert steps[0] == 2 and len(steps) <= 2
    assert api.load(wd, step=2).step == 2


def test_configlib_rejects_the_same_fields_from_python():
    for over, fragment in ((("model.energy.hidden", ()), "at least one hidden layer"),
                           (("optim.grad_clip", -1.0), "grad_clip=-1.0 is invalid"),
                           (("optim.b1", 1.5), "b1=1.5 is invalid")):
        with pytest.raises(ConfigError, match=fragment):
            configlib.validate(tiny_config(**dict([over])))


def test_sample_mode_samples_as_configured_and_says_so(trained):
    r = cli("--config=configs/meg.py", *cli_flags(**{"sampling.mcmc_steps": 7, "sampling.num_samples": 32,
                                                    "sampling.step_size": 0.5}),
            "--mode=sample", workdir=trained)
    assert r.returncode == 0, r.stderr[-2000:]
    out = np.load(os.path.join(trained, "samples", "samples_step6.npz"))
    assert int(out["mcmc_steps"]) == 7 and 0.0 < float(out["acceptance_rate"]) < 1.0 and out["x"].shape == (32, 2)
    assert "WARNING" not in r.stderr   # no orbax chatter about read-only options
    r = cli("--mode=eval", workdir=trained)
    assert r.returncode == 0, r.stderr[-2000:]
    line = r.stdout.strip().splitlines()[-1]
    assert line.startswith("step 6: ") and "kl_data_model=" in line
    keys = [part.split("=")[0] for part in line[len("step 6: "):].split(", ")]
    assert keys == sorted(keys)


EVIL = '''
import os
open({marker!r}, "w").write("imported")

def make_net():
    import jax.numpy as jnp
    return lambda x: (jnp.zeros((x.shape[0], 3)) + x.reshape(x.shape[0], -1)[:, :3], x.reshape(x.shape[0], -1)[:, :4])
'''


def test_code_named_in_a_checkpoint_is_never_imported(tmp_path):
    """A checkpoint's eval.inception_fn (code to import) is blanked when the checkpoint's own config is
    used; the user's config (--config, config_overrides) still runs it."""
    marker = tmp_path / "imported.txt"
    evil = tmp_path / "evil.py"
    evil.write_text(EVIL.format(marker=str(marker)))
    images = np.random.default_rng(0).uniform(-1, 1, (60, 8, 8, 1)).astype(np.float32)
    np.save(tmp_path / "images.npy", images)
    config = tiny_config(**{"data.path": str(tmp_path / "images.npy"), "eval.inception_fn": f"{evil}:make_net",
                            "eval.num_metric_samples": 16, "eval.mcmc": False})
    wd = str(tmp_path / "wd")
    train.train_and_evaluate(config, wd)          # the user named the code: it runs
    assert marker.exists()
    marker.unlink()
    with pytest.warns(UserWarning, match=r"names eval.inception_fn=.*is not imported"):
        _, metrics = api.evaluate_checkpoint(wd)   # --mode=eval without --config
    assert not marker.exists() and not any("inception" in k for k in metrics)
    with pytest.warns(UserWarning, match="is not imported"):
        assert api.load(wd).config.eval.inception_fn == ""
    _, metrics = api.evaluate_checkpoint(wd, config)   # with the user's config: it runs again
    assert marker.exists() and any(k.endswith("inception_score") for k in metrics)
