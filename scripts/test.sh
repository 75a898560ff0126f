#!/usr/bin/env bash
# The README's test command: sets up everything from nothing, then runs the whole suite.
#   bash scripts/test.sh [pytest args]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# Debian packages the tests need: QGIS (real client for the export tests), Chromium (looks
# at the HTML reports). Installed once; needs root (CI and the dev machines are root).
need=()
/usr/bin/python3 -c "import qgis.core" >/dev/null 2>&1 || need+=(qgis python3-qgis)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "[trustmap] apt-get install ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  else
    echo "[trustmap] not root: cannot install ${need[*]}; tests that need them will be skipped" >&2
  fi
fi

TRUSTMAP_EXTRAS=test source "$ROOT/scripts/_venv.sh"
cd "$ROOT"
export MPLBACKEND=Agg
ruff check tiles refine calibration scripts tests
# Type checks (config: [tool.mypy] in pyproject.toml, disallow_untyped_defs per package).
# Packages are added here as they pass.
mypy tiles calibration
python -m pytest -q "$@"
