"""Georeferencing math: model coordinates -> model-input pixels -> exported-image pixels -> map coordinates.

Pixel coordinates are continuous: (0, 0) is the top-left corner of the top-left pixel, (width, height) the
bottom-right corner of the last one. Map coordinates come from a six-coefficient affine geotransform
(rotation and shear included) in rasterio's order: x = a*col + b*row + c, y = d*col + e*row + f.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, List, Optional, Sequence, Tuple

from .profiles import Profile

Point = Tuple[float, float]


@dataclass(frozen=True)
class GeoTransform:
    """An affine pixel -> map transform: x = a*col + b*row + c; y = d*col + e*row + f (rasterio's `Affine`
    coefficients; GDAL orders the same six as c, a, b, f, d, e). (col, row) = (0, 0) is the top-left corner of
    the top-left pixel, as in GDAL; x, y are in the CRS's units. Raises ValueError for a non-finite coefficient or
    a singular transform (determinant 0)."""

    a: float
    b: float
    c: float
    d: float
    e: float
    f: float

    def __post_init__(self):
        if not all(math.isfinite(v) for v in (self.a, self.b, self.c, self.d, self.e, self.f)):
            raise ValueError("geotransform has a non-finite coefficient")
        if self.determinant == 0:
            raise ValueError("geotransform is singular (its pixels have no area)")

    @classmethod
    def from_gdal(cls, gt: Sequence[float]) -> GeoTransform:
        """From GDAL's order (c, a, b, f, d, e)."""
        c, a, b, f, d, e = (float(v) for v in gt)
        return cls(a, b, c, d, e, f)

    @classmethod
    def parse(cls, text: str) -> GeoTransform:
        """From 'a,b,c,d,e,f' (rasterio's affine order; spaces ignored). ValueError for other than six numbers, or
        a transform `__post_init__` refuses."""
        parts = [p for p in text.replace(" ", "").split(",") if p]
        if len(parts) != 6:
            raise ValueError(f"a geotransform needs six numbers a,b,c,d,e,f, got {len(parts)}")
        return cls(*(float(p) for p in parts))

    @classmethod
    def identity(cls) -> GeoTransform:
        """x = col, y = row."""
        return cls(1.0, 0.0, 0.0, 0.0, 1.0, 0.0)

    @property
    def determinant(self) -> float:
        """a*e - b*d: the signed map area of one pixel (negative for the usual north-up, rows-down rasters)."""
        return self.a * self.e - self.b * self.d

    @property
    def is_north_up(self) -> bool:
        """True when the transform has no rotation or shear (b = d = 0)."""
        return self.b == 0 and self.d == 0

    @property
    def pixel_size(self) -> Tuple[float, float]:
        """Ground length of one pixel along a row and along a column."""
        return math.hypot(self.a, self.d), math.hypot(self.b, self.e)

    def to_map(self, col: float, row: float) -> Point:
        """Map (x, y) of a pixel position (col, row), fractional positions included."""
        return (self.a * col + self.b * row + self.c, self.d * col + self.e * row + self.f)

    def to_pixel(self, x: float, y: float) -> Point:
        """Pixel (col, row) of a map point: the inverse of `to_map`."""
        det = self.determinant
        dx, dy = x - self.c, y - self.f
        return ((self.e * dx - self.b * dy) / det, (self.a * dy - self.d * dx) / det)

    def window(self, col_off: float, row_off: float) -> GeoTransform:
        """The geotransform of a window whose top-left pixel is (col_off, row_off)."""
        x, y = self.to_map(col_off, row_off)
        return GeoTransform(self.a, self.b, x, self.d, self.e, y)

    def scaled(self, sx: float, sy: float) -> GeoTransform:
        """The geotransform of the same footprint rendered with pixels sx, sy times as many per axis."""
        return GeoTransform(self.a / sx, self.b / sy, self.c, self.d / sx, self.e / sy, self.f)


@dataclass(frozen=True)
class FitPlan:
    """How an image of `width` x `height` became the model's input of `input_width` x `input_height`.

    Per axis: image_pixel = input_pixel / scale - offset, where `offset` is the padding (in image pixels)
    added on the left/top before resizing, or minus the crop start.
    """

    width: int
    height: int
    input_width: int
    input_height: int
    scale_x: float
    scale_y: float
    offset_x: float
    offset_y: float
    mode: str

    def input_to_image(self, x: float, y: float) -> Point:
        """A point in pixels of the model's input -> pixels of the image (may fall outside it, in the pad)."""
        return (x / self.scale_x - self.offset_x, y / self.scale_y - self.offset_y)

    def image_to_input(self, x: float, y: float) -> Point:
        """A point in pixels of the image -> pixels of the model's input: the inverse of `input_to_image`."""
        return ((x + self.offset_x) * self.scale_x, (y + self.offset_y) * self.scale_y)


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> Tuple[int, int]:
    """Qwen2-VL's dynamic resolution: (height, width) in pixels, each a multiple of `factor`, their product within
    [min_pixels, max_pixels], the aspect ratio kept as nearly as that allows (`smart_resize` of transformers'
    models/qwen2_vl/image_processing_qwen2_vl.py). Raises ValueError for a side of 0 or less or an aspect ratio
    over 200."""
    if min(height, width) <= 0:
        raise ValueError("image has no pixels")
    if max(height, width) / min(height, width) > 200:
        raise ValueError("aspect ratio over 200 cannot be fitted")
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def fit_plan(profile: Profile, width: int, height: int) -> FitPlan:
    """The exact geometry of the family's preprocessing (`profile.fit`: pad, stretch, crop or dynamic) for an
    image of width x height pixels. Raises ValueError for a size that is not positive (and, for dynamic, an
    aspect ratio over 200)."""
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    mode = profile.fit
    if mode == "dynamic":
        h_in, w_in = smart_resize(
            height, width, profile.dynamic_factor, profile.dynamic_min_pixels, profile.dynamic_max_pixels
        )
        return FitPlan(width, height, w_in, h_in, w_in / width, h_in / height, 0.0, 0.0, mode)
    size = int(profile.input_size)
    if mode == "stretch":
        return FitPlan(width, height, size, size, size / width, size / height, 0.0, 0.0, mode)
    if mode == "pad":
        # LLaVA's expand2square: paste at ((side - w) // 2, (side - h) // 2) on a side x side canvas.
        side = max(width, height)
        return FitPlan(
            width, height, size, size, size / side, size / side, (side - width) // 2, (side - height) // 2, mode
        )
    # crop: CLIP resizes the short side to `size`, then takes the centre size x size.
    short = min(width, height)
    new_w = size if width == short else int(size * width / short)
    new_h = size if height == short else int(size * height / short)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    sx, sy = new_w / width, new_h / height
    return FitPlan(width, height, size, size, sx, sy, -left / sx, -top / sy, mode)


def model_to_input(profile: Profile, plan: FitPlan, vx: float, vy: float) -> Point:
    """A point in the model's coordinate convention -> pixels of the model's input."""
    if profile.coord_mode == "input_pixels":
        return (vx, vy)
    return (
        (vx + profile.coord_offset) / profile.coord_scale * plan.input_width,
        (vy + profile.coord_offset) / profile.coord_scale * plan.input_height,
    )


def rotated_corners(cx: float, cy: float, w: float, h: float, turn_ccw_deg: float) -> List[Point]:
    """The four corners of a w x h box centred at (cx, cy), turned counter-clockwise as displayed.

    Pixel rows grow downwards, so a counter-clockwise turn on screen is a negative angle in (col, row).
    Corners come in the order top-left, top-right, bottom-right, bottom-left of the unturned box.
    """
    t = math.radians(turn_ccw_deg)
    cos_t, sin_t = math.cos(t), math.sin(t)
    out = []
    for dx, dy in ((-w / 2, -h / 2), (w / 2, -h / 2), (w / 2, h / 2), (-w / 2, h / 2)):
        out.append((cx + dx * cos_t + dy * sin_t, cy - dx * sin_t + dy * cos_t))
    return out


def polygon_to_map(polygon: Iterable[Point], gt: GeoTransform) -> List[Point]:
    """Every (col, row) vertex through `gt` to map (x, y)."""
    return [gt.to_map(x, y) for x, y in polygon]


def reproject(polygon: Iterable[Point], transform: Callable[[float, float], Point]) -> List[Point]:
    """Map every vertex through a CRS transform (pyproj in the engine, QgsCoordinateTransform in QGIS)."""
    return [transform(x, y) for x, y in polygon]


def signed_area(polygon: Sequence[Point]) -> float:
    """The shoelace formula over an open ring: positive when the vertices run counter-clockwise in a y-up plane
    (clockwise on screen for pixel rows that grow downwards), in the square of the vertices' units."""
    n = len(polygon)
    return 0.5 * sum(
        polygon[i][0] * polygon[(i + 1) % n][1] - polygon[(i + 1) % n][0] * polygon[i][1] for i in range(n)
    )


def centroid(polygon: Sequence[Point]) -> Point:
    """The centroid of a simple polygon (the vertex mean when it has no area). Computed relative to the
    first vertex: with map coordinates of 1e6 the cross products would otherwise lose decimetres."""
    n = len(polygon)
    ox, oy = polygon[0]
    local = [(x - ox, y - oy) for x, y in polygon]
    a = signed_area(local)
    if abs(a) < 1e-300:
        return (ox + sum(p[0] for p in local) / n, oy + sum(p[1] for p in local) / n)
    cx = cy = 0.0
    for i in range(n):
        (x0, y0), (x1, y1) = local[i], local[(i + 1) % n]
        cross = x0 * y1 - x1 * y0
        cx += (x0 + x1) * cross
        cy += (y0 + y1) * cross
    return (ox + cx / (6 * a), oy + cy / (6 * a))


def parse_image_size(text: str) -> Tuple[int, int]:
    """'WxH' (x in any case) -> (width, height) in pixels. ValueError unless both are positive integers."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"image size needs WxH, got {text!r}") from None
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {text!r}")
    return width, height


@dataclass(frozen=True)
class ImageFrame:
    """The image that was sent to the model: its size, where it lies on the map, and in which CRS."""

    width: int
    height: int
    geotransform: Optional[GeoTransform] = None
    crs: Optional[str] = None  # any string the caller's CRS library understands (WKT, EPSG:xxxx)

    def to_map(self, polygon: Sequence[Point]) -> List[Point]:
        """A polygon in pixels of this image (col, row) -> map (x, y) in `crs`; with no geotransform the
        pixel coordinates themselves, as floats."""
        if self.geotransform is None:
            return [(float(x), float(y)) for x, y in polygon]
        return polygon_to_map(polygon, self.geotransform)


# Pixel space written as a layer: an engineering (local Cartesian) CRS in pixels, y pointing up, so that GIS
# software opens it upright and never takes it for WGS 84 degrees (a layer with no CRS is often assumed to be
# EPSG:4326, which draws row numbers as latitudes). WKT2 ENGCRS, ISO 19162:2019 section 11.
PIXEL_CRS_WKT = (
    'ENGCRS["GeoVLM image pixels (x = column, y = -row)",EDATUM["the image sent to the model"],'
    'CS[Cartesian,2],AXIS["x (column)",east,ORDER[1],LENGTHUNIT["pixel",1]],'
    'AXIS["y (minus row)",north,ORDER[2],LENGTHUNIT["pixel",1]]]'
)


def pixel_frame(width: int, height: int) -> ImageFrame:
    """The frame of an image with no georeferencing: x = column, y = -row, in PIXEL_CRS_WKT.

    Pixel (col, row) of the image lands at map (col, -row), so the image's top-left corner is (0, 0) and its
    bottom-right corner is (width, -height): the layer opens upright.
    """
    return ImageFrame(width, height, GeoTransform(1.0, 0.0, 0.0, 0.0, -1.0, 0.0), PIXEL_CRS_WKT)
