"""A rectangle drawn on the map canvas, kept as the user saw it dragged: screen-aligned. On a canvas turned by a
rotation that is a rectangle turned by the same angle on the ground, which the dock renders turned as the canvas
shows it (`view`) and whose corners are the region of an identify question (`ring`)."""
from __future__ import annotations

import math
from typing import List, Sequence, Tuple

from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsGeometry,
    QgsPointXY,
    QgsProject,
    QgsRectangle,
    QgsReferencedRectangle,
)

Point = Tuple[float, float]


class DrawnRectangle:
    """`corners`: the four corners in map units of `crs`, in screen order (top-left, top-right, bottom-right,
    bottom-left as dragged), each the canvas's own `QgsMapToPixel.toMapCoordinates` of a screen corner; `rotation`:
    the canvas's rotation when it was drawn (degrees, clockwise on screen: QGIS's map rotation)."""

    def __init__(self, corners: Sequence[Point], crs: QgsCoordinateReferenceSystem, rotation: float = 0.0):
        if len(corners) != 4:
            raise ValueError(f"a rectangle has four corners, not {len(corners)}")
        self.corners: List[Point] = [(float(x), float(y)) for x, y in corners]
        self.crs, self.rotation = QgsCoordinateReferenceSystem(crs), float(rotation)

    @classmethod
    def of(cls, rectangle, crs: QgsCoordinateReferenceSystem) -> DrawnRectangle:
        """A DrawnRectangle as it is; a QgsReferencedRectangle in its own CRS, or a QgsRectangle in `crs`, as one
        drawn on an unturned canvas (map-aligned)."""
        if isinstance(rectangle, DrawnRectangle):
            return rectangle
        own = rectangle.crs() if isinstance(rectangle, QgsReferencedRectangle) else None
        r = rectangle
        return cls([(r.xMinimum(), r.yMaximum()), (r.xMaximum(), r.yMaximum()), (r.xMaximum(), r.yMinimum()),
                    (r.xMinimum(), r.yMinimum())], own if own is not None and own.isValid() else crs)

    @classmethod
    def dragged(cls, map_to_pixel, crs: QgsCoordinateReferenceSystem, start: Point, end: Point) -> DrawnRectangle:
        """The screen rectangle between two pixel points `start` and `end` (whole logical pixels of the canvas, as
        its mouse events give them; any two opposite corners) through the canvas's `map_to_pixel` (its
        `QgsMapToPixel`) in its CRS `crs`."""
        left, right = sorted((start[0], end[0]))
        top, bottom = sorted((start[1], end[1]))
        corners = [map_to_pixel.toMapCoordinates(int(x), int(y))
                   for x, y in ((left, top), (right, top), (right, bottom), (left, bottom))]
        return cls([(p.x(), p.y()) for p in corners], crs, map_to_pixel.mapRotation())

    def ring(self, crs: QgsCoordinateReferenceSystem) -> List[Point]:
        """The four corners in `crs` (each transformed: in another CRS the edges between them may bend)."""
        if crs == self.crs:
            return list(self.corners)
        transform = QgsCoordinateTransform(self.crs, crs, QgsProject.instance())
        return [(p.x(), p.y()) for p in (transform.transform(x, y) for x, y in self.corners)]

    def geometry(self) -> QgsGeometry:
        """The rectangle as a polygon in its own CRS."""
        return QgsGeometry.fromPolygonXY([[QgsPointXY(x, y) for x, y in self.corners + self.corners[:1]]])

    def view(self, crs: QgsCoordinateReferenceSystem) -> Tuple[QgsRectangle, float]:
        """(extent, rotation) of map settings that show exactly this rectangle (`ask_map.view_settings`): in its own
        CRS, the extent of the turned frame (centred on the rectangle, its width along the dragged top edge and its
        height along the side, as `QgsMapSettings.extent()` is under a rotation) and the canvas's rotation of then;
        in another CRS (the project's changed since), the bounding box of the same ground (edges densified), not
        turned."""
        if crs != self.crs:
            ground = self.geometry().densifyByCount(32)
            ground.transform(QgsCoordinateTransform(self.crs, crs, QgsProject.instance()))
            return ground.boundingBox(), 0.0
        (x0, y0), (x1, y1), (x2, y2), _ = self.corners
        width, height = math.hypot(x1 - x0, y1 - y0), math.hypot(x2 - x1, y2 - y1)
        cx, cy = (x0 + x2) / 2.0, (y0 + y2) / 2.0
        return QgsRectangle(cx - width / 2, cy - height / 2, cx + width / 2, cy + height / 2), self.rotation
