#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv, install the Python dependencies,
# and build our packages under submodules/ (CUDA extensions where nvcc is found). Idempotent: a second run only checks.
#
#   bash scripts/setup.sh            # .venv in the repository root
#   bash scripts/setup.sh --no-venv  # use the active Python (e.g. a conda environment)
#
# Honoured: CUDA_HOME, TORCH_CUDA_ARCH_LIST, MAX_JOBS, PYTHON (interpreter creating the venv),
# GA_SKIP_CUDA=1 (never build the CUDA packages).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

use_venv=1
[ "${1:-}" = "--no-venv" ] && use_venv=0

if [ $use_venv = 1 ]; then
  if [ ! -x .venv/bin/python ]; then
    echo "[setup] creating virtual environment .venv"
    "${PYTHON:-python3}" -m venv .venv
  fi
  PY="$ROOT/.venv/bin/python"
else
  PY=$(command -v python)
fi

stamp=".venv/.requirements.sha"
[ $use_venv = 1 ] || stamp="build/.requirements.sha"
mkdir -p "$(dirname "$stamp")"
want=$(cat requirements.txt scripts/setup.sh | sha1sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[setup] installing Python dependencies (requirements.txt)"
  "$PY" -m pip install -q --upgrade pip
  "$PY" -m pip install -q -r requirements.txt
  echo "$want" > "$stamp"
else
  echo "[setup] Python dependencies up to date"
fi

# nvcc: CUDA_HOME first, then PATH.
NVCC=""
if [ -n "${CUDA_HOME:-}" ] && [ -x "$CUDA_HOME/bin/nvcc" ]; then NVCC="$CUDA_HOME/bin/nvcc"; fi
if [ -z "$NVCC" ] && command -v nvcc >/dev/null 2>&1; then NVCC=$(command -v nvcc); export CUDA_HOME=${CUDA_HOME:-$(dirname "$(dirname "$NVCC")")}; fi

# No GPU here and no target architecture named: nothing could run (or target) the CUDA code.
if [ -n "$NVCC" ] && [ "${GA_SKIP_CUDA:-0}" != 1 ] && [ -z "${TORCH_CUDA_ARCH_LIST:-}" ] \
    && ! nvidia-smi -L >/dev/null 2>&1; then
  echo "[setup] nvcc found but no GPU and no TORCH_CUDA_ARCH_LIST: skipping the CUDA build" \
       "(set TORCH_CUDA_ARCH_LIST, e.g. 9.0, to build for a GPU elsewhere)"
  export GA_SKIP_CUDA=1
fi

build_sig=$( (cat submodules/*.py submodules/*/setup.py; find submodules -name '*.cu' -o -name '*.h' -o -name '*.cpp' | sort | xargs cat) 2>/dev/null | sha1sum | cut -d' ' -f1)
build_sig="$build_sig-${NVCC:-none}-${TORCH_CUDA_ARCH_LIST:-default}-${GA_SKIP_CUDA:-0}"
bstamp=".venv/.cuda_build.sha"
[ $use_venv = 1 ] || bstamp="build/.cuda_build.sha"
if [ "$(cat "$bstamp" 2>/dev/null)" = "$build_sig" ]; then
  echo "[setup] packages under submodules/ up to date"
else
  if [ -z "$NVCC" ] || [ "${GA_SKIP_CUDA:-0}" = 1 ]; then
    echo "[setup] nvcc not found (or GA_SKIP_CUDA=1): skipping the CUDA build; the pure-PyTorch rasterizer and CPU k-NN serve"
    export GA_SKIP_CUDA=1
  else
    echo "[setup] building CUDA packages with $NVCC (TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-auto}); this takes a few minutes"
  fi
  export MAX_JOBS=${MAX_JOBS:-$(nproc)}
  pkgs=()
  for d in submodules/*/; do [ -f "$d/setup.py" ] && pkgs+=(-e "$d"); done
  "$PY" -m pip install -q --no-build-isolation "${pkgs[@]}"
  echo "$build_sig" > "$bstamp"
fi
"$PY" - <<'PYEOF'
import diff_gaussian_rasterization as d, simple_knn as k
print(f"[setup] diff_gaussian_rasterization: CUDA extension {'built' if d.cuda_available() else 'not built (reference only)'}")
PYEOF
