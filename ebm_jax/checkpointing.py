"""Orbax checkpoints of the train state plus the config and a small metadata record.

A step directory holds three items: 'state' (the pytree), 'config' (the ConfigDict as JSON) and 'meta'
(method, data and latent shapes, the shape of every state entry, a CRC-32 of every array). Before a
resume or a load, the metadata is compared with what the current config builds, so that a workdir of
another method or other shapes is refused with a sentence instead of an orbax stack trace, and every
restored array is checked against its checksum, so that a corrupted file is refused instead of
restored with a changed value. Orbax writes each step to a temporary directory and renames it when
complete, so an interrupted save never replaces a good checkpoint.

Retention: the latest train.max_to_keep checkpoints, and always the earliest one of the workdir, so
that a run whose losses stay finite but explode cannot rotate every good checkpoint out.
"""
import contextlib
import json
import os
import zlib
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


def prepare_workdir(workdir: str) -> None:
    """Creates the workdir and checks that files can be written there, or raises CheckpointError in one
    sentence (a path under a file, an existing file, a read-only place such as /proc)."""
    if is_url(workdir):
        makedirs(workdir)
        return
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise CheckpointError(f"--workdir {workdir} is an existing file, not a directory; give a directory "
                              "(it is created if missing).")
    try:
        os.makedirs(workdir, exist_ok=True)
        probe = os.path.join(workdir, f".write_test.{os.getpid()}")
        with open(probe, "wb") as f:
            f.write(b"ok")
        os.remove(probe)
    except OSError as e:
        raise CheckpointError(f"--workdir {workdir} cannot be created or written ({e.strerror or e}); give a "
                              "directory you can write to.") from None


def isdir(path: str) -> bool:
    if is_url(path):
        from etils import epath
        return epath.Path(path).is_dir()
    return os.path.isdir(path)


def checkpoint_dir(workdir: str) -> str:
    workdir = absolute(workdir)
    return f"{workdir.rstrip('/')}/checkpoints" if is_url(workdir) else os.path.join(workdir, "checkpoints")


@contextlib.contextmanager
def _quiet_absl():
    """absl logging at ERROR for the duration: orbax warns at every read-only manager that its directory
    is read only, which is what loading a checkpoint asks for."""
    from absl import logging
    before = logging.get_verbosity()
    logging.set_verbosity(logging.ERROR)
    try:
        yield
    finally:
        logging.set_verbosity(before)


def make_manager(workdir: str, max_to_keep: int = 3, read_only: bool = False) -> ocp.CheckpointManager:
    if read_only:
        # the options a read-only manager has anyway, set here so that orbax does not warn it changed them
        options = ocp.CheckpointManagerOptions(max_to_keep=None, save_interval_steps=0, create=False,
                                               read_only=True, enable_async_checkpointing=False)
        with _quiet_absl():
            return ocp.CheckpointManager(checkpoint_dir(workdir), options=options,
                                         item_names=("state", "config", "meta"))
    # max_to_keep is applied by `save` (retain), which also keeps the earliest checkpoint. On GPUs and TPUs
    # saving is asynchronous: orbax copies the state to the host before save() returns and writes it while
    # training goes on, still to a temporary directory renamed when complete; the loop waits for it at
    # exit and at a preemption. On a CPU the copy is the write's main cost, so it stays synchronous.
    asynchronous = jax.default_backend() != "cpu"
    options = ocp.CheckpointManagerOptions(max_to_keep=None, create=True, enable_async_checkpointing=asynchronous)
    manager = ocp.CheckpointManager(checkpoint_dir(workdir), options=options, item_names=("state", "config", "meta"))
    manager.ebm_max_to_keep = int(max_to_keep)
    manager.ebm_asynchronous = asynchronous
    return manager


def tree_shapes(tree) -> Dict[str, list]:
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(path): list(np.shape(leaf)) for path, leaf in flat}


def make_meta(method, state) -> Dict[str, Any]:
    """What a checkpoint must match to be resumed or loaded: method, shapes, and the shape of every
    state entry except the optimiser state (which mirrors the parameters)."""
    tree = {k: v for k, v in state.items() if k != "opt_state"}
    return {"method": method.name, "data_shape": list(method.data_shape),
            "latent_shape": list(method.latent_shape), "state_shapes": tree_shapes(tree)}


def _host_array(leaf) -> np.ndarray:
    """The full value of a state leaf on this host. A replicated leaf spanning several processes has all
    of it in any local shard; a split one (the optimiser state, parallel.state_shardings) is gathered
    from every process, a collective that every process reaches in the same order (save and restore
    walk the same tree on each)."""
    if hasattr(leaf, "addressable_data") and not getattr(leaf, "is_fully_addressable", True):
        if leaf.sharding.is_fully_replicated:
            return np.asarray(leaf.addressable_data(0))
        from jax.experimental import multihost_utils
        return np.asarray(multihost_utils.process_allgather(leaf))
    return np.asarray(jax.device_get(leaf))


def checksums(state) -> Dict[str, str]:
    """CRC-32 of the bytes of every array of the state, by its path."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
        a = np.ascontiguousarray(_host_array(leaf))
        out[jax.tree_util.keystr(path)] = f"{zlib.crc32(a.tobytes()) & 0xFFFFFFFF:08x}:{a.dtype}:{list(a.shape)}"
    return out


def save(manager: ocp.CheckpointManager, step: int, state, config, meta) -> None:
    """Writes checkpoint `step` (state, config, meta with the state's checksums), then applies the
    retention rule. A write that fails (a full disk, a lost bucket) is one CheckpointError sentence;
    the checkpoints already there are untouched."""
    meta = {**meta, "checksums": checksums(state)}
    try:
        manager.save(int(step), args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            config=ocp.args.JsonSave(json.loads(config.to_json_best_effort())),
            meta=ocp.args.JsonSave(meta)), force=True)
        if not getattr(manager, "ebm_asynchronous", False):
            manager.wait_until_finished()
    except Exception as e:  # orbax / tensorstore report a full disk and the like in many forms
        kept = manager.latest_step()
        reason = _first_cause(e)
        raise CheckpointError(
            f"could not write the checkpoint of step {step} to {manager.directory} ({reason}); "
            + (f"the checkpoint of step {kept} is kept" if kept is not None else "no checkpoint had been saved")
            + "; free space or give a writable --workdir, then run the same command again.") from e
    retain(manager)


def _first_cause(e: BaseException) -> str:
    """The most specific message in an exception chain: the OS error of a full disk, not orbax's wrapper."""
    chain, seen = [], set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        chain.append(e)
        e = e.__cause__ or e.__context__
    for exc in chain:
        if isinstance(exc, OSError) and exc.strerror:
            return exc.strerror
    text = " ".join(str(x) for x in chain)
    for sign in ("No space left on device", "RESOURCE_EXHAUSTED", "Permission denied", "Read-only file system"):
        if sign in text:
            return sign
    first = str(chain[-1]).strip().splitlines()
    return f"{type(chain[-1]).__name__}: {first[0][:200]}" if first else type(chain[-1]).__name__


def retain(manager: ocp.CheckpointManager) -> None:
    """Deletes checkpoints beyond the latest `max_to_keep`, except the earliest one of the workdir."""
    keep = getattr(manager, "ebm_max_to_keep", None)
    if not keep:
        return
    steps = sorted(manager.all_steps())
    for step in steps[1:-keep] if len(steps) > keep + 1 else []:
        manager.delete(step)


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
        if name not in s_shapes or name not in c_shapes:
            has, lacks = ("the config builds", "the checkpoint") if name in c_shapes else ("the checkpoint holds",
                                                                                        "the config")
            raise CheckpointError(
                f"{where}: {has} a state entry {name} that {lacks} does not have (a checkpoint of another "
                "config, or of an earlier version of the method); use another --workdir or the config the "
                "checkpoint was made with.")
        if s_shapes.get(name) != c_shapes.get(name):
            raise CheckpointError(
                f"{where} holds a checkpoint whose state entry {name} has shape {s_shapes.get(name)}, but the "
                f"config builds {c_shapes.get(name)}; use another --workdir or the config the checkpoint was made with.")


def restore_state(manager: ocp.CheckpointManager, step: int, abstract_state, expected_checksums=None):
    """Restores the state pytree with the structure (and shardings) of `abstract_state`, and checks every
    array against `expected_checksums` (the checkpoint's meta; checkpoints written before checksums
    existed have none)."""
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
           if np.issubdtype(leaf.dtype, np.floating) and not np.all(np.isfinite(_host_array(leaf)))]
    if bad:
        raise CheckpointError(f"checkpoint {_step_path(manager, step)} holds non-finite values in {bad[0]}; "
                              "move that directory aside to resume from an earlier step.")
    if expected_checksums:
        got = checksums(state)
        for name in sorted(expected_checksums):
            if got.get(name) != expected_checksums[name]:
                earlier = [s for s in manager.all_steps() if s < step]
                hint = (f"move that directory aside to resume from step {max(earlier)}" if earlier
                        else "no earlier checkpoint exists: use another workdir")
                raise CheckpointError(f"checkpoint {_step_path(manager, step)} is corrupt: {name} does not match the "
                                      f"checksum it was saved with; {hint}.")
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


# Fields whose change alters the optimiser state's structure (or the state's seed axis): a checkpoint
# trained with another value cannot be restored into this config's state.
STATE_FIELDS = ("optim.name", "optim.schedule", "optim.grad_clip", "train.num_seeds")


def _field(tree, path):
    node = tree
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _structure_value(path, value):
    if path == "optim.grad_clip":
        return bool(value)            # clipping or not; its threshold keeps the state's shape
    if path == "optim.schedule":
        return value or "constant"
    if path == "train.num_seeds":
        return int(value or 1)
    return value


def check_config_compatible(saved_config: Dict[str, Any], config, where: str) -> None:
    """Raises CheckpointError naming the first STATE_FIELDS entry in which the checkpoint's config and
    `config` differ, and how to resume or start afresh."""
    current = json.loads(config.to_json_best_effort())
    for path in STATE_FIELDS:
        a, b = _field(saved_config, path), _field(current, path)
        if _structure_value(path, a) != _structure_value(path, b):
            raise CheckpointError(
                f"{where} holds a checkpoint trained with {path}={a!r}, but the config gives {b!r}, which changes "
                f"the state it restores into; resume with --config.{path}={a}, or start afresh in another --workdir.")


def config_differences(saved_config: Dict[str, Any], config, limit: int = 3):
    """The first `limit` 'field: saved -> current' differences between a checkpoint's config and `config`."""
    current = json.loads(config.to_json_best_effort())
    out = []

    def walk(a, b, prefix):
        for k in sorted(set(a) | set(b)):
            x, y = a.get(k), b.get(k)
            if isinstance(x, dict) and isinstance(y, dict):
                walk(x, y, f"{prefix}{k}.")
            elif x != y and not (isinstance(x, list) and isinstance(y, list) and list(x) == list(y)):
                out.append(f"{prefix}{k}: {x!r} -> {y!r}")
    walk(saved_config, current, "")
    return out[:limit]
