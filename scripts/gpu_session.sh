#!/usr/bin/env bash
# The GPU measurements the open issues still need, in one device call each:
#   bash scripts/gpu_session.sh demo    # build, GPU demo (802x550, 100 timesteps, 30k iterations)
#   bash scripts/gpu_session.sh bench   # build, cuda tests, training/render/loading benchmarks
#   bash scripts/gpu_session.sh ab [BASE_TREE]   # build, cuda tests, then training throughput of this
#       tree and of an older checkout of the Python code in BASE_TREE (same built CUDA packages),
#       the rasterizer, and a steady-state profile if time is left
#   bash scripts/gpu_session.sh raster   # build, cuda tests, the rasterizer: tile order on/off interleaved
#       (--order-ab), every backend with kernel times, and the shared workload script per setting
#       (a copy in GPU_SESSION_WORKLOAD, default .ab_scratch/rasterizer_workload.py: ../shared does
#       not travel to the device machine)
#   bash scripts/gpu_session.sh quality  # build, then training throughput and val/test quality against
#       the eager loop on the same schedule (to ~20k and ~94k splats), and the render benchmark
#   bash scripts/gpu_session.sh render   # build, cuda tests, the render benchmark on a 100-timestep
#       subject (render.py's val set: 75 views, one timestep each; test: 400 views)
# Logs and result files go to $OUT (or /tmp/gpu_session). Carry .whl (see scripts/gpu_check.sh).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
LOG=${OUT:-/tmp/gpu_session}
mkdir -p "$LOG"
export PYTHONUNBUFFERED=1
stage=${1:-bench}
skip_tests=1
case "$stage" in bench|ab|raster|render) skip_tests=0 ;; esac
skip_tests=${GPU_SESSION_SKIP_TESTS:-$skip_tests}   # 1: no cuda tests in any stage
t_start=$(date +%s)
# GPU_SESSION_TESTS: test files to run instead of every cuda test (word-split)
# shellcheck disable=SC2086
GPU_CHECK_SKIP_BENCH=1 GPU_CHECK_SKIP_TESTS=$skip_tests OUT=$LOG bash scripts/gpu_check.sh ${GPU_SESSION_TESTS:-} \
  > "$LOG/gpu_check.log" 2>&1
check_rc=$?
grep -E "passed|failed|built" "$LOG/gpu_check.log" | tail -5
if [ $check_rc -ne 0 ]; then
  echo "[gpu_session] build or cuda tests failed"; grep -E "^FAILED|^ERROR|Error" "$LOG/gpu_check.log" | head -30
  # a failed build stops here; failed tests still leave the benchmarks to run (their figures are
  # reported beside the failures)
  ls submodules/*/*/*.so >/dev/null 2>&1 || exit 1
fi
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
  ab)
    common=(--iterations 5000 --stage_iterations 300 --timesteps 40 --densify_from 500 --densify_every 500
            --densify_until 5000 --opacity_reset 10000 --evaluate ${GPU_SESSION_AB_ARGS:-})
    python3 benchmarks/bench_training.py "${common[@]}" > "$LOG/ab_new.log" 2>&1
    echo "[ab] this tree:"; grep -E "^\[bench\]|^  [a-z]" "$LOG/ab_new.log"
    base=${2:-}
    if [ -n "$base" ] && [ -d "$base" ]; then
      (cd "$base" && python3 benchmarks/bench_training.py "${common[@]}" > "$LOG/ab_base.log" 2>&1)
      echo "[ab] base tree $base:"; grep -E "^\[bench\]|^  [a-z]" "$LOG/ab_base.log"
    fi
    [ "${GPU_SESSION_EXTRAS:-1}" = 1 ] || exit 0   # 0: skip the rasterizer benchmark and the profile
    python3 benchmarks/bench_rasterizer.py --backend both ${GPU_SESSION_RASTER_ARGS:-} > "$LOG/bench_rasterizer.log" 2>&1
    tail -6 "$LOG/bench_rasterizer.log"
    left=$(( ${GPU_SESSION_BUDGET_S:-570} - ($(date +%s) - t_start) ))
    if [ "$left" -gt 60 ]; then
      timeout "$left" python3 benchmarks/profile_training.py --iterations 100 --trace /tmp/trace.json.gz \
        --trace_iterations 30 --trace_skip 150 > "$LOG/profile.log" 2>&1 \
        && python3 benchmarks/trace_summary.py /tmp/trace.json.gz --iterations 30 --rows 60 > "$LOG/trace_summary.txt" 2>&1
      head -1 "$LOG/trace_summary.txt" 2>/dev/null
    fi
    ;;
  raster)
    # the backends' timings in a process of their own: a profiled run slows the launches after it
    python3 benchmarks/bench_rasterizer.py --backend both > "$LOG/bench_rasterizer.log" 2>&1
    python3 benchmarks/bench_rasterizer.py --backend cuda --order-ab > "$LOG/bench_order_ab.log" 2>&1
    python3 - "$LOG/bench_order_ab.log" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    if line.startswith('{"tile_order_ab"'):
        ab = json.loads(line)["tile_order_ab"]
        for mode in ("on", "off"):
            r = ab[mode]
            print(f"[raster] tile order {mode}: fwd {r['fwd_ms_median']:.3f} ms (p25 {r['fwd_ms_p25']:.3f}, "
                  f"p75 {r['fwd_ms_p75']:.3f}), bwd {r['bwd_ms_median']:.3f} ms, {r['fps_nograd']} fps; "
                  f"kernels {r['kernels_us']}")
PY
    tail -8 "$LOG/bench_rasterizer.log"
    workload=${GPU_SESSION_WORKLOAD:-.ab_scratch/rasterizer_workload.py}
    if [ -f "$workload" ]; then
      for r in 1 2 3; do
        for v in 1 0; do
          GSR_TILE_ORDER=$v python3 "$workload" diff_gaussian_rasterization > "$LOG/workload_order${v}_$r.json" 2>&1
          echo "[raster] shared workload, GSR_TILE_ORDER=$v, round $r: $(tail -1 "$LOG/workload_order${v}_$r.json")"
        done
      done
    fi
    ;;
  quality)
    common=(--iterations 5000 --stage_iterations 300 --timesteps 40 --densify_from 500 --densify_every 500
            --densify_until 5000 --opacity_reset 10000 --evaluate --eager_baseline)
    python3 benchmarks/bench_training.py "${common[@]}" --json "$LOG/train_20k.json" > "$LOG/train_20k.log" 2>&1
    echo "[quality] default threshold:"; grep -E "^\[bench\]|^  [a-z]" "$LOG/train_20k.log"
    python3 benchmarks/bench_training.py "${common[@]}" --densify_grad_threshold 0.00003 \
      --json "$LOG/train_94k.json" > "$LOG/train_94k.log" 2>&1
    echo "[quality] --densify_grad_threshold 0.00003:"; grep -E "^\[bench\]" "$LOG/train_94k.log"
    python3 benchmarks/bench_render.py --iterations 3000 --timesteps 10 --frames 300 --splats 100000 \
      > "$LOG/bench_render.log" 2>&1
    grep "^\[bench\]" "$LOG/bench_render.log"
    ;;
  render)
    python3 benchmarks/bench_render.py --iterations 3000 --timesteps 100 --frames 300 --splats 100000 \
      > "$LOG/bench_render.log" 2>&1
    grep "^\[bench\]" "$LOG/bench_render.log"
    ;;
  *) echo "usage: bash scripts/gpu_session.sh demo|bench|ab [BASE_TREE]|raster|quality|render"; exit 2 ;;
esac
