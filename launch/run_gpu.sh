#!/usr/bin/env bash
# Train on the GPUs of one host, or of several hosts together, resuming if WORKDIR holds a checkpoint.
#
# Usage: launch/run_gpu.sh [--gpus G] [--process_per_gpu] [--hosts H --host_id I --coordinator HOST:PORT]
#                          [--dry-run] CONFIG WORKDIR [FLAGS...]
#   --gpus G           GPUs on this host (default: counted with nvidia-smi)
#   --process_per_gpu  one process per GPU instead of one process for all of this host's GPUs
#   --hosts H          hosts taking part (default 1); run this script on every one of them with the same
#                      flags except --host_id
#   --host_id I        this host's number, 0..H-1; host 0 runs the coordinator
#   --coordinator HOST:PORT  an address of host 0 that every host can reach (required when H > 1)
#   --dry-run          print the command instead of running it
#   FLAGS              passed to every process (--config.field=value, --heartbeat_timeout=S, ...)
# WORKDIR must be shared by every host (a network file system or a bucket, gs://...).
#
# One host, one process (the default): jax sees every GPU and the run is data-parallel over them; no
# multi-process runtime is needed. Otherwise this starts launch/run_multiprocess.sh on this host with
# the right process ids. Needs jax with CUDA: pip install -e ".[cuda12]".
#   launch/run_gpu.sh configs/meg.py runs/meg
#   host 0: launch/run_gpu.sh --hosts 2 --host_id 0 --coordinator 10.0.0.1:8476 configs/meg.py /nfs/runs/meg
#   host 1: launch/run_gpu.sh --hosts 2 --host_id 1 --coordinator 10.0.0.1:8476 configs/meg.py /nfs/runs/meg
set -euo pipefail

usage() {
  echo "usage: $0 [--gpus G] [--process_per_gpu] [--hosts H --host_id I --coordinator HOST:PORT] [--dry-run] CONFIG WORKDIR [FLAGS...]" >&2
  exit 2
}
need_number() {
  [[ "$2" =~ ^[0-9]+$ ]] || { echo "$0: $1 '$2' is not a whole number" >&2; exit 2; }
}

gpus=""
per_gpu=0
hosts=1
host_id=0
coordinator=""
dry_run=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --gpus) need_number --gpus "${2:-}"; gpus="$2"; shift 2 ;;
    --process_per_gpu) per_gpu=1; shift ;;
    --hosts) need_number --hosts "${2:-}"; hosts="$2"; shift 2 ;;
    --host_id) need_number --host_id "${2:-}"; host_id="$2"; shift 2 ;;
    --coordinator) coordinator="${2:-}"; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) usage ;;
    --) shift; break ;;
    -*) echo "$0: unknown option $1" >&2; usage ;;
    *) break ;;
  esac
done
[[ $# -ge 2 ]] || usage
config="$1"
workdir="$2"
shift 2

if [[ -z "${gpus}" ]]; then
  if ! command -v nvidia-smi > /dev/null; then
    echo "$0: nvidia-smi not found; give the number of GPUs with --gpus" >&2
    exit 2
  fi
  gpus="$(nvidia-smi -L | grep -c '^GPU')"
fi
if [[ "${gpus}" -lt 1 ]]; then
  echo "$0: no GPU on this host" >&2
  exit 2
fi
if [[ "${hosts}" -lt 1 || "${host_id}" -ge "${hosts}" ]]; then
  echo "$0: --host_id ${host_id} must be in 0..$((hosts - 1))" >&2
  exit 2
fi
if [[ "${hosts}" -gt 1 && -z "${coordinator}" ]]; then
  echo "$0: a run over ${hosts} hosts needs --coordinator HOST:PORT, an address of host 0" >&2
  exit 2
fi

here="$(cd "$(dirname "$0")" && pwd)"
if [[ "${hosts}" -eq 1 && "${per_gpu}" -eq 0 ]]; then
  cmd=("${here}/run_local.sh" "${config}" "${workdir}" "$@")
else
  per_host=1
  opts=()
  if [[ "${per_gpu}" -eq 1 ]]; then
    per_host="${gpus}"
    opts+=(-G)
  fi
  opts+=(-n "${per_host}" -t $((hosts * per_host)) -f $((host_id * per_host)))
  if [[ -n "${coordinator}" ]]; then
    opts+=(-a "${coordinator}")
  fi
  cmd=("${here}/run_multiprocess.sh" "${opts[@]}" "${config}" "${workdir}" "$@")
fi

echo "run_gpu: ${gpus} GPU(s) on host ${host_id} of ${hosts}" >&2
if [[ "${dry_run}" -eq 1 ]]; then
  printf '%q ' "${cmd[@]}"
  echo
  exit 0
fi
exec "${cmd[@]}"
