"""The dock's drawn rectangle on the map: QGIS's extent tool clears its own outline when it is released, so the
rectangle the next question is about would not be seen. It stays drawn here, as a rubber band (a canvas item:
never part of the rendered view sent to the model), on the ground it was drawn on, also after the map's CRS
changes, while the dock's source is the rectangle."""
from __future__ import annotations

from typing import Optional

from qgis.core import Qgis, QgsGeometry, QgsReferencedRectangle
from qgis.gui import QgsRubberBand
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
        self.rectangle = rectangle
        if self._band is None:
            self._band = QgsRubberBand(self.canvas, Qgis.GeometryType.Polygon)
            self._band.setStrokeColor(OUTLINE)
            self._band.setFillColor(FILL)
            self._band.setWidth(2)
        self._place()

    def set_visible(self, visible: bool) -> None:
        if self._band is not None:
            self._band.setVisible(visible)

    def _place(self) -> None:
        """The rubber band holds map coordinates of the canvas's CRS: set again from the rectangle's own."""
        if self._band is not None and self.rectangle is not None:
            self._band.setToGeometry(QgsGeometry.fromRect(self.rectangle), self.rectangle.crs())

    def remove(self) -> None:
        try:
            self.canvas.destinationCrsChanged.disconnect(self._place)
        except TypeError:
            pass
        if self._band is not None:
            self.canvas.scene().removeItem(self._band)
            self._band = None
