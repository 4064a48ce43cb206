"""The train state's layout, shared by the loop (train.py) and checkpoint loading (api.py).

A state is the method's own entries (parameters, optimiser states, batch-norm averages, buffers) plus
the loop's: the step and the first step whose loss was non-finite. A run of train.num_seeds = S > 1
replicas stacks S such states on a leading axis.
"""
import jax
import jax.numpy as jnp
import numpy as np


def num_seeds(config) -> int:
    """config.train.num_seeds (1 for configs saved before the field existed)."""
    return int(config.train.get("num_seeds", 1))


def seed_replica(tree, i: int):
    """Replica i of a state (or parameters) with a leading seed axis."""
    return jax.tree_util.tree_map(lambda a: a[i], tree)


def init_full_state(method, key):
    """The method's state plus the loop's own entries: the step, and the first step whose loss was
    non-finite (-1 while none was)."""
    return {"step": jnp.zeros((), jnp.int32), "bad_step": jnp.full((), -1, jnp.int32), **method.init(key, None)}


def host_step(state) -> int:
    """The state's step as a Python int (the replicas of a multi-seed state share it)."""
    return int(np.max(jax.device_get(state["step"])))
