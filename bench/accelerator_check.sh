#!/usr/bin/env bash
# On a machine with an NVIDIA GPU: install jax's CUDA 12 wheels with the project, run the tests that touch
# the compute paths (native convolutions, lax.scan critic loops, bfloat16, every method's update, the
# trace counts), then bench/speed.py and bench/scaling.py, and write their output and JSON to OUT
# (default bench/results/gpu). About 10 minutes on one GPU.
#
# Usage: bench/accelerator_check.sh [OUT]
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-bench/results/gpu}"
mkdir -p "${out}"
python -m pip install -q -e ".[cuda12,test]"
python - <<'PY' | tee "${out}/devices.txt"
import jax
print(jax.__version__, jax.default_backend(), jax.devices())
assert jax.default_backend() == "gpu", "no GPU backend: install the CUDA extra on a machine with a GPU"
PY
# the compute paths on the accelerator: model.kernels native vs cpu, every method's paper update, no
# retracing, bfloat16 image networks, the singular-value estimators
timeout 300 python -m pytest -q -x -p no:cacheprovider tests/test_kernels.py tests/test_gradients.py \
    tests/test_performance.py tests/test_singular_values.py 2>&1 | tail -20 | tee "${out}/tests.txt"
timeout 240 python bench/speed.py --sizes toy mnist_mlp --min_seconds 1 --json "${out}/speed_gpu.json" \
    2>&1 | tee "${out}/speed.txt"
# one GPU: per-device FLOPs at 1 device (a machine with several GPUs measures every count it has)
timeout 120 python bench/scaling.py --sizes toy mnist_mlp --json "${out}/scaling_gpu.json" 2>&1 | tee "${out}/scaling.txt"
echo "wrote ${out}"
