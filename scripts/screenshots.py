"""Screenshots of the "Ask the map" dock in use on a real raster, for the README (`make screenshots`, run
under Xvfb). A QGIS application with a map canvas and the plugin's dock, asking (1) a scripted stand-in
engine that answers a recorded GeoChat-syntax text (the boxes were written for this scene by hand: it shows
placement, not a model's skill) and (2) the real engine with the demo model (a random stand-in: noise).

Usage: python scripts/screenshots.py OUT_DIR [RASTER]
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from qgis.core import QgsApplication, QgsProject, QgsRasterLayer  # noqa: E402
from qgis.gui import QgsLayerTreeMapCanvasBridge, QgsMapCanvas, QgsMessageBar  # noqa: E402
from qgis.PyQt.QtCore import QCoreApplication, Qt  # noqa: E402
from qgis.PyQt.QtGui import QImage  # noqa: E402
from qgis.PyQt.QtWidgets import QMainWindow, QVBoxLayout, QWidget  # noqa: E402

SCRIPTED = ["A road {<47><3><100><50>|<90>} climbs through snow-covered fields to a tunnel portal "
            "{<44><40><56><50>|<90>}; forest {<0><45><75><100>|<90>} covers the lower slopes.",
            "The forest {<0><45><75><100>|<90>} covers about half of the image."]


class Iface:
    """The part of QgisInterface the dock uses, on a plain main window."""

    def __init__(self, window, canvas, bar):
        self.window, self.canvas, self.bar = window, canvas, bar

    def mapCanvas(self):  # noqa: N802
        return self.canvas

    def mainWindow(self):  # noqa: N802
        return self.window

    def messageBar(self):  # noqa: N802
        return self.bar

    def activeLayer(self):  # noqa: N802
        return None

    def addDockWidget(self, area, dock):  # noqa: N802
        self.window.addDockWidget(area, dock)

    def removeDockWidget(self, dock):  # noqa: N802
        self.window.removeDockWidget(dock)


def save(window, path: Path) -> None:
    """The window as a PNG, 1100 px wide with a 256-colour palette (a README image, not an archive)."""
    image = window.grab().toImage().scaledToWidth(1100, Qt.TransformationMode.SmoothTransformation)
    image.convertToFormat(QImage.Format.Format_Indexed8).save(str(path), "PNG")


def wait_for(condition, timeout):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        QCoreApplication.processEvents()
        if condition():
            return True
        time.sleep(0.01)
    return False


def ask(session, question, task, timeout=240):
    session.dock.question.setPlainText(question)
    session.dock.task.setCurrentText(task)
    session.send()
    if not wait_for(lambda: not session.busy(), timeout):
        raise SystemExit("the engine did not answer in time")
    wait_for(lambda: False, 0.5)  # let the canvas repaint


def main(out: Path, raster_path: Path) -> None:
    from ask_engines import DemoEngine, ScriptedEngine

    from geovlm.plugin.ask_session import AskSession
    from geovlm.plugin.qgis_transport import stop_network_thread
    from geovlm.ui.ask_dock import AskDock

    app = QgsApplication([], True)
    app.initQgis()
    out.mkdir(parents=True, exist_ok=True)
    window = QMainWindow()
    central = QWidget(window)
    layout = QVBoxLayout(central)
    bar = QgsMessageBar(central)
    canvas = QgsMapCanvas(central)
    layout.addWidget(bar)
    layout.addWidget(canvas, 1)
    window.setCentralWidget(central)
    window.resize(1400, 860)
    raster = QgsRasterLayer(str(raster_path), raster_path.stem)
    if not raster.isValid():
        raise SystemExit(f"cannot open {raster_path}")
    QgsProject.instance().addMapLayer(raster)
    work = tempfile.TemporaryDirectory(prefix="geovlm-shots-")
    QgsProject.instance().setFileName(str(Path(work.name) / "shots.qgz"))  # the answers' GeoPackage: beside it
    canvas.setDestinationCrs(raster.crs())
    bridge = QgsLayerTreeMapCanvasBridge(QgsProject.instance().layerTreeRoot(), canvas)  # as QGIS shows layers
    iface = Iface(window, canvas, bar)
    dock = AskDock(window)
    dock.setMinimumWidth(520)
    iface.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, dock)
    session = AskSession(iface, dock)
    window.show()
    wait_for(lambda: False, 1.0)
    canvas.setExtent(raster.extent())
    canvas.refresh()
    wait_for(lambda: False, 1.0)
    # The canvas is square-ish but not square: the view shows the raster with margins, as a user sees it.
    with ScriptedEngine("geochat", SCRIPTED, piece_delay=0.01) as engine:
        session.engine = engine.url
        ask(session, "Describe the image and locate what you name.", "describe")
        save(window, out / "dock_scripted.png")
        ask(session, "How large is the forest?", "ask")
        save(window, out / "dock_followup.png")
    session.new_view()
    with DemoEngine() as engine:
        session.engine, session.max_tokens = engine.url, 48
        ask(session, "Describe the image and locate what you name.", "describe")
        save(window, out / "dock_demo_model.png")
    session.shutdown()
    print(f"wrote dock_scripted.png, dock_followup.png and dock_demo_model.png into {out}")
    window.close()
    del session, dock, bridge, window
    QgsProject.instance().clear()
    stop_network_thread()  # the dock's requests ran there (QGIS's network stack): ended before QGIS exits
    app.exitQgis()


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    default = ROOT.parent / "shared" / "data" / "rasters" / "cogeo.tif"
    main(Path(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) > 2 else default)
