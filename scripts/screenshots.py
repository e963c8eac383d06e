"""Screenshots of GeoVLM in use on real rasters, for the README (`make screenshots`, run under Xvfb). Each is a
QGIS application window (a Layers panel, the map canvas, GeoVLM's dock or an attribute table) after:

- `dock_demo_model.png`: the Ask dock asking the real engine (`geovlm serve`) with the demo model, a random
  stand-in whose text is noise (the dock says so), about `cogeo.tif`;
- `dock_scripted.png`, `dock_followup.png`: the Ask dock asking a scripted stand-in engine that answers a
  recorded GeoChat-syntax text (its boxes written for this scene by hand: placement, not a model's skill) about
  `cogeo.tif`, then a "how large" follow-up;
- `dock_scene_graph.png`: the Ask dock's *scene graph* task to a scripted SkySenseGPT-syntax stand-in about
  `sample_geotiff.tif`, whose boxes are the bounding boxes of the scene's real building footprints
  (`geotiff_labels.geojson`) in the view's pixels; the script checks that each object lands on its building;
- `bulk_captions_dialog.png`, `bulk_captions.png`: *Caption raster tiles* (`geovlm:captiontiles`) run from
  Processing's own dialog over `cogeo.tif`, against a scripted stand-in that answers a caption written by hand
  for each tile (the script checks that each tile got its own): the dialog's log after the run, then the tiles
  layer it loaded (styled by status) with its attribute table.

The rasters are read in place from the shared data (`GEOVLM_SHARED`, else `../shared`).

Usage: python scripts/screenshots.py OUT_DIR
"""
from __future__ import annotations

import io
import os
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.append("/usr/share/qgis/python/plugins")  # QGIS's processing package

from qgis.core import (  # noqa: E402
    QgsApplication,
    QgsContrastEnhancement,
    QgsCoordinateTransform,
    QgsGeometry,
    QgsLayerTreeModel,
    QgsProject,
    QgsRasterLayer,
    QgsRasterMinMaxOrigin,
    QgsRectangle,
    QgsVectorLayer,
    QgsVectorLayerCache,
)
from qgis.gui import (  # noqa: E402
    QgsAttributeTableFilterModel,
    QgsAttributeTableModel,
    QgsAttributeTableView,
    QgsBrowserGuiModel,
    QgsLayerTreeMapCanvasBridge,
    QgsLayerTreeView,
    QgsMapCanvas,
    QgsMessageBar,
)
from qgis.PyQt.QtCore import QBuffer, QCoreApplication, QIODevice, Qt  # noqa: E402
from qgis.PyQt.QtGui import QColor  # noqa: E402
from qgis.PyQt.QtWidgets import QDockWidget, QMainWindow, QVBoxLayout, QWidget  # noqa: E402

DATA = Path(os.environ.get("GEOVLM_SHARED", ROOT.parent / "shared")) / "data"
COGEO = DATA / "rasters" / "cogeo.tif"
BUILDINGS_RASTER = DATA / "rasters" / "sample_geotiff.tif"
BUILDINGS = DATA / "rasters" / "geotiff_labels.geojson"

# GeoChat's grounded description: phrases in <p>..</p>, each followed by its box (answer-formats.md).
SCRIPTED = ["A <p>road</p> {<47><3><100><50>|<90>} climbs through snow-covered fields to a <p>tunnel portal</p> "
            "{<44><40><56><50>|<90>}, and <p>forest</p> {<0><45><75><100>|<90>} covers the lower slopes.",
            "The <p>forest</p> {<0><45><75><100>|<90>} covers about half of the image."]
# A caption for each 256-pixel tile of cogeo.tif, written by hand from the tile, by (row, col).
CAPTIONS = {
    (0, 0): "Snow-covered field at the edge of a dark conifer forest.",
    (0, 1): "Dense conifer forest beside a snowy field.",
    (0, 2): "Snow-covered field crossed by a dirt track.",
    (0, 3): "A divided highway curves past bare brown fields.",
    (1, 0): "Conifer forest with a strip of snowy field.",
    (1, 1): "Earthworks at a tunnel portal below a forest edge.",
    (1, 2): "A road climbs across snow-covered fields.",
    (1, 3): "Snowy slope with brown fields and a forest edge.",
    (2, 0): "Dense conifer forest on a slope.",
    (2, 1): "Conifer forest with a snowy clearing.",
    (2, 2): "Conifer forest with snow between the trees.",
    (2, 3): "Forest edge beside a snow-covered field.",
    (3, 0): "Dense conifer forest.",
    (3, 1): "Conifer forest with patches of snow.",
    (3, 2): "Mixed forest with bare deciduous trees.",
    (3, 3): "Bare deciduous trees on a snowy slope.",
}
GRAPH_QUESTION = "Generate the scene graph of the image: the objects with their boxes and their relations."


class Iface:
    """The part of QgisInterface that the dock and Processing's algorithm dialog use, on a plain main window."""

    def __init__(self, window, canvas, bar, tree):
        self.window, self.canvas, self.bar, self.tree = window, canvas, bar, tree
        self.browser = None
        self.active = None

    def browserModel(self):  # noqa: N802
        if self.browser is None:
            self.browser = QgsBrowserGuiModel(self.window)
            self.browser.initialize()
        return self.browser

    def layerTreeView(self):  # noqa: N802
        return self.tree

    def setActiveLayer(self, layer):  # noqa: N802
        self.active = layer
        return True

    def mapCanvas(self):  # noqa: N802
        return self.canvas

    def mainWindow(self):  # noqa: N802
        return self.window

    def messageBar(self):  # noqa: N802
        return self.bar

    def activeLayer(self):  # noqa: N802
        return self.active

    def addDockWidget(self, area, dock):  # noqa: N802
        self.window.addDockWidget(area, dock)

    def removeDockWidget(self, dock):  # noqa: N802
        self.window.removeDockWidget(dock)


class Window:
    """A window laid out as QGIS's: a Layers panel (the project's layer tree with its legend) on the left, the
    message bar and a square map canvas (`side` pixels: a square raster fills it) in the middle; docks added
    right or below. One per screenshot."""

    def __init__(self, side: int = 700, below: int = 0):
        self.window = QMainWindow()
        central = QWidget(self.window)
        layout = QVBoxLayout(central)
        layout.setContentsMargins(0, 0, 0, 0)
        self.bar = QgsMessageBar(central)
        self.canvas = QgsMapCanvas(central)
        self.canvas.setFixedSize(side, side)
        self.canvas.setSelectionColor(QColor(255, 255, 0, 110))  # the project's selection colour, see-through
        layout.addWidget(self.bar)
        layout.addWidget(self.canvas, 1)
        self.window.setCentralWidget(central)
        root = QgsProject.instance().layerTreeRoot()
        self.model = QgsLayerTreeModel(root, self.window)
        self.model.setFlag(QgsLayerTreeModel.Flag.AllowNodeChangeVisibility)
        self.tree = QgsLayerTreeView(self.window)
        self.tree.setModel(self.model)
        layers = QDockWidget("Layers", self.window)
        layers.setObjectName("Layers")
        layers.setWidget(self.tree)
        layers.setFixedWidth(210)
        self.window.addDockWidget(Qt.DockWidgetArea.LeftDockWidgetArea, layers)
        self.bridge = QgsLayerTreeMapCanvasBridge(root, self.canvas)  # the canvas shows the tree's layers
        self.iface = Iface(self.window, self.canvas, self.bar, self.tree)
        self.below = below  # the height of the docks below the map

    def show(self, extent: QgsRectangle, crs) -> None:
        self.canvas.setDestinationCrs(crs)
        self.fit()
        self.window.show()
        settle(1.0)
        self.canvas.setExtent(extent)
        self.canvas.refresh()
        settle(1.0)

    def fit(self) -> None:
        """The window at the least size of its widgets, plus `below` for the docks below the map."""
        self.window.adjustSize()
        self.window.resize(self.window.width(), self.window.height() + self.below)

    def save(self, path: Path) -> None:
        """The window as a README image (`save`), its layer tree unfolded."""
        self.tree.expandAll()
        settle(0.5)
        save(self.window, path)

    def close(self) -> None:
        self.window.close()
        del self.bridge


def save(widget, path: Path) -> None:
    """`widget` as a PNG, at most 1200 px wide, with a 256-colour palette of its own (a README image)."""
    image = widget.grab().toImage()
    if image.width() > 1200:
        image = image.scaledToWidth(1200, Qt.TransformationMode.SmoothTransformation)
    buffer = QBuffer()
    buffer.open(QIODevice.OpenModeFlag.WriteOnly)
    image.save(buffer, "PNG")
    # Pillow's palette is the image's own (maximum coverage): the widgets' flat colours and the legend's pure
    # red, green and blue are in it exactly, so only the photo is dithered (Qt's Indexed8 takes a fixed
    # palette and speckles the white; median cut turns the legend's red orange)
    with Image.open(io.BytesIO(bytes(buffer.data()))) as full:
        full.convert("RGB").quantize(256, method=Image.Quantize.MAXCOVERAGE).save(path, optimize=True)
    print(f"wrote {path} ({path.stat().st_size // 1024} KB)")


def wait_for(condition, timeout):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        QCoreApplication.processEvents()
        if condition():
            return True
        time.sleep(0.01)
    return False


def settle(seconds: float) -> None:
    """Process events for `seconds` (the canvas repaints, tasks end)."""
    wait_for(lambda: False, seconds)


def new_project(work: Path, name: str, raster_path: Path) -> QgsRasterLayer:
    """A fresh project saved as `work/name.qgz` (the dock's answers go beside it) holding the raster."""
    QgsProject.instance().clear()
    QgsProject.instance().setFileName(str(work / f"{name}.qgz"))
    raster = QgsRasterLayer(str(raster_path), raster_path.stem)
    if not raster.isValid():
        raise SystemExit(f"cannot open {raster_path}")
    QgsProject.instance().addMapLayer(raster)
    QgsProject.instance().setCrs(raster.crs())
    return raster


class Asking:
    """The Ask dock and its session on a window, as the plugin makes them."""

    def __init__(self, shot: Window):
        from geovlm.plugin.ask_session import AskSession
        from geovlm.ui.ask_dock import AskDock

        self.dock = AskDock(shot.window)
        self.dock.setFixedWidth(470)
        shot.iface.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, self.dock)
        self.session = AskSession(shot.iface, self.dock)

    def use(self, url: str, family: str) -> None:
        """Ask the engine at `url`; returns once the dock has read its family (the task picker follows)."""
        self.session.engine = url
        if not wait_for(lambda: self.session.family == family, 30):
            raise SystemExit(f"the dock did not read the family {family!r} from {url}")

    def ask(self, question, task, timeout=240):
        self.dock.question.setPlainText(question)
        self.dock.task.setCurrentText(task)
        if self.dock.task.currentText() != task:
            raise SystemExit(f"the dock offers no task {task!r}")
        self.session.send()
        if not wait_for(lambda: not self.session.busy(), timeout):
            raise SystemExit("the engine did not answer in time")
        settle(1.0)  # the canvas repaints with the new features

    def close(self) -> None:
        self.session.shutdown()


def demo_model(out: Path, work: Path) -> None:
    from ask_engines import DemoEngine

    raster = new_project(work, "demo", COGEO)
    shot = Window()
    asking = Asking(shot)
    shot.show(raster.extent(), raster.crs())
    with DemoEngine() as engine:
        asking.use(engine.url, "geochat")
        asking.session.max_tokens = 48
        asking.ask("Describe the image and locate what you name.", "describe")
        shot.save(out / "dock_demo_model.png")
    asking.close()
    shot.close()


def scripted(out: Path, work: Path) -> None:
    from ask_engines import ScriptedEngine

    raster = new_project(work, "ask", COGEO)
    shot = Window()
    asking = Asking(shot)
    shot.show(raster.extent(), raster.crs())
    with ScriptedEngine("geochat", SCRIPTED, piece_delay=0.01) as engine:
        asking.use(engine.url, "geochat")
        asking.ask("Describe the image and locate what you name.", "describe")
        shot.save(out / "dock_scripted.png")
        asking.ask("How large is the forest?", "ask")
        shot.save(out / "dock_followup.png")
    asking.close()
    shot.close()


def building_boxes(view: QgsRectangle, crs):
    """[(footprint geometry in `crs`, (cx, cy, w, h) in 0-100 of the view)] of the real buildings lying wholly in
    `view` (a north-up extent in `crs`), in a nearest-neighbour path from the west-most."""
    labels = QgsVectorLayer(str(BUILDINGS), "buildings", "ogr")
    to_view = QgsCoordinateTransform(labels.crs(), crs, QgsProject.instance())
    found = []
    for feature in labels.getFeatures():
        geometry = feature.geometry()
        geometry.transform(to_view)
        box = geometry.boundingBox()
        if view.contains(box):
            found.append((geometry, box))
    path = [min(found, key=lambda item: item[1].xMinimum())]
    rest = [item for item in found if item is not path[0]]
    while rest:
        last = path[-1][1].center()
        nearest = min(rest, key=lambda item: item[1].center().sqrDist(last))
        path.append(nearest)
        rest.remove(nearest)
    out = []
    for geometry, box in path:
        cx = 100 * (box.center().x() - view.xMinimum()) / view.width()
        cy = 100 * (view.yMaximum() - box.center().y()) / view.height()
        out.append((geometry, (cx, cy, 100 * box.width() / view.width(), 100 * box.height() / view.height())))
    return out


def graph_answer(boxes) -> str:
    """SkySenseGPT's image-level scene graph (answer-formats.md): one sentence a relation, `<ref>label</ref>
    <rbox>({<cx><cy><h><w>|<90>})</rbox> <rel>predicate</rel> <ref>label</ref><rbox>(..)</rbox>.` (an upright box
    comes out as 90 with w and h swapped), here `adjacent` for each pair of neighbours along `boxes`."""
    sentences = [f"<ref>building</ref><rbox>({{<{cx:.2f}><{cy:.2f}><{h:.2f}><{w:.2f}>|<90>}})</rbox>"
                 for _, (cx, cy, w, h) in boxes]
    pairs = [f"{a} <rel>adjacent</rel> {b}." for a, b in zip(sentences[0::2], sentences[1::2])]
    return " ".join(pairs + ([sentences[-1] + "."] if len(sentences) % 2 else []))


def scene_graph(out: Path, work: Path) -> None:
    from ask_engines import ScriptedEngine

    raster = new_project(work, "graph", BUILDINGS_RASTER)
    # 16-bit panchromatic: stretched 2-98 % (cumulative cut), as QGIS stretches a single band by default
    raster.setContrastEnhancement(QgsContrastEnhancement.ContrastEnhancementAlgorithm.StretchToMinimumMaximum,
                                  QgsRasterMinMaxOrigin.Limits.CumulativeCut)
    shot = Window()
    asking = Asking(shot)
    full = raster.extent()  # two rows of houses in the upper middle of the scene
    shot.show(QgsRectangle(full.xMinimum() + 180, full.yMaximum() - 160, full.xMinimum() + 300,
                           full.yMaximum() - 40), raster.crs())
    view = shot.canvas.mapSettings().visibleExtent()
    boxes = building_boxes(view, raster.crs())
    with ScriptedEngine("skysensegpt", graph_answer(boxes), piece_delay=0.005) as engine:
        asking.use(engine.url, "skysensegpt")
        asking.ask(GRAPH_QUESTION, "scene graph")
    [objects] = QgsProject.instance().mapLayersByName("geovlm_objects")
    [relations] = QgsProject.instance().mapLayersByName("geovlm_relations")
    placed = [f.geometry() for f in objects.getFeatures()]
    if len(placed) != len(boxes) or relations.featureCount() != len(boxes) // 2:
        raise SystemExit(f"{len(placed)} objects and {relations.featureCount()} relations for {len(boxes)} buildings")
    for footprint, _ in boxes:  # each object is its building's bounding box, to a small fraction of it
        box = QgsGeometry.fromRect(footprint.boundingBox())
        best = max(placed, key=lambda g: g.intersection(box).area())
        iou = best.intersection(box).area() / best.combine(box).area()
        if iou < 0.9:
            raise SystemExit(f"a box lies off its building (IoU {iou:.2f} with its bounding box)")
    shot.save(out / "dock_scene_graph.png")
    asking.close()
    shot.close()


def table_dock(shot: Window, layer: QgsVectorLayer, columns) -> QgsAttributeTableView:
    """The attribute table of `layer` (only `columns`, in that order) in a dock below the map."""
    cache = QgsVectorLayerCache(layer, 100, shot.window)
    model = QgsAttributeTableModel(cache, shot.window)
    model.loadLayer()
    filtered = QgsAttributeTableFilterModel(shot.canvas, model, shot.window)
    config = layer.attributeTableConfig()
    config.update(layer.fields())
    kept = []
    for column in config.columns():
        column.hidden = column.name not in columns
        kept.append(column)
    kept.sort(key=lambda c: columns.index(c.name) if c.name in columns else len(columns))
    config.setColumns(kept)
    filtered.setAttributeTableConfig(config)
    view = QgsAttributeTableView(shot.window)
    view.setModel(filtered)
    view.horizontalHeader().setStretchLastSection(True)
    dock = QDockWidget(f"{layer.name()} — Features Total: {layer.featureCount()}", shot.window)
    dock.setWidget(view)
    shot.window.addDockWidget(Qt.DockWidgetArea.BottomDockWidgetArea, dock)
    shot.keep = (cache, model, filtered)
    return view


def bulk_captions(out: Path, work: Path) -> None:
    """Caption raster tiles from its dialog, as a user runs it: parameters set, Run, the log; the tiles layer
    it loads (styled by status) with its attribute table."""
    import qgis.utils
    from ask_engines import ScriptedEngine

    from geovlm.plugin.provider import GeoVlmProvider

    raster = new_project(work, "captions", COGEO)
    shot = Window(side=600, below=340)
    qgis.utils.iface = shot.iface  # before Processing's GUI modules are imported: they keep the iface they find
    from processing.core.Processing import Processing
    from processing.gui.AlgorithmDialog import AlgorithmDialog

    Processing.initialize()
    provider = GeoVlmProvider()
    QgsApplication.processingRegistry().addProvider(provider)
    shot.show(raster.extent(), raster.crs())
    answers = [CAPTIONS[key] for key in sorted(CAPTIONS)]  # one request at a time: tiles in row-major order
    dialog = AlgorithmDialog(QgsApplication.processingRegistry().createAlgorithmById("geovlm:captiontiles"),
                             parent=shot.window)
    with ScriptedEngine("geochat", answers, piece_delay=0.005) as engine:
        dialog.setParameters({"INPUT": raster, "TILE_SIZE": 256, "ENGINE": engine.url, "FAMILY": "geochat",
                              "CONCURRENCY": 1, "QUESTION": "Describe the image in one sentence.",
                              "OUTPUT": str(work / "captions.gpkg")})
        dialog.resize(900, 640)
        dialog.show()
        settle(0.5)
        dialog.runAlgorithm()
        if not wait_for(lambda: vector_layers(), 120):
            raise SystemExit("the captiontiles dialog loaded no layer: " + dialog.feedback.textLog()[-2000:])
        settle(1.0)
    save(dialog, out / "bulk_captions_dialog.png")
    dialog.close()
    [tiles] = vector_layers()
    for feature in tiles.getFeatures():
        if feature["caption"] != CAPTIONS[(feature["row"], feature["col"])]:
            raise SystemExit(f"tile {feature['tile_id']} got another tile's caption: {feature['caption']!r}")
    table = table_dock(shot, tiles, ["tile_id", "status", "caption", "model", "seconds"])
    shot.fit()
    shot.window.resizeDocks([table.parent()], [shot.window.height()], Qt.Orientation.Vertical)  # the rest
    tunnel = next(f.id() for f in tiles.getFeatures() if (f["row"], f["col"]) == (1, 1))
    tiles.selectByIds([tunnel])
    table.resizeColumnsToContents()
    shot.canvas.refresh()
    settle(1.0)
    shot.save(out / "bulk_captions.png")
    shot.close()
    QgsApplication.processingRegistry().removeProvider(provider)


def vector_layers():
    """The project's vector layers."""
    return [layer for layer in QgsProject.instance().mapLayers().values() if isinstance(layer, QgsVectorLayer)]


def main(out: Path) -> None:
    from geovlm.plugin.qgis_transport import stop_network_thread

    app = QgsApplication([], True)
    app.initQgis()
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="geovlm-shots-") as folder:
        work = Path(folder)
        demo_model(out, work)
        scripted(out, work)
        scene_graph(out, work)
        bulk_captions(out, work)
        QgsProject.instance().clear()
    stop_network_thread()  # the dock's requests ran there (QGIS's network stack): ended before QGIS exits
    app.exitQgis()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    main(Path(sys.argv[1]))
