"""Asking about the map, shared by the `geovlm:askmap` algorithm and the dock.

A view is what QgsMapSettings renders (destination CRS, extent, rotation, output size, device pixel ratio);
its image frame comes from that map settings' own `mapToPixel()`, scaled by the device pixel ratio. The engine
receives the view fitted to the model's input (plugin.image_source) and the client maps the answer back to
pixels of the view through the same `fit_plan`, so every box lands where QGIS draws it. The engine speaks in
pixels; this module georeferences.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

from qgis.core import (
    QgsFeature,
    QgsField,
    QgsFields,
    QgsGeometry,
    QgsMapRendererCustomPainterJob,
    QgsMapSettings,
)
from qgis.PyQt.QtCore import QBuffer, QByteArray, QIODevice, QPointF, QSize
from qgis.PyQt.QtGui import QColor, QFont, QImage, QPainter, QPen, QPolygonF

from ..core.georef import FitPlan, GeoTransform, ImageFrame
from ..core.profiles import Profile
from ..core.regions import encode_region, task_key
from .qgis_geometry import FIELD_TYPES, answer_features, object_fields, relation_fields

# Where a feature came from, appended to the objects and relations fields (which already hold the family).
PROVENANCE_FIELDS = (("question", str), ("answer", str), ("task", str), ("model", str), ("engine", str),
                     ("time", str), ("image_width", int), ("image_height", int), ("view_extent", str),
                     ("view_crs", str), ("view_rotation", float))


def view_settings(layers, crs, extent, rotation: float, width: int, height: int, dpr: float = 1.0,
                  background: Optional[QColor] = None) -> QgsMapSettings:
    """Map settings of a view: `extent` (QgsRectangle, in `crs`) is fitted to `width` x `height` logical
    pixels as QGIS fits a canvas, turned by `rotation` degrees (QGIS's map rotation, clockwise), rendered at
    `dpr` device pixels per logical pixel. Raises ValueError for an empty size or extent."""
    if width <= 0 or height <= 0 or dpr <= 0:
        raise ValueError(f"the view needs a positive size and pixel ratio, got {width}x{height} at {dpr}")
    if extent.isEmpty():
        raise ValueError("the view's extent is empty")
    settings = QgsMapSettings()
    settings.setLayers(list(layers))
    settings.setDestinationCrs(crs)
    settings.setOutputSize(QSize(int(width), int(height)))
    settings.setDevicePixelRatio(float(dpr))
    settings.setRotation(float(rotation))
    settings.setExtent(extent)
    settings.setBackgroundColor(background or QColor(255, 255, 255))
    settings.setOutputImageFormat(QImage.Format.Format_ARGB32_Premultiplied)
    return settings


def view_frame(settings: QgsMapSettings) -> ImageFrame:
    """The frame of the rendered image, in device pixels.

    QgsMapToPixel maps with pixel = T(w/2, h/2) . R(rotation) . S(1/m, -1/m) . T(-xCenter, -yCenter) . map
    (qgsmaptopixel.cpp, updateMatrix: m map units per logical pixel, w x h logical pixels, rotation in
    degrees, clockwise on screen). Its inverse is the six-coefficient affine transform built here from those
    parameters (taking differences of mapped pixels instead would lose digits: 1e-6 of a pixel needs them),
    then scaled by the device pixel ratio (device pixel = logical pixel x DPR, as QgsMapRendererJob paints).
    """
    m2p = settings.mapToPixel()
    m, theta = m2p.mapUnitsPerPixel(), math.radians(m2p.mapRotation())
    half_w, half_h = m2p.mapWidth() / 2.0, m2p.mapHeight() / 2.0
    a, b = m * math.cos(theta), m * math.sin(theta)
    d, e = m * math.sin(theta), -m * math.cos(theta)
    logical = GeoTransform(a, b, m2p.xCenter() - a * half_w - b * half_h,
                           d, e, m2p.yCenter() - d * half_w - e * half_h)
    dpr = settings.devicePixelRatio()
    size = settings.deviceOutputSize()
    crs = settings.destinationCrs()
    return ImageFrame(size.width(), size.height(), logical.scaled(dpr, dpr), crs.authid() or crs.toWkt())


def render(settings: QgsMapSettings, errors: Optional[list] = None) -> QImage:
    """The view rendered synchronously, deviceOutputSize() pixels (call where the layers may be rendered:
    the main thread, or a thread that owns clones of them). `errors` (a list): the render job's layer
    errors are appended to it as (layer name, message) pairs (`layer_errors`)."""
    image = QImage(settings.deviceOutputSize(), settings.outputImageFormat())
    image.setDevicePixelRatio(settings.devicePixelRatio())
    image.fill(settings.backgroundColor())
    painter = QPainter(image)
    job = QgsMapRendererCustomPainterJob(settings, painter)
    job.renderSynchronously()
    painter.end()
    image.setDevicePixelRatio(1.0)
    if errors is not None:
        errors.extend(layer_errors(job, settings))
    return image


def layer_errors(job, settings: QgsMapSettings) -> List[Tuple[str, str]]:
    """The layer errors of a finished `QgsMapRendererJob` (a raster whose pixels GDAL cannot read: "IReadBlock
    failed", a service that did not answer) as (layer name, message) pairs, named from `settings.layers()`."""
    names = {layer.id(): layer.name() for layer in settings.layers()}
    return [(names.get(e.layerID, e.layerID), e.message) for e in job.errors()]


def png_bytes(image: QImage) -> bytes:
    """The image encoded as PNG (lossless: every pixel as it is)."""
    data = QByteArray()
    buffer = QBuffer(data)
    buffer.open(QIODevice.OpenModeFlag.WriteOnly)
    image.save(buffer, "PNG")
    buffer.close()
    return bytes(data)


def draw_boxes(image: QImage, answer, plan: Optional[FitPlan] = None) -> QImage:
    """A copy of the image with the answer's objects outlined and labelled (above the box's top corner, inside it
    for a box at the image's top edge). The objects are in pixels of the
    view; `plan` (core.georef.FitPlan): the image is the view fitted to the model's input, and each corner is
    drawn at `plan.image_to_input` of it; None: the image is the view itself."""
    out = image.convertToFormat(QImage.Format.Format_ARGB32)
    painter = QPainter(out)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    pen = QPen(QColor(255, 60, 0), max(3.0, out.width() / 150))
    painter.setPen(pen)
    font = QFont()
    font.setPixelSize(max(12, out.width() // 50))
    painter.setFont(font)
    for obj in answer.objects:
        polygon = [plan.image_to_input(x, y) for x, y in obj.polygon] if plan else obj.polygon
        painter.drawPolygon(QPolygonF([QPointF(x, y) for x, y in polygon]))
        x, y = min(polygon, key=lambda p: (p[1], p[0]))
        # above its top corner, or just inside it where the box touches the image's top (the label would be cut off)
        baseline = y - 4 if y - 4 - font.pixelSize() >= 0 else y + font.pixelSize() + 2
        painter.drawText(QPointF(x + 2, baseline), f"{obj.id} {obj.label}".strip())
    painter.end()
    return out


@dataclass
class View:
    """The rendered view: its image (device pixels; the client sends it fitted to the model's input:
    plugin.image_source.QImageSource), its frame, and how it was made (for provenance and follow-ups)."""

    image: QImage
    frame: ImageFrame
    extent: Tuple[float, float, float, float]  # the map settings' extent (xmin, ymin, xmax, ymax) in its CRS
    rotation: float
    dpr: float

    @classmethod
    def of(cls, settings: QgsMapSettings, image: QImage) -> View:
        """The view of map settings and the image rendered from them (deviceOutputSize() pixels)."""
        e = settings.extent()
        return cls(image.convertToFormat(QImage.Format.Format_RGB32), view_frame(settings),
                   (e.xMinimum(), e.yMinimum(), e.xMaximum(), e.yMaximum()), settings.rotation(),
                   settings.devicePixelRatio())


def region_question(profile: Profile, frame: ImageFrame, ring_map: Sequence[Tuple[float, float]]) -> str:
    """A region in the view's CRS -> the family's region syntax in pixels of the view's image."""
    gt = frame.geotransform
    return encode_region([gt.to_pixel(x, y) for x, y in ring_map], profile, (frame.width, frame.height))


def worded(profile: Profile, task: str, question: str) -> str:
    """The question with the family's task words for a user task (ask, describe, find, identify, ...)."""
    return profile.question(task_key(profile, task), question)


@dataclass
class Provenance:
    """Where an answer came from, for the provenance fields: the question as typed, the user task, the
    model id, family and engine ("local" or URLs) of the connection, the answer text, the UTC time."""

    question: str
    task: str
    model: str
    family: str
    engine: str
    answer: str = ""
    time: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))

    def values(self, view: View) -> list:
        """Attribute values in PROVENANCE_FIELDS order, with the view's image size, extent, CRS, rotation."""
        return [self.question, self.answer, self.task, self.model, self.engine, self.time,
                view.frame.width, view.frame.height, ",".join(f"{v:.17g}" for v in view.extent),
                view.frame.crs, view.rotation]


def _with_provenance(fields: QgsFields) -> QgsFields:
    out = QgsFields(fields)
    for name, kind in PROVENANCE_FIELDS:
        out.append(QgsField(name, FIELD_TYPES[kind]))
    return out


def ask_fields() -> Tuple[QgsFields, QgsFields]:
    """(objects fields, relations fields) of asked answers: the parser's fields plus provenance."""
    return _with_provenance(object_fields()), _with_provenance(relation_fields())


def ask_features(answer, view: View, line: int, provenance: Provenance) -> Tuple[List[QgsFeature], List[QgsFeature]]:
    """The answer's objects and relations as features in the view's CRS, with provenance attributes."""
    obj_fields, rel_fields = ask_fields()
    objects, relations = answer_features(answer, view.frame, line, provenance.family, object_fields(),
                                         relation_fields())
    extra = provenance.values(view)
    out = ([], [])
    for src, fields, dest in ((objects, obj_fields, out[0]), (relations, rel_fields, out[1])):
        for feat in src:
            new = QgsFeature(fields)
            new.setGeometry(QgsGeometry(feat.geometry()))
            new.setAttributes(list(feat.attributes()) + extra)
            dest.append(new)
    return out


def ring_of(geometry: QgsGeometry) -> List[Tuple[float, float]]:
    """The vertices of a geometry (a polygon's outer ring, a rectangle, points), as (x, y) pairs."""
    return [(p.x(), p.y()) for p in geometry.vertices()]

