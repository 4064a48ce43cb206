#!/usr/bin/env bash
# Start one training run on this machine (all local devices, data-parallel), resuming if WORKDIR holds
# a checkpoint. Usage: launch/run_local.sh CONFIG WORKDIR [--config.field=value ...]
#   launch/run_local.sh configs/meg.py:swissroll runs/meg_swissroll --config.train.num_steps=20000
# Several processes: launch/run_multiprocess.sh (one machine), run_gpu.sh (GPU hosts), tpu_pod.sh (Cloud TPU).
set -euo pipefail
if [[ $# -lt 2 ]]; then
  echo "usage: $0 CONFIG WORKDIR [--config.field=value ...]" >&2
  exit 2
fi
config="$1"
workdir="$2"
shift 2
cd "$(dirname "$0")/.."
exec python -m ebm_jax.main --config="${config}" --workdir="${workdir}" "$@"
