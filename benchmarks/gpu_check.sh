#!/usr/bin/env bash
# The GPU check (about 5-8 minutes on one GPU, nothing downloaded): the `cuda`-marked tests for real, then
# benchmarks/gpu_check.py's measurements into OUT/gpu_check.json and OUT/gpu_check.txt.
#
#   benchmarks/gpu_check.sh [--out DIR] [--device cuda|cpu] [--quick] [--official STYLEGAN3_CHECKOUT]
#
# `--device cpu --quick` is the dry run (tests/test_gpu_check.py runs it); it skips the pytest part.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
out=gpu_check_results
device=cuda
passthrough=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --out) out=$2; shift 2 ;;
    --device) device=$2; shift 2 ;;
    --quick) passthrough+=(--quick); shift ;;
    --official) passthrough+=(--official "$2"); shift 2 ;;
    *) echo "gpu_check: unknown option $1" >&2; exit 2 ;;
  esac
done
mkdir -p "$out"
if [[ $device == cuda* ]]; then
  "$PYTHON" -m pytest -q -m "cuda or fake_cuda" tests 2>&1 | tee "$out/cuda_tests.txt"
fi
exec "$PYTHON" benchmarks/gpu_check.py --out "$out" --device "$device" "${passthrough[@]}"
