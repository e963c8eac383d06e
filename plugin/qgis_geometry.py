"""Core answers -> QGIS features: fields, geometries, and the image frame of a raster layer."""
from __future__ import annotations

from qgis.core import QgsFeature, QgsField, QgsFields, QgsGeometry, QgsPointXY, QgsRasterLayer
from qgis.PyQt.QtCore import QVariant

from ..core.georef import GeoTransform, ImageFrame, centroid


def object_fields() -> QgsFields:
    fields = QgsFields()
    for name, kind in (("line", QVariant.Type.Int), ("object_id", QVariant.Type.Int),
                       ("label", QVariant.Type.String), ("family", QVariant.Type.String),
                       ("kind", QVariant.Type.String), ("angle", QVariant.Type.Double),
                       ("flags", QVariant.Type.String), ("source", QVariant.Type.String)):
        fields.append(QgsField(name, kind))
    return fields


def relation_fields() -> QgsFields:
    fields = QgsFields()
    for name, kind in (("line", QVariant.Type.Int), ("subject_id", QVariant.Type.Int),
                       ("predicate", QVariant.Type.String), ("object_id", QVariant.Type.Int),
                       ("subject_label", QVariant.Type.String), ("object_label", QVariant.Type.String),
                       ("family", QVariant.Type.String)):
        fields.append(QgsField(name, kind))
    return fields


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
    rings, objects, relations = {}, [], []
    for obj in answer.objects:
        ring = frame.to_map(obj.polygon)
        rings[obj.id] = ring
        feat = QgsFeature(obj_fields)
        feat.setGeometry(QgsGeometry.fromPolygonXY([[QgsPointXY(x, y) for x, y in ring + ring[:1]]]))
        feat.setAttributes([line, obj.id, obj.label, family, obj.kind, obj.angle, ",".join(obj.flags),
                            obj.source])
        objects.append(feat)
    for rel in answer.relations:
        if rel.subject not in rings or rel.object not in rings:
            continue
        feat = QgsFeature(rel_fields)
        a, b = centroid(rings[rel.subject]), centroid(rings[rel.object])
        feat.setGeometry(QgsGeometry.fromPolylineXY([QgsPointXY(*a), QgsPointXY(*b)]))
        feat.setAttributes([line, rel.subject, rel.predicate, rel.object, rel.subject_label, rel.object_label,
                            family])
        relations.append(feat)
    return objects, relations
