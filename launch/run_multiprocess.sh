#!/usr/bin/env bash
# Start one run as N cooperating processes on this machine (JAX's multi-process runtime, as on a pod).
# By default they connect over 127.0.0.1: to try multi-host code on one machine, and what the tests
# use. With -a/-t/-f it starts this machine's share of a run that spans several machines (see
# launch/run_gpu.sh). Resumes if WORKDIR holds a checkpoint.
#
# Usage: launch/run_multiprocess.sh [-n N] [-d DEVICES] [-G] [-a HOST:PORT] [-t TOTAL] [-f FIRST]
#                                   [-w GRACE] CONFIG WORKDIR [FLAGS...]
#   -n N          processes to start on this machine (default 2)
#   -d DEVICES    CPU devices per process: sets JAX_PLATFORMS=cpu and
#                 XLA_FLAGS=--xla_force_host_platform_device_count=DEVICES (default: devices untouched)
#   -G            one GPU per process: local process i uses GPU i (JAX_LOCAL_DEVICE_IDS=i)
#   -a HOST:PORT  coordinator address, the machine of process 0 (default 127.0.0.1 and a free port)
#   -t TOTAL      processes in the whole run, over every machine (default N)
#   -f FIRST      process id of this machine's first process (default 0)
#   -w GRACE      seconds to wait for the other processes after one has failed before killing them
#                 (default 120; they normally stop by themselves within --heartbeat_timeout)
#   FLAGS         passed to every process: --config.field=value, --heartbeat_timeout=S, --mode=eval, ...
# Example: launch/run_multiprocess.sh -n 2 -d 4 configs/meg.py runs/meg2x4 --config.train.num_steps=2000
#
# Output lines are prefixed with [I], I the process id. SIGTERM or Ctrl-C is passed to every process as
# SIGTERM: they agree on one step, save it and exit with status 143. The exit status is the first
# non-zero status in process order, or 0.
set -euo pipefail

usage() {
  echo "usage: $0 [-n N] [-d DEVICES] [-G] [-a HOST:PORT] [-t TOTAL] [-f FIRST] [-w GRACE] CONFIG WORKDIR [FLAGS...]" >&2
  exit 2
}
need_number() {
  [[ "$2" =~ ^[0-9]+$ ]] || { echo "$0: $1 '$2' is not a whole number" >&2; exit 2; }
}

num=2
devices=""
gpu_per_process=0
address=""
total=""
first=0
grace=120
while getopts "n:d:Ga:t:f:w:h" opt; do
  case "${opt}" in
    n) need_number -n "${OPTARG}"; num="${OPTARG}" ;;
    d) need_number -d "${OPTARG}"; devices="${OPTARG}" ;;
    G) gpu_per_process=1 ;;
    a) address="${OPTARG}" ;;
    t) need_number -t "${OPTARG}"; total="${OPTARG}" ;;
    f) need_number -f "${OPTARG}"; first="${OPTARG}" ;;
    w) need_number -w "${OPTARG}"; grace="${OPTARG}" ;;
    *) usage ;;
  esac
done
shift $((OPTIND - 1))
[[ $# -ge 2 ]] || usage
total="${total:-${num}}"
if [[ "${num}" -lt 1 || $((first + num)) -gt "${total}" ]]; then
  echo "$0: processes ${first}..$((first + num - 1)) do not fit in a run of -t ${total} processes" >&2
  exit 2
fi
config="$1"
workdir="$2"
shift 2
python="${PYTHON:-python}"

cd "$(dirname "$0")/.."
if [[ -z "${address}" ]]; then
  if [[ "${num}" -ne "${total}" ]]; then
    echo "$0: a run over several machines needs -a HOST:PORT, the address of process 0's machine" >&2
    exit 2
  fi
  # a port free now; process 0 binds it a moment later
  address="127.0.0.1:$("${python}" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
fi
if [[ -n "${devices}" ]]; then
  export JAX_PLATFORMS=cpu
  export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=${devices}"
fi

pids=()
for ((i = 0; i < num; i++)); do
  id=$((first + i))
  if [[ "${gpu_per_process}" -eq 1 ]]; then
    export JAX_LOCAL_DEVICE_IDS="${i}"
  fi
  # exec: the recorded pid is the Python process itself, so signals reach it directly
  (exec "${python}" -m ebm_jax.main --config="${config}" --workdir="${workdir}" \
      --coordinator_address="${address}" --num_processes="${total}" --process_id="${id}" "$@") \
    > >(awk -v prefix="[${id}] " '{ print prefix $0; fflush() }') 2>&1 &
  pids+=("$!")
  echo "run_multiprocess: process ${id} of ${total} has pid $!, coordinator ${address}" >&2
done

forward() {
  echo "run_multiprocess: passing SIGTERM to every process (they save the same step and exit)" >&2
  kill -TERM "${pids[@]}" 2>/dev/null || true
}
trap forward INT TERM

statuses=()
remaining="${num}"
failed_at=""
while [[ "${remaining}" -gt 0 ]]; do
  for ((i = 0; i < num; i++)); do
    [[ -z "${statuses[i]:-}" ]] || continue
    if ! kill -0 "${pids[i]}" 2>/dev/null; then
      status=0
      wait "${pids[i]}" || status=$?
      statuses[i]="${status}"
      remaining=$((remaining - 1))
      if [[ "${status}" -ne 0 ]]; then
        echo "run_multiprocess: process $((first + i)) (pid ${pids[i]}) exited with status ${status}" >&2
        [[ -n "${failed_at}" ]] || failed_at="${SECONDS}"
      fi
    fi
  done
  if [[ -n "${failed_at}" && "${remaining}" -gt 0 && $((SECONDS - failed_at)) -ge "${grace}" ]]; then
    echo "run_multiprocess: killing the processes still running ${grace} s after a failure" >&2
    for ((i = 0; i < num; i++)); do
      [[ -n "${statuses[i]:-}" ]] || kill -KILL "${pids[i]}" 2>/dev/null || true
    done
    failed_at="${SECONDS}"
  fi
  [[ "${remaining}" -eq 0 ]] || sleep 0.2
done
wait  # the output filters

for ((i = 0; i < num; i++)); do
  if [[ "${statuses[i]}" -ne 0 ]]; then
    exit "${statuses[i]}"
  fi
done
