"""Objects found twice where tiles overlap: which pairs are the same object, and which copy to keep.

Two detections are the same object when they carry the same label and their overlap, measured as the area of
their intersection over the area of the smaller one, is above a threshold. Intersection over the smaller
area (not over the union) is used because a tile's edge cuts objects: the cut copy lies almost wholly inside
the whole one while their IoU stays low. Of the two, the copy whose centre lies farther from its own tile's
edge is kept: the model saw more of the object's surroundings there (the usual rule for merging sliced
inference, cf. SAHI's "greedy NMM" and the overlap rule of DOTA's split-and-merge tools).

Polygons are lists of (x, y) vertices, open or closed, in any one planar coordinate system (map units);
boxes and rotated boxes are convex, which the intersection relies on.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

from .georef import Point, centroid, signed_area

DEFAULT_THRESHOLD = 0.5


@dataclass
class Detection:
    """One object: its id, label, polygon (vertices in map coordinates, open or closed) and its centre's distance
    from the edge of the tile it came from (map units, `edge_distance`)."""

    object_id: str
    label: str
    polygon: List[Point]
    edge_distance: float


def _open(polygon: Sequence[Point]) -> List[Point]:
    pts = [(float(x), float(y)) for x, y in polygon]
    if len(pts) > 1 and pts[0] == pts[-1]:
        pts.pop()
    return pts


def _ccw(polygon: Sequence[Point]) -> List[Point]:
    pts = _open(polygon)
    return pts if signed_area(pts) >= 0 else pts[::-1]


def convex_intersection(a: Sequence[Point], b: Sequence[Point]) -> List[Point]:
    """The intersection of two convex polygons (Sutherland-Hodgman clipping of `a` by each edge of `b`): an open
    ring, counter-clockwise in a y-up plane, in the polygons' own coordinates; [] (or a ring of no area, where they
    only touch) when they do not overlap."""
    out = _ccw(a)
    clip = _ccw(b)
    for i in range(len(clip)):
        if not out:
            break
        (x1, y1), (x2, y2) = clip[i], clip[(i + 1) % len(clip)]

        def side(p, x1=x1, y1=y1, x2=x2, y2=y2):
            return (x2 - x1) * (p[1] - y1) - (y2 - y1) * (p[0] - x1)

        points, out = out, []
        for j in range(len(points)):
            cur, nxt = points[j], points[(j + 1) % len(points)]
            s_cur, s_nxt = side(cur), side(nxt)
            if s_cur >= 0:
                out.append(cur)
            if (s_cur >= 0) != (s_nxt >= 0):
                t = s_cur / (s_cur - s_nxt)
                out.append((cur[0] + t * (nxt[0] - cur[0]), cur[1] + t * (nxt[1] - cur[1])))
    return out


def overlap_of_smaller(a: Sequence[Point], b: Sequence[Point]) -> float:
    """Area of a ∩ b over the smaller of the two areas, in [0, 1]; 0 when either has no area. Both are moved
    next to the origin first (map coordinates of 1e6 would cost the areas their precision)."""
    ox, oy = a[0]
    a = [(x - ox, y - oy) for x, y in a]
    b = [(x - ox, y - oy) for x, y in b]
    area_a, area_b = abs(signed_area(_open(a))), abs(signed_area(_open(b)))
    smaller = min(area_a, area_b)
    if smaller <= 0:
        return 0.0
    inter = convex_intersection(a, b)
    return min(1.0, abs(signed_area(inter)) / smaller) if len(inter) >= 3 else 0.0


def edge_distance(polygon: Sequence[Point], tile_footprint: Sequence[Point]) -> float:
    """Distance from the polygon's centroid to the nearest edge of its tile's footprint (map units)."""
    cx, cy = centroid(_open(polygon))
    ring = _open(tile_footprint)
    best = math.inf
    for i in range(len(ring)):
        (x1, y1), (x2, y2) = ring[i], ring[(i + 1) % len(ring)]
        dx, dy = x2 - x1, y2 - y1
        length2 = dx * dx + dy * dy
        t = 0.0 if length2 == 0 else max(0.0, min(1.0, ((cx - x1) * dx + (cy - y1) * dy) / length2))
        best = min(best, math.hypot(cx - (x1 + t * dx), cy - (y1 + t * dy)))
    return best


def bbox(polygon: Sequence[Point]) -> Tuple[float, float, float, float]:
    """(xmin, ymin, xmax, ymax) of a polygon's vertices, in the polygon's own units; ValueError when it has none."""
    xs, ys = [p[0] for p in polygon], [p[1] for p in polygon]
    return min(xs), min(ys), max(xs), max(ys)


def _boxes_touch(a, b) -> bool:
    return a[0] <= b[2] and b[0] <= a[2] and a[1] <= b[3] and b[1] <= a[3]


def find_duplicate(new: Detection, existing: Sequence[Detection],
                   threshold: float = DEFAULT_THRESHOLD) -> Optional[Detection]:
    """The existing detection that `new` duplicates (same label, overlap of the smaller above `threshold`;
    the largest overlap wins), or None."""
    best, best_overlap = None, threshold
    box = bbox(new.polygon)
    for other in existing:
        if other.label != new.label or not _boxes_touch(box, bbox(other.polygon)):
            continue
        overlap = overlap_of_smaller(new.polygon, other.polygon)
        if overlap > best_overlap:
            best, best_overlap = other, overlap
    return best

