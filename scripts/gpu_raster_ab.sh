#!/usr/bin/env bash
# Rasterizer A/B in one GPU-machine call: builds this tree's CUDA packages and, concurrently, the
# rasterizer of an older tree; runs the CUDA tests; then times the standard workload with both
# builds, alternating (base, this tree, base, this tree) so that the spread between runs of one
# build shows beside the difference between builds; last, this tree's per-kernel times, the host
# time of the call's pieces and the timeline of one eager forward.
#   bash scripts/gpu_raster_ab.sh [BASE]     # BASE: a folder holding submodules/diff-gaussian-rasterization
# (GPU_AB_ROUNDS, GPU_AB_VARIANTS: see below)
# GPU_AB_TESTS: test files to run (default tests/test_rasterizer_cuda.py; "none" skips them).
# Logs go to $OUT (or /tmp/gpu_raster_ab). Carry .whl (see scripts/gpu_check.sh).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
LOG=${OUT:-/tmp/gpu_raster_ab}/logs
mkdir -p "$LOG"
export PYTHONUNBUFFERED=1
BASE=${1:-}
t_start=$(date +%s)

base_build=""
if [ -n "$BASE" ] && [ -d "$BASE/submodules/diff-gaussian-rasterization" ]; then
  base_build=$(cd "$BASE/submodules/diff-gaussian-rasterization" && pwd)
  (cd "$base_build" && TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=8 GA_SKIP_CPU_EXT=1 python3 setup.py -q build_ext --inplace \
     > "$LOG/build_base.log" 2>&1 && echo "[ab] base rasterizer built") &
  base_pid=$!
fi
tests=${GPU_AB_TESTS:-tests/test_rasterizer_cuda.py}
if [ "$tests" = none ]; then skip=1; tests=""; else skip=0; fi
# shellcheck disable=SC2086
GPU_CHECK_SKIP_BENCH=1 GPU_CHECK_SKIP_TESTS=$skip OUT=$LOG bash scripts/gpu_check.sh $tests > "$LOG/gpu_check.log" 2>&1
echo "[ab] build + tests rc=$? after $(( $(date +%s) - t_start )) s"
grep -E "passed|failed|built|FAILED|Error" "$LOG/gpu_check.log" | tail -12
if [ -n "$base_build" ]; then wait "$base_pid" || { echo "[ab] base build failed"; tail -20 "$LOG/build_base.log"; base_build=""; }; fi

for d in "$ROOT"/submodules/*/; do [ -f "$d/setup.py" ] && PYTHONPATH=${d%/}:${PYTHONPATH:-}; done
[ -d /tmp/site ] && PYTHONPATH=/tmp/site:$PYTHONPATH
export PYTHONPATH=$ROOT:$PYTHONPATH
new_path=$PYTHONPATH
base_path=${base_build:+$base_build:}$PYTHONPATH

bench() {  # bench NAME PYTHONPATH ARGS...
  local name=$1 path=$2; shift 2
  PYTHONPATH=$path python3 benchmarks/bench_rasterizer.py "$@" > "$LOG/bench_$name.log" 2>&1
  echo "[ab] $name: $(grep -E '^(cuda|cuda_fixed|cuda_graph) ' "$LOG/bench_$name.log" | tr -s ' ' | paste -sd ';')"
}
# GPU_AB_ROUNDS fresh processes of each build, alternating (the exact-size eager call only);
# GPU_AB_VARIANTS: extra "NAME:VAR=VALUE" runs of this tree with an environment variable set
rounds=${GPU_AB_ROUNDS:-3}
for r in $(seq 1 "$rounds"); do
  [ -n "$base_build" ] && bench "base$r" "$base_path" --backend cuda
  bench "new$r" "$new_path" --backend cuda
  for v in ${GPU_AB_VARIANTS:-}; do
    (export "${v#*:}"; bench "${v%%:*}$r" "$new_path" --backend cuda)
  done
done
# GPU_AB_WORKLOAD: a copy of the shared standard workload script (shared/bench/rasterizer_workload.py),
# run GPU_AB_ROUNDS times per build, alternating, in fresh processes
if [ -n "${GPU_AB_WORKLOAD:-}" ] && [ -f "$GPU_AB_WORKLOAD" ]; then
  for r in $(seq 1 "$rounds"); do
    for b in base new; do
      [ "$b" = base ] && { [ -n "$base_build" ] || continue; path=$base_path; } || path=$new_path
      PYTHONPATH=$path python3 "$GPU_AB_WORKLOAD" diff_gaussian_rasterization > "$LOG/workload_$b$r.log" 2>&1
      echo "[ab] workload $b$r: $(grep -o '"fwd_ms_median[^}]*render_fps_nograd": [0-9.]*' "$LOG/workload_$b$r.log")"
    done
  done
fi
bench newall "$new_path" --backend both --profile --cpu-breakdown --host-costs --graph-ab
grep -h '"kernels_us"' "$LOG/bench_newall.log" | head -1 | cut -c1-2500
grep -h -E '"(host_us|host_costs_us|depth_graph_ab)"' "$LOG/bench_newall.log"
echo "[ab] timeline new: $(PYTHONPATH=$new_path python3 benchmarks/profile_rasterizer_step.py --timeline \
  > "$LOG/timeline_new.txt" 2>&1; grep '^{' "$LOG/timeline_new.txt")"
# GPU_AB_TRAIN_BASE: an older full tree; then the training benchmark of this tree and of that one
# (its Python code with the base rasterizer build and this tree's other packages)
# (GPU_AB_TRAIN_NEW=1: this tree's training benchmark alone)
train=(--iterations 5000 --stage_iterations 300 --timesteps 40 --densify_from 500 --densify_every 500
       --densify_until 5000 --opacity_reset 10000 --evaluate)
if [ -n "${GPU_AB_TRAIN_BASE:-}" ] || [ "${GPU_AB_TRAIN_NEW:-0}" = 1 ]; then
  PYTHONPATH=$new_path python3 benchmarks/bench_training.py "${train[@]}" > "$LOG/train_new.log" 2>&1
  echo "[ab] training, this tree:"; grep -E "^\[bench\]" "$LOG/train_new.log"
fi
if [ -n "${GPU_AB_TRAIN_BASE:-}" ] && [ -d "$GPU_AB_TRAIN_BASE" ]; then
  train_base=$(cd "$GPU_AB_TRAIN_BASE" && pwd)
  (cd "$train_base" && PYTHONPATH=${base_build:+$base_build:}$train_base:$new_path \
     python3 benchmarks/bench_training.py "${train[@]}" > "$LOG/train_base.log" 2>&1)
  echo "[ab] training, base tree:"; grep -E "^\[bench\]" "$LOG/train_base.log"
fi
# GPU_AB_RENDER=1: the viewer engine's render benchmark (100k splats)
if [ "${GPU_AB_RENDER:-0}" = 1 ]; then
  PYTHONPATH=$new_path python3 benchmarks/bench_render.py --iterations 3000 --timesteps 10 --frames 300 \
    --splats 100000 > "$LOG/bench_render.log" 2>&1
  echo "[ab] render:"; grep "^\[bench\]" "$LOG/bench_render.log"
fi
tar czf "$LOG/../ab_logs.tgz" -C "$LOG" . 2>/dev/null && echo "[ab] logs in ab_logs.tgz"
echo "[ab] done after $(( $(date +%s) - t_start )) s"
