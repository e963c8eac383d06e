"""The plugin object QGIS creates: registers the Processing provider and the toolbar entry."""
from __future__ import annotations

from qgis.core import Qgis, QgsApplication, QgsMessageLog
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtGui import QAction, QIcon

from .provider import ICON, GeoVlmProvider

LOG_TAG = "GeoVLM"
ASK_ICON = ICON.with_name("ask.svg")  # the toolbar's "Ask the map…": not the same picture as "Parse saved answers…"
# Bulk runs in the GeoVLM menu: each opens its Processing algorithm's dialog (history, batch mode, resume).
BULK_MENU = (("geovlm:captiontiles", "Caption raster tiles…"),
             ("geovlm:detecttiles", "Find objects and relations in raster tiles…"),
             ("geovlm:captionfeatures", "Caption polygon features…"))


class GeoVlmPlugin:
    def __init__(self, iface):
        self.iface = iface
        self.provider = None
        self.actions = []
        self.engine_ui = None
        self.ask = None

    def initProcessing(self):  # noqa: N802 (QGIS calls it by this name)
        self.provider = GeoVlmProvider()
        QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self):  # noqa: N802
        self.initProcessing()
        parse = QAction(QIcon(str(ICON)), "Parse saved answers into layers…", self.iface.mainWindow())
        parse.triggered.connect(self.open_parse_dialog)
        self.iface.addPluginToMenu("&GeoVLM", parse)
        self.iface.addToolBarIcon(parse)
        self.actions.append(parse)
        from ..ui.engine_menu import EngineUi

        self.engine_ui = EngineUi(self.iface)  # Options page and "Set up the local engine…"
        self.engine_ui.init_gui()
        ask = QAction(QIcon(str(ASK_ICON)), "Ask the map…", self.iface.mainWindow())
        ask.triggered.connect(self.open_ask_dock)
        self.iface.addPluginToMenu("&GeoVLM", ask)
        self.iface.addToolBarIcon(ask)
        self.actions.append(ask)
        for alg_id, title in BULK_MENU:
            action = QAction(QIcon(str(ICON)), title, self.iface.mainWindow())
            action.triggered.connect(lambda _checked=False, alg_id=alg_id: self.open_algorithm(alg_id))
            self.iface.addPluginToMenu("&GeoVLM", action)
            self.actions.append(action)
        QgsMessageLog.logMessage("GeoVLM loaded", LOG_TAG, Qgis.MessageLevel.Info)

    def unload(self):
        if self.ask is not None:
            self.ask.shutdown()  # a request in flight is cancelled and its worker waited for
            self.iface.removeDockWidget(self.ask.dock)
            self.ask.dock.deleteLater()
            self.ask = None
        for action in self.actions:
            self.iface.removePluginMenu("&GeoVLM", action)
            self.iface.removeToolBarIcon(action)
            action.deleteLater()
        self.actions = []
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
        if self.engine_ui is not None:
            self.engine_ui.unload()
            self.engine_ui = None
        from .engine_manager import shutdown_engine

        shutdown_engine()  # the local engine, if this process started one

    def open_ask_dock(self):
        """The "Ask the map" dock (made on first use, then shown again)."""
        if self.ask is None:
            from ..ui.ask_dock import AskDock
            from .ask_session import AskSession

            dock = AskDock(self.iface.mainWindow())
            self.iface.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, dock)
            self.ask = AskSession(self.iface, dock)
        self.ask.dock.show()
        self.ask.dock.raise_()

    def open_algorithm(self, alg_id: str):
        """A Processing algorithm's own dialog."""
        from processing import execAlgorithmDialog

        execAlgorithmDialog(alg_id, {})

    def open_parse_dialog(self):
        """The GUI reuses the Processing algorithm: its own dialog, history and batch mode."""
        from processing import execAlgorithmDialog

        from .alg_parse_answers import remembered

        execAlgorithmDialog("geovlm:parseanswers", remembered())
