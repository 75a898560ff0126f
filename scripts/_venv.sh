# Sourced by demo.sh and test.sh: create or reuse .venv and install trustmap into it.
# torch/torchvision are pinned to the wheels served from local disk (never a newer torch).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [ ! -x .venv/bin/python ]; then
  echo "[trustmap] creating .venv with $PY"
  "$PY" -m venv .venv
fi
VPY="$ROOT/.venv/bin/python"
EXTRAS="${TRUSTMAP_EXTRAS:-}"
STAMP=".venv/.trustmap-installed${EXTRAS:+-$EXTRAS}"
if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ]; then
  echo "[trustmap] installing trustmap${EXTRAS:+[$EXTRAS]} into .venv (torch 2.14.1 from local disk)"
  "$VPY" -m pip install -q --upgrade pip
  "$VPY" -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
  "$VPY" -m pip install -q -e ".${EXTRAS:+[$EXTRAS]}"
  touch "$STAMP"
fi
export PATH="$ROOT/.venv/bin:$PATH"
