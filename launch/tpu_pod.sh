#!/usr/bin/env bash
# Train on a Cloud TPU VM (a pod slice or a single host): create the TPU VM unless it exists, copy this
# checkout to every worker and install it there, then start the same command on all workers at once.
# Each worker runs one JAX process; --distributed makes them find each other through the TPU metadata.
#
# Usage: launch/tpu_pod.sh --name NAME --zone ZONE [--accelerator TYPE] [--version RUNTIME]
#                          [--project PROJECT] [--spot] [--data_dir gs://...] [--skip_setup] [--detach]
#                          [--dry-run [--assume-state STATE]] CONFIG WORKDIR [FLAGS...]
#   --name NAME          TPU VM name: created if it does not exist, reused if it is READY, deleted and
#                        created again if it was preempted (a preempted Spot TPU cannot be restarted)
#   --zone ZONE          its zone, e.g. us-central2-b
#   --accelerator TYPE   accelerator type when creating (default v4-32: 4 workers x 4 chips), e.g.
#                        v5litepod-16 (v5e), v5p-16, v6e-16
#   --version RUNTIME    TPU software version when creating (default by generation: v4 tpu-ubuntu2204-base,
#                        v5e v2-alpha-tpuv5-lite, v5p v2-alpha-tpuv5, v6e v2-alpha-tpuv6e)
#   --project PROJECT    gcloud project (default: gcloud's configured project)
#   --spot               create a Spot VM: cheaper, and preemptible. A preemption sends SIGTERM; every
#                        worker saves the same step and exits with status 143 (or the VM is gone); run the
#                        script again: the preempted VM is recreated and set up, and training resumes from
#                        the latest checkpoint in WORKDIR.
#   --data_dir DIR       data folder, usually on a bucket (gs://...): passed to every worker as
#                        --config.data.data_dir=DIR and as TFDS_DATA_DIR
#   --skip_setup         do not copy and install the package (it is already on the workers)
#   --detach             run in the background on the workers (log in ~/ebm_jax.log on each), so that
#                        closing this terminal does not stop the run
#   --dry-run            print the plan, every command, without running any
#   --assume-state STATE with --dry-run: plan as if describe reported STATE (READY, PREEMPTED, or NONE for
#                        no such VM) instead of asking gcloud
#   FLAGS                passed to every worker: --config.field=value, --heartbeat_timeout=S, ...
# WORKDIR must be a bucket path (gs://BUCKET/run): all workers write one checkpoint there together.
# Example:
#   launch/tpu_pod.sh --name ebm-v4 --zone us-central2-b --accelerator v4-32 --data_dir gs://my-bucket/mnist \
#       configs/ebm_bb.py:mnist gs://my-bucket/runs/ebm_bb_mnist
set -euo pipefail

usage() {
  echo "usage: $0 --name NAME --zone ZONE [--accelerator TYPE] [--version RUNTIME] [--project PROJECT] [--spot]" \
       "[--data_dir DIR] [--skip_setup] [--detach] [--dry-run] CONFIG WORKDIR [FLAGS...]" >&2
  exit 2
}
need_value() {
  [[ -n "${2:-}" && "${2:-}" != --* ]] || { echo "$0: $1 needs a value" >&2; exit 2; }
}

name=""
zone=""
accelerator="v4-32"
version=""
project=""
spot=0
data_dir=""
setup=1
detach=0
dry_run=0
assume_state=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --name) need_value "$1" "${2:-}"; name="$2"; shift 2 ;;
    --zone) need_value "$1" "${2:-}"; zone="$2"; shift 2 ;;
    --accelerator) need_value "$1" "${2:-}"; accelerator="$2"; shift 2 ;;
    --version) need_value "$1" "${2:-}"; version="$2"; shift 2 ;;
    --project) need_value "$1" "${2:-}"; project="$2"; shift 2 ;;
    --spot) spot=1; shift ;;
    --data_dir) need_value "$1" "${2:-}"; data_dir="$2"; shift 2 ;;
    --skip_setup) setup=0; shift ;;
    --detach) detach=1; shift ;;
    --dry-run) dry_run=1; shift ;;
    --assume-state) need_value "$1" "${2:-}"; assume_state="$2"; shift 2 ;;
    -h|--help) usage ;;
    --) shift; break ;;
    -*) echo "$0: unknown option $1" >&2; usage ;;
    *) break ;;
  esac
done
[[ $# -ge 2 ]] || usage
[[ -n "${name}" && -n "${zone}" ]] || { echo "$0: --name and --zone are required" >&2; usage; }
config="$1"
workdir="$2"
shift 2
if [[ "${workdir}" != gs://* ]]; then
  echo "$0: WORKDIR '${workdir}' must be a bucket path (gs://BUCKET/...): every worker writes the same checkpoint" >&2
  exit 2
fi

if [[ -n "${assume_state}" && "${dry_run}" -eq 0 ]]; then
  echo "$0: --assume-state only plans (--dry-run); without it the state comes from gcloud" >&2
  exit 2
fi
if [[ -z "${version}" ]]; then
  # the runtime (software version) each TPU generation boots
  case "${accelerator}" in
    v4-*) version="tpu-ubuntu2204-base" ;;
    v5litepod-*|v5e-*) version="v2-alpha-tpuv5-lite" ;;
    v5p-*) version="v2-alpha-tpuv5" ;;
    v6e-*) version="v2-alpha-tpuv6e" ;;
    *) echo "$0: no default runtime for accelerator '${accelerator}'; give --version" \
            "(v4-*, v5litepod-*, v5p-* and v6e-* have defaults)" >&2; exit 2 ;;
  esac
fi

repo="$(cd "$(dirname "$0")/.." && pwd)"
where=(--zone="${zone}")
if [[ -n "${project}" ]]; then
  where+=(--project="${project}")
fi

quote() {
  # one shell word: as it is when safe, else in single quotes (easier to read than printf %q)
  if [[ "$1" =~ ^[A-Za-z0-9_./:=@%+,~-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

run() {
  # prints the command in --dry-run mode, runs it otherwise
  if [[ "${dry_run}" -eq 1 ]]; then
    printf '+'
    for word in "$@"; do
      printf ' %s' "$(quote "${word}")"
    done
    printf '\n'
  else
    "$@"
  fi
}

# 1. the TPU VM
create=(gcloud compute tpus tpu-vm create "${name}" "${where[@]}" --accelerator-type="${accelerator}"
        --version="${version}")
if [[ "${spot}" -eq 1 ]]; then
  create+=(--spot)
fi
# its state: READY (reuse), PREEMPTED or TERMINATED (delete, create again), or none (create)
if [[ -n "${assume_state}" ]]; then
  state="${assume_state}"
  [[ "${state}" != NONE ]] || state=""
else
  state="$(gcloud compute tpus tpu-vm describe "${name}" "${where[@]}" --format='value(state)' 2>/dev/null || true)"
fi
[[ "${dry_run}" -eq 0 ]] || echo "# 1. the TPU VM ${name} (${accelerator}, runtime ${version}): describe says '${state:-no such VM}'"
case "${state}" in
  READY)
    echo "tpu_pod: reusing the TPU VM ${name}" >&2 ;;
  PREEMPTED|TERMINATED)
    echo "tpu_pod: the TPU VM ${name} was ${state,,}: deleting it and creating it again" >&2
    run gcloud compute tpus tpu-vm delete "${name}" "${where[@]}" --quiet
    run "${create[@]}"
    setup=1 ;;   # a new VM has nothing installed
  "")
    echo "tpu_pod: creating the TPU VM ${name} (${accelerator})" >&2
    run "${create[@]}"
    setup=1 ;;
  *)
    echo "$0: the TPU VM ${name} is ${state}; wait until it is READY (or delete it) and run this again" >&2
    exit 2 ;;
esac

ssh_all=(gcloud compute tpus tpu-vm ssh "${name}" "${where[@]}" --worker=all)

# 2. this checkout on every worker, installed with jax's TPU extra and the bucket libraries
if [[ "${setup}" -eq 1 ]]; then
  [[ "${dry_run}" -eq 0 ]] || echo "# 2. copy this checkout to every worker and install it"
  tarball="${TMPDIR:-/tmp}/ebm_jax_src.tar.gz"
  run tar -czf "${tarball}" --exclude=.git --exclude=runs --exclude=__pycache__ --exclude='*.egg-info' \
      -C "${repo}" .
  run gcloud compute tpus tpu-vm scp "${tarball}" "${name}:ebm_jax_src.tar.gz" "${where[@]}" --worker=all
  run "${ssh_all[@]}" --command="rm -rf ~/ebm_jax && mkdir -p ~/ebm_jax && tar -xzf ~/ebm_jax_src.tar.gz -C ~/ebm_jax && cd ~/ebm_jax && python3 -m pip install -q -e '.[tpu,gcs]'"
fi

# 3. the same command on every worker; --distributed: JAX reads the coordinator, the process count
#    and this worker's id from the TPU metadata. It resumes from the latest checkpoint in WORKDIR.
train=(python3 -m ebm_jax.main --distributed --config="${config}" --workdir="${workdir}")
if [[ -n "${data_dir}" ]]; then
  train+=(--config.data.data_dir="${data_dir}")
fi
train+=("$@")
remote="cd ~/ebm_jax &&"
if [[ -n "${data_dir}" ]]; then
  remote+=" TFDS_DATA_DIR=$(quote "${data_dir}")"
fi
for word in "${train[@]}"; do
  remote+=" $(quote "${word}")"
done
if [[ "${detach}" -eq 1 ]]; then
  remote="nohup bash -c $(quote "${remote}") > ~/ebm_jax.log 2>&1 < /dev/null &"
fi
[[ "${dry_run}" -eq 0 ]] || echo "# 3. train on every worker"
run "${ssh_all[@]}" --command="${remote}"
