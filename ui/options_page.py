"""GeoVLM's page in QGIS's Options dialog (Settings ▸ Options ▸ GeoVLM): the engine and the rendering size.

`GeoVlmOptionsFactory` is registered with `iface.registerOptionsWidgetFactory` in the plugin's `initGui` and
unregistered in `unload`; each time the Options dialog opens it makes a `GeoVlmOptionsPage`, which reads
`plugin.settings.load()` and writes `plugin.settings.save()` when the user presses OK (`apply`). Keys are
never typed here: each remote engine names a `QgsAuthManager` configuration (`QgsAuthConfigSelect`).
"""
from __future__ import annotations

from qgis.core import Qgis, QgsMessageLog
from qgis.gui import QgsAuthConfigSelect, QgsFileWidget, QgsOptionsPageWidget, QgsOptionsWidgetFactory
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtGui import QIcon
from qgis.PyQt.QtWidgets import (
    QAbstractItemView,
    QButtonGroup,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QRadioButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
)

from ..core.profiles import family_names, get_profile
from ..plugin import settings as engine_settings
from ..plugin.engine_manager import engine_manager, state_text
from ..plugin.provider import ICON

LOG_TAG = "GeoVLM"


class EndpointTable(QTableWidget):
    """Remote engines: one row each, a URL and a `QgsAuthManager` configuration (or none)."""

    def __init__(self, parent=None):
        super().__init__(0, 2, parent)
        self.setHorizontalHeaderLabels(["Engine URL (http://host:port)", "Authentication"])
        self.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        # Interactive, widened in add(): ResizeToContents does not measure cell widgets ("No A…").
        self.horizontalHeader().setSectionResizeMode(1, QHeaderView.ResizeMode.Interactive)
        self.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.verticalHeader().setVisible(False)

    def add(self, url: str = "", authcfg: str = "") -> None:
        """A row; an `authcfg` this QGIS does not know (yet) is kept unless the user picks another."""
        row = self.rowCount()
        self.insertRow(row)
        item = QTableWidgetItem(url)
        item.setData(Qt.ItemDataRole.UserRole, authcfg)
        self.setItem(row, 0, item)
        select = QgsAuthConfigSelect(self)
        select.setConfigId(authcfg)
        select.selectedConfigIdChanged.connect(lambda config_id: item.setData(Qt.ItemDataRole.UserRole, config_id))
        self.setCellWidget(row, 1, select)
        grid = 1 if self.showGrid() else 0  # a cell is its column (row) less the grid line (QTableView::visualRect)
        self.setRowHeight(row, max(self.rowHeight(row), select.sizeHint().height() + grid))
        self.setColumnWidth(1, max(self.columnWidth(1), select.sizeHint().width() + grid))

    def remove_selected(self) -> None:
        for row in sorted({index.row() for index in self.selectedIndexes()}, reverse=True):
            self.removeRow(row)

    def endpoints(self):
        """(valid endpoints, one line per row refused)."""
        good, bad = [], []
        for row in range(self.rowCount()):
            url = (self.item(row, 0).text() if self.item(row, 0) else "").strip()
            if not url:
                continue
            try:
                url = engine_settings.check_url(url)
            except ValueError as exc:
                bad.append(str(exc))
                continue
            good.append(engine_settings.Endpoint(url, self.item(row, 0).data(Qt.ItemDataRole.UserRole) or ""))
        return good, bad


PAGE_NAME = "GeoVLM"  # the page's title in the Options dialog, and its object name


class GeoVlmOptionsPage(QgsOptionsPageWidget):
    """The page's widgets, filled from the stored settings; `apply()` stores them."""

    def __init__(self, parent=None):
        super().__init__(parent)
        # QGIS finds a page by its object name: to open the dialog on it (showOptionsDialog(..., "GeoVLM")) and to
        # show it when isValid() keeps the dialog open
        self.setObjectName(PAGE_NAME)
        value = engine_settings.load()
        layout = QVBoxLayout(self)
        layout.addWidget(self._engine_box(value))
        layout.addWidget(self._local_box(value))
        layout.addWidget(self._remote_box(value))
        layout.addWidget(self._render_box(value))
        layout.addStretch(1)
        manager = engine_manager()
        manager.stateChanged.connect(self._show_state)
        self._show_state(manager.refresh(), manager.detail)

    # ------------------------------------------------------------ sections

    def _engine_box(self, value) -> QGroupBox:
        box = QGroupBox("Engine")
        form = QFormLayout(box)
        self.local_radio = QRadioButton("The local engine (started by GeoVLM on this computer)")
        self.remote_radio = QRadioButton("Remote engines (geovlm serve, vLLM, SGLang, Ollama…)")
        self.mode_group = QButtonGroup(self)
        self.mode_group.addButton(self.local_radio)
        self.mode_group.addButton(self.remote_radio)
        (self.local_radio if value.mode == "local" else self.remote_radio).setChecked(True)
        form.addRow(self.local_radio)
        form.addRow(self.remote_radio)
        self.family = QComboBox()
        self.family.addItem("Read from the engine", "")
        for name in family_names():
            self.family.addItem(get_profile(name).title, name)
        self.family.setCurrentIndex(max(0, self.family.findData(value.family)))
        form.addRow("Model family", self.family)
        self.request_timeout = _seconds(value.request_timeout_s, 5, 3600)
        form.addRow("Wait for data at most", self.request_timeout)
        return box

    def _local_box(self, value) -> QGroupBox:
        box = QGroupBox("Local engine")
        form = QFormLayout(box)
        self.state_label = QLabel()
        self.state_label.setWordWrap(True)
        setup = QPushButton("Set up the local engine…")
        setup.clicked.connect(self.open_setup)
        restart = QPushButton("Restart")
        restart.clicked.connect(lambda: engine_manager().restart())
        row = QHBoxLayout()
        row.addWidget(self.state_label, 1)
        row.addWidget(setup)
        row.addWidget(restart)
        form.addRow("State", row)
        self.model_dir = QgsFileWidget()
        self.model_dir.setStorageMode(QgsFileWidget.StorageMode.GetDirectory)
        self.model_dir.setFilePath(value.model_dir)
        self.model_dir.lineEdit().setPlaceholderText("empty: the demo model (a random stand-in)")
        form.addRow("Model folder", self.model_dir)
        self.python = QgsFileWidget()
        self.python.setStorageMode(QgsFileWidget.StorageMode.GetFile)
        self.python.setFilePath(value.python)
        self.python.lineEdit().setPlaceholderText(f"empty: {engine_settings.venv_python()}")
        form.addRow("Engine's Python", self.python)
        self.start_timeout = _seconds(value.start_timeout_s, 10, 7200)
        form.addRow("Start within", self.start_timeout)
        return box

    def _remote_box(self, value) -> QGroupBox:
        box = QGroupBox("Remote engines (requests are shared among them)")
        layout = QVBoxLayout(box)
        self.endpoints = EndpointTable()
        for endpoint in value.endpoints:
            self.endpoints.add(endpoint.url, endpoint.authcfg)
        layout.addWidget(self.endpoints)
        row = QHBoxLayout()
        add, remove = QPushButton("Add"), QPushButton("Remove")
        add.clicked.connect(lambda: self.endpoints.add())
        remove.clicked.connect(self.endpoints.remove_selected)
        row.addWidget(add)
        row.addWidget(remove)
        row.addStretch(1)
        layout.addLayout(row)
        self.url_problem = QLabel()  # why OK does not close the dialog: a URL that cannot be used
        self.url_problem.setWordWrap(True)
        self.url_problem.setStyleSheet("color: #b00020")
        self.url_problem.setVisible(False)
        layout.addWidget(self.url_problem)
        return box

    def isValid(self) -> bool:  # noqa: N802 (QGIS's name)
        """QGIS keeps the Options dialog open on this page while it is False: an engine URL that cannot be used
        (say `127.0.0.1:8000`, without http://) is shown under the table, never dropped unseen at OK; so is
        *Remote engines* chosen with no URL (every question would fail with "no engine configured")."""
        endpoints, refused = self.endpoints.endpoints()
        if not endpoints and not refused and not self.local_radio.isChecked():
            refused = ["Remote engines needs at least one engine URL (Add, then http://host:port), or choose the "
                       "local engine"]
        self.url_problem.setText("Not saved: " + "; ".join(refused) if refused else "")
        self.url_problem.setVisible(bool(refused))
        return not refused

    def _render_box(self, value) -> QGroupBox:
        box = QGroupBox("Image sent to the model")
        form = QFormLayout(box)
        self.from_canvas = QCheckBox("The view's own size in pixels")
        self.from_canvas.setChecked(value.render_from_canvas)
        form.addRow(self.from_canvas)
        self.width_spin = _pixels(value.render_width)
        self.height_spin = _pixels(value.render_height)
        size = QHBoxLayout()
        self.times_label = QLabel("×")
        size.addWidget(self.width_spin, 1)  # the spin boxes share the room; the × sits between them
        size.addWidget(self.times_label, 0)
        size.addWidget(self.height_spin, 1)
        form.addRow("Otherwise, width × height", size)
        self.dpr = QDoubleSpinBox()
        self.dpr.setRange(0.5, 4.0)
        self.dpr.setSingleStep(0.5)
        self.dpr.setValue(value.render_dpr)
        form.addRow("Device pixel ratio", self.dpr)
        self.from_canvas.toggled.connect(self._size_enabled)
        self._size_enabled(value.render_from_canvas)
        return box

    def _size_enabled(self, from_canvas: bool) -> None:
        self.width_spin.setEnabled(not from_canvas)
        self.height_spin.setEnabled(not from_canvas)

    # ------------------------------------------------------------ actions

    def _show_state(self, state: str, detail: str) -> None:
        try:
            self.state_label.setText(state_text(state, detail))  # the set-up dialog's words for the set-up
        except RuntimeError:  # the page is gone (the Options dialog closed)
            pass

    def open_setup(self) -> None:
        from .engine_setup_dialog import EngineSetupDialog

        dialog = EngineSetupDialog(self)
        dialog.exec()
        engine_manager().refresh()

    def current(self) -> engine_settings.EngineSettings:
        """The settings as the widgets show them (rows with an unusable URL left out and logged)."""
        endpoints, refused = self.endpoints.endpoints()
        for line in refused:
            QgsMessageLog.logMessage(f"engine URL not saved: {line}", LOG_TAG, Qgis.MessageLevel.Warning)
        return engine_settings.EngineSettings(
            mode="local" if self.local_radio.isChecked() else "remote",
            endpoints=endpoints,
            model_dir=self.model_dir.filePath().strip(),
            family=self.family.currentData() or "",
            python=self.python.filePath().strip(),
            request_timeout_s=float(self.request_timeout.value()),
            start_timeout_s=float(self.start_timeout.value()),
            render_width=self.width_spin.value(),
            render_height=self.height_spin.value(),
            render_dpr=self.dpr.value(),
            render_from_canvas=self.from_canvas.isChecked(),
        )

    def apply(self) -> None:
        engine_settings.save(self.current())
        engine_manager().settings_saved()


class GeoVlmOptionsFactory(QgsOptionsWidgetFactory):
    """Makes GeoVLM's Options page each time QGIS's Options dialog opens."""

    def __init__(self):
        super().__init__(PAGE_NAME, QIcon(str(ICON)))

    def icon(self) -> QIcon:
        return QIcon(str(ICON))

    def createWidget(self, parent):  # noqa: N802 (QGIS's name)
        return GeoVlmOptionsPage(parent)


def _seconds(value: float, low: int, high: int) -> QSpinBox:
    spin = QSpinBox()
    spin.setRange(low, high)
    spin.setSuffix(" s")
    spin.setValue(int(round(value)))
    return spin


def _pixels(value: int) -> QSpinBox:
    spin = QSpinBox()
    spin.setRange(64, 8192)
    spin.setSuffix(" px")
    spin.setValue(int(value))
    return spin
