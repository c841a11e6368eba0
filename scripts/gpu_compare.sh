#!/usr/bin/env bash
# One device call of the side-by-side comparison with the original (benchmarks/compare_original.py):
# build ours and the original, rig FLAME's template mesh, generate the subject, train and score.
#   bash scripts/gpu_compare.sh [STAGE...]      stages: build subject compare (default: all three)
# Needs, in the repository (git-ignored, carried to the device machine):
#   .original/        the original, assembled by ../shared/original/assemble.sh (copied to /tmp/original
#                     and built there)
#   .whl/             wheels of roma and plyfile (the device image lacks them)
# Honoured: GPU_COMPARE_ARGS (extra compare_original.py flags, e.g. "--variant x='--flag'"),
#   GPU_COMPARE_SEEDS (default "0 1 2 3 4"), GPU_COMPARE_SCHEDULE (default the 6k schedule),
#   GPU_COMPARE_PARALLEL (runs at a time per side, default 5), GPU_COMPARE_BUDGET_S (default 540),
#   GPU_COMPARE_RUN (the output folder's name under /tmp, default cmp), SUBJECT_ARGS.
# Results (compare.md, compare.json, logs.tgz) go to $OUT; builds and data stay in /tmp for a
# chained call on the same (still warm) machine.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
LOG=${OUT:-/tmp/gpu_compare}
mkdir -p "$LOG"
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16}
t_start=$(date +%s)
stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(build subject compare)
has() { local s; for s in "${stages[@]}"; do [ "$s" = "$1" ] && return 0; done; return 1; }
RIG=/tmp/flame_rig SUBJ=/tmp/subject_802 RUN=/tmp/${GPU_COMPARE_RUN:-cmp}
ORIG=/tmp/original   # built outside the carried tree: a carried path is replaced at every call
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "[gpu_compare] wheel install failed"; exit 1; }
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
if has build; then
  t0=$(date +%s)
  p1=""
  if [ "${GPU_COMPARE_SKIP_OURS_BUILD:-0}" != 1 ]; then
    (GPU_CHECK_SKIP_BENCH=1 GPU_CHECK_SKIP_TESTS=1 OUT=$LOG bash scripts/gpu_check.sh > "$LOG/build_ours.log" 2>&1) &
    p1=$!
  fi
  rm -rf $ORIG && cp -r .original $ORIG
  pids=()
  for pkg in diff-gaussian-rasterization simple-knn; do
    (cd $ORIG/submodules/$pkg && python3 setup.py -q build_ext --inplace > "$LOG/build_original_$pkg.log" 2>&1) &
    pids+=($!)
  done
  ok=1
  [ -z "$p1" ] || wait $p1 || { echo "[gpu_compare] our build failed"; tail -20 "$LOG/build_ours.log"; ok=0; }
  for p in "${pids[@]}"; do wait "$p" || { echo "[gpu_compare] the original's build failed"; ok=0; }; done
  [ $ok = 1 ] || { tail -20 "$LOG"/build_original_*.log; exit 1; }
  echo "[gpu_compare] built both sides in $(( $(date +%s) - t0 )) s"
fi
if has subject; then
  t0=$(date +%s)
  A=$ORIG/flame_model/assets/flame
  python3 -m flame_model.template_rig --obj $A/head_template_mesh.obj --texture $A/tex_mean_painted.png --out $RIG \
    > "$LOG/rig.log" 2>&1 || { cat "$LOG/rig.log"; exit 1; }
  # shellcheck disable=SC2086
  python3 -m scene.synthetic --out $SUBJ --flame_dir $RIG --width 802 --height 550 --num_cameras 16 \
    --num_timesteps 16 --principal_jitter 0 --focal_jitter 0 --fill 0.85 --quiet ${SUBJECT_ARGS:-} > "$LOG/subject.log" 2>&1 \
    || { cat "$LOG/subject.log"; exit 1; }
  echo "[gpu_compare] rig and subject in $(( $(date +%s) - t0 )) s: $(head -1 "$LOG/subject.log")"
fi
if has compare; then
  left=$(( ${GPU_COMPARE_BUDGET_S:-540} - ($(date +%s) - t_start) ))
  # shellcheck disable=SC2086
  eval "timeout $left python3 benchmarks/compare_original.py --original $ORIG --subject $SUBJ \
    --flame_dir $RIG --out $RUN --seeds ${GPU_COMPARE_SEEDS:-0 1 2 3 4} --parallel ${GPU_COMPARE_PARALLEL:-5} \
    ${GPU_COMPARE_SCHEDULE:+--schedule \"$GPU_COMPARE_SCHEDULE\"} ${GPU_COMPARE_ARGS:-}" > "$LOG/compare.log" 2>&1
  echo "[gpu_compare] compare rc=$? after $(( $(date +%s) - t_start )) s"
  cp "$RUN/compare.md" "$RUN/compare.json" "$LOG/" 2>/dev/null
  tail -30 "$LOG/compare.log"
  (cd "$RUN" && tar czf "$LOG/logs.tgz" logs ./*/seed*/results*.json 2>/dev/null)
fi
