"""Orbax checkpoints of the train state plus the config and a small metadata record.

A step directory holds three items: 'state' (the pytree), 'config' (the ConfigDict as JSON) and 'meta'
(method, data and latent shapes, the shape of every state entry). Before a resume or a load, the
metadata is compared with what the current config builds, so that a workdir of another method or
other shapes is refused with a sentence instead of an orbax stack trace. Orbax writes each step to a temporary directory and
renames it when complete, so an interrupted save never replaces a good checkpoint.
"""
import json
import os
from typing import Any, Dict, Optional

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable or does not match the current config."""


def is_url(path: str) -> bool:
    """A path on an object store (gs://bucket/run): orbax and tensorboardX write there directly."""
    return "://" in str(path)


def absolute(path: str) -> str:
    """An absolute local path, or a URL unchanged (os.path.abspath would mangle gs://)."""
    return str(path) if is_url(path) else os.path.abspath(path)


def makedirs(path: str) -> None:
    if is_url(path):
        from etils import epath  # orbax's own path library, which reads and writes gs:// too
        epath.Path(path).mkdir(parents=True, exist_ok=True)
    else:
        os.makedirs(path, exist_ok=True)


def isdir(path: str) -> bool:
    if is_url(path):
        from etils import epath
        return epath.Path(path).is_dir()
    return os.path.isdir(path)


def checkpoint_dir(workdir: str) -> str:
    workdir = absolute(workdir)
    return f"{workdir.rstrip('/')}/checkpoints" if is_url(workdir) else os.path.join(workdir, "checkpoints")


def make_manager(workdir: str, max_to_keep: int = 3, read_only: bool = False) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=not read_only, read_only=read_only,
        enable_async_checkpointing=False)
    return ocp.CheckpointManager(checkpoint_dir(workdir), options=options,
                                 item_names=("state", "config", "meta"))


def tree_shapes(tree) -> Dict[str, list]:
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(path): list(np.shape(leaf)) for path, leaf in flat}


def make_meta(method, state) -> Dict[str, Any]:
    """What a checkpoint must match to be resumed or loaded: method, shapes, and the shape of every
    state entry except the optimiser state (which mirrors the parameters)."""
    tree = {k: v for k, v in state.items() if k != "opt_state"}
    return {"method": method.name, "data_shape": list(method.data_shape),
            "latent_shape": list(method.latent_shape), "state_shapes": tree_shapes(tree)}


def save(manager: ocp.CheckpointManager, step: int, state, config, meta) -> None:
    manager.save(int(step), args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        config=ocp.args.JsonSave(json.loads(config.to_json_best_effort())),
        meta=ocp.args.JsonSave(meta)), force=True)
    manager.wait_until_finished()


def _step_path(manager, step):
    return f"{str(manager.directory).rstrip('/')}/{step}"


def restore_json(manager: ocp.CheckpointManager, step: int) -> Dict[str, Any]:
    """The config and meta JSON of `step`, or CheckpointError if they cannot be read."""
    try:
        out = manager.restore(int(step), args=ocp.args.Composite(
            config=ocp.args.JsonRestore(), meta=ocp.args.JsonRestore()))
        return {"config": out["config"], "meta": out["meta"]}
    except Exception as e:
        raise CheckpointError(
            f"checkpoint {_step_path(manager, step)} is unreadable ({type(e).__name__}); it may be corrupt: "
            f"move that directory aside to resume from an earlier step, or use another workdir.") from e


def check_meta(saved: Dict[str, Any], current: Dict[str, Any], where: str) -> None:
    """Raises CheckpointError naming the first difference between a checkpoint and the current model."""
    if saved.get("method") != current["method"]:
        raise CheckpointError(
            f"{where} holds a checkpoint of method {saved.get('method')!r}, but the config asks for "
            f"{current['method']!r}; use another --workdir or the matching config.")
    for key in ("data_shape", "latent_shape"):
        if list(saved.get(key, [])) != list(current[key]):
            raise CheckpointError(
                f"{where} holds a checkpoint with {key} {saved.get(key)}, but the config gives {current[key]}; "
                "use another --workdir or the matching config.")
    s_shapes, c_shapes = saved.get("state_shapes", {}), current["state_shapes"]
    for name in sorted(set(s_shapes) | set(c_shapes)):
        if s_shapes.get(name) != c_shapes.get(name):
            raise CheckpointError(
                f"{where} holds a checkpoint whose state entry {name} has shape {s_shapes.get(name)}, but the "
                f"config builds {c_shapes.get(name)}; use another --workdir or the config the checkpoint was made with.")


def restore_state(manager: ocp.CheckpointManager, step: int, abstract_state):
    """Restores the state pytree with the structure (and shardings) of `abstract_state`."""
    try:
        out = manager.restore(int(step), args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state)))
        state = out["state"]
    except Exception as e:
        raise CheckpointError(
            f"checkpoint {_step_path(manager, step)} is unreadable ({type(e).__name__}: {str(e)[:200]}); "
            "it may be corrupt: move that directory aside to resume from an earlier step, or use another "
            "workdir.") from e
    bad = [jax.tree_util.keystr(p) for p, leaf in jax.tree_util.tree_flatten_with_path(state)[0]
           if np.issubdtype(np.asarray(leaf).dtype, np.floating) and not np.all(np.isfinite(np.asarray(leaf)))]
    if bad:
        raise CheckpointError(f"checkpoint {_step_path(manager, step)} holds non-finite values in {bad[0]}; "
                              "move that directory aside to resume from an earlier step.")
    return state


def latest_step(manager: ocp.CheckpointManager) -> Optional[int]:
    return manager.latest_step()


def config_from_json(d: Dict[str, Any]) -> ml_collections.ConfigDict:
    """Rebuilds a ConfigDict from its JSON form (lists back to tuples where configs use tuples)."""
    def fix(v):
        if isinstance(v, dict):
            return {k: fix(x) for k, x in v.items()}
        if isinstance(v, list):
            return tuple(fix(x) for x in v)
        return v
    return ml_collections.ConfigDict(fix(d))
