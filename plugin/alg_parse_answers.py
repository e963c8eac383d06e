"""Processing algorithm: saved model answers -> georeferenced objects and relations layers."""
from __future__ import annotations

from pathlib import Path

from qgis.core import (
    Qgis,
    QgsFeatureSink,
    QgsProcessingAlgorithm,
    QgsProcessingException,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFeatureSink,
    QgsProcessingParameterFile,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
    QgsSettings,
)

from ..core.answer_files import MAX_BAD_LINES, read_answers
from ..core.georef import PIXEL_CRS_WKT, ImageFrame, parse_image_size, pixel_frame
from ..core.parsing import parse_answer, referred_phrase
from ..core.profiles import family_names, get_profile
from .bulk_outputs import style_on_completion
from .families import family_of
from .geojson_output import add_sink
from .layer_files import parameters_problem
from .qgis_geometry import (
    NO_CRS_MAP_WKT,
    answer_features,
    object_fields,
    qgis_crs,
    raster_frame,
    relation_fields,
)

SETTINGS_KEY = "geovlm/parseanswers/last"
REMEMBERED = ("INPUT", "FAMILY", "FIELD", "RASTER", "IMAGE_SIZE")


class ParseAnswersAlgorithm(QgsProcessingAlgorithm):
    """geovlm:parseanswers: saved answers (`core.answer_files.read_answers`) parsed with FAMILY's syntax into
    OBJECTS (polygons) and RELATIONS (lines), placed on RASTER's geotransform, else left in the pixel space of
    IMAGE_SIZE (x = column, y = -row, a local engineering CRS in pixels); `shortHelpString` is the user's
    description."""

    INPUT = "INPUT"
    FAMILY = "FAMILY"
    FIELD = "FIELD"
    RASTER = "RASTER"
    IMAGE_SIZE = "IMAGE_SIZE"
    OBJECTS = "OBJECTS"
    RELATIONS = "RELATIONS"

    def name(self):
        return "parseanswers"

    def displayName(self):  # noqa: N802
        return "Parse saved answers into layers"

    def group(self):
        return "Answers"

    def groupId(self):  # noqa: N802
        return "answers"

    def shortHelpString(self):  # noqa: N802
        return (
            "Reads saved answers of a vision-language model (JSON lines with the answer in a field, one JSON "
            "array of such objects, or one answer a line) and writes every box as a polygon and every relation "
            "as a line. With a raster layer the boxes are placed on it (its true geotransform, rotated rasters "
            "included; one georeferenced by GCPs only is refused: warp it first); without one "
            "they stay in the pixel space of the image size, written upright (x = column, y = -row) in a local "
            "engineering CRS in pixels, never taken for degrees. FAMILY: the model family's name, from the list "
            "(qgis_process FAMILY=geochat, as the other GeoVLM algorithms take it); its title (GeoChat) and the "
            "list's old number (1) are read too. Relations are optional: left out, only the objects are written."
        )

    def createInstance(self):  # noqa: N802
        return ParseAnswersAlgorithm()

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterFile(
            self.INPUT, "Answers file", Qgis.ProcessingFileParameterBehavior.File,
            fileFilter="JSON lines (*.jsonl *.json);;Text, one answer a line (*.txt);;All files (*)"))
        # the names are the values (a dialog, Batch row, History or model given FAMILY=earthdial gets EarthDial)
        self.addParameter(QgsProcessingParameterEnum(self.FAMILY, "Model family", options=list(family_names()),
                                                     defaultValue="geochat", usesStaticStrings=True))
        self.addParameter(QgsProcessingParameterString(self.FIELD, "JSON field holding the answer",
                                                       defaultValue="answer"))
        self.addParameter(QgsProcessingParameterRasterLayer(self.RASTER, "Raster the answers are about",
                                                            optional=True))
        self.addParameter(QgsProcessingParameterString(self.IMAGE_SIZE, "Image size WxH (without a raster)",
                                                       defaultValue="100x100"))
        self.addParameter(QgsProcessingParameterFeatureSink(self.OBJECTS, "Objects",
                                                            Qgis.ProcessingSourceType.VectorPolygon))
        self.addParameter(QgsProcessingParameterFeatureSink(self.RELATIONS, "Relations",
                                                            Qgis.ProcessingSourceType.VectorLine, optional=True,
                                                            createByDefault=True))

    def checkParameterValues(self, parameters, context):  # noqa: N802
        """As Processing checks them, with FAMILY also given by title or by the list's old number (an int or
        digits, as scripts and models saved before the names were the values hold it; `family_of`): an unknown
        one is refused in one line that lists the names; so is a RASTER whose frame cannot be read
        (`raster_frame`: one georeferenced by GCPs only)."""
        raw = parameters.get(self.FAMILY)
        if isinstance(raw, (str, int)) and not isinstance(raw, bool):  # FAMILY=99 too: one line with the names
            try:
                parameters = dict(parameters, **{self.FAMILY: family_of(raw, numbers=True)})
            except ValueError as exc:
                return False, str(exc)
        ok, message = super().checkParameterValues(parameters, context)
        if not ok:
            message = parameters_problem(parameters, [self.RASTER], [self.RASTER]) or message
        layer = self.parameterAsRasterLayer(parameters, self.RASTER, context) if ok else None
        try:
            if layer is not None:
                raster_frame(layer)
        except ValueError as exc:
            return False, str(exc)
        return ok, message

    def _family(self, parameters, context) -> str:
        """FAMILY's name (one of `family_names()`): given as a name, title or old number (`family_of`), else
        as Processing reads the enum (an expression in a model, the default). Raises ValueError on an unknown
        one, in one line listing the names."""
        raw = parameters.get(self.FAMILY)
        if isinstance(raw, (str, int)) and not isinstance(raw, bool):
            return family_of(raw, numbers=True)
        return family_of(self.parameterAsEnumString(parameters, self.FAMILY, context), numbers=True)

    def prepareAlgorithm(self, parameters, context, feedback):  # noqa: N802
        """Refuse an unknown FAMILY before any output is made, however the run was started (the old numbers and
        the titles are read, as in `checkParameterValues`)."""
        try:
            self._family(parameters, context)
        except ValueError as exc:
            raise QgsProcessingException(str(exc)) from None
        return True

    def _frame(self, parameters, context) -> ImageFrame:
        layer = self.parameterAsRasterLayer(parameters, self.RASTER, context)
        if layer is not None:
            return raster_frame(layer)
        return pixel_frame(*parse_image_size(self.parameterAsString(parameters, self.IMAGE_SIZE, context)))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        path = self.parameterAsFile(parameters, self.INPUT, context)
        field = self.parameterAsString(parameters, self.FIELD, context)
        try:
            family = self._family(parameters, context)
            frame = self._frame(parameters, context)
            bad = []
            answers = list(read_answers(path, field, bad=bad))
        except ValueError as exc:
            raise QgsProcessingException(str(exc)) from None
        for message in bad[:MAX_BAD_LINES]:  # every bad line named, as `geovlm parse` does; the good ones parsed
            feedback.reportError(message, False)
        if len(bad) > MAX_BAD_LINES:
            feedback.reportError(f"... and {len(bad) - MAX_BAD_LINES} more bad lines", False)
        if bad and not answers:
            raise QgsProcessingException(f"No line of {path} could be read: nothing written.")
        profile = get_profile(family)
        remember(dict(parameters, **{self.FAMILY: family}), context, self)
        obj_fields, rel_fields = object_fields(), relation_fields()
        crs = qgis_crs(frame.crs or NO_CRS_MAP_WKT)  # a raster with a geotransform but no CRS: its map units
        obj_sink, obj_id = add_sink(self, parameters, self.OBJECTS, context, obj_fields, Qgis.WkbType.Polygon, crs,
                                    feedback)
        rel_sink, rel_id = add_sink(self, parameters, self.RELATIONS, context, rel_fields, Qgis.WkbType.LineString,
                                    crs, feedback)
        name_outputs(context, Path(path).stem, {obj_id: "objects", rel_id: "relations"})
        skipped = n_objects = n_relations = done = 0
        for i, (line, text, question) in enumerate(answers):
            if feedback.isCanceled():
                break
            answer = parse_answer(text, profile, (frame.width, frame.height), default_label=referred_phrase(question))
            skipped += len(answer.skipped)
            objects, relations = answer_features(answer, frame, line, family, obj_fields, rel_fields)
            obj_sink.addFeatures(objects, QgsFeatureSink.Flag.FastInsert)
            rel_sink.addFeatures(relations, QgsFeatureSink.Flag.FastInsert)
            n_objects, n_relations, done = n_objects + len(objects), n_relations + len(relations), i + 1
            feedback.setProgress(100.0 * done / max(1, len(answers)))
        obj_sink.close()
        rel_sink.close()
        if feedback.isCanceled():
            feedback.reportError(f"Cancelled after {done} of {len(answers)} answers: the layers hold those only.")
        feedback.pushInfo(f"{done} answers read: {n_objects} objects, {n_relations} relations, "
                          f"{skipped} unreadable fragments skipped"
                          + (f", {len(bad)} bad {'line' if len(bad) == 1 else 'lines'} left out" if bad else ""))
        raster = self.parameterAsRasterLayer(parameters, self.RASTER, context)
        if frame.crs == PIXEL_CRS_WKT and raster is not None:
            feedback.pushInfo(f"{raster.name()} has no georeferencing (no geotransform, no CRS): coordinates are "
                              f"its pixels ({frame.width}x{frame.height}; x = column, y = -row), as `geovlm parse "
                              "--raster` writes them.")
        elif frame.crs is None and raster is not None:
            feedback.pushInfo(f"{raster.name()} has no CRS: the layers are placed by its geotransform, in its map "
                              "units, and carry an undefined Cartesian CRS (never degrees), as `geovlm parse "
                              "--raster` writes them; set the raster's CRS and run again to place them on a map.")
        elif frame.crs == PIXEL_CRS_WKT:
            feedback.pushInfo(f"Coordinates are pixels of a {frame.width}x{frame.height} image (x = column, "
                              "y = -row); give a raster layer to place the boxes on the map.")
        if frame.crs == PIXEL_CRS_WKT:
            project_crs = context.project().crs() if context.project() is not None else None
            if project_crs is not None and project_crs.isValid() and project_crs != crs:
                feedback.pushWarning(
                    f"The layers are in image pixels, which no transform relates to the project's "
                    f"{project_crs.authid() or project_crs.description()}: QGIS will say \"No transform "
                    "available\" and cannot show them over the map. Give a georeferenced raster layer to place them, "
                    "or open them in a new project (its CRS becomes the pixels').")
        if not answers:
            feedback.pushWarning(f"{path} holds no answers (it is empty, or blank lines only): the layers are empty.")
        if done and n_objects == 0:
            feedback.pushWarning(f"No box found in {done} answers: check that the model family "
                                 f"({profile.title}) is the one that wrote them.")
        return {self.OBJECTS: obj_id, self.RELATIONS: rel_id}


def name_outputs(context, stem: str, names) -> None:
    """Name the layers loaded on completion after the input ("<stem> objects"), not "Objects" each time, and
    style them from styles/`what`.qml (`what`: "objects" or "relations")."""
    for dest_id, what in names.items():
        if dest_id and context.willLoadLayerOnCompletion(dest_id):
            context.layerToLoadOnCompletionDetails(dest_id).name = f"{stem} {what}"
            style_on_completion(context, dest_id, what)


def remember(parameters, context, alg) -> None:
    """Keep the inputs of this run in QgsSettings, for the toolbar dialog to open with next time."""
    settings = QgsSettings()
    for name in REMEMBERED:
        value = parameters.get(name)
        if name == "RASTER":
            layer = alg.parameterAsRasterLayer(parameters, name, context)
            value = layer.source() if layer is not None else ""
        if isinstance(value, (str, int, float)):
            settings.setValue(f"{SETTINGS_KEY}/{name}", value)


def remembered() -> dict:
    """The inputs of the last run (only those that still make sense: an existing answers file; FAMILY as its
    name, also when an older GeoVLM kept the list's number)."""
    settings = QgsSettings()
    values = {}
    for name in REMEMBERED:
        value = settings.value(f"{SETTINGS_KEY}/{name}")
        if value not in (None, ""):
            values[name] = value
    try:
        values["FAMILY"] = family_of(values["FAMILY"], numbers=True)
    except (KeyError, ValueError):
        values.pop("FAMILY", None)
    if "INPUT" in values and not Path(values["INPUT"]).is_file():
        values.pop("INPUT")
    return values
