"""The dock's Draw rectangle: QGIS's extent tool borrows the map until the rectangle is drawn, then the user's
tool is given back. The tool clears its own outline when it is released, so the rectangle the next question is
about would not be seen: it stays drawn here, as a rubber band (a canvas item: never part of the rendered view
sent to the model), on the ground it was drawn on, also after the map's CRS changes."""
from __future__ import annotations

from typing import Optional

from qgis.core import Qgis, QgsGeometry, QgsRectangle, QgsReferencedRectangle
from qgis.gui import QgsMapToolExtent, QgsRubberBand
from qgis.PyQt.QtCore import QObject, pyqtSignal
from qgis.PyQt.QtGui import QColor

OUTLINE = QColor(255, 60, 0, 220)  # the preview's box colour (plugin.ask_map.draw_boxes)
FILL = QColor(255, 60, 0, 25)


class RectangleBand:
    """The outline of a drawn rectangle (`show(rectangle)`: a QgsReferencedRectangle, in the CRS it was drawn in)
    on `canvas`; `set_visible(bool)`; `remove()` takes it off the canvas (unload)."""

    def __init__(self, canvas):
        self.canvas = canvas
        self.rectangle: Optional[QgsReferencedRectangle] = None
        self._band: Optional[QgsRubberBand] = None
        canvas.destinationCrsChanged.connect(self._place)

    def show(self, rectangle: QgsReferencedRectangle) -> None:
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
            self._band.setToGeometry(QgsGeometry.fromRect(self.rectangle), self.rectangle.crs())

    def remove(self) -> None:
        """Take the outline off the canvas and stop following its CRS (unload)."""
        try:
            self.canvas.destinationCrsChanged.disconnect(self._place)
        except TypeError:
            pass
        if self._band is not None:
            self.canvas.scene().removeItem(self._band)
            self._band = None


class RectangleDrawing(QObject):
    """Draw rectangle with the dock's checkable `button` on `canvas`: on, the extent tool borrows the map; off
    (the rectangle drawn, or the button), the tool the user had is the map's again, unless another was picked
    meanwhile (which turns the button off). `drawn` emits each rectangle as a QgsReferencedRectangle in the
    map's CRS of the time; `band` shows the last one (`set_visible`); `remove()` on unload."""

    drawn = pyqtSignal(object)

    def __init__(self, canvas, button):
        super().__init__(button)
        self.canvas, self.button = canvas, button
        self.band = RectangleBand(canvas)
        self._tool: Optional[QgsMapToolExtent] = None
        self._previous = None
        button.toggled.connect(self._toggle)

    def extent_drawn(self, extent: QgsRectangle) -> None:
        """What the extent tool reports: a rectangle in the canvas's CRS (an empty one is no rectangle)."""
        if not extent.isEmpty():
            rectangle = QgsReferencedRectangle(extent, self.canvas.mapSettings().destinationCrs())
            self.band.show(rectangle)
            self.drawn.emit(rectangle)
        self.button.setChecked(False)

    def _toggle(self, on: bool) -> None:
        if on:
            self._previous = self.canvas.mapTool()
            self._tool = QgsMapToolExtent(self.canvas)
            self._tool.extentChanged.connect(self.extent_drawn)
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

    def remove(self) -> None:
        """Give up the extent tool if it is on (without giving a tool back: the plugin unloads) and remove the
        outline."""
        if self._tool is not None:
            self.canvas.unsetMapTool(self._tool)
            self._tool = None
        self.band.remove()
