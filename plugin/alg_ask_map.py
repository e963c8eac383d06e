"""Processing algorithm `geovlm:askmap`: render a view of the map, ask a vision-language model about it,
and write the answer's boxes and relations as features where QGIS drew what the model saw."""
from __future__ import annotations

import math
import tempfile
from pathlib import Path

from qgis.core import (
    Qgis,
    QgsCoordinateTransform,
    QgsFeatureSink,
    QgsMessageLog,
    QgsProcessingAlgorithm,
    QgsProcessingException,
    QgsProcessingOutputString,
    QgsProcessingParameterAuthConfig,
    QgsProcessingParameterEnum,
    QgsProcessingParameterExtent,
    QgsProcessingParameterFeatureSink,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterGeometry,
    QgsProcessingParameterMultipleLayers,
    QgsProcessingParameterNumber,
    QgsProcessingParameterString,
    QgsReferencedRectangle,
)
from qgis.PyQt.QtGui import QImageWriter

from ..core.bulk import DEFAULT_GRAPH_QUESTION
from ..core.client import EngineError
from ..core.georef import fit_plan
from ..core.profiles import get_profile
from ..core.regions import ASK_TASKS, REGION_TASKS, family_tasks
from ..core.transport import Cancelled, CancelToken
from .alg_bulk_tiles import default_raster_layer
from .ask_map import (
    Provenance,
    View,
    ask_features,
    ask_fields,
    draw_boxes,
    region_question,
    render,
    ring_of,
    view_frame,
    view_settings,
    worded,
)
from .bulk_outputs import style_on_completion
from .engine_access import EngineUnavailable, authcfg_problem, connect, engine_problem
from .families import family_of
from .geojson_output import add_sink
from .image_source import QImageSource
from .layer_files import parameters_problem
from .line_stream import LineStream
from .qgis_geometry import NO_CRS_MAP_WKT, qgis_crs
from .view_checks import (
    blank_problem,
    drawn_nothing,
    layers_problem,
    only_background,
    render_problem,
    transparent_settings,
)

TASKS = tuple(ASK_TASKS)


def image_format(path: str) -> str:
    """The format IMAGE is written in: the one its suffix names where Qt can write it (seen.jpg as JPEG), else
    PNG (no suffix, or one Qt cannot write)."""
    suffix = Path(path).suffix.lower().lstrip(".")
    written = {bytes(f).decode().lower() for f in QImageWriter.supportedImageFormats()}
    return suffix.upper() if suffix in written else "PNG"


def default_view():
    """(layer ids, extent, rotation) the dialog starts with: the bulk dialogs' raster (`default_raster_layer`: the
    active layer when it is a raster, else the project's first), and the view the map canvas shows: its extent
    (a `QgsReferencedRectangle` in the canvas's CRS, unrotated, as `QgsMapSettings.extent`) and rotation (degrees
    clockwise, `QgsMapSettings.rotation`). ([], None, 0.0) without a raster; the extent None without a canvas
    showing one (qgis_process)."""
    from qgis.utils import iface

    layer = default_raster_layer()
    canvas = iface.mapCanvas() if iface is not None and layer is not None else None
    if canvas is None or canvas.extent().isEmpty():
        return ([layer] if layer else []), None, 0.0
    settings = canvas.mapSettings()
    return [layer], QgsReferencedRectangle(settings.extent(), settings.destinationCrs()), settings.rotation()


class AskMapAlgorithm(QgsProcessingAlgorithm):
    """geovlm:askmap, the Processing algorithm behind the Ask dock's single questions: renders LAYERS over EXTENT
    (its CRS, ROTATION degrees clockwise, WIDTH x HEIGHT pixels times DEVICE_PIXEL_RATIO), asks the engine and
    writes the answer's boxes and relations as OBJECTS and RELATIONS features in the extent's CRS (what
    `shortHelpString` tells the user). Problems found before the run are refused by `checkParameterValues`; the
    run raises QgsProcessingException in one line."""

    LAYERS, EXTENT, ROTATION, WIDTH, HEIGHT = "LAYERS", "EXTENT", "ROTATION", "WIDTH", "HEIGHT"
    DPR, QUESTION, TASK, REGION = "DEVICE_PIXEL_RATIO", "QUESTION", "TASK", "REGION"
    ENGINE, AUTHCFG, FAMILY, MAX_TOKENS = "ENGINE", "AUTHCFG", "FAMILY", "MAX_TOKENS"
    OBJECTS, RELATIONS, ANSWER, IMAGE = "OBJECTS", "RELATIONS", "ANSWER", "IMAGE"

    def __init__(self):
        super().__init__()
        self._settings = None
        self._clones = []

    def name(self):
        return "askmap"

    def displayName(self):  # noqa: N802
        return "Ask about the map"

    def group(self):
        return "Ask"

    def groupId(self):  # noqa: N802
        return "ask"

    def shortHelpString(self):  # noqa: N802
        return (
            "Renders the layers over the extent (in the extent's CRS, turned by the rotation, at width x height "
            "pixels times the device pixel ratio), asks a vision-language model engine about that image, and "
            "writes every box and relation of its answer as a feature exactly where the map shows what the "
            "model saw. The engine receives the view fitted to the model's input (padded to a square with the "
            "family's colour and resized for the LLaVA families, resized to multiples of 28 within the pixel "
            "budget for Qwen2-VL/2.5-VL), so boxes land right whichever server answers. "
            "The dialog starts with the active raster layer and the map's view (its extent and rotation). "
            "Tasks are the family's: ask, describe, find, identify (of the region) and scene graph "
            "(with no question: the scene-graph question Find objects and relations in raster tiles asks). "
            "ENGINE is 'local' or engine URLs (comma-separated), empty for the engine of Settings ▸ Options ▸ "
            "GeoVLM; keys only through an authentication "
            "configuration. FAMILY empty: the engine says which. IMAGE (optional; PNG, or the format its "
            "suffix names, e.g. .jpg): exactly the pixels the "
            "model saw, that fitted input (padding bands and its lower resolution included, which often "
            "explains a missed small object), with the answer's boxes drawn in them; the features carry the "
            "boxes on the map. OBJECTS and RELATIONS are optional (left out: the answer alone). A view that "
            "would be blank (a layer that cannot be read, an extent none of the layers meets, a view in which "
            "none of the layers drew a pixel: all nodata or transparent) is refused before the engine is asked."
        )

    def createInstance(self):  # noqa: N802
        return AskMapAlgorithm()

    def initAlgorithm(self, config=None):  # noqa: N802
        layers, extent, rotation = default_view()  # each dialog makes a fresh instance: the map as it is now
        self.addParameter(QgsProcessingParameterMultipleLayers(self.LAYERS, "Layers to render",
                                                               Qgis.ProcessingSourceType.MapLayer, layers or None))
        self.addParameter(QgsProcessingParameterExtent(self.EXTENT, "View extent (its CRS is the image's)", extent))
        self.addParameter(QgsProcessingParameterNumber(self.ROTATION, "Map rotation (degrees, clockwise)",
                                                       Qgis.ProcessingNumberParameterType.Double, rotation,
                                                       minValue=-360.0, maxValue=360.0))
        for key, title in ((self.WIDTH, "Width (pixels)"), (self.HEIGHT, "Height (pixels)")):
            self.addParameter(QgsProcessingParameterNumber(key, title, Qgis.ProcessingNumberParameterType.Integer,
                                                           768, minValue=16, maxValue=8192))
        self.addParameter(QgsProcessingParameterNumber(self.DPR, "Device pixel ratio",
                                                       Qgis.ProcessingNumberParameterType.Double, 1.0,
                                                       minValue=0.25, maxValue=8.0))
        self.addParameter(QgsProcessingParameterString(self.QUESTION, "Question", multiLine=True, optional=True))
        self.addParameter(QgsProcessingParameterEnum(self.TASK, "Task", options=list(TASKS), defaultValue=0))
        self.addParameter(QgsProcessingParameterGeometry(self.REGION, "Region (identify)", optional=True))
        self.addParameter(QgsProcessingParameterString(self.ENGINE, "Engine: local, or comma-separated URLs "
                                                       "(default: Settings ▸ Options ▸ GeoVLM)", optional=True))
        self.addParameter(QgsProcessingParameterAuthConfig(self.AUTHCFG, "Engine authentication", optional=True))
        self.addParameter(QgsProcessingParameterString(self.FAMILY, "Model family (empty: the engine's)",
                                                       defaultValue="", optional=True))
        tokens = QgsProcessingParameterNumber(self.MAX_TOKENS, "Most tokens in the answer",
                                              Qgis.ProcessingNumberParameterType.Integer, 256, minValue=1,
                                              maxValue=4096)
        tokens.setFlags(tokens.flags() | Qgis.ProcessingParameterFlag.Advanced)
        self.addParameter(tokens)
        self.addParameter(QgsProcessingParameterFeatureSink(self.OBJECTS, "Objects",
                                                            Qgis.ProcessingSourceType.VectorPolygon, optional=True,
                                                            createByDefault=True))
        self.addParameter(QgsProcessingParameterFeatureSink(self.RELATIONS, "Relations",
                                                            Qgis.ProcessingSourceType.VectorLine, optional=True,
                                                            createByDefault=True))
        self.addParameter(QgsProcessingParameterFileDestination(
            self.IMAGE, "What the model saw, with its boxes (PNG)", "PNG images (*.png);;JPEG images (*.jpg *.jpeg)",
            optional=True,
            createByDefault=False))
        self.addOutput(QgsProcessingOutputString(self.ANSWER, "Answer"))

    def checkParameterValues(self, parameters, context):  # noqa: N802
        """Before the run, on the main thread (the dialog, `qgis_process`, `processing.run`): a view that would
        be blank (a layer that cannot be read, an EXTENT that none of the layers meets) or a task without its
        question or region is refused in one line, and the engine is never asked. qgis_process prints that
        line once (an exception raised during the run, QGIS logs and prints three times)."""
        ok, message = super().checkParameterValues(parameters, context)
        if not ok:
            return ok, parameters_problem(parameters, [self.LAYERS]) or message
        try:
            settings = self._view(parameters, context, self.parameterAsLayerList(parameters, self.LAYERS, context))
            self._question(parameters, context)
            self._region_in_view(parameters, context, settings)
            self._image_destination(parameters, context)
            self._engine(parameters, context)
        except QgsProcessingException as exc:
            # the dialog shows the line in a message box, qgis_process prints it; the "GeoVLM" log keeps it (as
            # a warning: qgis_process echoes critical messages, which would print it twice)
            QgsMessageLog.logMessage(f"askmap: {exc}", "GeoVLM", Qgis.MessageLevel.Warning)
            return False, str(exc)
        return True, ""

    def _view(self, parameters, context, layers):
        """The map settings of the view of `layers`; raises QgsProcessingException with one line when the
        view would be blank (`plugin.view_checks.layers_problem`) or has no size."""
        if not layers:
            raise QgsProcessingException("no layers to render: give at least one")
        if parameters.get(self.EXTENT) is None:  # QGIS reads an extent's default only in the dialog: the map's view
            parameters = {**parameters, self.EXTENT: self.parameterDefinition(self.EXTENT).defaultValue()}
        crs = self.parameterAsExtentCrs(parameters, self.EXTENT, context)
        extent = self.parameterAsExtent(parameters, self.EXTENT, context, crs)
        rotation = self.parameterAsDouble(parameters, self.ROTATION, context)
        dpr = self.parameterAsDouble(parameters, self.DPR, context)
        for name, value in ((self.ROTATION, rotation), (self.DPR, dpr)):  # nan passes QGIS's range check
            if not math.isfinite(value):  # a DEVICE_PIXEL_RATIO of nan hung the render; a ROTATION of nan
                raise QgsProcessingException(f"{name} must be a number, not {value}")  # read as "outside"
        try:
            settings = view_settings(
                layers, crs, extent, rotation,
                self.parameterAsInt(parameters, self.WIDTH, context),
                self.parameterAsInt(parameters, self.HEIGHT, context),
                dpr)
        except ValueError as exc:
            raise QgsProcessingException(str(exc)) from None
        settings.setTransformContext(context.transformContext())
        where = (f"EXTENT {extent.xMinimum():.12g},{extent.xMaximum():.12g},{extent.yMinimum():.12g},"
                 f"{extent.yMaximum():.12g} [{crs.authid() or crs.description()}]")
        problem = layers_problem(settings, where)
        if problem:
            raise QgsProcessingException(problem)
        return settings

    def _question(self, parameters, context) -> None:
        """Raises QgsProcessingException when the task lacks what it asks about: identify its REGION, the
        others their QUESTION, but for the scene graph, which asks `core.bulk.DEFAULT_GRAPH_QUESTION` without
        one, as geovlm:detecttiles does."""
        task = TASKS[self.parameterAsEnum(parameters, self.TASK, context)]
        if task in REGION_TASKS:
            geometry = self.parameterAsGeometry(parameters, self.REGION, context)
            if geometry is None or geometry.isEmpty():
                raise QgsProcessingException("the identify task needs a REGION (a polygon or rectangle on the map)")
        elif task != "scene graph" and not self.parameterAsString(parameters, self.QUESTION, context).strip():
            raise QgsProcessingException(f"the {task} task needs a question")

    def _region_in_view(self, parameters, context, settings) -> None:
        """Raises QgsProcessingException when the identify task's REGION lies wholly outside the view or covers no
        area of it (a point, a line along an axis): the family's numbers of such a region are clipped to the
        image's edge or of zero size, and the model was asked about what it cannot see."""
        if TASKS[self.parameterAsEnum(parameters, self.TASK, context)] not in REGION_TASKS:
            return
        frame = view_frame(settings)
        pixels = [frame.geotransform.to_pixel(x, y) for x, y in ring_of(self._region_geometry(parameters, context,
                                                                                              settings))]
        if not pixels:
            return  # no region at all: _question says so
        cols, rows = [c for c, _ in pixels], [r for _, r in pixels]
        if max(cols) <= 0 or min(cols) >= frame.width or max(rows) <= 0 or min(rows) >= frame.height:
            raise QgsProcessingException("REGION lies outside the view (EXTENT, ROTATION): the model would be asked "
                                         "about what it does not see; draw the region inside the view")
        if max(cols) - min(cols) <= 0 or max(rows) - min(rows) <= 0:
            raise QgsProcessingException("REGION covers no area of the view (a point, or a line along an axis): "
                                         "give a polygon or a rectangle")

    def _region_geometry(self, parameters, context, settings):
        """REGION in the view's CRS."""
        geometry = self.parameterAsGeometry(parameters, self.REGION, context)
        source_crs = self.parameterAsGeometryCrs(parameters, self.REGION, context)
        target = settings.destinationCrs()
        if source_crs.isValid() and target.isValid() and source_crs != target:
            geometry.transform(QgsCoordinateTransform(source_crs, target, context.transformContext()))
        return geometry

    def _image_destination(self, parameters, context) -> None:
        """Raises QgsProcessingException when IMAGE names a file in a folder that does not exist or cannot be
        written: found only after the engine had answered ("could not write the image"), which failed the run
        whose objects were already written."""
        path = self.parameterAsFileOutput(parameters, self.IMAGE, context)
        if not path:
            return
        folder = Path(path).parent
        if not folder.is_dir():
            raise QgsProcessingException(f"IMAGE: the folder of {path} does not exist")
        try:  # a file made and removed there: os.access says yes to root for folders no file can be made in
            with tempfile.TemporaryFile(dir=folder):
                pass
        except OSError as exc:
            raise QgsProcessingException(f"IMAGE: the folder of {path} cannot be written ({exc.strerror})") from None

    def _engine(self, parameters, context) -> None:
        """Raises QgsProcessingException when the engine cannot be reached whatever it serves
        (`engine_access.engine_problem`: the local engine not set up, a malformed URL, an unknown FAMILY; an
        AUTHCFG that does not exist), or when the FAMILY given cannot do the TASK."""
        family = self.parameterAsString(parameters, self.FAMILY, context).strip()
        problem = (engine_problem(self.parameterAsString(parameters, self.ENGINE, context), family)
                   or authcfg_problem(self.parameterAsString(parameters, self.AUTHCFG, context)))
        if problem:
            raise QgsProcessingException(problem)
        task = TASKS[self.parameterAsEnum(parameters, self.TASK, context)]
        profile = get_profile(family_of(family)) if family else None
        if profile is not None and task not in family_tasks(profile):
            raise QgsProcessingException(
                f"{profile.name} cannot {task!r}; it can: {', '.join(family_tasks(profile))}")

    def prepareAlgorithm(self, parameters, context, feedback):  # noqa: N802
        """On the main thread: clone the layers, so the render in processAlgorithm may run in a worker. The
        checks of checkParameterValues are made again (a graphical model does not call it for its steps)."""
        self._question(parameters, context)
        self._image_destination(parameters, context)
        self._clones = [layer.clone() for layer in self.parameterAsLayerList(parameters, self.LAYERS, context)]
        try:
            self._settings = self._view(parameters, context, self._clones)
            self._region_in_view(parameters, context, self._settings)
        except QgsProcessingException:
            self._clones = []
            raise
        return True

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        task = TASKS[self.parameterAsEnum(parameters, self.TASK, context)]
        question = self.parameterAsString(parameters, self.QUESTION, context).strip()
        if task == "scene graph" and not question:
            question = DEFAULT_GRAPH_QUESTION
            feedback.pushInfo(f"no QUESTION: asking the scene graph task's default, {question!r}")
        cancel = CancelToken()
        try:
            errors = []
            image = render(self._settings, errors)  # before the engine is asked: a layer may not be readable
            problem = render_problem(errors)
            if problem:
                raise QgsProcessingException(problem)
            if only_background(self._settings, image) and drawn_nothing(render(transparent_settings(self._settings))):
                # all nodata (a blank image), or complex values, which QGIS does not draw
                raise QgsProcessingException(blank_problem("this view", self._settings.layers()))
            view = View.of(self._settings, image)
            feedback.pushInfo(f"rendered {view.frame.width}x{view.frame.height} pixels in "
                              f"{view.frame.crs or 'no CRS (the map units of layers without one)'}, "
                              f"rotation {view.rotation:g}, device pixel ratio {view.dpr:g}")
            try:
                connection = connect(self.parameterAsString(parameters, self.ENGINE, context),
                                     self.parameterAsString(parameters, self.AUTHCFG, context),
                                     self.parameterAsString(parameters, self.FAMILY, context).strip(), feedback,
                                     cancel)
            except EngineUnavailable as exc:
                raise QgsProcessingException(str(exc)) from None
            except Cancelled:
                raise QgsProcessingException("cancelled") from None
            try:
                return self._ask(parameters, context, feedback, connection, task, question, view, cancel)
            finally:
                connection.close()
        finally:  # the cloned layers go with the run, whatever ends it
            self._settings, self._clones = None, []

    def _ask(self, parameters, context, feedback, connection, task, question, view, cancel):
        profile = connection.profile
        if task not in family_tasks(profile):
            raise QgsProcessingException(
                f"{profile.name} cannot {task!r}; it can: {', '.join(family_tasks(profile))}")
        if task in REGION_TASKS:
            question = self._region(parameters, context, profile, view)
        lines = LineStream(feedback.pushConsoleInfo)  # the log breaks the line after each push: whole lines
        try:
            source = QImageSource(view.image)
            text, answer = connection.client.ask(
                source, (view.frame.width, view.frame.height), worded(profile, task, question), profile,
                on_token=lines.push, cancel=cancel,
                max_tokens=self.parameterAsInt(parameters, self.MAX_TOKENS, context))
            lines.close()
        except Cancelled:
            raise QgsProcessingException("cancelled") from None
        except (EngineError, ValueError) as exc:
            raise QgsProcessingException(f"the engine failed: {exc}") from None
        if connection.notice:
            feedback.pushWarning(connection.notice)
        feedback.pushInfo(f"answer: {text}")
        feedback.pushInfo(answer.summary())
        info = connection.describe()
        provenance = Provenance(question, task, info["model"], info["family"], info["engine"], text)
        objects, relations = ask_features(answer, view, 1, provenance)
        obj_fields, rel_fields = ask_fields()
        crs = self._settings.destinationCrs()
        if not crs.isValid():  # an EXTENT with no CRS: QGIS's unknown CRS would be written as degrees
            crs = qgis_crs(NO_CRS_MAP_WKT)
            feedback.pushInfo("the view has no CRS: the layers are in its map units, with an undefined Cartesian "
                              "CRS (never degrees); give EXTENT a CRS ([EPSG:...]) to place them on a map")
        obj_sink, obj_id = add_sink(self, parameters, self.OBJECTS, context, obj_fields, Qgis.WkbType.Polygon, crs,
                                    feedback)
        rel_sink, rel_id = add_sink(self, parameters, self.RELATIONS, context, rel_fields, Qgis.WkbType.LineString,
                                    crs, feedback)
        for sink, features in ((obj_sink, objects), (rel_sink, relations)):
            sink.addFeatures(features, QgsFeatureSink.Flag.FastInsert)
            sink.close()
        style_on_completion(context, obj_id, "objects")
        style_on_completion(context, rel_id, "relations")
        results = {self.OBJECTS: obj_id, self.RELATIONS: rel_id, self.ANSWER: text}
        path = self.parameterAsFileOutput(parameters, self.IMAGE, context)
        if path:
            plan = fit_plan(profile, view.frame.width, view.frame.height)
            seen = draw_boxes(source.fitted_image(plan, profile.pad_color), answer, plan)
            if not seen.save(path, image_format(path)):
                raise QgsProcessingException(f"could not write the image {path}")
            results[self.IMAGE] = path
        return results

    def _region(self, parameters, context, profile, view) -> str:
        geometry = self._region_geometry(parameters, context, self._settings)
        try:
            return region_question(profile, view.frame, ring_of(geometry))
        except ValueError as exc:
            raise QgsProcessingException(str(exc)) from None
