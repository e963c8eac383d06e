"""Answer layers taken to another CRS (`geovlm parse --to-crs`, and `geovlm eval --reference`'s reference layer
taken to the answers' CRS: evaluation/layers.py; pyproj, engine side): every vertex through PROJ,
a box's edges bent as the projection bends them, and a box over the antimeridian kept whole."""
from __future__ import annotations

import math
import re

# A reprojected edge is split at its midpoint while that midpoint's image lies farther than this fraction of the
# edge's image length from the straight edge's midpoint (GDAL's ogr2ogr -segmentize and QGIS's densify take a
# fixed step instead; here a box edge that stays straight keeps its two vertices), at most EDGE_DEPTH times.
# 1e-4 of an edge is a twentieth of a pixel for an edge of 500 pixels, a pixel for one of 10,000.
EDGE_TOLERANCE = 1e-4
EDGE_DEPTH = 8


def reprojected(frame, to_crs):
    """`frame` (a GeoDataFrame with a CRS: polygons, holes included, lines, points and their multi-part kinds) in
    `to_crs`, each vertex through pyproj
    as `GeoDataFrame.to_crs` takes it, with two differences.

    Edges are bent: a box is straight in the pixels of its image, so in another CRS its edges are curves (a box
    across a 110 km UTM tile bends 340 m in EPSG:3857; a 1-degree box of an EPSG:4326 raster 120 m in UTM). An
    edge gets the image of its midpoint as a vertex where the straight line between its ends' images misses
    that image by more than EDGE_TOLERANCE of its length, and so on for each half (`_bent`); a small box, whose
    edges stay straight, keeps its four corners.

    A geometry the target's longitude wrap would tear is kept whole: PROJ brings every longitude into [-180,
    180) about the target's central meridian, so a box over the antimeridian (a raster in UTM zone 60 or
    EPSG:4326 near 180 degrees, taken to EPSG:4326 or EPSG:3857) had corners on both edges of the world and
    became a polygon across all of it. Such a geometry takes the same transformation with PROJ's `+over` (no
    wrap: longitudes, and x of a cylindrical projection, go on past the edge, as QGIS draws them), chosen when
    its vertices span less than half the wrapped ones' width in x; a geometry that does not cross keeps the
    wrapped vertices, so coordinates stay in the usual range.

    A valid polygon that the projection makes invalid, or all but invalid, is mended (`_mended`): an image of a
    whole polar cap (EPSG:4326 from 180 W to 180 E up to 90 N) taken to a polar projection (EPSG:3413, EPSG:3031)
    has its west and east edges on the same meridian, a ring that runs out to the pole and back along one line
    (a slit, exact or 1e-10 m wide), and its top edge collapsed into the pole; it becomes the disc it covers."""
    import geopandas as gpd
    import numpy as np
    from pyproj import CRS, Transformer
    from shapely.geometry import LineString, Point, Polygon

    target = CRS.from_user_input(to_crs)
    plain = Transformer.from_crs(frame.crs, target, always_xy=True)
    unwrapped = _without_wrap(plain)

    def transform_of(coords):
        if unwrapped is not None and len(coords) > 1:
            x = plain.transform(coords[:, 0], coords[:, 1])[0]
            with np.errstate(invalid="ignore"):  # no image (inf): both spans NaN, the plain transformation
                if np.ptp(unwrapped.transform(coords[:, 0], coords[:, 1])[0]) < np.ptp(x) / 2:
                    return unwrapped.transform
        return plain.transform

    def move(geometry):
        if geometry is None or geometry.is_empty:
            return geometry
        if geometry.geom_type == "Polygon":  # holes take the transformation chosen for the outer ring
            coords = np.asarray(geometry.exterior.coords)
            transform = transform_of(coords)
            moved = Polygon(_bent(coords, transform), [_bent(np.asarray(ring.coords), transform)
                                                       for ring in geometry.interiors])
            return _mended(moved) if geometry.is_valid else moved
        if geometry.geom_type == "LineString":
            coords = np.asarray(geometry.coords)
            return LineString(_bent(coords, transform_of(coords)))
        if geometry.geom_type == "Point":
            return Point(plain.transform(geometry.x, geometry.y))
        if hasattr(geometry, "geoms"):  # Multi*, GeometryCollection: each part on its own
            return type(geometry)([move(part) for part in geometry.geoms])
        raise ValueError(f"cannot reproject a {geometry.geom_type} here")

    moved = gpd.GeoSeries([move(g) for g in frame.geometry], index=frame.index, crs=target)
    lost = sum(1 for g in moved if g is not None and not np.isfinite(np.asarray(g.bounds)).all())
    if lost:  # PROJ's infinity for a point the projection cannot show (the far side of an orthographic view...)
        raise ValueError(f"{lost} of {len(moved)} features have no coordinates there (the CRS cannot show that "
                         "part of the Earth): choose a CRS that covers the image")
    return gpd.GeoDataFrame(frame.drop(columns=frame.geometry.name), geometry=moved, crs=target)


def beyond_area_of_use(frames, to_crs) -> str:
    """One line (for a warning) when features of `frames` (GeoDataFrames with a CRS, as given to `reprojected`)
    reach latitudes outside `to_crs`'s area of use (pyproj's `CRS.area_of_use`, from the EPSG registry), "" when
    none do or the CRS states no area. Past its latitudes a CRS's coordinates are valid numbers but stretched
    beyond use: Web Mercator (EPSG:3857, 85.06 degrees S to N) gives y = 3.0e7 m at 89.9 degrees and more
    without bound. Where PROJ gives no coordinates at all, `reprojected` refuses instead. Longitudes are not
    checked: a zone's CRS (UTM) used beside its zone is common and stays usable."""
    from pyproj import CRS

    target = CRS.from_user_input(to_crs)
    area = target.area_of_use
    if area is None:
        return ""
    beyond = total = 0
    for frame in frames:
        shown = frame.geometry[frame.geometry.notna() & ~frame.geometry.is_empty]
        bounds = shown.to_crs("EPSG:4326").bounds
        total += len(bounds)
        beyond += int(((bounds["miny"] < area.south - 1e-9) | (bounds["maxy"] > area.north + 1e-9)).sum())
    if not beyond:
        return ""
    name = target.to_string() if target.to_epsg() is None else f"EPSG:{target.to_epsg()}"
    return (f"{beyond} of {total} features reach latitudes outside {name}'s area of use ({area.south:g} to "
            f"{area.north:g} degrees), where its coordinates are stretched beyond use; choose a CRS that covers "
            "them (EPSG:4326, or a polar one such as EPSG:3413 or EPSG:3031)")


# Vertices of a reprojected polygon closer than this share of its extent are taken as one when its validity is
# checked (`_mended`): PROJ puts the two sides of a seam (longitude -180 and 180 in a polar projection) 1e-10 m
# apart, a slit that shapely holds valid; a real polygon has no parts that thin.
SEAM_TOLERANCE = 1e-9


def _mended(polygon):
    """`polygon` (a reprojected Polygon) as it is when it is valid with its vertices on a grid of SEAM_TOLERANCE
    of its extent (shapely `set_precision`, pointwise), else the polygonal part of shapely's `make_valid` of it
    on that grid (GEOS's "linework" repair: a slit or a collapsed edge, which covers no area, is dropped as a
    line): a Polygon, or a MultiPolygon where the ring crossed itself into several pieces; `polygon` itself when
    the repair leaves no area."""
    from shapely import get_parts, make_valid, set_precision
    from shapely.geometry import MultiPolygon

    xmin, ymin, xmax, ymax = polygon.bounds
    extent = max(xmax - xmin, ymax - ymin)
    if not math.isfinite(extent) or extent <= 0:
        return polygon
    snapped = set_precision(polygon, extent * SEAM_TOLERANCE, mode="pointwise")
    if polygon.is_valid and snapped.is_valid:
        return polygon
    pieces = [p for p in get_parts(make_valid(snapped)) if p.geom_type in ("Polygon", "MultiPolygon")]
    polygons = [q for p in pieces for q in get_parts(p)]
    if not polygons:
        return polygon
    return polygons[0] if len(polygons) == 1 else MultiPolygon(polygons)


def _bent(coords, transform):
    """The (M, 2) target vertices of the (N, 2) source vertices `coords` (a path; a ring repeats its first
    vertex last) through `transform(xs, ys)`: each edge's ends, and between them the images of the midpoints
    (in source coordinates) of its halves, quarters... where the image bends away from the straight edge by more
    than EDGE_TOLERANCE of its length, EDGE_DEPTH levels at most. One `transform` call per level."""
    import numpy as np

    xs, ys = (np.asarray(v).tolist() for v in transform(coords[:, 0], coords[:, 1]))
    known = [{0.0: (xs[i], ys[i]), 1.0: (xs[i + 1], ys[i + 1])} for i in range(len(coords) - 1)]
    pending = [(i, 0.0, 1.0) for i in range(len(known))]
    for _ in range(EDGE_DEPTH):
        if not pending:
            break
        edge = np.array([i for i, _, _ in pending])
        middle = np.array([(t0 + t1) / 2 for _, t0, t1 in pending])
        at = coords[edge] + (coords[edge + 1] - coords[edge]) * middle[:, None]
        mx, my = transform(at[:, 0], at[:, 1])
        bending = []
        for (i, t0, t1), t, x, y in zip(pending, middle, mx.tolist(), my.tolist()):  # Python floats: inf - inf
            (x0, y0), (x1, y1) = known[i][t0], known[i][t1]  # is NaN without numpy's RuntimeWarning
            off = math.hypot(x - (x0 + x1) / 2, y - (y0 + y1) / 2)
            if off > EDGE_TOLERANCE * math.hypot(x1 - x0, y1 - y0):  # NaN (no image) is never bending
                known[i][float(t)] = (x, y)
                bending += [(i, t0, float(t)), (i, float(t), t1)]
        pending = bending
    points = [known[i][t] for i in range(len(known)) for t in sorted(known[i]) if t < 1.0]
    return points + [known[-1][1.0]] if known else [(xs[0], ys[0])]


def _without_wrap(transformer):
    """The transformation of `transformer` with PROJ's `+over` on each step (no longitude wrap), or None where
    its pipeline cannot be written as a PROJ string."""
    from pyproj import Transformer
    from pyproj.exceptions import ProjError

    try:
        pipeline = transformer.to_proj4()
        if not pipeline:
            return None
        return Transformer.from_pipeline(re.sub(r"(\+proj=(?!pipeline\b)\S+)", r"\1 +over", pipeline))
    except ProjError:
        return None
