#!/usr/bin/env bash
# The GPU measurements the open issues still need, in one device call each:
#   bash scripts/gpu_session.sh demo    # build, GPU demo (802x550, 100 timesteps, 30k iterations)
#   bash scripts/gpu_session.sh bench   # build, cuda tests, training/render/loading benchmarks
# Logs and result files go to $OUT (or /tmp/gpu_session). Carry .whl (see scripts/gpu_check.sh).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
LOG=${OUT:-/tmp/gpu_session}
mkdir -p "$LOG"
export PYTHONUNBUFFERED=1
stage=${1:-bench}
skip_tests=1
[ "$stage" = bench ] && skip_tests=0
GPU_CHECK_SKIP_BENCH=1 GPU_CHECK_SKIP_TESTS=$skip_tests OUT=$LOG bash scripts/gpu_check.sh > "$LOG/gpu_check.log" 2>&1 \
  || { echo "[gpu_session] build or cuda tests failed"; tail -40 "$LOG/gpu_check.log"; exit 1; }
grep -E "passed|failed|built" "$LOG/gpu_check.log" | tail -5
for d in "$ROOT"/submodules/*/; do [ -f "$d/setup.py" ] && PYTHONPATH=${d%/}:${PYTHONPATH:-}; done
export PYTHONPATH=/tmp/site:$ROOT:${PYTHONPATH:-}
case "$stage" in
  demo)
    t0=$(date +%s)
    GA_DEMO_SKIP_SETUP=1 GA_PYTHON=python3 bash scripts/demo.sh --gpu --out /tmp/demo_gpu > "$LOG/demo.log" 2>&1
    echo "[gpu_session] demo rc=$? in $(( $(date +%s) - t0 )) s"
    grep -E "Evaluating|ours_|finished|splats\]" "$LOG/demo.log" | grep -v "it/s\]" | tail -12
    cp /tmp/demo_gpu/avatar_*/results*.json "$LOG/" 2>/dev/null
    ;;
  bench)
    # the demo's schedule through its densification phase (15k iterations), then 300 staged ones
    python3 benchmarks/bench_training.py --iterations 15000 --stage_iterations 300 --timesteps 100 \
      --densify_from 500 --densify_every 500 --densify_until 15000 --opacity_reset 10000 \
      --json "$LOG/train_bench.json" > "$LOG/bench_training.log" 2>&1
    grep -E "^\[bench\]|^  [a-z]" "$LOG/bench_training.log"
    python3 benchmarks/bench_render.py --iterations 3000 --timesteps 10 --frames 300 --splats 100000 \
      > "$LOG/bench_render.log" 2>&1
    grep "^\[bench\]" "$LOG/bench_render.log"
    python3 benchmarks/bench_loading.py --timesteps 100 > "$LOG/bench_loading.log" 2>&1
    tail -2 "$LOG/bench_loading.log"
    ;;
  *) echo "usage: bash scripts/gpu_session.sh demo|bench"; exit 2 ;;
esac
