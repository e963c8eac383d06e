"""Shared test setup: offline hub, headless Qt, paths to the shared data."""
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
for var in ("PROJ_LIB", "PROJ_DATA"):
    os.environ.pop(var, None)

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("GEOVLM_SHARED", ROOT.parent / "shared"))
DATA = SHARED / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA.is_dir():
        pytest.fail(f"shared test data not found at {DATA} (set GEOVLM_SHARED)")
    return DATA


def pytest_report_header(config):
    """The versions the QGIS-side tests ran on: QGIS, Qt, PyQt, GDAL and PROJ (as QGIS links them)."""
    try:
        from osgeo import gdal
        from qgis.core import Qgis, QgsProjUtils
        from qgis.PyQt.QtCore import PYQT_VERSION_STR, QT_VERSION_STR
    except ImportError as exc:
        return f"QGIS: not importable ({exc})"
    return (f"QGIS {Qgis.QGIS_VERSION} ({Qgis.QGIS_VERSION_INT}), Qt {QT_VERSION_STR}, PyQt {PYQT_VERSION_STR}, "
            f"GDAL {gdal.__version__}, PROJ {QgsProjUtils.projVersionMajor()}.{QgsProjUtils.projVersionMinor()}")


def pytest_collection_modifyitems(config, items):
    """Mark the QGIS-side tests (modules that use PyQGIS or qgis_process) `qgis`, so `pytest -m qgis` runs just
    them, as `make test-qgis-sid` does on another QGIS."""
    uses_qgis = {}
    for item in items:
        path = Path(str(item.fspath))
        if path not in uses_qgis:
            text = path.read_text(encoding="utf-8", errors="replace")
            uses_qgis[path] = "from qgis" in text or "import qgis" in text or "qgis_process" in text
        if uses_qgis[path]:
            item.add_marker(pytest.mark.qgis)
