"""Tiling plans over a raster or a map extent: stable tile ids, overlap, edge handling, empty-tile skipping.

A plan is pure arithmetic on the raster's size and geotransform; reading pixels is the caller's business.
Tile ids depend only on the plan's parameters and the tile's grid position, so a batch can resume by them.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from typing import Iterator, List, Tuple

from .georef import GeoTransform

EDGE_MODES = ("shift", "partial", "drop")


@dataclass(frozen=True)
class Tile:
    """One tile of a TilePlan: its grid row and column, and its window in raster pixels (offsets of its
    top-left pixel, width and height)."""

    id: str  # "<plan fingerprint>:r<row>c<col>"
    row: int
    col: int
    col_off: int
    row_off: int
    width: int
    height: int

    @property
    def window(self) -> Tuple[int, int, int, int]:
        """(col_off, row_off, width, height) in raster pixels, GDAL's window order."""
        return (self.col_off, self.row_off, self.width, self.height)


@dataclass(frozen=True)
class TilePlan:
    """Tiles of `tile` x `tile` pixels with `overlap` pixels shared between neighbours, over a raster of `width` x
    `height` pixels. ValueError for a size or tile that is not positive, an overlap outside 0..tile-1, or an
    unknown edge mode.

    Edge tiles: "shift" moves the last tile back inside the raster (all tiles full size where the raster is
    large enough), "partial" keeps a smaller last tile, "drop" leaves the uncovered strip out.
    """

    width: int
    height: int
    tile: int
    overlap: int = 0
    edge: str = "shift"

    def __post_init__(self):
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"raster size must be positive, got {self.width}x{self.height}")
        if self.tile <= 0:
            raise ValueError("tile size must be positive")
        if not 0 <= self.overlap < self.tile:
            raise ValueError("overlap must be at least 0 and smaller than the tile size")
        if self.edge not in EDGE_MODES:
            raise ValueError(f"edge must be one of {EDGE_MODES}")

    @property
    def stride(self) -> int:
        """Pixels from one tile's start to the next one's: `tile - overlap`."""
        return self.tile - self.overlap

    @property
    def fingerprint(self) -> str:
        """A short hash of the parameters: tiles of different plans never share an id."""
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:10]

    def _starts(self, length: int) -> List[Tuple[int, int]]:
        """(offset, size) along one axis."""
        if length <= self.tile:
            return [(0, length)] if self.edge != "drop" or length == self.tile else []
        starts = list(range(0, length - self.tile + 1, self.stride))
        covered = starts[-1] + self.tile
        if covered < length:
            if self.edge == "shift":
                starts.append(length - self.tile)
            elif self.edge == "partial":
                starts.append(starts[-1] + self.stride)
        return [(s, min(self.tile, length - s)) for s in starts]

    def tiles(self) -> Iterator[Tile]:
        """The tiles row by row, left to right, ids "<fingerprint>:r<row>c<col>"."""
        fp = self.fingerprint
        for r, (row_off, h) in enumerate(self._starts(self.height)):
            for c, (col_off, w) in enumerate(self._starts(self.width)):
                yield Tile(f"{fp}:r{r}c{c}", r, c, col_off, row_off, w, h)

    def __len__(self) -> int:
        return len(self._starts(self.height)) * len(self._starts(self.width))


def plan_for_extent(
    xmin: float, ymin: float, xmax: float, ymax: float, resolution: float, tile: int, overlap: int = 0,
    edge: str = "shift",
) -> Tuple[TilePlan, GeoTransform]:
    """A plan over a north-up map extent rendered at `resolution` ground units per pixel (e.g. a canvas), and the
    geotransform of that rendering (top-left corner at (xmin, ymax)); the sides round up to whole pixels.
    ValueError for an empty extent, a resolution that is not positive, or a plan TilePlan refuses."""
    if xmax <= xmin or ymax <= ymin:
        raise ValueError("extent is empty")
    if resolution <= 0:
        raise ValueError("resolution must be positive")
    width = max(1, math.ceil((xmax - xmin) / resolution - 1e-9))
    height = max(1, math.ceil((ymax - ymin) / resolution - 1e-9))
    gt = GeoTransform(resolution, 0.0, xmin, 0.0, -resolution, ymax)
    return TilePlan(width, height, tile, overlap, edge), gt


# The most tiles a plan may have unless the user says more (`geovlm caption/detect --max-tiles`, the bulk
# algorithms' MAX_TILES): no scene an aerial or satellite sensor delivers reaches it at 512 px (a 41k x 41k px
# scene is 6,561 tiles, 25,921 at 256 px), while a mosaic VRT of a country or a mistaken tile size of 16 px does,
# and would keep an engine busy for days (100,000 tiles at 1 s each).
DEFAULT_MAX_TILES = 100_000


@dataclass(frozen=True)
class PlanOptions:
    """How a user changes a plan's size where the refusal is read: `extent` asks part of the raster (the command
    line's "--extent 'xmin,xmax,ymin,ymax [CRS]'", QGIS's "EXTENT"), `tile` takes larger tiles ("--tile",
    "TILE_SIZE"), `cap` raises the cap ("--max-tiles", "MAX_TILES")."""

    extent: str
    tile: str
    cap: str


def plan_area(width: int, height: int, part: bool, what: str = "the raster") -> str:
    """What a plan of `width` x `height` pixels covers, in words for a one-line message: "the raster (791x718
    px)", or "the extent's 1200x800 px of the raster" when `part` (an extent's window of `what`)."""
    return f"the extent's {width}x{height} px of {what}" if part else f"{what} ({width}x{height} px)"


def max_tiles_problem(max_tiles: int, options: PlanOptions) -> str:
    """One line when `max_tiles` cannot be a cap (less than 1), else ""."""
    return f"{options.cap} must be at least 1, not {max_tiles}" if max_tiles < 1 else ""


def too_many_tiles(plan: TilePlan, area: str, max_tiles: int, options: PlanOptions) -> str:
    """One line refusing `plan` when it has more than `max_tiles` tiles (`len(plan)`: counted, never listed),
    else "": the count, the tile size, `area` (`plan_area`) and the three ways on, each named as `options` say
    the reader sets it. `geovlm caption/detect` and QGIS's bulk algorithms both word it here, so that a refusal
    reads the same in a terminal and in QGIS's log, but for the names of the settings."""
    count = len(plan)
    if count <= max_tiles:
        return ""
    return (f"the plan has {count:,} tiles of {plan.tile} px over {area}, more than {options.cap} {max_tiles:,}: "
            f"ask part of it ({options.extent}), take larger tiles ({options.tile}), or raise {options.cap}")
