import os
import shutil
import sys
import tempfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(REPO), "shared")
sys.path.insert(0, REPO)


def pytest_configure(config):
    """One XLA compilation cache for the whole run, shared by the xdist workers and by the processes
    tests start (the CLI, the benchmark, the docs' blocks), which inherit the variable. Many tests build
    the same small programs again (a run and its resumed copy, one seed and three), and compiling is
    most of what the suite does on a 2-core CPU (the seeds tests' fixture took 106 s without it and 44 s
    with it, in one pair of runs on a VM whose speed varies). JAX reads these variables when it is
    imported, which no plugin does before this hook. A fresh directory per run, so that a run measures a cold start and never depends on an earlier
    run's files; a directory the user set is used as it is."""
    if hasattr(config, "workerinput") or "JAX_COMPILATION_CACHE_DIR" in os.environ:
        return   # a worker inherits the controller's variables
    path = tempfile.mkdtemp(prefix="ebm_jax_test_xla_cache_")
    config._ebm_jax_xla_cache = path
    os.environ["JAX_COMPILATION_CACHE_DIR"] = path
    # JAX's default (1 s) would leave out most of these small programs, which compile in 0.1-1 s here.
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.1")


def pytest_unconfigure(config):
    path = getattr(config, "_ebm_jax_xla_cache", None)
    if path:
        shutil.rmtree(path, ignore_errors=True)


def apply_overrides(config, overrides):
    """Sets config fields from {'section.field': value} (the same paths as --config.section.field)."""
    for path, value in overrides.items():
        node = config
        *parents, leaf = path.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return config


def tiny_overrides():
    """Small networks and grids so that a run takes seconds on a 2-core CPU."""
    return {
        "model.energy.hidden": (16, 16), "model.generator.hidden": (16, 16),
        "model.statistics.hidden": (16, 16), "data.batch_size": 32, "data.num_train": 2000,
        "data.num_test": 500, "method.n_critic": 2, "train.num_steps": 6, "train.log_every": 2,
        "train.checkpoint_every": 3, "train.eval_every": 0, "train.progress_bar": False,
        "eval.grid_size": 40, "eval.num_samples": 200, "sampling.mcmc_steps": 5, "sampling.num_samples": 64,
    }


def grid_kl(toy, energy_fn, grid_size, inverse_temperature):
    """KL(p_data || exp(-E/T)/Z) written here from numpy, independently of ebm_jax.evaluation: both
    densities as cell masses on the toys' metric grid, [-4, 4]^2 at the picture's cell size 4 / grid_size."""
    import numpy as np
    from ebm_jax.data.toys import get_toy
    step = 4.0 / int(grid_size)
    axis = -4.0 + step * (np.arange(int(round(8.0 / step))) + 0.5)
    pts = np.stack(np.meshgrid(axis, axis), -1).reshape(-1, 2).astype(np.float32)
    log_p = get_toy(toy).log_density(pts)
    log_q = -inverse_temperature * np.asarray(energy_fn(pts), np.float64)
    log_p, log_q = log_p - np.logaddexp.reduce(log_p), log_q - np.logaddexp.reduce(log_q)
    return float(np.sum(np.exp(log_p) * (log_p - log_q)))


def tiny_config(variant="", **extra):
    from configs import meg
    config = apply_overrides(meg.get_config(variant), {**tiny_overrides(), **extra})
    return config


def cli_flags(**extra):
    out = []
    for path, value in {**tiny_overrides(), **extra}.items():
        if isinstance(value, tuple):
            value = "(" + ",".join(map(str, value)) + ",)"
        out.append(f"--config.{path}={value}")
    return out


@pytest.fixture
def repo():
    return REPO
