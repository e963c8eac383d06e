#!/usr/bin/env bash
# The manual end-to-end check of "Set up the local engine…" in a real QGIS: the release zip of this checkout
# installed into a fresh temporary profile (enabled with qgis_process), then one QGIS run under Xvfb per phase
# (scripts/engine_setup_e2e.py drives the plugin's menu, dialog and Ask dock): install, ask (the demo model answers
# about RGB.byte.tif; the engine's log must say "decode steps: numba (tbb threads)"), repair, remove, cancel
# (then repair), offline ("Set up again" with pip's index unreachable: the working set-up must stay) and askrepair.
# Needs xvfb and imagemagick (apt-get install xvfb imagemagick) and pip's package sources (about 500 MB are
# downloaded; minutes). Usage: bash scripts/engine_setup_e2e.sh [OUT_DIR] [PHASE...]
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
E2E=$(realpath -m "${1:-/tmp/geovlm-setup-e2e}")
shift || true
PHASES=${*:-install ask repair remove cancel offline askrepair}
DISPLAY_NUMBER=${E2E_DISPLAY:-:78}
command -v Xvfb >/dev/null && command -v import >/dev/null || { echo "needs: apt-get install xvfb imagemagick"; exit 2; }
rm -rf "$E2E" && mkdir -p "$E2E/home" "$E2E/out" "$E2E/profiles/default/python/plugins"
python3 "$ROOT/scripts/make_zip.py" "$E2E/geovlm.zip"
(cd "$E2E/profiles/default/python/plugins" && python3 -m zipfile -e "$E2E/geovlm.zip" .)
SHARED=${GEOVLM_SHARED:-$ROOT/../shared}
export HOME=$E2E/home QGIS_CUSTOM_CONFIG_PATH=$E2E E2E_OUT=$E2E/out E2E_RASTER=${E2E_RASTER:-$SHARED/data/rasters/RGB.byte.tif}
QT_QPA_PLATFORM=offscreen qgis_process plugins enable geovlm | grep geovlm
Xvfb "$DISPLAY_NUMBER" -screen 0 1600x1000x24 >"$E2E/xvfb.log" 2>&1 &
XVFB=$!
trap 'kill $XVFB 2>/dev/null' EXIT
sleep 1
status=0
for phase in $PHASES; do
    echo "== $phase $(date -u +%T)"
    offline=()
    [ "$phase" = offline ] && offline=(env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null PIP_INDEX_URL=http://127.0.0.1:9/simple)
    "${offline[@]}" env -u QT_QPA_PLATFORM DISPLAY="$DISPLAY_NUMBER" PHASE="$phase" timeout 3600 \
        qgis --nologo --code "$ROOT/scripts/engine_setup_e2e.py" >"$E2E/out/qgis-$phase.out" 2>&1
    python3 - "$E2E/out/report-$phase.json" <<'EOF' || status=1
import json, sys
report = json.load(open(sys.argv[1]))
for key, value in report.items():
    if not key.endswith("conversation"):
        print(f"  {key}: {value}")
sys.exit(0 if report.get("result") == "ok" else 1)
EOF
    if pgrep -f "$E2E/profiles/default/geovlm/engine-venv/bin/python -m geovlm serve" >/dev/null; then
        echo "  an engine is still running after QGIS quit"; status=1
    fi
done
grep -h "decode steps" "$E2E"/out/*engine.log 2>/dev/null | sed 's/^/  /'
echo "== end $(date -u +%T); screenshots and logs in $E2E/out"
exit $status
