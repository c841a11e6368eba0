#!/usr/bin/env bash
# What one GPU-machine call runs: build the CUDA extensions of the submodules in place, run the
# CUDA tests and the rasterizer / kNN benchmarks.  Logs go to $OUT (or /tmp/gpu_check).
#   bash scripts/gpu_check.sh                 # build + all `-m cuda` tests + benchmarks
#   bash scripts/gpu_check.sh TESTS...        # build + only these test files + benchmarks
#   GPU_CHECK_SKIP_TESTS=1 / GPU_CHECK_SKIP_BENCH=1 skip a stage; BENCH_ARGS are passed to bench_rasterizer.py
# Wheels of packages the machine lacks may be carried in .whl/ (installed into /tmp/site).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
LOG=${OUT:-/tmp/gpu_check}
mkdir -p "$LOG"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export MAX_JOBS=${MAX_JOBS:-16}

if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "[gpu_check] wheel install failed"; exit 1; }
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | tee "$LOG/gpu.txt"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$LOG/gpu.txt"

# The packages build concurrently (the machine has many cores).
pids=()
names=()
for d in submodules/*/; do
  d=${d%/}
  [ -f "$d/setup.py" ] || continue
  name=$(basename "$d")
  (t0=$(date +%s); cd "$d" && "$PY" setup.py -q build_ext --inplace >"$LOG/build_$name.log" 2>&1 \
     && echo "[gpu_check] built $name in $(( $(date +%s) - t0 )) s") &
  pids+=($!)
  names+=("$name")
done
for i in "${!pids[@]}"; do
  if ! wait "${pids[$i]}"; then
    echo "[gpu_check] build of ${names[$i]} FAILED:"; grep -E "error|Error" "$LOG/build_${names[$i]}.log" | head -40
    exit 1
  fi
done
for d in "$ROOT"/submodules/*/; do [ -f "$d/setup.py" ] && PYTHONPATH=${d%/}:${PYTHONPATH:-}; done
export PYTHONPATH=$ROOT:${PYTHONPATH:-}

status=0
if [ "${GPU_CHECK_SKIP_TESTS:-0}" != 1 ]; then
  targets=("$@")
  [ ${#targets[@]} -eq 0 ] && targets=(tests)
  "$PY" -m pytest -m cuda -q -p no:cacheprovider "${targets[@]}" 2>&1 | tee "$LOG/pytest_cuda.log" | tail -40
  status=${PIPESTATUS[0]}
fi
if [ "${GPU_CHECK_SKIP_BENCH:-0}" != 1 ]; then
  "$PY" benchmarks/bench_knn.py 2>&1 | tee "$LOG/bench_knn.log"
  # shellcheck disable=SC2086
  "$PY" benchmarks/bench_rasterizer.py ${BENCH_ARGS:---backend all --profile} 2>&1 | tee "$LOG/bench_rasterizer.log"
fi
exit $status
