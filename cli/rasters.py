"""Raster metadata for the command line (rasterio, engine side only): where an image lies on the map."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional, Tuple

from ..core.georef import GeoTransform, ImageFrame, pixel_frame
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

