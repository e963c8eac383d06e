"""Raster windows as the uint8 RGB the encoder sees: band choice, grey replication, percentile stretch; a
window larger than `MAX_PIXELS` is read decimated (from overviews where the file has them), never whole."""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from typing import Optional, Sequence, Tuple

import numpy as np

Window = Tuple[int, int, int, int]  # col, row, width, height
STRETCH = (2.0, 98.0)  # percentiles mapped to 0 and 255 for non-8-bit data
MAX_PIXELS = 4096 * 4096  # the engine's default pixel limit: a larger window is read decimated to it


class ImageryError(ValueError):
    """A raster or window that cannot become an RGB image, with the reason."""


class NoDataError(ImageryError):
    """An image every pixel of which is nodata: declared or masked, or a NaN or infinite value (which a
    raster's mask does not show, so a bulk run learns it only here and skips the tile as nodata)."""


def import_rasterio():
    """rasterio, with PROJ_LIB/PROJ_DATA unset first: a QGIS or system PROJ breaks rasterio's bundled one."""
    for var in ("PROJ_LIB", "PROJ_DATA"):
        os.environ.pop(var, None)
    import rasterio

    return rasterio


def default_bands(count: int) -> Tuple[int, int, int]:
    """Bands 1, 2, 3 as red, green, blue; a single band (or two) as grey."""
    return (1, 2, 3) if count >= 3 else (1, 1, 1)


def check_bands(bands: Optional[Sequence[int]], count: int) -> Tuple[int, int, int]:
    """The three 1-based bands of a `count`-band raster read as red, green, blue: `bands` as given, or
    `default_bands(count)` when None or empty. `ImageryError` in one line when they are not three bands of
    1..`count` (the command line's --bands and QGIS's band parameters are both checked here)."""
    chosen = tuple(bands) if bands else default_bands(count)
    if len(chosen) != 3 or not all(1 <= b <= count for b in chosen):
        shown = ",".join(str(b) for b in chosen)
        raise ImageryError(f"the raster has {count} band{'s' if count != 1 else ''}: choose three bands of 1..{count} "
                           f"as red,green,blue, not {shown}")
    return chosen


def stretch_band(values: np.ndarray, valid: np.ndarray, percentiles=STRETCH) -> np.ndarray:
    """Map the band's [p2, p98] over valid pixels to 0..255 (clipped); invalid pixels become 0, a constant
    band 255 (0 where it is 0)."""
    data = values.astype(np.float64)
    valid = valid & np.isfinite(data)
    out = np.zeros(values.shape, dtype=np.uint8)
    if not valid.any():
        return out
    lo, hi = np.percentile(data[valid], percentiles)
    if hi <= lo:
        out[valid] = 255 if hi > 0 else 0
        return out
    scaled = np.clip((data - lo) / (hi - lo), 0.0, 1.0) * 255.0
    out[valid] = np.round(scaled[valid]).astype(np.uint8)
    return out


def decimated_shape(width: int, height: int, max_pixels: int = MAX_PIXELS) -> Tuple[int, int]:
    """(width, height) of a width x height window read with at most `max_pixels` pixels, its aspect kept;
    the window's own size when it fits."""
    if width * height <= max_pixels:
        return width, height
    factor = math.sqrt(width * height / max_pixels)
    return max(1, int(width / factor)), max(1, int(height / factor))


def to_rgb8(bands: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """[3, H, W] band data and its validity mask -> HxWx3 uint8; 8-bit data is kept, other types stretched.
    NaN and infinite values count as nodata, declared or not; `NoDataError` when no pixel is left. Complex data
    (SAR single-look complex, GDAL's CInt16/CFloat32) is read as its amplitude |z|, as SAR viewers show it (ESA
    SNAP's Amplitude band), not its real part, which numpy's cast would keep."""
    if np.iscomplexobj(bands):
        bands = np.abs(bands)
    if np.issubdtype(bands.dtype, np.floating):
        valid = valid & np.isfinite(bands)
    if not valid.any():
        raise NoDataError("every pixel of the image is nodata (or not a finite number)")
    if bands.dtype == np.uint8:
        out = np.where(valid, bands, 0).astype(np.uint8)
    else:
        out = np.stack([stretch_band(b, v) for b, v in zip(bands, valid)])
    return np.ascontiguousarray(out.transpose(1, 2, 0))


def _palette_rgb(ds, window, shape) -> np.ma.MaskedArray:
    """A one-band paletted raster as [3, H, W] uint8 through its colour table, its nodata masked; read at
    `shape` (rows, cols)."""
    index = ds.read(1, window=window, masked=True, out_shape=shape)
    values, table = np.ma.getdata(index), ds.colormap(1)
    lut = np.zeros((max(max(table), int(values.max())) + 1, 3), np.uint8)
    for value, rgba in table.items():
        lut[value] = rgba[:3]
    rgb = lut[values].transpose(2, 0, 1)
    return np.ma.masked_array(rgb, np.broadcast_to(np.ma.getmaskarray(index), rgb.shape))


def read_rgb(
    path, window: Optional[Window] = None, bands: Optional[Sequence[int]] = None, max_pixels: int = MAX_PIXELS
) -> np.ndarray:
    """The raster (or a window col,row,w,h of it) as HxWx3 uint8 RGB, nodata, alpha-masked and non-finite
    pixels black; a one-band paletted raster through its colour table. A window of more than `max_pixels` is
    read decimated (nearest neighbour, through overviews where present) to `decimated_shape`: the caller
    scales its geotransform by the window's size over the image's. `ImageryError` with the reason otherwise."""
    rasterio = import_rasterio()
    from rasterio.enums import ColorInterp
    from rasterio.windows import Window as RioWindow

    try:
        with not_georeferenced_ok(rasterio), rasterio.open(path) as ds:
            chosen = check_bands(bands, ds.count)
            rio_window = None
            if window is not None:
                col, row, w, h = window
                if col < 0 or row < 0 or w <= 0 or h <= 0 or col + w > ds.width or row + h > ds.height:
                    raise ImageryError(f"window {window} reaches outside the raster ({ds.width}x{ds.height})")
                rio_window = RioWindow(col, row, w, h)
            out_w, out_h = decimated_shape(*((w, h) if window is not None else (ds.width, ds.height)), max_pixels)
            if ds.count == 1 and ds.colorinterp[0] == ColorInterp.palette:
                data = _palette_rgb(ds, rio_window, (out_h, out_w))
            else:
                data = ds.read(list(chosen), window=rio_window, masked=True, out_shape=(3, out_h, out_w))
    except rasterio.errors.RasterioError as exc:
        raise ImageryError(f"cannot read raster {path}: {read_failure(exc)}") from None
    valid = ~np.ma.getmaskarray(data)
    return to_rgb8(np.ma.getdata(data), valid)


def read_failure(exc: Exception) -> str:
    """Why rasterio could not read a raster's pixels, for one line: a file the raster takes its pixels from
    that GDAL cannot open (a VRT's moved source) is named; another failed read is a truncated or damaged file;
    any other error says itself."""
    detail = str(exc)
    if not detail.startswith("Read failed"):
        return detail
    if type(exc.__cause__).__name__ == "CPLE_OpenFailedError":  # rasterio._err's, raised from GDAL's error
        return f"its pixels are in a file that cannot be opened ({exc.__cause__})"
    return "its header opens but its pixels cannot be read (a truncated or damaged file)"


def vector_file_summary(path) -> Optional[str]:
    """What a file that GDAL could not open as a raster holds when OGR opens it as vector data (pyogrio's
    `list_layers`), in a few words ("GeoJSON, 1 layer: labels (Polygon)"); None when it is no vector file
    either. For the one line that says a vector file was given where a raster was wanted."""
    import pyogrio

    try:
        layers = pyogrio.list_layers(path)
        driver = pyogrio.read_info(path, layer=0)["driver"] if len(layers) else "no layers"
    except (pyogrio.errors.DataSourceError, pyogrio.errors.DataLayerError, OSError, ValueError):
        return None
    named = ", ".join(f"{name} ({kind or 'no geometry'})" for name, kind in layers[:3])
    more = f", and {len(layers) - 3} more" if len(layers) > 3 else ""
    return f"{driver}, {len(layers)} {'layer' if len(layers) == 1 else 'layers'}: {named}{more}"


@contextlib.contextmanager
def not_georeferenced_ok(rasterio):
    """A context in which rasterio's two-line NotGeoreferencedWarning is not printed: the CLI says in one line
    what a raster without georeferencing means for its output (`cli.rasters.open_frame`)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        yield
