# Sourced by the other scripts: creates .venv if missing and installs the project into it (idempotent).
# torch goes first and pinned, so pip takes the CPU wheel instead of pulling a multi-GB CUDA build
# (platform.md §1); setup.py pins mujoco==3.17.0 next to dm_control==1.0.50 (mujoco 4 breaks it).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
EXTRAS="${1:-}"
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  "$PY" -m venv .venv
fi
# shellcheck disable=SC1091
source .venv/bin/activate
stamp=".venv/.installed${EXTRAS:+-$EXTRAS}"
want="$(cat setup.py | sha1sum | cut -c1-16)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[setup] installing torch (CPU) and the project into .venv (about 2 minutes the first time)"
  python -m pip install -q --upgrade pip 2>&1 | grep -v -i "warning" || true
  python -c "import torch" 2>/dev/null || python -m pip install -q "torch==2.13.0" 2>&1 | grep -v -i "warning" || true
  python -m pip install -q -e ".${EXTRAS:+[$EXTRAS]}" 2>&1 | grep -v -i "warning" || true
  python -c "import torch, dm_control, control_pretrain" || { echo "[setup] install failed" >&2; exit 1; }
  echo "$want" > "$stamp"
fi
export MUJOCO_GL="${MUJOCO_GL:-egl}"
