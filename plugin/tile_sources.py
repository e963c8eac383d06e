"""Pixels of plan tiles inside QGIS: a file raster read through osgeo.gdal at its own resolution, or
any raster layer (XYZ, WMS, WMTS...) rendered by its cloned data provider at a chosen resolution.

Both are callables `source(tile) -> QImageSource` (plugin/image_source.py: the client fits it to the model's
input and sends exactly those pixels), or None for a tile holding only nodata (skipped), used from the thread
that runs the algorithm. The band handling (bands 1-3, grey for one band,
a 2-98 % stretch for non-8-bit data, nodata black) is `models.imagery.to_rgb8`, a numpy-only function, so
the command line (rasterio) and QGIS send the same pixels.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np
from qgis.core import Qgis, QgsRasterLayer, QgsRectangle
from qgis.PyQt.QtGui import QImage

from ..core.georef import GeoTransform
from ..core.tiling import Tile
from ..models.imagery import ImageryError, NoDataError, check_bands, to_rgb8
from .image_source import QImageSource


def rgb_source(rgb: np.ndarray) -> QImageSource:
    """An HxWx3 uint8 array as the client's ImageSource (a QImage owning a copy of the pixels)."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    height, width = rgb.shape[:2]
    return QImageSource(QImage(rgb.data, width, height, 3 * width, QImage.Format.Format_RGB888).copy())


def read_window(band, col: int, row: int, w: int, h: int) -> np.ndarray:
    """`band.ReadAsArray` of a window (h x w), whether GDAL raises exceptions (RuntimeError, as osgeo does once
    `gdal.UseExceptions()`) or returns None; a window GDAL cannot read (a truncated or damaged file there)
    raises ValueError with GDAL's reason, which `core.bulk.run_tiles` records as that tile's failure."""
    from osgeo import gdal

    gdal.ErrorReset()
    try:
        data = band.ReadAsArray(col, row, w, h)
    except RuntimeError as exc:
        raise ValueError(_gdal_reason(str(exc))) from None
    if data is None:
        raise ValueError(_gdal_reason(gdal.GetLastErrorMsg()))
    return data


def _gdal_reason(message: str) -> str:
    message = message.strip().splitlines()[-1] if message.strip() else "GDAL gave no pixels"
    return f"GDAL cannot read this window ({message})"


class GdalTiles:
    """Windows of a file raster read with osgeo.gdal. `offset` (col, row) is added to every tile window (a plan
    over a part of the raster); `bands` three 1-based bands read as red, green, blue (None: 1,2,3, or grey for a
    raster of one or two bands), checked by `models.imagery.check_bands` (ImageryError, a ValueError, when the
    raster lacks one). A nodata-only window is None with `skip_nodata`, else sent black with `black_nodata` (a
    bulk run's kept nodata tiles, as `geovlm caption --keep-nodata`), else a ValueError saying so. A window whose
    pixels cannot be read raises ValueError (see `read_window`)."""

    def __init__(self, path: str, skip_nodata: bool, offset: Tuple[int, int] = (0, 0),
                 bands: Optional[Sequence[int]] = None, black_nodata: bool = False):
        from osgeo import gdal

        self.dataset = gdal.Open(path, gdal.GA_ReadOnly)
        if self.dataset is None:
            raise ValueError(f"GDAL cannot open {path}")
        self.bands = check_bands(bands, self.dataset.RasterCount)
        self.skip_nodata = skip_nodata
        self.black_nodata = black_nodata
        self.offset = offset

    def __call__(self, tile: Tile):
        col, row = tile.col_off + self.offset[0], tile.row_off + self.offset[1]
        w, h = tile.width, tile.height
        first = self.dataset.GetRasterBand(1)
        if first.GetColorInterpretation() == 2 and self.dataset.RasterCount == 1:  # GCI_PaletteIndex
            return self._palette(first, col, row, w, h)
        data, valid = [], []
        for b in self.bands:
            band = self.dataset.GetRasterBand(b)
            data.append(read_window(band, col, row, w, h))
            valid.append(read_window(band.GetMaskBand(), col, row, w, h) > 0)
        valid = np.stack(valid)
        if self.skip_nodata and not valid.any():
            return None
        if self.black_nodata and not valid.any():  # nodata is drawn black, as `to_rgb8` does
            return rgb_source(np.zeros((h, w, 3), np.uint8))
        try:
            rgb = to_rgb8(np.stack(data), valid)
        except NoDataError as exc:  # NaN or infinite values only, which the mask band does not show
            if self.skip_nodata:
                return None
            if self.black_nodata:
                return rgb_source(np.zeros((h, w, 3), np.uint8))
            raise ValueError(str(exc)) from None
        except ImageryError as exc:
            raise ValueError(str(exc)) from None
        return rgb_source(rgb)

    def pixel_digest(self) -> str:
        """`core.raster_identity.pixel_digest` of the whole file, whatever part the plan covers (a GeoTIFF's
        stored blocks, else every band's values): the command line's digest of the same file."""
        from ..core.raster_identity import geotiff_block_reader, pixel_digest

        ds = self.dataset

        def values(window):
            data = [read_window(ds.GetRasterBand(b), *window) for b in range(1, ds.RasterCount + 1)]
            return b"".join(d.astype(d.dtype.newbyteorder("<"), copy=False).tobytes() for d in data)

        stored = geotiff_block_reader(ds.GetDescription(), ds.GetDriver().ShortName, ds.RasterXSize, ds.RasterYSize,
                                      ds.RasterCount, tuple(ds.GetRasterBand(1).GetBlockSize()),
                                      lambda name, band: ds.GetRasterBand(band).GetMetadataItem(name, "TIFF"))
        return pixel_digest(ds.RasterXSize, ds.RasterYSize, stored or values)

    def _palette(self, band, col, row, w, h):
        index = read_window(band, col, row, w, h)
        valid = read_window(band.GetMaskBand(), col, row, w, h) > 0
        if self.skip_nodata and not valid.any():
            return None
        table = band.GetColorTable()
        lut = np.zeros((max(table.GetCount(), int(index.max()) + 1), 3), np.uint8)
        for i in range(table.GetCount()):
            lut[i] = table.GetColorEntry(i)[:3]
        rgb = np.where(valid[..., None], lut[index], 0).astype(np.uint8)
        return rgb_source(rgb)


class RenderedTiles:
    """Tiles of a north-up plan (`gt` from `core.tiling.plan_for_extent`) fetched from a clone of the layer's
    data provider at the plan's resolution; a tile whose every pixel is transparent is nodata. Make it on the
    main thread (the clone), use it from one thread."""

    def __init__(self, layer: QgsRasterLayer, gt: GeoTransform, skip_nodata: bool):
        self.provider = layer.dataProvider().clone()
        if self.provider is None:
            raise ValueError(f"layer {layer.name()!r} cannot be read")
        self.gt = gt
        self.skip_nodata = skip_nodata

    def __call__(self, tile: Tile):
        x0, y0 = self.gt.to_map(tile.col_off, tile.row_off)
        x1, y1 = self.gt.to_map(tile.col_off + tile.width, tile.row_off + tile.height)
        extent = QgsRectangle(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
        block = self.provider.block(1, extent, tile.width, tile.height)
        if block is None or not block.isValid():
            raise ValueError(f"the layer gave no pixels for tile {tile.id}")
        if block.dataType() in (Qgis.DataType.ARGB32, Qgis.DataType.ARGB32_Premultiplied):
            argb = np.frombuffer(bytes(block.data()), dtype="<u4").reshape(tile.height, tile.width)
            alpha = (argb >> 24) & 0xFF
            if self.skip_nodata and not alpha.any():
                return None
            rgb = np.stack([(argb >> 16) & 0xFF, (argb >> 8) & 0xFF, argb & 0xFF], axis=-1).astype(np.uint8)
            return rgb_source(np.where(alpha[..., None] > 0, rgb, 0).astype(np.uint8))
        raise ValueError(f"rendering gives {block.dataType()} pixels; only colour (ARGB) web layers are rendered")
