import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(REPO), "shared")
sys.path.insert(0, REPO)


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
