"""Processing algorithm `geovlm:captionfeatures`: each polygon's window of a raster (its bounding box plus a
margin, in the raster's pixels) asked for a caption; the answer goes into a new field of a copy of the
features that keeps all their attributes."""
from __future__ import annotations

import math

from qgis.core import (
    Qgis,
    QgsCoordinateTransform,
    QgsFeature,
    QgsFeatureSink,
    QgsField,
    QgsFields,
    QgsProcessingAlgorithm,
    QgsProcessingException,
    QgsProcessingParameterAuthConfig,
    QgsProcessingParameterFeatureSink,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
)

from ..core.bulk import DEFAULT_CAPTION_QUESTION, EndpointRecorder, run_tiles
from ..core.ledger import OK, SKIPPED
from ..core.tiling import Tile
from ..core.transport import CancelToken
from .alg_bulk_tiles import connect_engine
from .qgis_geometry import FIELD_TYPES, raster_frame
from .tile_sources import GdalTiles


class _Results:
    """Stands in for the ledger of `run_tiles`: keeps each feature's result in memory (a feature run does not
    resume: its output is a copy of the input layer)."""

    def __init__(self):
        self.by_id = {}

    def pending(self, tiles):
        return list(tiles)

    def record(self, result, question, model, family) -> None:
        self.by_id[result.tile.id] = result


def feature_window(geometry, gt, width: int, height: int, margin: float):
    """(col, row, w, h) of the raster pixels under the geometry's bounding box grown by `margin` map units,
    clipped to the raster; None when it lies outside."""
    box = geometry.boundingBox()
    box.grow(margin)
    corners = [gt.to_pixel(x, y) for x in (box.xMinimum(), box.xMaximum()) for y in (box.yMinimum(), box.yMaximum())]
    col0 = max(0, math.floor(min(c for c, _ in corners)))
    row0 = max(0, math.floor(min(r for _, r in corners)))
    col1 = min(width, math.ceil(max(c for c, _ in corners)))
    row1 = min(height, math.ceil(max(r for _, r in corners)))
    if col1 <= col0 or row1 <= row0:
        return None
    return col0, row0, col1 - col0, row1 - row0


class CaptionFeaturesAlgorithm(QgsProcessingAlgorithm):
    INPUT, RASTER, MARGIN, FIELD, QUESTION = "INPUT", "RASTER", "MARGIN", "FIELD", "QUESTION"
    FAMILY, ENGINE, AUTHCFG, CONCURRENCY, OUTPUT = "FAMILY", "ENGINE", "AUTHCFG", "CONCURRENCY", "OUTPUT"

    def name(self):
        return "captionfeatures"

    def displayName(self):  # noqa: N802
        return "Caption polygon features"

    def group(self):
        return "Bulk"

    def groupId(self):  # noqa: N802
        return "bulk"

    def shortHelpString(self):  # noqa: N802
        return ("For each polygon, the raster pixels under its bounding box plus MARGIN (raster map units) are sent "
                "to the engine; the caption goes into a new field (and its status into FIELD_status) of a copy "
                "of the features with all their attributes. Features outside the raster get no caption.")

    def createInstance(self):  # noqa: N802
        return CaptionFeaturesAlgorithm()

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterFeatureSource(self.INPUT, "Polygon layer",
                                                              [Qgis.ProcessingSourceType.VectorPolygon]))
        self.addParameter(QgsProcessingParameterRasterLayer(self.RASTER, "Raster (a file)"))
        self.addParameter(QgsProcessingParameterNumber(self.MARGIN, "Margin around each feature (raster map units)",
                                                       Qgis.ProcessingNumberParameterType.Double, 0.0, minValue=0.0))
        self.addParameter(QgsProcessingParameterString(self.FIELD, "Field for the answer", "caption"))
        self.addParameter(QgsProcessingParameterString(self.QUESTION, "Question (default: a caption prompt)",
                                                       optional=True))
        self.addParameter(QgsProcessingParameterString(self.FAMILY, "Model family (default: what the engine "
                                                       "reports)", optional=True))
        self.addParameter(QgsProcessingParameterString(self.ENGINE, "Engine: local, or comma-separated URLs "
                                                       "(default: Options ▸ GeoVLM)", optional=True))
        self.addParameter(QgsProcessingParameterAuthConfig(self.AUTHCFG, "Authentication", optional=True))
        self.addParameter(QgsProcessingParameterNumber(self.CONCURRENCY, "Requests in flight per engine",
                                                       Qgis.ProcessingNumberParameterType.Integer, 4, minValue=1,
                                                       maxValue=64))
        self.addParameter(QgsProcessingParameterFeatureSink(self.OUTPUT, "Captioned features",
                                                            Qgis.ProcessingSourceType.VectorPolygon))

    def prepareAlgorithm(self, parameters, context, feedback):  # noqa: N802
        layer = self.parameterAsRasterLayer(parameters, self.RASTER, context)
        if layer is None or layer.providerType() != "gdal":
            raise QgsProcessingException("RASTER must be a raster file (GDAL)")
        try:
            self.frame = raster_frame(layer)
            self.reader = GdalTiles(layer.source(), skip_nodata=False)
        except ValueError as exc:
            raise QgsProcessingException(str(exc)) from None
        self.raster_crs = layer.crs()
        return True

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        source = self.parameterAsSource(parameters, self.INPUT, context)
        field = self.parameterAsString(parameters, self.FIELD, context).strip() or "caption"
        if source.fields().indexOf(field) >= 0:
            raise QgsProcessingException(f"the layer already has a field {field!r}; name another FIELD")
        margin = self.parameterAsDouble(parameters, self.MARGIN, context)
        fields = QgsFields(source.fields())
        for name in (field, f"{field}_status", f"{field}_model"):
            fields.append(QgsField(name, FIELD_TYPES[str]))
        sink, dest = self.parameterAsSink(parameters, self.OUTPUT, context, fields, source.wkbType(),
                                          source.sourceCrs())
        to_raster = QgsCoordinateTransform(source.sourceCrs(), self.raster_crs, context.transformContext())
        features, tiles = [], []
        gt, width, height = self.frame.geotransform, self.frame.width, self.frame.height
        for feature in source.getFeatures():
            geometry = feature.geometry()
            if not geometry.isNull():
                geometry.transform(to_raster)
            window = None if geometry.isNull() else feature_window(geometry, gt, width, height, margin)
            features.append(feature)
            if window is not None:
                tiles.append(Tile(f"f{feature.id()}", 0, len(tiles), *window))
        cancel = CancelToken()
        conn = connect_engine(self.parameterAsString(parameters, self.ENGINE, context),
                              self.parameterAsString(parameters, self.AUTHCFG, context),
                              self.parameterAsString(parameters, self.FAMILY, context), feedback, cancel)
        results = _Results()
        try:
            for endpoint in conn.client.endpoints:
                endpoint.max_concurrent = self.parameterAsInt(parameters, self.CONCURRENCY, context)
            conn.client.transport = EndpointRecorder(conn.client.transport)
            question = self.parameterAsString(parameters, self.QUESTION, context) or DEFAULT_CAPTION_QUESTION

            def progress(stats):
                if feedback.isCanceled():
                    cancel.cancel()
                feedback.setProgress(100.0 * (stats.ok + stats.failed + stats.skipped) / max(1, stats.total))

            stats = run_tiles(conn.client, results, tiles, self.reader, question, "caption", conn.profile,
                              conn.model, cancel=cancel, on_progress=progress)
        finally:
            conn.close()
        for feature in features:
            result = results.by_id.get(f"f{feature.id()}")
            out = QgsFeature(fields)
            out.setGeometry(feature.geometry())
            status = result.status if result else (SKIPPED if feature.hasGeometry() else "no geometry")
            caption = result.caption if result and result.status == OK else None
            out.setAttributes(list(feature.attributes()) + [caption, status if result or not feature.hasGeometry()
                                                            else "outside the raster", conn.model])
            sink.addFeature(out, QgsFeatureSink.Flag.FastInsert)
        feedback.pushInfo(stats.summary())
        if stats.cancelled:
            feedback.reportError("Cancelled: the features not answered have no caption; run again to ask them.",
                                 False)
        return {self.OUTPUT: dest}
