#!/usr/bin/env bash
# Set up everything `make test` and `make demo` need, on a fresh Debian/Ubuntu machine.
# Idempotent: the Makefile only calls this when requirements changed or .venv is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

QGIS_PACKAGES="qgis python3-qgis python3-gdal python3-venv"
# The real-desktop test runs QGIS under Xvfb and takes screenshots with ImageMagick's `import`.
DESKTOP_PACKAGES="xvfb imagemagick"
# The database-table destination test starts a throw-away PostgreSQL with PostGIS (tests/postgis_server.py).
POSTGIS_PACKAGES="postgresql postgresql-15-postgis-3"

qgis_python() {
    # QGIS's bindings are built for the system interpreter, not for pyenv/conda ones first on PATH.
    for candidate in /usr/bin/python3 python3; do
        if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c "import qgis.core, venv" >/dev/null 2>&1; then
            command -v "$candidate"
            return 0
        fi
    done
    return 1
}

missing=""
QGIS_PY="$(qgis_python)" || missing="$QGIS_PACKAGES"
command -v xvfb-run >/dev/null 2>&1 || missing="$missing xvfb"
command -v import >/dev/null 2>&1 || missing="$missing imagemagick"
ls /usr/share/postgresql/*/extension/postgis.control >/dev/null 2>&1 || missing="$missing $POSTGIS_PACKAGES"

if [ -n "$missing" ]; then
    echo "==> Installing system packages:$missing"
    if [ "$(id -u)" = 0 ]; then
        SUDO=""
    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO="sudo"
    else
        echo "ERROR: these system packages are missing and this user cannot run apt-get:$missing" >&2
        echo "Run this once, then re-run make:" >&2
        echo "    sudo apt-get update && sudo apt-get install -y $QGIS_PACKAGES $DESKTOP_PACKAGES $POSTGIS_PACKAGES" >&2
        exit 1
    fi
    $SUDO apt-get update -qq
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
    QGIS_PY="$(qgis_python)" || { echo "ERROR: QGIS installed but 'import qgis.core' still fails with /usr/bin/python3." >&2; exit 1; }
fi

if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c "import qgis.core" >/dev/null 2>&1; then
    echo "==> Creating .venv from $QGIS_PY (with system site-packages, so qgis and PyQt are visible)"
    rm -rf .venv
    "$QGIS_PY" -m venv --system-site-packages .venv
fi

echo "==> Installing pinned requirements into .venv"
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements-dev.txt
.venv/bin/python -c "import torch, rasterio, shapely, skimage, qgis.core; print('    torch', torch.__version__, '| rasterio', rasterio.__version__, '| GDAL (rasterio)', rasterio.__gdal_version__, '| QGIS', qgis.core.Qgis.QGIS_VERSION)"
