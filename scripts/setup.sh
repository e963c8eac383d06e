#!/usr/bin/env bash
# One-time setup: QGIS from Debian (when missing), a venv from Debian's Python with system site packages
# (so PyQGIS is importable), and the project with its engine, test and dev extras.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
SYS_PY=/usr/bin/python3

if ! "$SYS_PY" -c "import qgis.core" >/dev/null 2>&1; then
    echo "setup: installing QGIS from Debian (python3-qgis qgis-providers qgis python3-venv)"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
        python3-qgis qgis-providers qgis python3-venv >/dev/null
fi

if [ ! -x "$VENV/bin/python" ]; then
    echo "setup: creating $VENV from $SYS_PY (with system site packages for PyQGIS)"
    "$SYS_PY" -m venv --system-site-packages "$VENV"
fi
PIP="$VENV/bin/python -m pip --disable-pip-version-check -q"
# torch first, so the pinned CPU build is taken and no CUDA packages are pulled in.
$PIP install "torch==2.13.0"
# numpy<2: Debian's compiled packages break on 2. attrs>=23.2: Debian's is too old for our deps.
# onnxruntime (CPU) by default; GEOVLM_ORT=gpu takes onnxruntime-gpu instead. Both own the module
# `onnxruntime`, so the other one is removed first: never both in one venv.
ORT=${GEOVLM_ORT:-cpu}
case "$ORT" in
    cpu) OTHER=onnxruntime-gpu ;;
    gpu) OTHER=onnxruntime ;;
    *) echo "setup: GEOVLM_ORT must be cpu or gpu, not $ORT" >&2; exit 2 ;;
esac
if "$VENV/bin/python" -m pip show -q "$OTHER" >/dev/null 2>&1; then
    $PIP uninstall -y "$OTHER"
fi
$PIP install -e ".[engine,$ORT,test,dev]" "numpy<2" "attrs>=23.2"
touch "$VENV/.stamp"
echo "setup: done ($VENV)"
