"""Command line: python -m ebm_jax.main --config=configs/meg.py[:variant] --workdir=DIR [--mode=...]

  --mode=train   train (resuming from the latest checkpoint in DIR), then evaluate
  --mode=eval    metrics of the latest checkpoint -> DIR/eval/metrics_stepN.json (+ TensorBoard)
  --mode=sample  samples of the latest checkpoint -> DIR/samples/samples_stepN.{npz,png}
Config fields are overridden with --config.section.field=value.
"""
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from ebm_jax import train
from ebm_jax.checkpointing import CheckpointError
from ebm_jax.data import DataError
from ebm_jax.methods.base import ConfigError

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/meg.py:swissroll.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, TensorBoard events and pictures.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval", "sample"], "What to do.")
_STEP = flags.DEFINE_integer("step", None, "eval/sample: checkpoint step (default: the latest).")

USER_ERRORS = (ConfigError, DataError, CheckpointError, train.NonFiniteLossError)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}; use --config, --workdir and --mode.")
    if _WORKDIR.value is None:
        raise app.UsageError("--workdir is required: the directory for checkpoints and outputs.")
    # Orbax and absl log every checkpoint step at INFO; keep the console to the progress bar and
    # results unless the user asks for more with --verbosity.
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    config = _CONFIG.value
    try:
        if _MODE.value == "train":
            if config is None:
                raise app.UsageError("--config is required for --mode=train, e.g. --config=configs/meg.py.")
            train.train_and_evaluate(config, _WORKDIR.value)
        elif _MODE.value == "eval":
            metrics = train.evaluate(_WORKDIR.value, config, _STEP.value)
            print({k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()})
        else:
            print(train.sample(_WORKDIR.value, config, _STEP.value))
    except train.TrainingInterrupted as e:
        logging.warning(str(e))
        sys.exit(128 + int(e.signum))
    except USER_ERRORS as e:
        # One sentence naming what is wrong; the traceback adds nothing for a user error.
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    app.run(main)
