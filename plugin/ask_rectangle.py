"""The dock's Draw rectangle: a map tool borrows the map until the rectangle is dragged, then the user's tool is
given back. The rectangle is the one dragged on screen (`ScreenRectangleTool`): QGIS's extent tool
(`QgsMapToolExtent`) makes a map-aligned rectangle through the drag's two corners, which on a turned canvas is
not what the user dragged (nor what the dock then rendered). It stays drawn here, as a rubber band (a canvas
item: never part of the rendered view sent to the model), on the ground it was drawn on, also after the map's
CRS changes."""
from __future__ import annotations

from typing import Optional

from qgis.core import Qgis
from qgis.gui import QgsMapTool, QgsRubberBand
from qgis.PyQt.QtCore import QObject, Qt, pyqtSignal
from qgis.PyQt.QtGui import QColor

from .drawn_rectangle import DrawnRectangle

OUTLINE = QColor(255, 60, 0, 220)  # the preview's box colour (plugin.ask_map.draw_boxes)
FILL = QColor(255, 60, 0, 25)


MIN_DRAG_PX = 3  # a drag shorter than this on either side is a click: no rectangle


class RectangleBand:
    """The outline of a drawn rectangle (`show(rectangle)`: a `DrawnRectangle`, in the CRS it was drawn in) on
    `canvas`; `set_visible(bool)`; `remove()` takes it off the canvas (unload)."""

    def __init__(self, canvas):
        self.canvas = canvas
        self.rectangle: Optional[DrawnRectangle] = None
        self._band: Optional[QgsRubberBand] = None
        canvas.destinationCrsChanged.connect(self._place)

    def show(self, rectangle: DrawnRectangle) -> None:
        """Outline `rectangle` (map units of its own CRS) instead of the earlier one; the band is made on first
        use."""
        self.rectangle = rectangle
        if self._band is None:
            self._band = QgsRubberBand(self.canvas, Qgis.GeometryType.Polygon)
            self._band.setStrokeColor(OUTLINE)
            self._band.setFillColor(FILL)
            self._band.setWidth(2)
        self._place()

    def set_visible(self, visible: bool) -> None:
        """Show or hide the outline (kept, not removed); nothing before a rectangle was shown."""
        if self._band is not None:
            self._band.setVisible(visible)

    def _place(self) -> None:
        """The rubber band holds map coordinates of the canvas's CRS: set again from the rectangle's own."""
        if self._band is not None and self.rectangle is not None:
            self._band.setToGeometry(self.rectangle.geometry(), self.rectangle.crs)

    def remove(self) -> None:
        """Take the outline off the canvas and stop following its CRS (unload)."""
        try:
            self.canvas.destinationCrsChanged.disconnect(self._place)
        except TypeError:
            pass
        if self._band is not None:
            self.canvas.scene().removeItem(self._band)
            self._band = None


class ScreenRectangleTool(QgsMapTool):
    """Drag a rectangle on the canvas: while dragging, its outline is the screen rectangle under the mouse (turned
    on the ground as the canvas is); on release `drawn` emits it as a `DrawnRectangle` (the canvas's own
    mapToPixel of its screen corners), or None for a click (a drag under MIN_DRAG_PX on a side). Escape drops
    the drag."""

    drawn = pyqtSignal(object)

    def __init__(self, canvas):
        super().__init__(canvas)
        self._start = None
        self._band = QgsRubberBand(canvas, Qgis.GeometryType.Polygon)
        self._band.setStrokeColor(OUTLINE)
        self._band.setFillColor(FILL)
        self._band.setWidth(2)

    def _rectangle(self, end) -> DrawnRectangle:
        settings = self.canvas().mapSettings()
        return DrawnRectangle.dragged(settings.mapToPixel(), settings.destinationCrs(),
                                      (self._start.x(), self._start.y()), (end.x(), end.y()))

    def canvasPressEvent(self, event):  # noqa: N802 (QGIS's names)
        if event.button() == Qt.MouseButton.LeftButton:
            self._start = event.pixelPoint()

    def canvasMoveEvent(self, event):  # noqa: N802
        if self._start is not None:
            rectangle = self._rectangle(event.pixelPoint())
            self._band.setToGeometry(rectangle.geometry(), rectangle.crs)

    def canvasReleaseEvent(self, event):  # noqa: N802
        if self._start is None or event.button() != Qt.MouseButton.LeftButton:
            return
        end, start = event.pixelPoint(), self._start
        rectangle = self._rectangle(end)
        self._start = None
        self._band.reset(Qgis.GeometryType.Polygon)
        small = min(abs(end.x() - start.x()), abs(end.y() - start.y())) < MIN_DRAG_PX
        self.drawn.emit(None if small else rectangle)

    def keyPressEvent(self, event):  # noqa: N802
        if event.key() == Qt.Key.Key_Escape and self._start is not None:
            self._start = None
            self._band.reset(Qgis.GeometryType.Polygon)

    def deactivate(self):
        self._start = None
        self._band.reset(Qgis.GeometryType.Polygon)
        super().deactivate()

    def remove(self) -> None:
        """Take the drag's outline off the canvas."""
        self.canvas().scene().removeItem(self._band)


class RectangleDrawing(QObject):
    """Draw rectangle with the dock's checkable `button` on `canvas`: on, `ScreenRectangleTool` borrows the map;
    off (the rectangle drawn, or the button), the tool the user had is the map's again, unless another was picked
    meanwhile (which turns the button off). `drawn` emits each rectangle as a `DrawnRectangle` in the map's CRS of
    the time; `band` shows the last one (`set_visible`); `remove()` on unload."""

    drawn = pyqtSignal(object)

    def __init__(self, canvas, button):
        super().__init__(button)
        self.canvas, self.button = canvas, button
        self.band = RectangleBand(canvas)
        self._tool: Optional[ScreenRectangleTool] = None
        self._spent: Optional[ScreenRectangleTool] = None
        self._previous = None
        button.toggled.connect(self._toggle)

    def extent_drawn(self, rectangle) -> None:
        """A rectangle drawn: a `DrawnRectangle`, or a QgsRectangle in the canvas's CRS (map-aligned); None or an
        empty one is no rectangle. The button turns off either way."""
        if isinstance(rectangle, DrawnRectangle) or (rectangle is not None and not rectangle.isEmpty()):
            drawn = DrawnRectangle.of(rectangle, self.canvas.mapSettings().destinationCrs())
            self.band.show(drawn)
            self.drawn.emit(drawn)
        self.button.setChecked(False)

    def _toggle(self, on: bool) -> None:
        if on:
            self._previous = self.canvas.mapTool()
            self._tool = ScreenRectangleTool(self.canvas)
            self._tool.drawn.connect(self.extent_drawn)
            self._tool.deactivated.connect(lambda: self.button.setChecked(False))
            self.canvas.setMapTool(self._tool)
        elif self._tool is not None:
            tool, self._tool = self._tool, None
            previous, self._previous = self._previous, None
            if self.canvas.mapTool() is tool:
                self.canvas.unsetMapTool(tool)
                try:
                    if previous is not None:
                        self.canvas.setMapTool(previous)
                except RuntimeError:  # that tool was deleted meanwhile (its plugin unloaded)
                    pass
            tool.remove()
            self._spent = tool  # kept until the next drawing: this may run inside the tool's own mouse event

    def remove(self) -> None:
        """Give up the drawing tool if it is on (without giving a tool back: the plugin unloads) and remove the
        outline."""
        if self._tool is not None:
            self.canvas.unsetMapTool(self._tool)
            self._tool.remove()
            self._tool = None
        self.band.remove()
