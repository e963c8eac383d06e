"""The engine's entries in QGIS: GeoVLM's Options page and the menu entry "Set up the local engine…".

`EngineUi.init_gui()` runs in the plugin's `initGui`, `unload()` in its `unload`: the Options factory is
unregistered, the action removed, an open set-up dialog closed and its running set-up cancelled (the local
engine itself is stopped by the plugin through `engine_manager.shutdown_engine`).
"""
from __future__ import annotations

from qgis.PyQt.QtGui import QAction, QIcon

from ..plugin.provider import ICON
from .options_page import GeoVlmOptionsFactory

MENU = "&GeoVLM"


class EngineUi:
    def __init__(self, iface):
        self.iface = iface
        self.factory = None
        self.action = None
        self.dialog = None

    def init_gui(self) -> None:
        from ..plugin.qgis_transport import remember_gui_manager

        remember_gui_manager()  # engine requests follow QGIS's proxy settings when the user changes them
        self.factory = GeoVlmOptionsFactory()
        self.iface.registerOptionsWidgetFactory(self.factory)
        self.action = QAction(QIcon(str(ICON)), "Set up the local engine…", self.iface.mainWindow())
        self.action.triggered.connect(self.open_setup)
        self.iface.addPluginToMenu(MENU, self.action)

    def open_setup(self) -> None:
        """Show the set-up dialog (not modal: QGIS stays usable while pip works)."""
        from .engine_setup_dialog import EngineSetupDialog

        if self.dialog is None:
            self.dialog = EngineSetupDialog(self.iface.mainWindow())
        self.dialog.show()
        self.dialog.raise_()

    def unload(self) -> None:
        if self.factory is not None:
            self.iface.unregisterOptionsWidgetFactory(self.factory)
            self.factory = None
        if self.action is not None:
            self.iface.removePluginMenu(MENU, self.action)
            self.action.triggered.disconnect(self.open_setup)
            self.action.deleteLater()
            self.action = None
        if self.dialog is not None:
            self.dialog.shutdown()
            self.dialog.close()
            self.dialog.deleteLater()
            self.dialog = None
