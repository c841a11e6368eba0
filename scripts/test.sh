#!/usr/bin/env bash
# Set up (or reuse) the environment, then run the test suite.
#   bash scripts/test.sh [pytest args...]
# GUI tests run under xvfb-run when there is no display and xvfb-run is installed;
# CUDA tests run only where a GPU is present (otherwise they are skipped with a reason).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PY=.venv/bin/python
if [ -z "${DISPLAY:-}" ] && command -v xvfb-run >/dev/null 2>&1; then
  exec xvfb-run -a -s "-screen 0 1280x1024x24" "$PY" -m pytest "$@"
fi
if [ -z "${DISPLAY:-}" ]; then
  echo "[test] no display and no xvfb-run: GUI tests will be skipped (apt-get install xvfb)"
fi
exec "$PY" -m pytest "$@"
