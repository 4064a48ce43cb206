"""The shared loop: CLI, checkpoints, exact resume, 1 vs 8 devices, no retracing, fresh-process load."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import REPO, cli_flags, tiny_config
from ebm_jax import train


def run(cmd, env=None, timeout=300):
    full_env = {**os.environ, "PYTHONPATH": REPO, **(env or {})}
    return subprocess.run(cmd, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout)


def params_of(workdir):
    import ebm_jax
    return jax.device_get(ebm_jax.load(workdir).params)


def read_events(directory):
    """(tag, step, kind) of every summary value in the TensorBoard event files of `directory`."""
    import struct
    from tensorboardX.proto import event_pb2
    out = []
    for name in sorted(os.listdir(directory)):
        data = open(os.path.join(directory, name), "rb").read()
        pos = 0
        while pos < len(data):  # TFRecord: length, crc, payload, crc
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
            pos += 12 + length + 4
            for v in event.summary.value:
                out.append((v.tag, event.step, v.WhichOneof("value")))
    return out


def test_cli_train_writes_checkpoints_eval_and_picture(tmp_path):
    wd = str(tmp_path / "run")
    r = run([sys.executable, "-m", "ebm_jax.main", "--config=configs/meg.py", f"--workdir={wd}",
             *cli_flags(**{"train.eval_every": 3})])
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(os.listdir(os.path.join(wd, "checkpoints"))) == ["3", "6"]
    final = json.load(open(os.path.join(wd, "eval_final.json")))
    assert final["step"] == 6
    for key in ("kl_data_model", "test_nll", "generator/modes_covered", "mcmc/acceptance_rate"):
        assert np.isfinite(final[key]), key
    assert 0.0 < final["mcmc/acceptance_rate"] <= 1.0
    with open(os.path.join(wd, "density.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    events = read_events(os.path.join(wd, "tensorboard"))
    assert {("train/energy_loss", s, "simple_value") for s in (2, 4, 6)} <= set(events)
    assert ("train/mutual_information", 6, "simple_value") in events
    assert ("eval/kl_data_model", 3, "simple_value") in events   # periodic evaluation
    assert ("eval/kl_data_model", 6, "simple_value") in events   # final evaluation
    assert ("eval/density", 3, "image") in events and ("eval/density", 6, "image") in events

    # eval and sample modes on the same workdir
    r = run([sys.executable, "-m", "ebm_jax.main", f"--workdir={wd}", "--mode=eval"])
    assert r.returncode == 0, r.stderr[-3000:]
    evaluated = json.load(open(os.path.join(wd, "eval", "metrics_step6.json")))
    assert evaluated["kl_data_model"] == pytest.approx(final["kl_data_model"], rel=1e-5)
    r = run([sys.executable, "-m", "ebm_jax.main", f"--workdir={wd}", "--mode=sample",
             "--config=configs/meg.py", "--config.sampling.num_samples=50", "--config.sampling.mcmc_steps=3"])
    assert r.returncode == 0, r.stderr[-3000:]
    with np.load(os.path.join(wd, "samples", "samples_step6.npz")) as f:
        assert f["x"].shape == (50, 2) and np.all(np.isfinite(f["x"]))
        assert 0.0 < float(f["acceptance_rate"]) <= 1.0
    assert os.path.exists(os.path.join(wd, "samples", "samples_step6.png"))


def test_resume_is_exact(tmp_path):
    straight = str(tmp_path / "straight")
    train.train_and_evaluate(tiny_config(**{"train.num_steps": 8, "train.checkpoint_every": 100}), straight)
    resumed = str(tmp_path / "resumed")
    # the default cosine schedule spans all 8 steps: its position must come back with the optimiser state
    assert tiny_config().optim.schedule == "cosine"
    train.train_and_evaluate(tiny_config(**{"train.num_steps": 8, "train.checkpoint_every": 100}), resumed,
                             stop_after=4)
    assert sorted(os.listdir(os.path.join(resumed, "checkpoints"))) == ["4"]
    train.train_and_evaluate(tiny_config(**{"train.num_steps": 8, "train.checkpoint_every": 100}), resumed)
    a, b = params_of(straight), params_of(resumed)
    jax.tree_util.tree_map(lambda x, y: np.testing.assert_array_equal(x, y), a, b)
    # and the run did move: parameters differ from those at step 4
    import ebm_jax
    mid = jax.device_get(ebm_jax.load(resumed, step=4).params)
    assert not np.allclose(mid["energy"]["MLP_0"]["Dense_0"]["kernel"], a["energy"]["MLP_0"]["Dense_0"]["kernel"])


def test_iteration_compiles_once():
    trainer = train.Trainer(tiny_config())
    state = trainer.init_state()
    for step in range(4):
        state, _ = trainer.iteration(state, trainer.batch(step), trainer.base_key)
    assert int(state["step"]) == 4
    assert trainer.num_traces == 1


DEVICE_SCRIPT = """
import sys, numpy as np, jax
sys.path.insert(0, {repo!r}); sys.path.insert(0, {tests!r})
from conftest import tiny_config
from ebm_jax import train
assert jax.device_count() == {n}, jax.devices()
# SGD: Adam divides by sqrt(v), which turns reduction-order noise on a near-zero gradient into a
# full-size step, so it would compare float noise rather than the data-parallel gradient.
state = train.train_and_evaluate(tiny_config(**{{"data.batch_size": 64, "train.num_steps": 5,
                                                 "optim.name": "sgd", "optim.lr": 0.05}}), {wd!r})
flat = jax.tree_util.tree_flatten_with_path(jax.device_get(state["params"]))[0]
np.savez({out!r}, **{{jax.tree_util.keystr(p): v for p, v in flat}})
"""


def test_one_and_eight_devices_agree(tmp_path):
    results = {}
    for n in (1, 8):
        out = str(tmp_path / f"params{n}.npz")
        script = DEVICE_SCRIPT.format(repo=REPO, tests=os.path.join(REPO, "tests"), n=n,
                                      wd=str(tmp_path / f"wd{n}"), out=out)
        r = run([sys.executable, "-c", script], env={"XLA_FLAGS": f"--xla_force_host_platform_device_count={n}",
                                                      "JAX_PLATFORMS": "cpu"})
        assert r.returncode == 0, r.stderr[-3000:]
        with np.load(out) as f:
            results[n] = dict(f)
    assert results[1].keys() == results[8].keys()
    for k in results[1]:
        np.testing.assert_allclose(results[1][k], results[8][k], rtol=2e-4, atol=2e-5, err_msg=k)


LOAD_SCRIPT = """
import json, sys, numpy as np, jax, ebm_jax
m = ebm_jax.load({wd!r})
x = np.asarray(m.sample(jax.random.PRNGKey(0), 16))
xm, rate = m.sample(jax.random.PRNGKey(1), 16, mcmc_steps=10, step_size=0.01, space="latent", return_acceptance=True)
xd = m.sample(jax.random.PRNGKey(2), 16, mcmc_steps=10, step_size=0.01, space="data")
probe = np.linspace(-1, 1, 10, dtype=np.float32).reshape(5, 2)
print(json.dumps(dict(step=m.step, shape=list(x.shape), mcmc_shape=list(np.shape(xm)), data_shape=list(np.shape(xd)),
    rate=float(rate), energy=np.asarray(m.energy(probe)).tolist(),
    anomaly=np.asarray(m.anomaly_score(probe)).tolist(),
    score_norm=np.asarray(m.anomaly_score(probe, kind="score_norm")).tolist())))
"""


def test_load_sample_and_energy_in_fresh_process(tmp_path):
    wd = str(tmp_path / "run")
    state = train.train_and_evaluate(tiny_config(), wd)
    r = run([sys.executable, "-c", LOAD_SCRIPT.format(wd=wd)])
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["step"] == 6 and out["shape"] == [16, 2] and out["mcmc_shape"] == [16, 2] and out["data_shape"] == [16, 2]
    assert 0.0 < out["rate"] <= 1.0
    # the fresh process computes the same energies as the trained state in this process
    trainer = train.Trainer(tiny_config())
    probe = np.linspace(-1, 1, 10, dtype=np.float32).reshape(5, 2)
    expected = np.asarray(trainer.method.energy(jax.device_get(state["params"]), probe))
    np.testing.assert_allclose(out["energy"], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["anomaly"], expected, rtol=1e-5, atol=1e-6)
    grads = jax.grad(lambda v: trainer.method.energy(jax.device_get(state["params"]), v).sum())(probe)
    np.testing.assert_allclose(out["score_norm"], np.linalg.norm(grads, axis=1), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT"])
def test_signal_saves_current_step(tmp_path, signame):
    import signal
    import time
    signum = getattr(signal, signame)
    wd = str(tmp_path / "run")
    flags = cli_flags(**{"train.num_steps": 100000, "train.checkpoint_every": 100000, "train.log_every": 1})
    proc = subprocess.Popen([sys.executable, "-m", "ebm_jax.main", "--config=configs/meg.py", f"--workdir={wd}",
                             *flags], cwd=REPO, env={**os.environ, "PYTHONPATH": REPO},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    tb = os.path.join(wd, "tensorboard")
    deadline = time.time() + 120
    while time.time() < deadline and not (os.path.isdir(tb) and os.listdir(tb)):
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, err[-3000:]
    steps = sorted(int(s) for s in os.listdir(os.path.join(wd, "checkpoints")))
    assert len(steps) == 1 and 0 < steps[0] < 100000
    assert f"step {steps[0]}" in err
    import ebm_jax
    assert ebm_jax.load(wd).step == steps[0]


def test_prefetching_the_next_batch_changes_nothing(tmp_path):
    """train.prefetch reads the next call's batches in a thread; the run is bitwise the one without it."""
    over = {"train.num_steps": 7, "train.checkpoint_every": 100, "train.steps_per_call": 2}
    train.train_and_evaluate(tiny_config(**over, **{"train.prefetch": False}), str(tmp_path / "plain"))
    train.train_and_evaluate(tiny_config(**over), str(tmp_path / "prefetch"))
    jax.tree_util.tree_map(lambda x, y: np.testing.assert_array_equal(x, y),
                           params_of(str(tmp_path / "plain")), params_of(str(tmp_path / "prefetch")))
