"""Command line: python -m ebm_jax.main --config=configs/meg.py[:variant] --workdir=DIR [--mode=...]

  --mode=train   train (resuming from the latest checkpoint in DIR), then evaluate
  --mode=eval    metrics of the latest checkpoint -> DIR/eval/metrics_stepN.json (+ TensorBoard)
  --mode=sample  samples of the latest checkpoint -> DIR/samples/samples_stepN.{npz,png}
Config fields are overridden with --config.section.field=value.

Several processes (a TPU pod, GPU hosts, or N processes on one machine; see launch/):
  --distributed                          Cloud TPU / Slurm / Open MPI: JAX finds everything itself
  --coordinator_address=HOST:PORT --num_processes=N --process_id=I   anywhere else
"""
import os
import sys
import traceback

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from ebm_jax import api, parallel, train
from ebm_jax.checkpointing import CheckpointError
from ebm_jax.data import DataError
from ebm_jax.evaluation.model_eval import format_metrics
from ebm_jax.methods.base import ConfigError

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/meg.py:swissroll.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, TensorBoard events and pictures "
                               "(a local path or a bucket, gs://...; shared by all processes).")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval", "sample"], "What to do.")
_STEP = flags.DEFINE_integer("step", None, "eval/sample: checkpoint step (default: the latest).")

_DISTRIBUTED = flags.DEFINE_boolean(
    "distributed", False, "Run as one of several processes, calling jax.distributed.initialize() before any "
    "device is used. Alone it suits Cloud TPU pods, Slurm and Open MPI, where JAX finds the coordinator, "
    "process count and id itself; implied by any of the next three flags.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "HOST:PORT where process 0 runs the coordinator; the same on every process "
    f"(default ${parallel.ENV_COORDINATOR_ADDRESS}).")
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, f"How many processes take part (default ${parallel.ENV_NUM_PROCESSES}).")
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, f"This process's number, 0..num_processes-1 (default ${parallel.ENV_PROCESS_ID}).")
_INIT_TIMEOUT = flags.DEFINE_float(
    "initialization_timeout", 300.0, "Seconds to wait for every process to reach the coordinator before "
    "stopping with an error.")
_HEARTBEAT_TIMEOUT = flags.DEFINE_integer(
    "heartbeat_timeout", 60, "Seconds after which a process that stopped answering counts as dead; every "
    "other process then stops with an error (a process that crashes is usually noticed sooner).")

# words in a runtime error that mean the other processes are out of reach (gloo, NCCL, gRPC barriers)
_PEER_LOST = ("gloo", "nccl", "connection", "unavailable", "deadline_exceeded", "barrier", "heartbeat")

USER_ERRORS = (ConfigError, DataError, CheckpointError, train.NonFiniteLossError, parallel.DistributedError)


def _exit(code: int, multiprocess: bool):
    """Exits with `code`. After an error in a multi-process run, without JAX's exit-time shutdown
    barrier: the other processes may be inside a collective with this one and never reach it, so it
    would hold this process for minutes; gone at once, the others stop within --heartbeat_timeout."""
    if not multiprocess:
        sys.exit(code)
    sys.stdout.flush()
    sys.stderr.flush()
    logging.flush()
    os._exit(code)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}; use --config, --workdir and --mode.")
    if _WORKDIR.value is None:
        raise app.UsageError("--workdir is required: the directory for checkpoints and outputs.")
    # Orbax and absl log every checkpoint step at INFO; keep the console to the progress bar and
    # results unless the user asks for more with --verbosity.
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    try:
        # before anything touches a device: JAX fixes the set of devices when its backend starts
        multiprocess = parallel.initialize(
            _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value, enable=_DISTRIBUTED.value,
            initialization_timeout=_INIT_TIMEOUT.value, heartbeat_timeout=_HEARTBEAT_TIMEOUT.value)
    except parallel.DistributedError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    who = f"process {jax.process_index()}: " if multiprocess else ""
    config = _CONFIG.value
    try:
        if _MODE.value == "train":
            if config is None:
                raise app.UsageError("--config is required for --mode=train, e.g. --config=configs/meg.py.")
            train.train_and_evaluate(config, _WORKDIR.value)
        elif _MODE.value == "eval":
            step, metrics = api.evaluate_checkpoint(_WORKDIR.value, config, _STEP.value)
            if jax.process_index() == 0:  # the same metrics on every process: print them once
                print(f"step {step}: {format_metrics(metrics)}")
        else:
            path = api.sample_checkpoint(_WORKDIR.value, config, _STEP.value)
            if jax.process_index() == 0:
                print(path)
    except train.TrainingInterrupted as e:
        # every process stopped at the same step and saved it together: a normal exit
        logging.warning(f"{who}{e}")
        sys.exit(128 + int(e.signum))
    except USER_ERRORS as e:
        # One sentence naming what is wrong; the traceback adds nothing for a user error.
        print(f"error: {who}{e}", file=sys.stderr)
        _exit(2, multiprocess)
    except app.UsageError:
        raise
    except Exception as e:  # pylint: disable=broad-except
        if not multiprocess:
            raise
        kept = f"the last checkpoint in {_WORKDIR.value} is kept; start every process again to resume"
        if isinstance(e, jax.errors.JaxRuntimeError) and any(sign in str(e).lower() for sign in _PEER_LOST):
            # a collective or barrier failing mid-run: in practice a peer that died or hangs
            first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            print(f"error: {who}lost contact with another process of this run ({first_line[:300]}); {kept}.",
                  file=sys.stderr)
        else:
            traceback.print_exc()
            print(f"error: {who}stopped by {type(e).__name__}; the other processes stop within --heartbeat_timeout="
                  f"{_HEARTBEAT_TIMEOUT.value} s; {kept}.", file=sys.stderr)
        _exit(1, multiprocess)


def _fail(message: str):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def _config_spec(argv):
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def _check_overrides(config, argv):
    """Every --config.a.b=value names a field the config has, else one sentence with the valid ones."""
    import difflib
    for arg in argv:
        if not arg.startswith("--config.") or arg.startswith("--config.") is False:
            continue
        path = arg[len("--config."):].split("=", 1)[0]
        node, walked = config, []
        for part in path.split("."):
            fields = list(node.keys()) if hasattr(node, "keys") else []
            if part not in fields:
                where = ".".join(walked) or "the config"
                close = difflib.get_close_matches(part, fields, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                sub = f"config.{where}" if walked else where
                _fail(f"--config.{path}: {sub} has no field {part!r}{hint}; its fields are {sorted(fields)}.")
            node = node[part]
            walked.append(part)


def _parse_flags(argv):
    """absl's flag parsing, with the mistakes a user makes in --config and its overrides reported in one
    sentence (exit status 2) instead of a traceback: a missing config file, an unknown variant, a field
    the config does not have, a value of the wrong type."""
    from ebm_jax import configlib
    spec = _config_spec(argv[1:])
    if spec:
        try:
            config = configlib.load_config(spec)
        except (ValueError, FileNotFoundError, ConfigError) as e:
            _fail(str(e))
        _check_overrides(config, argv[1:])
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        _fail(str(e).strip().splitlines()[0] + "; give a value of the field's type (see the config file).")


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
