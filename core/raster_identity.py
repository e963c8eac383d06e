"""Which raster a bulk run is about, beyond its grid: its CRS and a digest of a fixed sample of its pixels
(standard library only; the pixels are read by the caller's own reader: rasterio on the command line,
osgeo.gdal in QGIS, which give the same values of the same file).

Why a pixel sample. The same grid (size and geotransform) is very common in remote sensing: a new acquisition
of a scene, a re-processed product, the same pixels in another CRS. The ledger (core/ledger.py) must refuse
those as another plan instead of resuming with answers about other pixels. The identity must be
- cheap for a raster of any size: the run may be resumed many times, on a 100 GB mosaic too;
- the same in QGIS and on the command line, so a run started in one is finished by the other;
- about the pixels, not the file: building overviews into the file (gdaladdo) leaves the answers valid and
  must not stop a resume, and a VRT's bytes say nothing of the pixels it points to.
File bytes fail the last point (and reading them whole fails the first for big files); size and mtime are
not kept by copies. So: `SAMPLE_GRID` x `SAMPLE_GRID` windows of `SAMPLE_SIDE` pixels, one at the centre of
each cell of a regular grid over the raster (a raster of at most `WHOLE_PIXELS` pixels: the whole of it), and
the SHA-256 of what they hold:
- in a GeoTIFF on disk, the stored bytes of the blocks (tiles or strips, compressed as written) under each
  window, at the offsets GDAL reports (`BLOCK_OFFSET_x_y`/`BLOCK_SIZE_x_y`, "TIFF" metadata domain). Not the
  decoded values: a lossy codec (JPEG, the usual COG) decodes differently by a level here and there in QGIS's
  GDAL and in rasterio's own (measured on cogeo.tif), which would refuse a resume across the two; the
  stored bytes are the same, and overviews added later do not touch them. The price: the same pixels
  re-encoded (another compression, or re-written tiles) are another plan, a refusal on the safe side
  (`--overwrite` starts again);
- in any other raster (VRT, other formats, remote files), the decoded values of every band, little-endian.
A new acquisition changes every window (sensor noise alone does); an edit confined to the pixels outside the
windows (which cover 64 x 32 x 32 px, under 2 % of a raster over 256k px) is not seen, which is the price of
reading 64 blocks: 0.1-40 ms for the shared GeoTIFFs, 40-100 ms for a 41k x 41k px VRT (docs/benchmarks.md,
bench/bench_raster_identity.py, two shared CPUs), where the file's whole SHA-256 would read every byte of a
multi-GB file. A VRT over JPEG-compressed files is identified by its decoded values, which QGIS and rasterio
decode differently: such a run is resumed by the tool that started it only. A window that cannot be read (a
damaged file there) counts as a fixed marker, so a damaged raster has a stable identity too.
"""
from __future__ import annotations

import hashlib
import os
from typing import Callable, List, Optional, Tuple

SAMPLE_GRID = 8
SAMPLE_SIDE = 32
WHOLE_PIXELS = 512 * 512

Window = Tuple[int, int, int, int]  # (col_off, row_off, width, height) in the raster's pixels


def sample_windows(width: int, height: int) -> List[Window]:
    """The windows whose pixels identify a `width` x `height` raster: the whole raster when it has at most
    `WHOLE_PIXELS` pixels, else `SAMPLE_GRID`² windows of `SAMPLE_SIDE`² pixels (clipped to the raster), each
    centred in one cell of a regular grid, row by row."""
    if width * height <= WHOLE_PIXELS:
        return [(0, 0, width, height)]
    windows = []
    for i in range(SAMPLE_GRID):
        for j in range(SAMPLE_GRID):
            w, h = min(SAMPLE_SIDE, width), min(SAMPLE_SIDE, height)
            col = min(width - w, max(0, (2 * j + 1) * width // (2 * SAMPLE_GRID) - w // 2))
            row = min(height - h, max(0, (2 * i + 1) * height // (2 * SAMPLE_GRID) - h // 2))
            windows.append((col, row, w, h))
    return windows


def pixel_digest(width: int, height: int, read: Callable[[Window], bytes]) -> str:
    """The first 16 hex digits of the SHA-256 of the sample's pixels: `read(window)` gives the raw values of
    every band in the window (band by band, rows top to bottom, little-endian), and raises ValueError or
    OSError where the file cannot be read (counted as a fixed marker)."""
    digest = hashlib.sha256(f"{width}x{height}".encode("ascii"))
    for window in sample_windows(width, height):
        try:
            data = read(window)
        except (ValueError, OSError):
            data = b"unreadable"
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()[:16]


MAX_BLOCK_BYTES = 16 << 20  # a block (a strip of a huge uncompressed file) above this: decoded values instead


def block_reader(path: str, width: int, height: int, block: Tuple[int, int],
                 ranges: Callable[[int, int], List[Tuple[int, int]]]) -> Callable[[Window], bytes]:
    """`read(window)` for `pixel_digest` giving the stored bytes of a GeoTIFF's blocks under the window, read
    from the file at `path`: `block` is the (width, height) of a block in pixels, `ranges(bx, by)` the (offset,
    size) in bytes of block column `bx`, row `by` in each band (equal pairs, as in a pixel-interleaved file,
    are read once; (0, 0) is a sparse block, read as nothing). Raises ValueError for a block the file does not
    hold whole (a truncated file)."""
    bw, bh = block

    def read(window: Window) -> bytes:
        col, row, w, h = window
        chunks = []
        with open(path, "rb") as f:
            for by in range(row // bh, min(height - 1, row + h - 1) // bh + 1):
                for bx in range(col // bw, min(width - 1, col + w - 1) // bw + 1):
                    for offset, size in dict.fromkeys(ranges(bx, by)):
                        if size > MAX_BLOCK_BYTES:
                            raise ValueError(f"block {bx},{by} holds {size} bytes")
                        f.seek(offset)
                        data = f.read(size)
                        if len(data) != size:
                            raise ValueError(f"block {bx},{by} is cut short")
                        chunks.append(data)
        return b"".join(chunks)

    return read


def geotiff_block_reader(path: str, driver: str, width: int, height: int, bands: int, block: Tuple[int, int],
                         tag: Callable[[str, int], Optional[str]]) -> Optional[Callable[[Window], bytes]]:
    """`block_reader` of a GeoTIFF on disk, its blocks located through `tag(name, band)`: the item `name` of the
    "TIFF" metadata domain of 1-based `band` as GDAL gives it (osgeo: `band.GetMetadataItem(name, "TIFF")`,
    rasterio: `ds.get_tag_item(name, "TIFF", bidx=band)`), None when absent. None (read decoded values
    instead) for another driver, a path that is not a local file, or a first block over `MAX_BLOCK_BYTES`."""
    if driver != "GTiff" or not os.path.isfile(path):
        return None
    first = tag("BLOCK_SIZE_0_0", 1)
    if first is None or int(first) > MAX_BLOCK_BYTES:
        return None

    def ranges(bx: int, by: int) -> List[Tuple[int, int]]:
        return [(int(tag(f"BLOCK_OFFSET_{bx}_{by}", b) or 0), int(tag(f"BLOCK_SIZE_{bx}_{by}", b) or 0))
                for b in range(1, bands + 1)]

    return block_reader(path, width, height, block, ranges)


def crs_identity(epsg: Optional[int], proj: Optional[str]) -> str:
    """A short, stable name of a CRS that QGIS and rasterio agree on: "EPSG:32616" when the CRS is an EPSG
    code (rasterio: `to_epsg(confidence_threshold=100)`, QGIS: its `authid()`; a looser match, rasterio's
    default 70 %, names codes QGIS does not), else its PROJ string with the parameters sorted and what the two
    write differently left out (`+type=crs`, `+no_defs` or rasterio's `+no_defs=True`, the null
    `+towgs84=0,0,0,0,0,0,0` QGIS's PROJ adds to GRS80), or "none" for a raster without a CRS."""
    if epsg:
        return f"EPSG:{int(epsg)}"
    if not proj or not proj.strip():
        return "none"
    parts = sorted(p for p in proj.split()
                   if p != "+type=crs" and p.split("=")[0] != "+no_defs" and p != "+towgs84=0,0,0,0,0,0,0")
    return " ".join(parts) or "none"
