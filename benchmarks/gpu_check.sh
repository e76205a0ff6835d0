#!/usr/bin/env bash
# The project's GPU check, in one command (under 8 minutes on a machine with an NVIDIA GPU):
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]        # figures -> OUT_DIR/gpu_check.json (default: $OUT or ./gpu_check)
#
# 1. the backend-parametrised tests with MINICNN_BACKEND=cupy,
# 2. one short training run on the GPU (embedded digits, 1 epoch),
# 3. the training benchmark on the GPU: minicnn-cupy vs PyTorch CUDA at batch 128 and 512 (one run).
# Needs: CuPy (pip install 'minicnn[gpu]' or cupy-cudaXXx), PyTorch with CUDA for step 3, and real
# MNIST under MINICNN_DATA_DIR for step 3 (steps 1-2 need neither). On a machine without a GPU it
# stops at the first step that needs one, saying which and why.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-./gpu_check}}"
mkdir -p "$out"
status=0
say() { printf '\n== %s\n' "$*"; }

say "device"
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L; then
  echo "gpu_check: no NVIDIA GPU here (nvidia-smi missing or found no device): nothing to check" >&2
  exit 3
fi
if ! python -c "import cupy; print('cupy', cupy.__version__, 'device', cupy.cuda.runtime.getDeviceProperties(0)['name'].decode())"; then
  echo "gpu_check: CuPy is not installed or cannot use the GPU: pip install 'minicnn[gpu]' (or the cupy-cudaXXx wheel for your CUDA)" >&2
  exit 4
fi

say "1. test suite on the cupy backend"
t0=$(date +%s)
MINICNN_BACKEND=cupy timeout 300 python -m pytest -q -x -o addopts="" -p no:cacheprovider tests/ \
  > "$out/pytest_cupy.log" 2>&1
rc=$?
tail -n 15 "$out/pytest_cupy.log"
tests_s=$(( $(date +%s) - t0 ))
[ $rc -eq 0 ] || { echo "gpu_check: the cupy test suite failed (rc $rc): $out/pytest_cupy.log"; status=1; }

say "2. a short training run on the GPU"
t0=$(date +%s)
MINICNN_BACKEND=cupy timeout 180 python -m minicnn.cli train --epochs 1 --no-progress --out "$out/train_run" \
  > "$out/train_cupy.log" 2>&1
rc_train=$?
tail -n 3 "$out/train_cupy.log"
train_s=$(( $(date +%s) - t0 ))
[ $rc_train -eq 0 ] || { echo "gpu_check: training on the GPU failed (rc $rc_train): $out/train_cupy.log"; status=1; }

say "3. minicnn-cupy vs PyTorch CUDA (training, batch 128 and 512)"
bench_rc=0
if [ -z "${MINICNN_DATA_DIR:-}" ]; then
  echo "gpu_check: MINICNN_DATA_DIR is not set: skipping the benchmark (it needs real MNIST)"; bench_rc=5
elif ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check: PyTorch with CUDA is not available: skipping the benchmark"; bench_rc=6
else
  timeout 240 python benchmarks/bench_protocol.py --contenders minicnn-cupy,torch-cuda \
    --configs train:128,train:512,infer:1000 --rounds 6 --no-end-to-end --json "$out/bench_gpu.json"
  bench_rc=$?
  [ $bench_rc -eq 0 ] || status=1
fi

python - "$out" "$rc" "$tests_s" "$rc_train" "$train_s" "$bench_rc" <<'PY'
import json, os, sys
out, rc, tests_s, rc_train, train_s, bench_rc = sys.argv[1], *map(int, sys.argv[2:])
summary = {"tests_rc": rc, "tests_s": tests_s, "train_rc": rc_train, "train_s": train_s, "bench_rc": bench_rc}
tail = open(os.path.join(out, "pytest_cupy.log")).read().strip().splitlines()[-1:] if os.path.exists(os.path.join(out, "pytest_cupy.log")) else []
summary["tests_summary"] = tail[0] if tail else ""
bench = os.path.join(out, "bench_gpu.json")
if os.path.exists(bench):
    summary["bench"] = json.load(open(bench))
json.dump(summary, open(os.path.join(out, "gpu_check.json"), "w"), indent=1)
print(f"\ngpu_check: wrote {os.path.join(out, 'gpu_check.json')}")
PY
exit $status
