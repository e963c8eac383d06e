#!/usr/bin/env bash
# One-time setup: QGIS from Debian (when missing), a venv from Debian's Python with system site packages
# (so PyQGIS is importable), and the project with its engine, test and dev extras.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
SYS_PY=/usr/bin/python3

# QGIS: 3.40 LTR or newer (the plugin's qgisMinimumVersion). On Debian 12 it comes from Debian's own bookworm-backports suite (3.40.x), added
# with Debian's keyring when missing. Elsewhere the QGIS found is used as it is and its version printed.
QGIS_MIN=3.40
qgis_version() { "$SYS_PY" -c "from qgis.core import Qgis; print(Qgis.QGIS_VERSION.split('-')[0])" 2>/dev/null || true; }
version_lt() { [ "$1" != "$2" ] && [ "$(printf '%s\n%s\n' "$1" "$2" | sort -V | head -n1)" = "$1" ]; }
HAVE=$(qgis_version)
CODENAME=$(. /etc/os-release 2>/dev/null && echo "${ID:-}:${VERSION_CODENAME:-}")
if [ -z "$HAVE" ] || version_lt "$HAVE" "$QGIS_MIN"; then
    if [ "$CODENAME" = "debian:bookworm" ]; then
        SUDO=""
        [ "$(id -u)" -eq 0 ] || SUDO="sudo"
        if ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
            echo "setup: adding Debian's bookworm-backports suite (signed by debian-archive-keyring)"
            printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
                | $SUDO tee /etc/apt/sources.list.d/bookworm-backports.sources >/dev/null
        fi
        if [ -n "$HAVE" ]; then
            echo "setup: QGIS $HAVE is older than $QGIS_MIN: upgrading it in place to QGIS 3.40 LTR from bookworm-backports"
        else
            echo "setup: installing QGIS 3.40 LTR from bookworm-backports (python3-qgis qgis-providers qgis python3-venv)"
        fi
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends -t bookworm-backports \
            python3-qgis qgis-providers qgis python3-venv >/dev/null
        HAVE=$(qgis_version)
        echo "setup: QGIS $HAVE installed"
    elif [ -z "$HAVE" ]; then
        echo "setup: QGIS's Python bindings (qgis.core) are not importable from $SYS_PY; install QGIS >= $QGIS_MIN" >&2
        exit 1
    else
        echo "setup: using QGIS $HAVE (older than $QGIS_MIN, which the project is tested on)"
    fi
else
    echo "setup: using QGIS $HAVE"
fi

# WordNet 3.0 for `geovlm eval`'s METEOR: Debian's packages hold the database NLTK reads (no download at run time).
if [ ! -f /usr/share/wordnet/index.sense ] && [ -z "${WNSEARCHDIR:-}" ]; then
    if command -v apt-get >/dev/null 2>&1; then
        SUDO=""
        [ "$(id -u)" -eq 0 ] || SUDO="sudo"
        echo "setup: installing WordNet 3.0 (wordnet-base wordnet-sense-index)"
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
            wordnet-base wordnet-sense-index >/dev/null
    else
        echo "setup: no apt-get: install WordNet 3.0 and set WNSEARCHDIR to its dict folder for geovlm eval's METEOR"
    fi
fi

if [ ! -x "$VENV/bin/python" ]; then
    echo "setup: creating $VENV from $SYS_PY (with system site packages for PyQGIS)"
    "$SYS_PY" -m venv --system-site-packages "$VENV"
fi
PIP="$VENV/bin/python -m pip --disable-pip-version-check -q"
# torch first, so its build is chosen before the engine extra asks for torch==2.13.0 (2.13.0+cpu satisfies it).
# On Linux PyPI's torch is the CUDA build (GBs of CUDA libraries): GEOVLM_TORCH=cpu, or auto (the default) on a
# machine without an NVIDIA GPU, takes the CPU build from PyTorch's CPU index (pytorch.org's selector for Linux,
# pip, CPU); GEOVLM_TORCH=cuda takes PyPI's. A torch 2.13.0 already in the venv is kept (pip asks no index then).
TORCH=${GEOVLM_TORCH:-auto}
case "$TORCH" in
    auto|cpu|cuda) ;;
    *) echo "setup: GEOVLM_TORCH must be auto, cpu or cuda, not $TORCH" >&2; exit 2 ;;
esac
if [ "$TORCH" = auto ]; then
    TORCH=cpu
    if command -v nvidia-smi >/dev/null 2>&1; then
        if nvidia-smi -L 2>/dev/null | grep -q GPU; then TORCH=cuda; fi
    elif [ -n "$(ls -A /proc/driver/nvidia/gpus 2>/dev/null)" ]; then
        TORCH=cuda
    fi
fi
TORCH_INDEX=()
if [ "$TORCH" = cpu ] && [ "$(uname -s)" = Linux ]; then
    TORCH_INDEX=(--index-url https://download.pytorch.org/whl/cpu)
fi
echo "setup: torch's $TORCH build: pip install ${TORCH_INDEX[*]:+${TORCH_INDEX[*]} }torch==2.13.0"
if [ ${#TORCH_INDEX[@]} -gt 0 ]; then
    # a machine without network (or with pip's own sources configured) must not wait out pip's retries here
    $PIP install --retries 1 --timeout 20 "${TORCH_INDEX[@]}" "torch==2.13.0" 2>/dev/null || {
        echo "setup: PyTorch's CPU index did not answer; taking torch==2.13.0 from pip's configured sources"
        $PIP install "torch==2.13.0"
    }
else
    $PIP install "torch==2.13.0"
fi
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
$PIP install -e ".[engine,eval,$ORT,test,dev]" "numpy<2" "attrs>=23.2"
touch "$VENV/.stamp"
echo "setup: done ($VENV)"
