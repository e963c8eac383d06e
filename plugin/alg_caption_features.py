"""Processing algorithm `geovlm:captionfeatures`: each polygon's window of a raster (its bounding box plus a
margin, in the raster's pixels) asked for a caption, the window read in the bands chosen as red, green, blue
(RED_BAND, GREEN_BAND, BLUE_BAND: plugin/band_parameters.py, as the tile algorithms). OUTPUT is a GeoPackage
that is also the run's ledger (core/ledger.py): its `tiles` layer holds each feature's window with its answer,
committed as it arrives, so a rerun with the same parameters (bands included) asks only for the features
missing or failed, and another plan is refused unless OVERWRITE; its `features` layer, written at the end of
every run, is a copy of the features with all their attributes and the answer in new fields."""
from __future__ import annotations

import math

from qgis.core import (
    Qgis,
    QgsCoordinateTransform,
    QgsFeature,
    QgsField,
    QgsFields,
    QgsProcessingAlgorithm,
    QgsProcessingException,
    QgsProcessingOutputVectorLayer,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
    QgsVectorFileWriter,
)

from ..core.bulk import DEFAULT_CAPTION_QUESTION, EndpointRecorder, counted, run_tiles
from ..core.client import EngineError
from ..core.ledger import FEATURES, OK, TILES, Ledger, LedgerError, RunPlan
from ..core.tiling import Tile, TilePlan
from ..core.transport import Cancelled, CancelToken
from .alg_bulk_tiles import (
    GPKG_ONLY,
    OVERWRITE_FLAG,
    RETRY_HELP,
    add_engine_parameters,
    apply_retry_parameters,
    check_engine_numbers,
    connect_engine,
    crs_name,
    default_raster_layer,
    ledger_crs,
    number_problem,
    report_outcome,
    run_problem,
)
from .band_parameters import add_band_parameters, check_band_parameters, chosen_bands
from .bulk_outputs import FailedRunLayers, finish_run
from .layer_files import parameters_problem
from .qgis_geometry import FIELD_TYPES, raster_frame
from .tile_sources import GdalTiles


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


# Why a feature is not asked: (its status in FIELD_status, what the warning says it has, a hint or "").
UNASKED = {
    "no geometry": ("no geometry", ""),
    "empty geometry": ("an empty geometry", ""),
    "invalid coordinates": ("coordinates that are not finite numbers", ""),
    "no area": ("no area", "; give a MARGIN to caption the pixels around them"),
}


def unasked_status(geometry, gt, width: int, height: int, margin: float) -> tuple:
    """(window, status) of one feature's `geometry` (a QgsGeometry in the raster's CRS; gt its geotransform, width
    x height pixels; margin in map units): the `feature_window` and "" when it is asked, else None and why not:
    "no geometry", "empty geometry" (POLYGON EMPTY, whose box is NaN), "invalid coordinates", "no area" (a polygon
    of zero area over the raster with no margin: its window would be a line of pixels or none) or "outside the
    raster"."""
    if geometry.isNull():
        return None, "no geometry"
    if geometry.isEmpty():
        return None, "empty geometry"
    box = geometry.boundingBox()
    if not all(math.isfinite(v) for v in (box.xMinimum(), box.xMaximum(), box.yMinimum(), box.yMaximum())):
        return None, "invalid coordinates"
    if margin <= 0 and geometry.area() == 0:
        corners = [gt.to_pixel(x, y) for x in (box.xMinimum(), box.xMaximum())
                   for y in (box.yMinimum(), box.yMaximum())]
        over = (min(c for c, _ in corners) <= width and max(c for c, _ in corners) >= 0
                and min(r for _, r in corners) <= height and max(r for _, r in corners) >= 0)
        return None, "no area" if over else "outside the raster"
    window = feature_window(geometry, gt, width, height, margin)
    return window, "" if window is not None else "outside the raster"


def unasked_warnings(unasked: dict) -> list:
    """One line per reason of UNASKED for the features `unasked` ({feature id: status}) that it holds, naming how
    many and up to 5 of their ids; "outside the raster" is said elsewhere (once, when no feature lies over it)."""
    lines = []
    for status, (what, hint) in UNASKED.items():
        ids = [fid for fid, s in unasked.items() if s == status]
        if not ids:
            continue
        shown = ", ".join(str(i) for i in ids[:5]) + (", …" if len(ids) > 5 else "")
        who = f"Feature {ids[0]} has" if len(ids) == 1 else f"{len(ids)} features ({shown}) have"
        lines.append(f"{who} {what}: not asked, marked \"{status}\"{hint}")
    return lines


def field_problem(fields, field: str) -> str:
    """One line when the answer's fields (`field`, `field`_status, `field`_model) cannot be added to `fields` (the
    input layer's), else "": a name the layer has, compared without case as a GeoPackage (SQLite) compares
    column names (FIELD=BUILDING beside `building` wrote no features layer at all), or `fid`, the GeoPackage's
    feature id column."""
    have = {f.name().lower() for f in fields}
    for name in (field, f"{field}_status", f"{field}_model"):
        if name.lower() == "fid":
            return f"{name!r} is the GeoPackage's feature id: name another FIELD"
        if name.lower() in have:
            return f"the layer already has a field {name!r} (names are compared without case); name another FIELD"
    return ""


class CaptionFeaturesAlgorithm(QgsProcessingAlgorithm):
    """geovlm:captionfeatures: each polygon of INPUT is captioned from RASTER's pixels under its bounding box
    (plus MARGIN in the raster's map units), written to OUTPUT, a GeoPackage that is also the ledger a rerun
    resumes from (`core.ledger.Ledger`); `shortHelpString` is the user's description. Problems found before the
    run are refused by `checkParameterValues`; the run raises QgsProcessingException in one line."""

    INPUT, RASTER, MARGIN, FIELD, QUESTION = "INPUT", "RASTER", "MARGIN", "FIELD", "QUESTION"
    FAMILY, ENGINE, AUTHCFG, CONCURRENCY, OUTPUT = "FAMILY", "ENGINE", "AUTHCFG", "CONCURRENCY", "OUTPUT"
    OVERWRITE, FEATURES, WINDOWS = "OVERWRITE", "FEATURES", "WINDOWS"

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
                "to the engine, fitted to the model's input. The model sees bands 1,2,3 (a one-band raster as "
                "grey), or the three bands chosen as red, green and blue (2,3,4 of NIR,R,G,B imagery); data other "
                "than 8-bit is stretched (2-98 %) in each window. OUTPUT (a GeoPackage) is also the ledger: each "
                "answer is committed to its `tiles` layer (the feature's window) as it arrives, and a rerun with the "
                "same parameters asks only for the features missing or failed; another plan (other bands "
                "included) is refused unless OVERWRITE. Its `features` layer, written at the end of each run, is a "
                "copy of the features with all their attributes, the caption in a new field, its status in "
                "FIELD_status and the model in FIELD_model. Features outside the raster, empty ones and polygons of "
                "zero area (unless MARGIN > 0) get no caption, their status says why. A run that "
                "leaves features failed or missing ends as failed (qgis_process exits 1) once both layers are "
                "written; the dialog loads them all the same, to show what was done while Run resumes the rest."
                + RETRY_HELP)

    def createInstance(self):  # noqa: N802
        return CaptionFeaturesAlgorithm()

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterFeatureSource(self.INPUT, "Polygon layer",
                                                              [Qgis.ProcessingSourceType.VectorPolygon]))
        self.addParameter(QgsProcessingParameterRasterLayer(self.RASTER, "Raster (a file)", default_raster_layer()))
        add_band_parameters(self, self.RASTER)
        self.addParameter(QgsProcessingParameterNumber(self.MARGIN, "Margin around each feature (raster map units)",
                                                       Qgis.ProcessingNumberParameterType.Double, 0.0, minValue=0.0))
        self.addParameter(QgsProcessingParameterString(self.FIELD, "Field for the answer", "caption"))
        self.addParameter(QgsProcessingParameterString(self.QUESTION, "Question (default: a caption prompt)",
                                                       optional=True))
        add_engine_parameters(self)
        self.addParameter(QgsProcessingParameterFileDestination(
            self.OUTPUT, "Output GeoPackage (also the ledger: rerun to resume)", "GeoPackage (*.gpkg)"))
        self.addOutput(QgsProcessingOutputVectorLayer(self.FEATURES, "Captioned features",
                                                      Qgis.ProcessingSourceType.VectorPolygon))
        self.addOutput(QgsProcessingOutputVectorLayer(self.WINDOWS, "Windows asked",
                                                      Qgis.ProcessingSourceType.VectorPolygon))

    def checkParameterValues(self, parameters, context):  # noqa: N802
        """QGIS's checks, then that RASTER is a file with a geotransform (`raster_frame`), the chosen bands are its
        bands (`band_parameters.check_band_parameters`) and `alg_bulk_tiles.run_problem` (OUTPUT a .gpkg, an engine
        that can be used): refused in one line before an engine is contacted."""
        ok, message = super().checkParameterValues(parameters, context)
        if not ok:
            return ok, parameters_problem(parameters, [self.RASTER, self.INPUT], [self.RASTER]) or message
        problem = number_problem(self, parameters, context)
        if problem:
            return False, problem
        layer = self.parameterAsRasterLayer(parameters, self.RASTER, context)
        if layer is not None and layer.providerType() != "gdal":
            return False, f"RASTER must be a raster file (GDAL): {layer.name()!r} is a web layer"
        ok, message = check_band_parameters(self, self.RASTER, parameters, context)
        source = self.parameterAsSource(parameters, self.INPUT, context) if ok else None
        if source is not None:
            problem = field_problem(source.fields(),
                                    self.parameterAsString(parameters, self.FIELD, context).strip() or "caption")
            if problem:
                return False, problem
        try:
            if ok and layer is not None:
                raster_frame(layer)  # a raster georeferenced by GCPs only is refused here
        except ValueError as exc:
            return False, str(exc)
        problem = run_problem(self, parameters, context) if ok else ""
        return (False, problem) if problem else (ok, message)

    def prepareAlgorithm(self, parameters, context, feedback):  # noqa: N802
        """On the main thread: RASTER's frame and a reader of its windows in the chosen bands, and `context` kept
        for the layers of a run that fails with answers committed (`bulk_outputs.FailedRunLayers`)."""
        check_engine_numbers(self, parameters, context)
        self.failed_layers = FailedRunLayers(context)
        layer = self.parameterAsRasterLayer(parameters, self.RASTER, context)
        if layer is None or layer.providerType() != "gdal":
            raise QgsProcessingException("RASTER must be a raster file (GDAL)")
        try:
            self.bands = chosen_bands(self, layer, parameters, context)
            self.frame = raster_frame(layer)
            self.reader = GdalTiles(layer.source(), skip_nodata=False, bands=self.bands)
        except ValueError as exc:
            raise QgsProcessingException(str(exc)) from None
        self.raster_crs = layer.crs()
        return True

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        out = self.parameterAsFileOutput(parameters, self.OUTPUT, context)
        if not out.lower().endswith(".gpkg"):
            raise QgsProcessingException(GPKG_ONLY)
        source = self.parameterAsSource(parameters, self.INPUT, context)
        field = self.parameterAsString(parameters, self.FIELD, context).strip() or "caption"
        problem = field_problem(source.fields(), field)
        if problem:
            raise QgsProcessingException(problem)
        margin = self.parameterAsDouble(parameters, self.MARGIN, context)
        to_raster = QgsCoordinateTransform(source.sourceCrs(), self.raster_crs, context.transformContext())
        features, tiles, unasked = [], [], {}
        gt, width, height = self.frame.geotransform, self.frame.width, self.frame.height
        for feature in source.getFeatures():
            geometry = feature.geometry()
            if not geometry.isNull() and not geometry.isEmpty():
                geometry.transform(to_raster)
            window, status = unasked_status(geometry, gt, width, height, margin)
            features.append(feature)
            if window is not None:
                tiles.append(Tile(f"f{feature.id()}", 0, len(tiles), *window))
            else:
                unasked[feature.id()] = status
        for line in unasked_warnings(unasked):
            feedback.pushWarning(line)
        outside = sum(status == "outside the raster" for status in unasked.values())
        if features and outside == len(features):  # nothing to ask: say why at once, not "0 features" later
            feedback.pushWarning(
                f"None of the {len(features)} features lies over the raster (features in "
                f"{source.sourceCrs().authid() or 'no CRS'}, raster in {self.raster_crs.authid() or 'no CRS'}): "
                "are they of the same place? Nothing is asked; every feature is marked \"outside the raster\".")
        cancel = CancelToken()
        conn = connect_engine(self.parameterAsString(parameters, self.ENGINE, context),
                              self.parameterAsString(parameters, self.AUTHCFG, context),
                              self.parameterAsString(parameters, self.FAMILY, context), feedback, cancel)
        try:
            question = self.parameterAsString(parameters, self.QUESTION, context) or DEFAULT_CAPTION_QUESTION
            plan = RunPlan("caption-features", TilePlan(width, height, max(width, height)), gt, question,
                           "caption", conn.profile.name, conn.model,
                           windows=tuple((t.id, t.col_off, t.row_off, t.width, t.height) for t in tiles),
                           crs=crs_name(self.raster_crs), pixels=self.reader.pixel_digest(), bands=self.bands)
            try:
                ledger = Ledger(out, plan, *ledger_crs(self.raster_crs),
                                overwrite=self.parameterAsBool(parameters, self.OVERWRITE, context),
                                overwrite_flag=OVERWRITE_FLAG)
            except LedgerError as exc:
                raise QgsProcessingException(str(exc)) from None
            try:
                stats = self._ask(parameters, context, feedback, conn, cancel, ledger, tiles, question, plan)
                results = ledger.results()
            finally:
                ledger.close()
        finally:
            conn.close()
        self._write_features(out, source, features, unasked, field, results, context)
        feedback.pushInfo(stats.summary_of("features"))
        outputs = finish_run(lambda: report_outcome(feedback, stats, out, "features"), out,
                             [(self.FEATURES, FEATURES, FEATURES), (self.WINDOWS, TILES, TILES)], context,
                             self.failed_layers)
        return dict(outputs, **{self.OUTPUT: out})

    def _ask(self, parameters, context, feedback, conn, cancel, ledger, tiles, question, plan):
        """Ask for every window the ledger does not hold yet, each answer committed as it arrives."""
        for endpoint in conn.client.endpoints:
            endpoint.max_concurrent = self.parameterAsInt(parameters, self.CONCURRENCY, context)
        apply_retry_parameters(self, parameters, context, conn.client, feedback)
        conn.client.transport = EndpointRecorder(conn.client.transport)
        if conn.notice:
            feedback.pushWarning(conn.notice)
        feedback.pushInfo(f"{counted(len(tiles), 'features')} over the raster, {conn.profile.name} "
                          f"'{conn.model}'; plan {plan.fingerprint}" + (" (resuming)" if ledger.resumed else ""))

        def progress(stats):
            if feedback.isCanceled():
                cancel.cancel()
            feedback.setProgress(100.0 * (stats.done + stats.failed) / max(1, stats.total))

        try:
            return run_tiles(conn.client, ledger, tiles, self.reader, question, "caption", conn.profile,
                             conn.model, cancel=cancel, on_progress=progress)
        except (EngineError, Cancelled) as exc:
            raise QgsProcessingException(str(exc)) from None

    def _write_features(self, out, source, features, unasked, field, results, context) -> None:
        """(Re)write the `features` layer of `out`: each feature with its attributes and its committed answer
        (caption, status: ok, failed, skipped, missing, or why it was not asked: `unasked`, {feature id: status of
        `unasked_status`}; model)."""
        fields = QgsFields(source.fields())
        for name in (field, f"{field}_status", f"{field}_model"):
            fields.append(QgsField(name, FIELD_TYPES[str]))
        options = QgsVectorFileWriter.SaveVectorOptions()
        options.driverName, options.layerName = "GPKG", FEATURES
        options.actionOnExistingFile = QgsVectorFileWriter.ActionOnExistingFile.CreateOrOverwriteLayer
        writer = QgsVectorFileWriter.create(out, fields, source.wkbType(), source.sourceCrs(),
                                            context.transformContext(), options)
        if writer.hasError() != QgsVectorFileWriter.WriterError.NoError:
            raise QgsProcessingException(f"cannot write the features layer of {out}: {writer.errorMessage()}")
        try:
            for feature in features:
                status, caption, model = results.get(f"f{feature.id()}", ("missing", None, None))
                status = unasked.get(feature.id(), status)
                out_feature = QgsFeature(fields)
                out_feature.setGeometry(feature.geometry())
                out_feature.setAttributes(list(feature.attributes()) + [caption if status == OK else None, status,
                                                                        model])
                if not writer.addFeature(out_feature):  # the answers are in the tiles layer all the same
                    raise QgsProcessingException(
                        f"cannot write the features layer of {out}: {writer.errorMessage() or 'a feature was refused'}")
        finally:
            del writer
