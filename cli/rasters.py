"""Raster metadata for the command line (rasterio, engine side only): where an image lies on the map."""
from __future__ import annotations

import math
import re
import sys
from pathlib import Path
from typing import NamedTuple, Optional, Tuple

from ..core.georef import PIXEL_CRS_WKT, GeoTransform, ImageFrame, pixel_frame
from ..models.imagery import import_rasterio, not_georeferenced_ok, vector_file_summary
from . import CliError

Window = Tuple[int, int, int, int]  # col, row, width, height


def parse_window(text: Optional[str]) -> Optional[Window]:
    """--window "col,row,width,height" (pixels) as integers, None when not given; CliError in one line for
    other text or a size that is not positive. A negative col or row is kept: `open_frame` says that such a
    window reaches outside the raster."""
    if not text:
        return None
    parts = text.split(",")
    if len(parts) != 4:
        raise CliError(f"--window needs col,row,width,height, got {text!r}")
    try:
        col, row, w, h = (int(p) for p in parts)
    except ValueError:
        raise CliError(f"--window needs four integers, got {text!r}") from None
    if w <= 0 or h <= 0:
        raise CliError(f"--window {text!r} must have a positive width and height")
    return col, row, w, h


def open_frame(path, window: Optional[Window] = None) -> ImageFrame:
    """Size, geotransform and CRS of a raster (or of a window of it), with clear errors for bad files. A raster
    without georeferencing (no geotransform, no CRS, no GCPs: a PNG named .tif) gets the pixel frame
    (`core.georef.pixel_frame`: x = column, y = -row, a local pixel CRS), and one line on stderr says so; so
    does one for a raster with a geotransform but no CRS (its layers are placed but carry no CRS). A vector file
    (GeoJSON, a Shapefile, a vector-only GeoPackage) is refused as such in one line."""
    rasterio = import_rasterio()
    path = Path(path)
    if not path.exists():
        raise CliError(f"raster not found: {path}")
    try:
        with not_georeferenced_ok(rasterio), rasterio.open(path) as ds:
            width, height = ds.width, ds.height
            affine = ds.transform
            crs = ds.crs.to_wkt() if ds.crs else None
            gcps_only = ds.transform.is_identity and bool(ds.gcps[0])
            bare = ds.transform.is_identity and not ds.crs and not ds.gcps[0]
    except rasterio.errors.RasterioIOError as exc:
        if path.is_dir():  # only when GDAL cannot open it: some rasters are folders (an Arc/Info grid)
            raise CliError(f"raster {path} is a folder that GDAL cannot open as a raster: give a raster file") from None
        if path.stat().st_size == 0:
            raise CliError(f"raster {path} is an empty file (0 bytes)") from None
        vector = vector_file_summary(path)
        if vector is not None:
            raise CliError(f"{path} is a vector file ({vector}), not a raster: give a raster image "
                           "(GeoTIFF, PNG, JPEG, VRT...)") from None
        raise CliError(f"cannot read raster {path}: {exc}") from None
    if not bare:
        try:
            GeoTransform(affine.a, affine.b, affine.c, affine.d, affine.e, affine.f)
        except ValueError as exc:  # a header whose pixels have no size, or NaN: no box can be placed through it
            raise CliError(f"raster {path} cannot place anything: its {exc} ({affine.a}, {affine.b}, {affine.c}, "
                           f"{affine.d}, {affine.e}, {affine.f}); set its georeferencing right, or remove it "
                           "(gdal_edit.py -unsetgt) to work in its pixels") from None
    if bare:
        print(f"note: {path} has no georeferencing (no geotransform, no CRS): objects are written in its pixel "
              "coordinates (x = column, y = -row, a local pixel CRS), not on a map", file=sys.stderr)
    elif crs is None and not gcps_only:
        print(f"note: {path} has no CRS: the layers are placed by its geotransform but carry no CRS",
              file=sys.stderr)
    if width == 0 or height == 0:
        raise CliError(f"raster {path} has no pixels")
    if gcps_only:
        raise CliError(f"raster {path} is georeferenced by GCPs only; warp it to a geotransform first")
    gt = GeoTransform(affine.a, affine.b, affine.c, affine.d, affine.e, affine.f)
    if bare:
        pixels = pixel_frame(width, height)
        gt, crs = pixels.geotransform, pixels.crs
    if window is not None:
        col, row, w, h = window
        if col < 0 or row < 0 or col + w > width or row + h > height:
            raise CliError(f"window {window} reaches outside the raster ({width}x{height})")
        gt, width, height = gt.window(col, row), w, h
    return ImageFrame(width, height, gt, crs)


def frame_of_image(frame: ImageFrame, width: int, height: int) -> ImageFrame:
    """`frame` for an image of width x height that shows all of it (a decimated read): the same corner and
    CRS, its pixels as much larger as the image is smaller."""
    if (width, height) == (frame.width, frame.height):
        return frame
    gt = frame.geotransform.scaled(width / frame.width, height / frame.height) if frame.geotransform else None
    return ImageFrame(width, height, gt, frame.crs)


class Extent(NamedTuple):
    """A map rectangle as QGIS writes an extent (`QgsProcessingParameterExtent`, qgis_process's `EXTENT=`):
    xmin, xmax, ymin, ymax in the units of `crs` (an authority code or any text pyproj reads), or of the
    raster's CRS when `crs` is None."""

    xmin: float
    xmax: float
    ymin: float
    ymax: float
    crs: Optional[str] = None

    def __str__(self) -> str:
        text = f"{self.xmin:.12g},{self.xmax:.12g},{self.ymin:.12g},{self.ymax:.12g}"
        return f"{text} [{self.crs}]" if self.crs else text


EXTENT_FORMAT = "xmin,xmax,ymin,ymax [CRS]"
# QGIS's reading of an extent string (QgsProcessingParameters::parameterAsExtent): four numbers, then an
# optional CRS in brackets.
_EXTENT = re.compile(r"^([^,\[\]]+),([^,\[\]]+),([^,\[\]]+),([^,\[\]]+?)\s*(?:\[\s*([^\[\]]*?)\s*\])?\s*$")


def parse_extent(text: Optional[str], option: str = "--extent") -> Optional[Extent]:
    """`--extent "xmin,xmax,ymin,ymax [EPSG:xxxx]"` as an `Extent`, None when not given: the order and syntax
    of QGIS's extent strings, so the same text works as a bulk algorithm's EXTENT in qgis_process and here (GDAL's
    `gdal_translate -projwin` takes ulx uly lrx lry and `gdalwarp -te` xmin ymin xmax ymax instead). CliError in
    one line for other text, a value that is not a finite number, or an empty rectangle (xmin >= xmax or
    ymin >= ymax, most often the numbers in another order)."""
    if text is None:
        return None
    match = _EXTENT.match(text.strip())
    example = "e.g. '500000,510000,4100000,4110000 [EPSG:32616]'"
    if not match:
        raise CliError(f"{option} needs {EXTENT_FORMAT} (QGIS's order; the CRS is optional), {example}, "
                       f"not {text!r}")
    try:
        values = [float(v) for v in match.groups()[:4]]
    except ValueError:
        raise CliError(f"{option} needs four numbers as {EXTENT_FORMAT}, {example}, not {text!r}") from None
    if not all(math.isfinite(v) for v in values):
        raise CliError(f"{option} needs four finite numbers as {EXTENT_FORMAT}, not {text!r}")
    xmin, xmax, ymin, ymax = values
    if xmin >= xmax or ymin >= ymax:
        raise CliError(f"{option} {text!r} is an empty rectangle: the order is {EXTENT_FORMAT} (QGIS's), so xmin "
                       "must be below xmax and ymin below ymax")
    return Extent(xmin, xmax, ymin, ymax, match.group(5) or None)


def raster_extent(frame: ImageFrame) -> Extent:
    """The bounding rectangle of `frame`'s pixels on its map, in its CRS (rotation included), named by its EPSG
    code where it has one."""
    gt = frame.geotransform
    corners = [gt.to_map(c, r) for c in (0, frame.width) for r in (0, frame.height)]
    xs, ys = [x for x, _ in corners], [y for _, y in corners]
    name = None
    if frame.crs and frame.crs != PIXEL_CRS_WKT:
        from pyproj import CRS

        code = CRS.from_user_input(frame.crs).to_epsg()
        name = f"EPSG:{code}" if code else None
    return Extent(min(xs), max(xs), min(ys), max(ys), name)


def extent_window(frame: ImageFrame, extent: Extent, option: str = "--extent") -> Window:
    """The window (col, row, width, height, pixels of `frame`) that covers `extent`, clipped to the raster:
    the corners of `extent` taken to pixels through the geotransform, rounded outwards (floor, ceil), as
    geovlm's QGIS bulk algorithms take their EXTENT (plugin/alg_bulk_tiles.py), so the same extent gives
    the same plan (and a run started in one resumes in the other). An extent in another CRS is first taken to
    the raster's as the bounding box of its edges (pyproj `Transformer.transform_bounds`, 21 points a side).
    CliError in one line: a CRS given for a raster without one, a CRS pyproj does not know or that cannot
    show the rectangle, an extent that misses the raster (naming the raster's own extent, and saying so where
    the numbers read in GDAL's xmin,ymin,xmax,ymax order would meet it)."""
    window, past = _covering_window(frame, extent, option)
    swapped = Extent(extent.xmin, extent.ymin, extent.xmax, extent.ymax, extent.crs)
    swapped_meets = swapped_inside = False
    if (window is None or past) and swapped.xmin < swapped.xmax and swapped.ymin < swapped.ymax:
        try:
            other, other_past = _covering_window(frame, swapped, option)
            swapped_meets, swapped_inside = other is not None, other is not None and not other_past
        except CliError:
            pass
    if window is None:
        hint = (f"; read as xmin,ymin,xmax,ymax it would, but the order here is QGIS's, {EXTENT_FORMAT}"
                if swapped_meets else "")
        raise CliError(f"{option} {extent} does not overlap the raster, whose extent is {raster_extent(frame)}{hint}")
    if past:
        col, row, width, height = window
        hint = (f"; read as xmin,ymin,xmax,ymax it would lie inside it: the order here is QGIS's, {EXTENT_FORMAT}"
                if swapped_inside else "")
        print(f"note: {option} {extent} reaches past the raster, whose extent is {raster_extent(frame)}: only its "
              f"part inside is asked (pixels {col},{row} to {col + width},{row + height}){hint}", file=sys.stderr)
    return window


def _covering_window(frame: ImageFrame, extent: Extent, option: str) -> Tuple[Optional[Window], bool]:
    """(`extent_window`'s window or None where `extent` misses the raster, whether `extent` reaches past the
    raster's pixels by more than a hundredth of a pixel)."""
    xmin, xmax, ymin, ymax = extent.xmin, extent.xmax, extent.ymin, extent.ymax
    if extent.crs:
        if frame.crs is None or frame.crs == PIXEL_CRS_WKT:
            raise CliError(f"{option} is in {extent.crs}, but the raster has no CRS: give the extent in its own "
                           f"coordinates, without [{extent.crs}]")
        from pyproj import CRS, Transformer
        from pyproj.exceptions import CRSError, ProjError

        try:
            given = CRS.from_user_input(extent.crs)
        except CRSError:
            raise CliError(f"{option}: unknown CRS {extent.crs!r} (give e.g. EPSG:4326)") from None
        target = CRS.from_user_input(frame.crs)
        if given != target:
            try:
                xmin, ymin, xmax, ymax = Transformer.from_crs(given, target, always_xy=True).transform_bounds(
                    xmin, ymin, xmax, ymax, densify_pts=21)
            except ProjError as exc:
                raise CliError(f"{option} {extent} cannot be taken to the raster's CRS: {exc}") from None
            if not all(math.isfinite(v) for v in (xmin, ymin, xmax, ymax)) or xmin >= xmax or ymin >= ymax:
                raise CliError(f"{option} {extent} has no bounding box in the raster's CRS (it reaches where that "
                               "CRS shows nothing, or across its edge): give it in the raster's CRS")
    gt = frame.geotransform
    corners = [gt.to_pixel(x, y) for x in (xmin, xmax) for y in (ymin, ymax)]
    low_col, low_row = min(c for c, _ in corners), min(r for _, r in corners)
    high_col, high_row = max(c for c, _ in corners), max(r for _, r in corners)
    col0, row0 = max(0, math.floor(low_col)), max(0, math.floor(low_row))
    col1, row1 = min(frame.width, math.ceil(high_col)), min(frame.height, math.ceil(high_row))
    if col1 <= col0 or row1 <= row0:
        return None, True
    past = min(low_col, low_row) < -0.01 or high_col > frame.width + 0.01 or high_row > frame.height + 0.01
    return (col0, row0, col1 - col0, row1 - row0), past
