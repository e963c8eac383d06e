"""Core answers -> QGIS features: fields, geometries, and the image frame of a raster layer."""
from __future__ import annotations

from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsFeature,
    QgsField,
    QgsFields,
    QgsGeometry,
    QgsPointXY,
    QgsRasterLayer,
)
from qgis.PyQt.QtCore import QMetaType

from ..core.georef import GeoTransform, ImageFrame, pixel_frame
from ..core.layer_rows import OBJECT_FIELDS, RELATION_FIELDS, answer_rows

# QgsField takes QMetaType.Type from QGIS 3.38 on, and only that under Qt 6 (QVariant.Type is gone in PyQt6).
FIELD_TYPES = {int: QMetaType.Type.Int, float: QMetaType.Type.Double, str: QMetaType.Type.QString}


def _fields(spec) -> QgsFields:
    fields = QgsFields()
    for name, kind in spec:
        fields.append(QgsField(name, FIELD_TYPES[kind]))
    return fields


# The CRS of layers placed on a raster that has a geotransform but no CRS (rasterio's `rotated.tif`): a plane in
# the raster's own map units. QGIS's unknown CRS is written by a GeoPackage as its "Undefined geographic SRS", in
# degrees, where y = 4,100,000 is no latitude; `geovlm parse --raster` writes such layers with no CRS, which GDAL
# records as a Cartesian "Undefined SRS".
NO_CRS_MAP_WKT = (
    'ENGCRS["Undefined: map units of a raster without a CRS",EDATUM["unknown"],'
    'CS[Cartesian,2],AXIS["x",east,ORDER[1],LENGTHUNIT["unknown",1]],'
    'AXIS["y",north,ORDER[2],LENGTHUNIT["unknown",1]]]'
)


def qgis_crs(definition) -> QgsCoordinateReferenceSystem:
    """A QGIS CRS from an ImageFrame's CRS string (an authority id such as EPSG:3857, or WKT); None or an
    empty string gives an invalid (unknown) CRS."""
    if not definition:
        return QgsCoordinateReferenceSystem()
    if definition.lstrip().upper().startswith(("ENGCRS", "PROJCRS", "GEOGCRS", "PROJCS", "GEOGCS", "LOCAL_CS")):
        return QgsCoordinateReferenceSystem.fromWkt(definition)
    return QgsCoordinateReferenceSystem(definition)


def object_fields() -> QgsFields:
    return _fields(OBJECT_FIELDS)


def relation_fields() -> QgsFields:
    return _fields(RELATION_FIELDS)


def raster_frame(layer: QgsRasterLayer) -> ImageFrame:
    """The frame of a raster layer's own pixel grid: its size in pixels, its true six-coefficient geotransform
    and its CRS; for a file without georeferencing (no geotransform, no CRS, no GCPs) the pixel frame
    (`core.georef.pixel_frame`: x = column, y = -row in GeoVLM's pixel CRS), as the command line gives it, never
    QGIS's unknown CRS, which a GeoPackage writes as an undefined geographic (degrees) one.

    A file read by GDAL gives its grid as GDAL reads it (through QGIS's own `osgeo.gdal`), rotation and shear
    included: for a rotated raster QGIS shows a north-up warped copy (its `extent()`, `width()` and `height()`
    are those of the copy), which would misplace every box. Other providers (WMS, XYZ, ...) are north-up, so
    their extent is exact. Raises ValueError when the layer has no pixels, or when its file is georeferenced by
    GCPs only (QGIS shows a warped copy whose grid is not the file's: the CLI refuses it too, cli/rasters.py).
    """
    crs = layer.crs()
    crs_text = (crs.authid() or crs.toWkt()) if crs.isValid() else None
    grid = _gdal_grid(layer)
    if grid is not None and grid[2] is None:  # no georeferencing at all: its pixels, as `geovlm parse --raster`
        return pixel_frame(grid[0], grid[1])
    if grid is not None:
        return ImageFrame(grid[0], grid[1], grid[2], crs_text)
    width, height = layer.width(), layer.height()
    extent = layer.extent()
    if width <= 0 or height <= 0 or extent.isEmpty():
        raise ValueError(f"raster layer {layer.name()!r} has no pixels")
    gt = GeoTransform(extent.width() / width, 0.0, extent.xMinimum(), 0.0, -extent.height() / height,
                      extent.yMaximum())
    return ImageFrame(width, height, gt, crs_text)


def _gdal_grid(layer: QgsRasterLayer):
    """(width, height, GeoTransform) of the layer's file as GDAL reads it; (width, height, None) for a file with
    no georeferencing at all (no geotransform, no CRS, no GCPs: a PNG named .tif); None for a non-GDAL layer or
    a file with a CRS but no geotransform; ValueError for a file georeferenced by GCPs only, and for one whose
    geotransform is singular or not finite."""
    if layer.providerType() != "gdal":
        return None
    from osgeo import gdal

    gdal.PushErrorHandler("CPLQuietErrorHandler")
    try:
        dataset = gdal.Open(layer.dataProvider().dataSourceUri(), gdal.GA_ReadOnly)
    except RuntimeError:  # where gdal.UseExceptions() is in force
        dataset = None
    finally:
        gdal.PopErrorHandler()
    if dataset is None or dataset.RasterXSize <= 0 or dataset.RasterYSize <= 0:
        return None
    values = dataset.GetGeoTransform(can_return_null=True)
    if not values:
        if dataset.GetGCPCount():
            raise ValueError(f"raster {layer.source()} is georeferenced by GCPs only; warp it to a geotransform first")
        return (dataset.RasterXSize, dataset.RasterYSize, None) if not dataset.GetProjection() else None
    try:
        gt = GeoTransform.from_gdal(values)
    except ValueError as exc:  # pixels of no size, or NaN: no box can be placed through it (the CLI says the same)
        raise ValueError(f"raster {layer.source()} cannot place anything: its {exc}; set its georeferencing right, "
                         "or remove it (gdal_edit.py -unsetgt) to work in its pixels") from None
    return dataset.RasterXSize, dataset.RasterYSize, gt


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
