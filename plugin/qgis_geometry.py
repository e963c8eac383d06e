"""Core answers -> QGIS features: fields, geometries, and the image frame of a raster layer."""
from __future__ import annotations

from qgis.core import QgsFeature, QgsField, QgsFields, QgsGeometry, QgsPointXY, QgsRasterLayer
from qgis.PyQt.QtCore import QVariant

from ..core.georef import GeoTransform, ImageFrame
from ..core.layer_rows import OBJECT_FIELDS, RELATION_FIELDS, answer_rows

_QVARIANT = {int: QVariant.Type.Int, float: QVariant.Type.Double, str: QVariant.Type.String}


def _fields(spec) -> QgsFields:
    fields = QgsFields()
    for name, kind in spec:
        fields.append(QgsField(name, _QVARIANT[kind]))
    return fields


def object_fields() -> QgsFields:
    return _fields(OBJECT_FIELDS)


def relation_fields() -> QgsFields:
    return _fields(RELATION_FIELDS)


def raster_frame(layer: QgsRasterLayer) -> ImageFrame:
    """The frame of a raster layer as QGIS shows it (north-up extent over its pixel grid)."""
    extent = layer.extent()
    width, height = layer.width(), layer.height()
    if width <= 0 or height <= 0 or extent.isEmpty():
        raise ValueError(f"raster layer {layer.name()!r} has no pixels")
    gt = GeoTransform(extent.width() / width, 0.0, extent.xMinimum(), 0.0, -extent.height() / height,
                      extent.yMaximum())
    crs = layer.crs().authid() or layer.crs().toWkt() if layer.crs().isValid() else None
    return ImageFrame(width, height, gt, crs)


def answer_features(answer, frame: ImageFrame, line: int, family: str, obj_fields, rel_fields):
    """(object features, relation features) of one parsed answer, in the frame's map coordinates."""
    objs, rels = answer_rows(answer, frame, line, family)
    objects, relations = [], []
    for values, ring in objs:
        feat = QgsFeature(obj_fields)
        feat.setGeometry(QgsGeometry.fromPolygonXY([[QgsPointXY(x, y) for x, y in ring + ring[:1]]]))
        feat.setAttributes(values)
        objects.append(feat)
    for values, coords in rels:
        feat = QgsFeature(rel_fields)
        feat.setGeometry(QgsGeometry.fromPolylineXY([QgsPointXY(x, y) for x, y in coords]))
        feat.setAttributes(values)
        relations.append(feat)
    return objects, relations
