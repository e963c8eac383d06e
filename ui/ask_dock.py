"""The "Ask the map" dock: widgets only. `plugin.ask_session.AskSession` gives them their behaviour."""
from __future__ import annotations

from qgis.core import Qgis
from qgis.gui import QgsDockWidget, QgsMapLayerComboBox
from qgis.PyQt.QtCore import QEvent, Qt
from qgis.PyQt.QtGui import QPixmap
from qgis.PyQt.QtWidgets import (
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QSizePolicy,
    QSplitter,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

# (key, what the user reads) of the image sources.
SOURCES = (("map", "Visible map"), ("raster", "One raster layer, at its own resolution"),
           ("rectangle", "A rectangle drawn on the map"), ("selected", "The selected feature (identify)"))


class AskDock(QgsDockWidget):
    """Engine state line with a restart button; the transcript (links to features) and the preview of what
    the model saw; the question box, task picker, source picker (with a raster layer picker and a "Draw"
    button for the rectangle), and Send, Stop, New view, Copy answer, Export."""

    def __init__(self, parent=None):
        super().__init__("GeoVLM: ask the map", parent)
        self.setObjectName("GeoVlmAskDock")
        body = QWidget(self)
        layout = QVBoxLayout(body)

        state_row = QHBoxLayout()
        self.engine_state = QLabel("Engine: …", body)
        self.engine_state.setWordWrap(True)
        self.engine_state.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.restart = QPushButton("Restart engine", body)
        self.restart.setVisible(False)
        state_row.addWidget(self.engine_state, 1)
        state_row.addWidget(self.restart)
        layout.addLayout(state_row)

        splitter = QSplitter(Qt.Orientation.Vertical, body)
        self.transcript = QTextBrowser(splitter)
        self.transcript.setOpenLinks(False)
        self.transcript.setPlaceholderText("Ask about what the map shows. Answers and their boxes appear here.")
        self.preview = QLabel(splitter)
        self.preview.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.preview.setMinimumHeight(120)
        self.preview.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Ignored)
        self.preview.setToolTip("What the model saw, with the boxes of its last answer")
        layout.addWidget(splitter, 1)

        self.question = QPlainTextEdit(body)
        self.question.setPlaceholderText("Question (Ctrl+Enter sends it; for identify: the region is the rectangle or "
                                         "the selected feature)")
        self.question.setMaximumHeight(70)
        layout.addWidget(self.question)

        pick_row = QFormLayout()
        self.task = QComboBox(body)
        self.task.setToolTip("The tasks of the engine's model family")
        self.source = QComboBox(body)
        for key, title in SOURCES:
            self.source.addItem(title, key)
        # The longest source title would set the dock's least width (about 580 px with the button row), wider
        # than the room beside QGIS's panels on a laptop: the pickers shrink, their lists still show whole titles.
        for combo in (self.task, self.source):
            combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
            combo.setMinimumContentsLength(8)
        pick_row.addRow("Task", self.task)  # one picker a row: side by side they set the dock's least width
        pick_row.addRow("Source", self.source)
        layout.addLayout(pick_row)

        layer_row = QHBoxLayout()
        self.raster = QgsMapLayerComboBox(body)
        self.raster.setFilters(Qgis.LayerFilter.RasterLayer)
        self.raster.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.raster.setMinimumContentsLength(8)
        self.draw = QPushButton("Draw rectangle", body)
        self.draw.setCheckable(True)
        layer_row.addWidget(self.raster, 1)
        layer_row.addWidget(self.draw)
        layout.addLayout(layer_row)

        buttons = QHBoxLayout()
        self.send = QPushButton("Send", body)
        self.send.setDefault(True)
        self.stop = QPushButton("Stop", body)
        self.stop.setEnabled(False)
        self.new_view = QPushButton("New view", body)
        self.new_view.setToolTip("Forget the conversation's image: the next question renders the map again")
        self.copy = QPushButton("Copy answer", body)
        self.copy.setToolTip("Copy the last answer as the model wrote it (its raw text, box syntax included), "
                             "which `geovlm parse` reads")
        self.copy.setEnabled(False)  # until there is an answer: a click before it would copy nothing, silently
        self.export = QPushButton("Export…", body)
        for button in (self.send, self.stop, self.new_view):
            buttons.addWidget(button)
        # Enter is a new line of the question (it may have several); Ctrl+Enter sends it, as Send does when enabled
        self.send.setToolTip("Ask the question (Ctrl+Enter in the question box)")
        self.question.installEventFilter(self)
        layout.addLayout(buttons)
        keep = QHBoxLayout()  # a second row: five buttons in one would set the dock's least width
        keep.addStretch(1)
        keep.addWidget(self.copy)
        keep.addWidget(self.export)
        layout.addLayout(keep)
        self.setWidget(body)
        self.source.currentIndexChanged.connect(self._source_changed)
        self._source_changed()
        self.closed.connect(lambda: self.draw.setChecked(False))  # a hidden dock does not keep the map's tool

    def eventFilter(self, watched, event):  # noqa: N802 (Qt's name)
        """Ctrl+Enter (either Enter key) in the question box clicks Send, which does nothing while it is disabled."""
        if (watched is self.question and event.type() == QEvent.Type.KeyPress
                and event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter)
                and event.modifiers() & Qt.KeyboardModifier.ControlModifier):
            self.send.click()
            return True
        return super().eventFilter(watched, event)

    def source_key(self) -> str:
        return self.source.currentData()

    def _source_changed(self, *_):
        key = self.source_key()
        self.raster.setEnabled(key == "raster")
        self.draw.setEnabled(key == "rectangle")
        if key != "rectangle":
            self.draw.setChecked(False)

    def set_tasks(self, tasks) -> None:
        """Offer these task words, keeping the current one when it stays available."""
        current = self.task.currentText()
        self.task.blockSignals(True)
        self.task.clear()
        self.task.addItems(list(tasks))
        if current in tasks:
            self.task.setCurrentText(current)
        self.task.blockSignals(False)

    def set_busy(self, busy: bool) -> None:
        self.send.setEnabled(not busy)
        self.stop.setEnabled(busy)
        self.new_view.setEnabled(not busy)

    def clear_preview(self) -> None:
        """No picture: the last answer's was of a project that is gone."""
        self._pixmap = None
        self.preview.clear()

    def show_preview(self, pixmap: QPixmap) -> None:
        self._pixmap = pixmap
        self._fit_preview()

    def _fit_preview(self) -> None:
        pixmap = getattr(self, "_pixmap", None)
        if pixmap is not None and not pixmap.isNull():
            self.preview.setPixmap(pixmap.scaled(self.preview.size(), Qt.AspectRatioMode.KeepAspectRatio,
                                                 Qt.TransformationMode.SmoothTransformation))

    def resizeEvent(self, event):  # noqa: N802 (Qt's name)
        super().resizeEvent(event)
        self._fit_preview()
