#!/usr/bin/env bash
# The README's demo command: sets up .venv from nothing, then runs trustmap's main jobs on
# the embedded sample data and prints where the outputs are.
#   bash scripts/demo.sh [OUT_DIR]     (default: demo_out/)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/_venv.sh"
cd "$ROOT"
OUT="${1:-$ROOT/demo_out}"
mkdir -p "$OUT"
export MPLBACKEND=Agg
start=$(date +%s)

echo "== [$(( $(date +%s) - start )) s] tiles: sample scene, tiles, QGIS export"
# --overwrite: a second demo into the same folder replaces the first one's outputs
tiles sample -o "$OUT/sample" --size 2048 --seed 0 --overwrite
tiles info "$OUT/sample/scene.tif"
tiles cut "$OUT/sample/scene.tif" --tile-size 512 --overlap 64 -o "$OUT/tiles" --overwrite
tiles stitch "$OUT/tiles/index.gpkg" -o "$OUT/tiles/restitched.tif" --overwrite
tiles export-qgis "$OUT/sample/truth.tif" "$OUT/sample/scene.tif" --classes configs/classes/landcover6.yaml \
  -o "$OUT/qgis_truth" --min-area 20 --overwrite

if [ -f refine/cli.py ] && [ -f configs/refine/demo.yaml ]; then
  echo "== [$(( $(date +%s) - start )) s] refine: simulated label refinement on the sample scene"
  refine simulate --config configs/refine/demo.yaml -o "$OUT/refine" --overwrite
fi
if [ -f calibration/cli.py ] && [ -f configs/calibration/demo.yaml ]; then
  echo "== [$(( $(date +%s) - start )) s] calibration: audit of the sample detector"
  calibration audit --config configs/calibration/demo.yaml -o "$OUT/calibration" --overwrite
  echo "== [$(( $(date +%s) - start )) s] calibration: the sample detector over the sample scene, tile by tile, with the audit's calibrator"
  # the post-hoc calibrator the audit recommends shipping (isotonic if it recommends none)
  CAL="$(python - "$OUT/calibration" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
rec = json.loads((out / "audit.json").read_text()).get("repair", {}).get("recommendation", {})
ship = rec.get("ship")
path = out / "repair" / f"calibrator_{ship}.json"
print(path if ship and path.exists() else out / "repair" / "calibrator_isotonic.json")
PY
)"
  calibration detect-scene "$OUT/sample/scene.tif" --calibrator "$CAL" -o "$OUT/scene_detections.gpkg" --overwrite
fi

echo
echo "Done in $(( $(date +%s) - start )) s. Outputs:"
echo "  sample scene + truth     $OUT/sample/ (quicklook.png to look at)"
echo "  tiles + index            $OUT/tiles/index.gpkg"
echo "  QGIS project (truth)     $OUT/qgis_truth/*.qgs"
[ -d "$OUT/refine" ] && echo "  refine report            $OUT/refine/report.html (refined mask for QGIS in $OUT/refine/qgis/)"
[ -d "$OUT/calibration" ] && echo "  calibration audit        $OUT/calibration/audit.html"
[ -f "$OUT/scene_detections.gpkg" ] && echo "  scene detections (QGIS)  $OUT/scene_detections.gpkg (styled by calibrated confidence)"
exit 0
