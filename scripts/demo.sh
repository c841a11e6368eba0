#!/usr/bin/env bash
# The main job in one command: set up, generate the procedural FLAME-format head and a synthetic
# NeRSemble-format subject, train an avatar (train.py --bind_to_mesh --eval), render val and test
# with videos, compute metrics, and print the results and how to open the avatar in the viewer.
#
#   bash scripts/demo.sh [--cpu|--gpu] [--out DIR] [--tiny]
#
# --cpu: small subject and short schedule (about 10 minutes on 2 cores);
# --gpu: the full 802x550, 16-camera subject (about 10 minutes on one H100);
# default: --gpu when a CUDA GPU and our CUDA rasterizer are available, else --cpu.
# --tiny: a minimal configuration used by the test-suite to check the pipeline end to end.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

mode=auto
OUT=output/demo
tiny=0
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu) mode=cpu ;;
    --gpu) mode=gpu ;;
    --tiny) tiny=1; mode=cpu ;;
    --out) OUT="$2"; shift ;;
    -h|--help) sed -n 2,12p "$0"; exit 0 ;;
    *) echo "unknown option: $1 (see --help)"; exit 2 ;;
  esac
  shift
done

# Only build CUDA code where there is a GPU to run it (an existing build is kept).
if ! command -v nvidia-smi >/dev/null 2>&1 && [ ! -f .venv/.cuda_build.sha ]; then
  export GA_SKIP_CUDA=1
fi
if [ "${GA_DEMO_SKIP_SETUP:-0}" != 1 ]; then
  bash scripts/setup.sh
fi
PY=${GA_PYTHON:-$ROOT/.venv/bin/python}

if [ $mode = auto ]; then
  if "$PY" -c "import torch, diff_gaussian_rasterization as d, sys; sys.exit(0 if torch.cuda.is_available() and d.cuda_available() else 1)"; then
    mode=gpu
  else
    mode=cpu
  fi
fi

# Sizes and schedules. GPU: the full subject; CPU: small enough for 2 cores.
if [ $mode = gpu ]; then
  W=802; H=550; CAMS=16; STEPS=100; ITERS=30000
  SCHED="--densify_from_iter 500 --densification_interval 500 --densify_until_iter 15000 --opacity_reset_interval 10000 --position_lr_max_steps 30000 --interval 10000"
  DEVICE=cuda
elif [ $tiny = 1 ]; then
  W=96; H=66; CAMS=16; STEPS=4; ITERS=60
  SCHED="--densify_from_iter 20 --densification_interval 20 --densify_until_iter 50 --opacity_reset_interval 1000 --position_lr_max_steps 60 --interval 60"
  DEVICE=cpu
else
  W=256; H=176; CAMS=16; STEPS=16; ITERS=4000
  SCHED="--densify_from_iter 500 --densification_interval 500 --densify_until_iter 3000 --opacity_reset_interval 100000 --position_lr_max_steps 4000 --interval 4000"
  DEVICE=cpu
fi

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)   # absolute: the commands below run from the repository root
FLAME_DIR=$OUT/flame
SUBJECT=$OUT/subject_${W}x${H}
MODEL=$OUT/avatar_${W}x${H}
export FLAME_MODEL_PATH=$FLAME_DIR/flame2023.pkl
export FLAME_MASKS_PATH=$FLAME_DIR/FLAME_masks.pkl

step() {
  echo
  echo "==> $*"
  "$@"
}

echo "[demo] mode: $mode (${W}x${H}, $CAMS cameras, $STEPS timesteps, $ITERS iterations); outputs in $OUT"
start=$(date +%s)
if [ ! -f "$FLAME_DIR/flame2023.pkl" ]; then
  step "$PY" -m flame_model.procedural --out "$FLAME_DIR" --seed 0
fi
if [ ! -f "$SUBJECT/canonical_flame_param.npz" ]; then
  step "$PY" -m scene.synthetic --out "$SUBJECT" --flame_dir "$FLAME_DIR" --width $W --height $H \
    --num_cameras $CAMS --num_timesteps $STEPS --seed 0
fi
rm -rf "$MODEL"
echo
echo "==> export FLAME_MODEL_PATH=$FLAME_MODEL_PATH FLAME_MASKS_PATH=$FLAME_MASKS_PATH"
# shellcheck disable=SC2086
step "$PY" train.py -s "$SUBJECT" -m "$MODEL" --eval --white_background --bind_to_mesh \
  --iterations $ITERS $SCHED --data_device $DEVICE --seed 0
step "$PY" render.py -m "$MODEL" --skip_train
step "$PY" metrics.py -m "$MODEL"
end=$(date +%s)

echo
echo "[demo] finished in $((end - start)) s (after setup)"
echo "[demo] videos:"
find "$MODEL" -name '*.mp4' | sort | sed 's/^/  /'
echo "[demo] results: $MODEL/results.json"
echo "[demo] open the avatar in the viewer:"
echo "  FLAME_MODEL_PATH=$FLAME_MODEL_PATH FLAME_MASKS_PATH=$FLAME_MASKS_PATH $PY local_viewer.py --point_path $MODEL"
