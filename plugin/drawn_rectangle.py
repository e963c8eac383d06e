"""A rectangle drawn on the map canvas, kept as the user saw it dragged: screen-aligned. On a canvas turned by a
rotation that is a rectangle turned by the same angle on the ground, which the dock renders turned as the canvas
shows it (`view`) and whose corners are the region of an identify question (`ring`). After the project's CRS
changes it stays the same ground, its view turned as its dragged top edge runs in the new CRS."""
from __future__ import annotations

import math
from typing import List, Sequence, Tuple

from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsCsException,
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
        """The four corners in `crs` (each transformed: in another CRS the edges between them may bend). Raises
        ValueError (one line) when a corner has no place in `crs` (a projection that cannot show that ground)."""
        if crs == self.crs:
            return list(self.corners)
        return self._transformed(self.corners, crs)

    def _transformed(self, points: Sequence[Point], crs: QgsCoordinateReferenceSystem) -> List[Point]:
        """`points` (map units of the rectangle's CRS) in `crs`; ValueError (one line) when one cannot be
        transformed or lands on no finite coordinates."""
        transform = QgsCoordinateTransform(self.crs, crs, QgsProject.instance())
        try:
            moved = [transform.transform(x, y) for x, y in points]
        except QgsCsException:
            moved = []
        if not moved or not all(math.isfinite(p.x()) and math.isfinite(p.y()) for p in moved):
            raise ValueError(f"the drawn rectangle ({self.crs.authid() or 'its CRS'}) has no place in the map's "
                             f"CRS ({crs.authid() or crs.description()}): draw it again")
        return [(p.x(), p.y()) for p in moved]

    def geometry(self) -> QgsGeometry:
        """The rectangle as a polygon in its own CRS."""
        return QgsGeometry.fromPolygonXY([[QgsPointXY(x, y) for x, y in self.corners + self.corners[:1]]])

    def view(self, crs: QgsCoordinateReferenceSystem) -> Tuple[QgsRectangle, float]:
        """(extent, rotation) of map settings that show exactly this rectangle (`ask_map.view_settings`), in
        `crs`: the extent of the turned frame (centred on the rectangle, its width along the dragged top edge and
        its height along the side, as `QgsMapSettings.extent()` is under a rotation) and its rotation (degrees,
        clockwise on screen). In its own CRS that rotation is the canvas's of then. In another CRS (the project's
        changed since) it is the same ground: the outline (31 points added to each edge) transformed, turned
        as its transformed top edge runs (a map rotation of r degrees runs the screen's top edge r degrees
        counter-clockwise from the map's x axis: `QgsMapToPixel`), and the frame the least one at that turn that
        holds it all (in a conformal CRS, as UTM from Web Mercator, the rectangle itself; in one that shears that
        ground, such as degrees of EPSG:4326 on a turned map, the rectangle around it). Raises ValueError (one
        line) when that ground has no place in `crs`."""
        if crs == self.crs:
            outline, rotation = self.corners, self.rotation
        else:
            ring = self.geometry().densifyByCount(31).asPolygon()[0][:-1]
            outline = self._transformed([(p.x(), p.y()) for p in ring], crs)
            (x0, y0), (x1, y1) = self._transformed(self.corners[:2], crs)
            rotation = math.degrees(math.atan2(y1 - y0, x1 - x0))
        turn = math.radians(rotation)
        cos, sin = math.cos(turn), math.sin(turn)
        along = [x * cos + y * sin for x, y in outline]  # the screen's x axis, in map units
        across = [y * cos - x * sin for x, y in outline]  # its y axis, upwards
        u, v = (min(along) + max(along)) / 2.0, (min(across) + max(across)) / 2.0
        width, height = max(along) - min(along), max(across) - min(across)
        cx, cy = u * cos - v * sin, u * sin + v * cos
        return QgsRectangle(cx - width / 2, cy - height / 2, cx + width / 2, cy + height / 2), rotation
