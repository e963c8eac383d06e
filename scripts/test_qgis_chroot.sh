#!/usr/bin/env bash
# Run the QGIS-side tests (`pytest -m "qgis and not engine"`) on the QGIS of another Debian suite, in a chroot
# made with debootstrap: `make test-qgis-sid` (QGIS 3.44 from Debian sid). Needs root, debootstrap and network
# access to Debian's archive. The chroot lives in .chroots/SUITE (ignored by git) and is reused by later runs.
#
# The tests that need the engine (torch, the demo model) are left out: the engine runs in its own venv, never
# inside QGIS, so what QGIS's version can break is the QGIS side. The project and ../shared/data are copied in.
set -euo pipefail
cd "$(dirname "$0")/.."
SUITE=${1:-sid}
ROOT=.chroots/$SUITE
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SHARED=${GEOVLM_SHARED:-../shared}
[ "$(id -u)" -eq 0 ] || { echo "test-qgis-chroot: needs root (debootstrap, chroot)" >&2; exit 1; }
command -v debootstrap >/dev/null || { apt-get update -qq && apt-get install -y -qq debootstrap >/dev/null; }

if ! chroot "$ROOT" dpkg -s qgis python3-qgis proj-data proj-bin python3-geopandas python3-scipy >/dev/null 2>&1; then
    echo "test-qgis-chroot: debootstrap $SUITE into $ROOT (first run: several minutes)"
    mkdir -p "$ROOT"
    [ -x "$ROOT/usr/bin/apt-get" ] || debootstrap --variant=minbase \
        --keyring=/usr/share/keyrings/debian-archive-keyring.gpg "$SUITE" "$ROOT" "$MIRROR" >/dev/null
    # The archive a mirror serves may be a snapshot older than its Valid-Until: accept it (signatures still checked).
    APT_OPTS="-o Acquire::Check-Valid-Until=false"
    chroot "$ROOT" apt-get $APT_OPTS update -qq
    # QGIS and, from Debian, what the QGIS-side tests import beside it.
    DEBIAN_FRONTEND=noninteractive chroot "$ROOT" apt-get $APT_OPTS install -y -qq --no-install-recommends \
        qgis python3-qgis qgis-providers python3-venv python3-pip python3-pytest python3-hypothesis \
        python3-geopandas python3-pyogrio python3-rasterio python3-pyproj python3-shapely python3-numpy \
        python3-scipy proj-data proj-bin ca-certificates >/dev/null
fi
if ! chroot "$ROOT" /opt/geovlm-venv/bin/python -c "import pytest_qgis" 2>/dev/null; then
    # pytest-qgis (pure Python) is fetched by this machine's pip, with its own index and certificate settings,
    # and installed offline in the chroot.
    rm -rf "$ROOT/tmp/wheels" && mkdir -p "$ROOT/tmp/wheels"
    python3 -m pip download -q --no-deps --only-binary=:all: -d "$ROOT/tmp/wheels" "pytest-qgis>=2"
    chroot "$ROOT" python3 -m venv --system-site-packages /opt/geovlm-venv
    chroot "$ROOT" sh -c '/opt/geovlm-venv/bin/pip -q --disable-pip-version-check install --no-index --no-deps /tmp/wheels/*.whl'
fi

rm -rf "$ROOT/work"
mkdir -p "$ROOT/work/geovlm" "$ROOT/work/shared"
git ls-files -z | xargs -0 -I{} cp --parents {} "$ROOT/work/geovlm/"
cp -r "$SHARED/data" "$ROOT/work/shared/"
mountpoint -q "$ROOT/proc" || mount -t proc proc "$ROOT/proc"
trap 'umount "$ROOT/proc" 2>/dev/null || true' EXIT
VERSION=$(chroot "$ROOT" python3 -c "from qgis.core import Qgis; print(Qgis.QGIS_VERSION)")
echo "test-qgis-chroot: QGIS $VERSION on Debian $SUITE"
# geovlm imports as the package folder's name: a link named geovlm to the checkout.
chroot "$ROOT" env -i HOME=/root PATH=/usr/bin:/bin QT_QPA_PLATFORM=offscreen GDAL_PAM_ENABLED=NO \
    HF_HUB_OFFLINE=1 GEOVLM_SHARED=/work/shared GEOVLM_QGIS_ONLY=1 PYTHONPATH=/work \
    sh -c 'cd /work/geovlm && exec /opt/geovlm-venv/bin/python -m pytest -q -p no:cacheprovider -m "qgis and not engine" "$@"' \
    sh "${@:2}"
