"""Shared test setup: offline hub, headless Qt, paths to the shared data, QGIS's Processing and qgis_process."""
import gc
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
# QGIS writes approximate statistics as .aux.xml beside a raster it draws: never beside the shared data
os.environ.setdefault("GDAL_PAM_ENABLED", "NO")
for var in ("PROJ_LIB", "PROJ_DATA"):
    os.environ.pop(var, None)
# A suite started in the background by a script (`make test &`, nohup) has SIGINT ignored, and every process it
# starts inherits that: the Ctrl-C tests' commands would never see their SIGINT. A handler (unlike SIG_IGN) is
# not inherited across exec, so the children start with SIGINT as a terminal's foreground job has it.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

ROOT = Path(__file__).resolve().parents[1]
HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:  # the helper modules beside the tests (qt_support, bulk_support, ...): --import-mode=importlib
    sys.path.insert(0, HERE)  # does not put this folder on sys.path itself
SHARED = Path(os.environ.get("GEOVLM_SHARED", ROOT.parent / "shared"))
DATA = SHARED / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA.is_dir():
        pytest.fail(f"shared test data not found at {DATA} (set GEOVLM_SHARED)")
    return DATA


@pytest.fixture
def antimeridian_raster(tmp_path) -> Path:
    """A 3-band GeoTIFF of 200 x 100 px at 2 m in UTM zone 60S (EPSG:32760) over Fiji, 400 m wide across 180
    degrees (x = 819451.55 at its rows), for the tests of reprojection across the antimeridian."""
    from osgeo import gdal, osr

    raster = tmp_path / "fiji.tif"
    ds = gdal.GetDriverByName("GTiff").Create(str(raster), 200, 100, 3, gdal.GDT_Byte)
    ds.SetGeoTransform((819300, 2, 0, 8118100, 0, -2))
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32760)
    ds.SetProjection(srs.ExportToWkt())
    ds = None
    return raster


@pytest.fixture(scope="module")
def processing(qgis_app):
    """QGIS's `processing` module (processing.run, ...), its framework initialised in this process."""
    sys.path.append("/usr/share/qgis/python/plugins")
    from processing.core.Processing import Processing

    Processing.initialize()
    import processing as proc

    return proc


@pytest.fixture
def qgis_process_env(tmp_path):
    """(qgis_process, environment) in which qgis_process, offscreen, with its own profile in `tmp_path/home`,
    finds this checkout as the enabled `geovlm` plugin (Debian's wrapper, which works from QGIS 3.34 on)."""
    import geovlm

    exe = shutil.which("qgis_process")
    if exe is None:
        pytest.fail("qgis_process not found: QGIS is not installed as `make setup` installs it")
    plugins, home = tmp_path / "plugins", tmp_path / "home"
    plugins.mkdir()
    home.mkdir()
    (plugins / "geovlm").symlink_to(Path(geovlm.__file__).parent, target_is_directory=True)
    env = dict(os.environ, HOME=str(home), QGIS_PLUGINPATH=str(plugins), QGIS_CUSTOM_CONFIG_PATH=str(home),
               XDG_RUNTIME_DIR=str(tmp_path), QT_QPA_PLATFORM="offscreen")
    enable = subprocess.run([exe, "plugins", "enable", "geovlm"], env=env, capture_output=True, text=True,
                            timeout=120)
    assert enable.returncode == 0, enable.stdout[-2000:] + enable.stderr[-2000:]
    return exe, env


@pytest.fixture
def geovlm_settings(qgis_app):
    """GeoVLM's QgsSettings (`geovlm/...`) cleared before and after the test."""
    from qgis.core import QgsSettings

    QgsSettings().remove("geovlm")
    yield
    QgsSettings().remove("geovlm")


@pytest.fixture
def plugin(qgis_iface, processing, geovlm_settings, monkeypatch):
    """GeoVLM loaded as QGIS loads it (`classFactory`), its Processing provider registered; unloaded after. The
    test interface gets a real QgsLayerTreeView over the project's layer tree: loading an algorithm's results
    (the dialog, `processing.runAndLoadResults`) asks for `iface.layerTreeView()`, and QGIS 3.44 hands it to
    `QgsProcessingGuiUtils.addResultLayers`, which refuses pytest-qgis's mock (a Python exception there aborts
    the process); 3.40 calls its methods."""
    from qgis.core import QgsLayerTreeModel, QgsProject
    from qgis.gui import QgsLayerTreeView

    import geovlm

    view = QgsLayerTreeView()
    view.setModel(QgsLayerTreeModel(QgsProject.instance().layerTreeRoot(), view))
    monkeypatch.setattr(qgis_iface, "layerTreeView", lambda: view, raising=False)
    instance = geovlm.classFactory(qgis_iface)
    instance.initProcessing()
    yield instance
    instance.unload()


@pytest.fixture
def engines(tmp_path):
    """`engines(name="a", family=..., delay=..., stand_in=...)` starts a `bulk_support.ScriptedEngine` (its own
    process); all of them are killed after the test."""
    from bulk_support import ScriptedEngine

    started = []

    def start(name="a", **options):
        engine = ScriptedEngine(tmp_path, name, **options)
        started.append(engine)
        return engine

    yield start
    for engine in started:
        engine.kill()


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


ENGINE_WORDS = ("import torch", "transformers", "onnxruntime", "geovlm.models", "geovlm.engine", "demo_model",
                "models_support", '"serve"')


def _marks_of(path: Path):
    """The marks of a test module: `qgis` when it uses PyQGIS or qgis_process, `engine` when it needs the engine
    (torch, the models, a server)."""
    text = path.read_text(encoding="utf-8", errors="replace")
    return [mark for mark, found in (
        (pytest.mark.qgis, "from qgis" in text or "import qgis" in text or "qgis_process" in text),
        (pytest.mark.engine, any(word in text for word in ENGINE_WORDS))) if found]


def pytest_ignore_collect(collection_path, config):
    """With GEOVLM_QGIS_ONLY=1 (`make test-qgis-sid`, on a QGIS without the engine's packages) only the QGIS-side
    modules that do not need the engine are imported at all."""
    if os.environ.get("GEOVLM_QGIS_ONLY") != "1" or collection_path.suffix != ".py":
        return None
    if not collection_path.name.startswith("test_"):
        return None
    names = {mark.name for mark in _marks_of(collection_path)}
    return not ("qgis" in names and "engine" not in names)


def pytest_collection_modifyitems(config, items):
    """Mark the QGIS-side tests `qgis` and those that need the engine `engine`, so `pytest -m "qgis and not
    engine"` runs what another QGIS can break, as `make test-qgis-sid` does."""
    marks = {}
    for item in items:
        path = Path(str(item.fspath))
        if path not in marks:
            marks[path] = _marks_of(path)
        for mark in marks[path]:
            item.add_marker(mark)


@pytest.fixture(scope="session", autouse=True)
def before_exit_qgis(qgis_app):
    """Torn down before pytest-qgis's qgis_app calls exitQgis (it depends on it).

    QGIS objects still alive then are destroyed while QGIS can still destroy them: a map layer that Python owns
    and that outlives exitQgis crashes the interpreter at exit (in GDALClose), failing a green run. Layers
    stay alive past their test where a frame holds them: QGIS's processing.run keeps the frames of an
    algorithm that raised (seen with QgsProcessingException in 3.40). The QGIS transport's network thread ends
    too, as at plugin unload.
    """
    yield
    from qgis.core import QgsMapLayer
    from qgis.PyQt import sip

    gc.collect()
    for obj in gc.get_objects():
        if isinstance(obj, QgsMapLayer) and not sip.isdeleted(obj) and sip.ispyowned(obj):
            sip.delete(obj)
    transport = sys.modules.get("geovlm.plugin.qgis_transport")
    if transport is not None:
        transport.stop_network_thread()
