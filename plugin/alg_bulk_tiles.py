"""Processing algorithms `geovlm:captiontiles` and `geovlm:detecttiles`: every tile of a raster layer asked,
each answer committed to a GeoPackage that is the output and the ledger of the run (core/ledger.py), so a
rerun with the same parameters asks only for the missing or failed tiles; the command line's `geovlm
caption`/`geovlm detect` read and write the same ledger."""
from __future__ import annotations

import math
import threading
import time
from pathlib import Path

from qgis.core import (
    Qgis,
    QgsProcessingAlgorithm,
    QgsProcessingException,
    QgsProcessingOutputVectorLayer,
    QgsProcessingParameterAuthConfig,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterExtent,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
    QgsProcessingUtils,
    QgsProject,
    QgsRasterLayer,
)
from qgis.PyQt import sip

from ..core.bulk import (
    DEFAULT_CAPTION_QUESTION,
    DEFAULT_GRAPH_QUESTION,
    EndpointRecorder,
    ProgressLog,
    counted,
    default_task,
    eta_text,
    graph_rows,
    run_tiles,
)
from ..core.client import (
    DEFAULT_RETRY_WINDOW_S,
    MAX_REQUEST_TIMEOUT_S,
    MAX_RETRY_WINDOW_S,
    NO_ANSWER,
    EngineError,
)
from ..core.ledger import OBJECTS, RELATIONS, TILES, Ledger, LedgerError, RunPlan, output_problem
from ..core.raster_identity import crs_identity
from ..core.tiling import (
    DEFAULT_MAX_TILES,
    PlanOptions,
    TilePlan,
    max_tiles_problem,
    plan_area,
    plan_for_extent,
    too_many_tiles,
)
from ..core.transport import Cancelled, CancelToken
from .band_parameters import add_band_parameters, check_band_parameters, chosen_bands
from .bulk_outputs import FailedRunLayers, OutputLayers, finish_run
from .layer_files import parameters_problem
from .qgis_geometry import raster_frame
from .tile_sources import GdalTiles, RenderedTiles


def connect_engine(engine: str, authcfg: str, family: str, feedback, cancel: CancelToken):
    """An `EngineConnection` (plugin/engine_access.py); its failure is one QgsProcessingException line."""
    from .engine_access import EngineUnavailable, connect

    try:
        return connect(engine, authcfg, family, feedback=feedback, cancel=cancel)
    except EngineUnavailable as exc:
        raise QgsProcessingException(str(exc)) from None


GPKG_ONLY = "OUTPUT must be a .gpkg: it is the ledger that lets a run resume"


def run_problem(alg, parameters, context) -> str:
    """One line saying why a bulk run (tiles or features) would stop before asking anything, or "": an OUTPUT
    that is not a .gpkg or can never be one (`core.ledger.output_problem`: a folder, a file that is not a
    database), or an engine that cannot be used whatever it serves (`engine_access.engine_problem`:
    the local engine not set up, a malformed URL, an unknown FAMILY; `authcfg_problem`: an AUTHCFG that does not
    exist). For `checkParameterValues`, which refuses
    in the one line qgis_process prints once and the dialog shows in a message box; raised during the run,
    QGIS 3.40's qgis_process prints an error three times. Reads the settings only: main thread fine."""
    from .engine_access import authcfg_problem, engine_problem

    out = alg.parameterAsFileOutput(parameters, "OUTPUT", context)
    if out and not out.lower().endswith(".gpkg"):
        return GPKG_ONLY
    problem = output_problem(out) if out else None  # reads the file's header: once
    if problem:
        return problem
    return (engine_problem(alg.parameterAsString(parameters, "ENGINE", context),
                           alg.parameterAsString(parameters, "FAMILY", context))
            or authcfg_problem(alg.parameterAsString(parameters, "AUTHCFG", context)) or "")


def add_engine_parameters(alg) -> None:
    """The parameters every bulk run shares, in this order: FAMILY, ENGINE, AUTHCFG (`QgsAuthManager`: never a
    key in a string), CONCURRENCY (requests in flight per engine), OVERWRITE (an output of another plan) and,
    advanced, REQUEST_TIMEOUT and RETRY_WINDOW (`apply_retry_parameters`)."""
    alg.addParameter(QgsProcessingParameterString("FAMILY", "Model family (default: what the engine reports)",
                                                  optional=True))
    alg.addParameter(QgsProcessingParameterString("ENGINE", "Engine: local, or comma-separated URLs "
                                                  "(default: Settings ▸ Options ▸ GeoVLM)",
                                                  optional=True))
    alg.addParameter(QgsProcessingParameterAuthConfig("AUTHCFG", "Authentication", optional=True))
    alg.addParameter(QgsProcessingParameterNumber("CONCURRENCY", "Requests in flight per engine",
                                                  Qgis.ProcessingNumberParameterType.Integer, 4, minValue=1,
                                                  maxValue=64))
    alg.addParameter(QgsProcessingParameterBoolean("OVERWRITE", "Overwrite an output of another plan", False))
    timeout = QgsProcessingParameterNumber(
        "REQUEST_TIMEOUT", "Request timeout: seconds one attempt waits for the engine (default: Settings ▸ Options "
        "▸ GeoVLM)", Qgis.ProcessingNumberParameterType.Double, optional=True, minValue=1.0,
        maxValue=MAX_REQUEST_TIMEOUT_S)
    timeout.setFlags(timeout.flags() | Qgis.ProcessingParameterFlag.Advanced)
    alg.addParameter(timeout)
    window = QgsProcessingParameterNumber(
        "RETRY_WINDOW", f"Retry window: seconds a request is retried while no engine answers (default: "
        f"{DEFAULT_RETRY_WINDOW_S:g}; the local engine: its start timeout plus 30)",
        Qgis.ProcessingNumberParameterType.Double, optional=True, minValue=0.0, maxValue=MAX_RETRY_WINDOW_S)
    window.setFlags(window.flags() | Qgis.ProcessingParameterFlag.Advanced)
    alg.addParameter(window)


def apply_retry_parameters(alg, parameters, context, client, feedback) -> None:
    """REQUEST_TIMEOUT and RETRY_WINDOW, each when given, on `client` (a `core.client.EngineClient`), as
    `geovlm caption --request-timeout S --retry-window S` set them (cli/serve_cmds.py `_with_retry_options`),
    and, as there, one warning in the log as soon as a request first fails in a way that is retried ("URL sent
    no answer within 1 s (REQUEST_TIMEOUT to change); retrying for up to 3 s (RETRY_WINDOW to change, Cancel
    to stop)"), so that a run waiting for an engine that is down says so and which setting to change; said
    once a run, from whichever request thread fails first.

    REQUEST_TIMEOUT (1 to `core.client.MAX_REQUEST_TIMEOUT_S` seconds) bounds the connect and each wait for data
    of one attempt; empty: the engine settings' timeout (Settings ▸ Options ▸ GeoVLM) that `connect` gave the
    client. RETRY_WINDOW (0 to `core.client.MAX_RETRY_WINDOW_S` seconds; 0: one attempt) is how long a tile's
    request is retried after an attempt times out or finds no engine (refused, 502/503/504: an engine down or
    restarting) before that tile fails and the run stops, to be resumed; empty: the client's window
    (`DEFAULT_RETRY_WINDOW_S` for engine URLs, the local engine's start timeout plus 30 s). Both bounds are
    checked by QGIS's parameter check, before any engine is contacted."""
    if parameters.get("REQUEST_TIMEOUT") not in (None, ""):
        client.timeout = alg.parameterAsDouble(parameters, "REQUEST_TIMEOUT", context)
    if parameters.get("RETRY_WINDOW") not in (None, ""):
        client.retry_window = alg.parameterAsDouble(parameters, "RETRY_WINDOW", context)
    said = threading.Lock()

    def say(message: str, window_s: float) -> None:
        if said.acquire(blocking=False):  # never released: the first failing request says it, the others not
            slow = " (REQUEST_TIMEOUT to change)" if NO_ANSWER in message else ""
            feedback.pushWarning(f"{message}{slow}; retrying for up to {window_s:.0f} s (RETRY_WINDOW to change, "
                                 "Cancel to stop)")

    client.on_first_failure = say


# the bulk algorithms' number parameters, checked by `number_problem`: what each is, for its one line
BULK_NUMBERS = {"REQUEST_TIMEOUT": "a number of seconds", "RETRY_WINDOW": "a number of seconds",
                "MERGE_OVERLAP": "a share of the smaller object"}
# the help's sentence on them, shared by the three bulk algorithms
RETRY_HELP = (f" Advanced: REQUEST_TIMEOUT is how long one attempt waits for the engine (1 to "
              f"{MAX_REQUEST_TIMEOUT_S:g} s; empty: the settings'), RETRY_WINDOW how long a request (a tile, a "
              "feature) is retried after an attempt timed out or found no engine (down or restarting) before the "
              f"run stops, to be resumed (0 to {MAX_RETRY_WINDOW_S:g} s, 0 for one attempt; empty: "
              f"{DEFAULT_RETRY_WINDOW_S:g} s for engine URLs, the start timeout plus 30 s for the local engine), as "
              "`--request-timeout` and `--retry-window` on the command line.")


# the help's sentence on MAX_TILES, shared by the two tile algorithms
MAX_TILES_HELP = (f" Advanced: MAX_TILES ({DEFAULT_MAX_TILES:,} by default, about a 160,000 px square raster in 512 "
                  "px tiles) refuses a larger plan in one line before any engine is started or asked, as `--max-tiles` "
                  "on the command line: ask part of the raster (EXTENT), take larger tiles (TILE_SIZE), or raise "
                  "MAX_TILES.")


def number_problem(alg, parameters, context) -> str:
    """One line when a number parameter of BULK_NUMBERS that `alg` has (REQUEST_TIMEOUT, RETRY_WINDOW,
    MERGE_OVERLAP) is out of its bounds or not a finite number, else "". QGIS's own check lets nan through (every
    comparison with it is false), so this is called by `checkParameterValues` too; a graphical model does not call
    that for its steps, hence `check_engine_numbers` in `prepareAlgorithm`."""
    for name, what in BULK_NUMBERS.items():
        definition = alg.parameterDefinition(name)
        value = parameters.get(name)
        if definition is None or value is None or (isinstance(value, str) and not value.strip()):
            continue
        if (not definition.checkValueIsAcceptable(value, context)
                or not math.isfinite(alg.parameterAsDouble(parameters, name, context))):
            return f"{name} must be {what} from {definition.minimum():g} to {definition.maximum():g}, not {value}"
    return ""


def check_engine_numbers(alg, parameters, context) -> None:
    """Raise QgsProcessingException with `number_problem`'s line, if any: called by `prepareAlgorithm`, before
    any engine is contacted or output touched."""
    problem = number_problem(alg, parameters, context)
    if problem:
        raise QgsProcessingException(problem)


def default_raster_layer():
    """The id of the raster layer a bulk dialog starts with: the active layer when it is a raster, else the
    first raster layer of the project in layer order; None when the project has none (qgis_process). Used as
    the parameter's default, which the dialog selects (each dialog makes a fresh algorithm instance)."""
    from qgis.utils import iface

    project = QgsProject.instance()
    active = iface.activeLayer() if iface is not None else None
    if isinstance(active, QgsRasterLayer) and not sip.isdeleted(active) and project.mapLayer(active.id()) is active:
        return active.id()
    ordered = project.layerTreeRoot().layerOrder() or list(project.mapLayers().values())
    return next((layer.id() for layer in ordered if isinstance(layer, QgsRasterLayer) and layer.isValid()), None)


def ledger_crs(crs):
    """(WKT1 as GeoPackage 1.3 wants it, EPSG code or None) of a QgsCoordinateReferenceSystem; (None, None)
    when it is not valid."""
    if not crs.isValid():
        return None, None
    return crs.toWkt(Qgis.CrsWktVariant.Wkt1Gdal), (int(crs.postgisSrid()) if crs.authid().upper().startswith(
        "EPSG:") else None)


def crs_name(crs) -> str:
    """`core.raster_identity.crs_identity` of a QgsCoordinateReferenceSystem (its EPSG code, else its PROJ
    string), as the command line names the same raster's CRS."""
    _, epsg = ledger_crs(crs)
    return crs_identity(epsg, crs.toProj() if crs.isValid() and not epsg else None)


# how a Processing user replaces an output of another plan, named in the ledger's refusal
OVERWRITE_FLAG = 'tick "Overwrite an output of another plan", OVERWRITE=true in qgis_process'


def is_temporary(out: str) -> bool:
    """Whether `out` lies in QGIS's temporary Processing folder (OUTPUT left at "Save to a temporary file"):
    QGIS deletes it at exit, and a rerun gets a new file, so a run there cannot be resumed."""
    folder = Path(QgsProcessingUtils.tempFolder()).resolve()
    return folder in Path(out).resolve().parents


def report_outcome(feedback, stats, out: str, unit: str) -> None:
    """End a bulk run whose answers are all committed (and its layers written): return when every `unit`
    ("tiles", "features") is answered or skipped; else raise a QgsProcessingException in one line saying how
    many failed, that the answered ones are kept in `out`, and whether a rerun with the same parameters asks
    again for the rest (engine failures, a halt, a cancel) or will not help (pixels that cannot be read, whose
    ids are logged first with `reportError`). A temporary OUTPUT is said to be one: a rerun will not reuse it.

    Failing the run is the QGIS convention for a job left partly undone (native:package writes every layer it
    can, then raises "Error obtained while packaging one or more layers"): qgis_process exits 1 (it exits 0
    whenever the algorithm returns, whatever `reportError` said), `processing.run` raises, and a graphical
    model stops, as `geovlm caption` exits 1; the dialog says "Execution failed", stays open with the log so
    Run resumes, and loads the output's layers all the same (`bulk_outputs.finish_run`), so that the answered
    ones can be seen; the message names the file that holds them."""
    if stats.unreadable:
        feedback.reportError(stats.unreadable_note(unit) + ".", False)
    if not (stats.failed or stats.halted or stats.cancelled):
        return
    if is_temporary(out):  # no "run again": a rerun writes another temporary file and asks everything again
        kept = (f"the answered {unit} are in a temporary file ({out}) that QGIS deletes when it closes and a rerun "
                "will not reuse; choose a .gpkg file as the output to be able to resume.")
        cancelled = stopped = failed = unreadable = kept
    else:
        kept = f"the answered {unit} are kept in {out}"
        cancelled = f"{kept}; run again with the same parameters to ask only for the rest."
        stopped = f"{kept}; run again with the same parameters once an engine answers."
        failed = f"{kept}; run again with the same parameters to ask them again."
        unreadable = f"{kept}."
    if stats.cancelled:
        raise QgsProcessingException(f"Cancelled: {cancelled}")
    if stats.halted:
        raise QgsProcessingException(f"Stopped: {stats.halted}. {stopped[0].upper()}{stopped[1:]}")
    if stats.engine_failed:
        first = next((e for e in stats.errors if not e.startswith("pixels cannot be read")), "")
        also = f" ({len(stats.unreadable)} more could not be read)" if stats.unreadable else ""
        raise QgsProcessingException(f"{counted(stats.engine_failed, unit)} failed at the engine{also} (first: "
                                     f"{first}); {failed}")
    raise QgsProcessingException(f"{counted(len(stats.unreadable), unit)} could not be read (a rerun will not help "
                                 f"those); {unreadable}")


class BulkTilesAlgorithm(QgsProcessingAlgorithm):
    """The parameters and the run shared by the caption and the detection algorithms."""

    KIND = "caption"
    INPUT, EXTENT, RESOLUTION, TILE_SIZE, OVERLAP = "INPUT", "EXTENT", "RESOLUTION", "TILE_SIZE", "OVERLAP"
    SKIP_NODATA, QUESTION, FAMILY, ENGINE, AUTHCFG = "SKIP_NODATA", "QUESTION", "FAMILY", "ENGINE", "AUTHCFG"
    CONCURRENCY, OVERWRITE, OUTPUT, TILES = "CONCURRENCY", "OVERWRITE", "OUTPUT", "TILES"
    MAX_TILES = "MAX_TILES"
    # how the refusal of a plan too large (core.tiling.too_many_tiles, as `geovlm caption --max-tiles`) names the
    # ways on
    PLAN_OPTIONS = PlanOptions(EXTENT, TILE_SIZE, MAX_TILES)

    def group(self):
        return "Bulk"

    def groupId(self):  # noqa: N802
        return "bulk"

    def createInstance(self):  # noqa: N802
        return type(self)()

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, "Raster layer (a file, or a web layer)",
                                                            default_raster_layer()))
        self.addParameter(QgsProcessingParameterExtent(self.EXTENT, "Extent (default: the whole raster; "
                                                       "needed for a web layer)", optional=True))
        self.addParameter(QgsProcessingParameterNumber(
            self.RESOLUTION, "Resolution of a rendered web layer (map units per pixel)",
            Qgis.ProcessingNumberParameterType.Double, optional=True, minValue=0.0))
        self.addParameter(QgsProcessingParameterNumber(self.TILE_SIZE, "Tile size (pixels)",
                                                       Qgis.ProcessingNumberParameterType.Integer, 512, minValue=1))
        self.addParameter(QgsProcessingParameterNumber(self.OVERLAP, "Overlap (pixels)",
                                                       Qgis.ProcessingNumberParameterType.Integer,
                                                       64 if self.KIND == "detect" else 0, minValue=0))
        cap = QgsProcessingParameterNumber(
            self.MAX_TILES, "Most tiles a run may plan (a larger plan is refused before any engine is asked)",
            Qgis.ProcessingNumberParameterType.Integer, DEFAULT_MAX_TILES, minValue=1)
        cap.setFlags(cap.flags() | Qgis.ProcessingParameterFlag.Advanced)
        self.addParameter(cap)
        add_band_parameters(self, self.INPUT)
        self.addParameter(QgsProcessingParameterBoolean(self.SKIP_NODATA, "Skip nodata-only tiles", True))
        self.addParameter(QgsProcessingParameterString(self.QUESTION, "Question (default: the family's prompt)",
                                                       optional=True))
        add_engine_parameters(self)
        self.add_kind_parameters()
        self.addParameter(QgsProcessingParameterFileDestination(
            self.OUTPUT, "Output GeoPackage (also the ledger: rerun to resume)", "GeoPackage (*.gpkg)"))
        self.addOutput(QgsProcessingOutputVectorLayer(self.TILES, "Tiles", Qgis.ProcessingSourceType.VectorPolygon))

    def add_kind_parameters(self) -> None:
        """Parameters of one kind of run only."""

    # ------------------------------------------------------------ the plan and its pixels

    def checkParameterValues(self, parameters, context):  # noqa: N802
        """QGIS's checks, then the chosen bands against INPUT's (`band_parameters.check_band_parameters`), the
        tile plan (an OVERLAP not smaller than TILE_SIZE, an EXTENT off the raster, a web layer without EXTENT
        and RESOLUTION, more tiles than MAX_TILES) and `run_problem`: each refused in one line before an engine
        is contacted."""
        ok, message = super().checkParameterValues(parameters, context)
        if not ok:
            message = parameters_problem(parameters, [self.INPUT], [self.INPUT]) or message
        problem = number_problem(self, parameters, context) if ok else ""
        if problem:
            return False, problem
        if ok:
            ok, message = check_band_parameters(self, self.INPUT, parameters, context)
        layer = self.parameterAsRasterLayer(parameters, self.INPUT, context) if ok else None
        if layer is not None:
            try:
                self._plan(layer, parameters, context)
            except ValueError as exc:
                return False, str(exc)
        problem = run_problem(self, parameters, context) if ok else ""
        return (False, problem) if problem else (ok, message)

    def prepareAlgorithm(self, parameters, context, feedback):  # noqa: N802
        """On the main thread: read the layer (and clone a web layer's provider) for the run's thread, and keep
        `context` for the layers of a run that fails with answers committed (`bulk_outputs.FailedRunLayers`).
        The plan is checked again, its size against MAX_TILES included (a graphical model does not call
        checkParameterValues for its steps): a plan too large is refused here, before `processAlgorithm`
        starts or asks any engine."""
        check_engine_numbers(self, parameters, context)
        self.failed_layers = FailedRunLayers(context)
        layer = self.parameterAsRasterLayer(parameters, self.INPUT, context)
        if layer is None:
            raise QgsProcessingException("no raster layer given")
        skip = self.parameterAsBool(parameters, self.SKIP_NODATA, context)
        self.keep_nodata = not skip
        self.crs_wkt, self.epsg = ledger_crs(layer.crs())
        self.crs_name = crs_name(layer.crs())
        try:
            self.bands = chosen_bands(self, layer, parameters, context)
            self.tiles, self.gt, offset = self._plan(layer, parameters, context)
        except ValueError as exc:
            raise QgsProcessingException(str(exc)) from None
        if offset is not None:
            self.source = "file"
            self.reader = GdalTiles(layer.source(), skip, offset, self.bands, black_nodata=True)
        else:
            self.source, self.reader = "render", RenderedTiles(layer, self.gt, skip)
        return True

    def _plan(self, layer, parameters, context):
        """(TilePlan, geotransform of its pixel (0, 0), (col, row) of that pixel in the file, or None for a web
        layer, which is rendered) of a run over `layer` with TILE_SIZE, OVERLAP, EXTENT (in the layer's CRS) and,
        for a web layer, RESOLUTION (map units per pixel). Raises ValueError with one line: an overlap not
        smaller than the tile, an extent off the raster, a web layer without extent or resolution, a MAX_TILES
        below 1, or a plan of more than MAX_TILES tiles (`core.tiling.too_many_tiles`, worded as `geovlm
        caption` words it, naming EXTENT, TILE_SIZE and MAX_TILES; the plan is counted, never listed)."""
        tiles, gt, offset, area = self._planned(layer, parameters, context)
        cap = self.parameterAsInt(parameters, self.MAX_TILES, context)
        problem = max_tiles_problem(cap, self.PLAN_OPTIONS) or too_many_tiles(tiles, area, cap, self.PLAN_OPTIONS)
        if problem:
            raise ValueError(problem)
        return tiles, gt, offset

    def _planned(self, layer, parameters, context):
        """`_plan`'s (plan, geotransform, offset) and what the plan covers in words (`core.tiling.plan_area`),
        its size not checked."""
        tile = self.parameterAsInt(parameters, self.TILE_SIZE, context)
        overlap = self.parameterAsInt(parameters, self.OVERLAP, context)
        extent = None
        if parameters.get(self.EXTENT):
            extent = self.parameterAsExtent(parameters, self.EXTENT, context, layer.crs())
        if layer.providerType() != "gdal":
            resolution = self.parameterAsDouble(parameters, self.RESOLUTION, context)
            if extent is None or extent.isEmpty() or not resolution:
                raise ValueError(f"{layer.name()!r} is a web layer: give EXTENT and RESOLUTION (map units per pixel)")
            tiles, gt = plan_for_extent(extent.xMinimum(), extent.yMinimum(), extent.xMaximum(), extent.yMaximum(),
                                        resolution, tile, overlap)
            return tiles, gt, None, plan_area(tiles.width, tiles.height, True, f"the web layer at {resolution:g} "
                                              "map units per pixel")
        frame = raster_frame(layer)
        col0, row0, width, height = 0, 0, frame.width, frame.height
        if extent is not None and not extent.isEmpty():
            corners = [frame.geotransform.to_pixel(x, y) for x in (extent.xMinimum(), extent.xMaximum())
                       for y in (extent.yMinimum(), extent.yMaximum())]
            col0 = max(0, math.floor(min(c for c, _ in corners)))
            row0 = max(0, math.floor(min(r for _, r in corners)))
            col1 = min(frame.width, math.ceil(max(c for c, _ in corners)))
            row1 = min(frame.height, math.ceil(max(r for _, r in corners)))
            if col1 <= col0 or row1 <= row0:
                raise ValueError("the extent does not overlap the raster")
            width, height = col1 - col0, row1 - row0
        part = extent is not None and not extent.isEmpty()
        return (TilePlan(width, height, tile, overlap), frame.geotransform.window(col0, row0), (col0, row0),
                plan_area(width, height, part))

    # ------------------------------------------------------------ the run

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        out = self.parameterAsFileOutput(parameters, self.OUTPUT, context)
        if not out.lower().endswith(".gpkg"):
            raise QgsProcessingException(GPKG_ONLY)
        cancel = CancelToken()
        conn = connect_engine(self.parameterAsString(parameters, self.ENGINE, context),
                              self.parameterAsString(parameters, self.AUTHCFG, context),
                              self.parameterAsString(parameters, self.FAMILY, context), feedback, cancel)
        try:
            return self._run(parameters, context, feedback, conn, cancel, out)
        finally:
            conn.close()

    def _run(self, parameters, context, feedback, conn, cancel, out):
        profile, client = conn.profile, conn.client
        for endpoint in client.endpoints:
            endpoint.max_concurrent = self.parameterAsInt(parameters, self.CONCURRENCY, context)
        apply_retry_parameters(self, parameters, context, client, feedback)
        client.transport = EndpointRecorder(client.transport)
        question = self.parameterAsString(parameters, self.QUESTION, context) or (
            DEFAULT_CAPTION_QUESTION if self.KIND == "caption" else DEFAULT_GRAPH_QUESTION)
        try:
            task = default_task(profile, self.KIND)
        except ValueError as exc:
            raise QgsProcessingException(str(exc)) from None
        pixels = self.reader.pixel_digest() if self.source == "file" else ""
        plan = RunPlan(self.KIND, self.tiles, self.gt, question, task, profile.name, conn.model, self.source,
                       crs=self.crs_name, pixels=pixels, bands=self.bands, keep_nodata=self.keep_nodata)
        try:
            ledger = Ledger(out, plan, self.crs_wkt, self.epsg,
                            overwrite=self.parameterAsBool(parameters, self.OVERWRITE, context),
                            merge_threshold=self.merge_threshold(parameters, context), overwrite_flag=OVERWRITE_FLAG)
        except LedgerError as exc:  # qgis_process prints any error raised here 3 times (QGIS 3.40's own echo); the
            # plan holds the engine's family and model, so it cannot be checked in checkParameterValues (printed once)
            raise QgsProcessingException(str(exc)) from None
        if conn.notice:
            feedback.pushWarning(conn.notice)
        feedback.pushInfo(f"{counted(len(self.tiles), 'tiles')} of {self.tiles.tile} px, {profile.name} "
                          f"'{conn.model}' on {conn.describe()['engine']}; plan {plan.fingerprint}"
                          + (" (resuming)" if ledger.resumed else ""))
        started = time.monotonic()
        lines = ProgressLog(len(self.tiles))

        def progress(stats):
            if feedback.isCanceled():
                cancel.cancel()
            finished = stats.done + stats.failed
            feedback.setProgress(100.0 * finished / max(1, stats.total))
            if lines.due(finished):  # the Processing log keeps every progress text: about ten lines a run
                left = eta_text(stats, time.monotonic() - started)
                feedback.setProgressText(f"{finished}/{counted(stats.total, 'tiles')}" + (f", {left}" if left else ""))

        graph = (lambda tile, answer: graph_rows(tile, answer, self.gt)) if self.KIND == "detect" else None
        try:
            stats = run_tiles(client, ledger, self.tiles, self.reader, question, task, profile,
                              conn.model, graph=graph, cancel=cancel, on_progress=progress)
        except (EngineError, Cancelled) as exc:
            raise QgsProcessingException(str(exc)) from None
        finally:
            ledger.close()
        feedback.pushInfo(stats.summary())
        outputs = finish_run(lambda: report_outcome(feedback, stats, out, "tiles"), out, self.output_layers(),
                             context, self.failed_layers)
        return dict(outputs, **{self.OUTPUT: out})

    def merge_threshold(self, parameters, context) -> float:
        return 0.5

    def output_layers(self) -> OutputLayers:
        """(output, GeoPackage layer, style) of each layer the run loads."""
        return [(self.TILES, TILES, "tiles")]


class CaptionTilesAlgorithm(BulkTilesAlgorithm):
    KIND = "caption"

    def name(self):
        return "captiontiles"

    def displayName(self):  # noqa: N802
        return "Caption raster tiles"

    def shortHelpString(self):  # noqa: N802
        return ("Cuts the raster into tiles (a file at its own resolution, a web layer rendered at RESOLUTION) and "
                "asks the engine for a caption of each: one polygon per tile with its exact footprint, caption, "
                "status and provenance. The model sees bands 1,2,3 (a one-band raster as grey), or the three "
                "bands chosen as red, green and blue (2,3,4 of NIR,R,G,B imagery); data other than 8-bit is "
                "stretched (2-98 %). OUTPUT is also the ledger: run again with the same parameters to ask only "
                "for missing or failed tiles; `geovlm caption` on the command line continues the same file. A run "
                "that leaves tiles failed or missing ends as failed (qgis_process exits 1) once every answer is "
                "committed: the message names the output that holds them, and the dialog loads its layers all the "
                "same, to show what was done while Run resumes the rest." + MAX_TILES_HELP + RETRY_HELP)


class DetectTilesAlgorithm(BulkTilesAlgorithm):
    KIND = "detect"
    MERGE_OVERLAP, OBJECTS, RELATIONS = "MERGE_OVERLAP", "OBJECTS", "RELATIONS"

    def name(self):
        return "detecttiles"

    def displayName(self):  # noqa: N802
        return "Find objects and relations in raster tiles"

    def shortHelpString(self):  # noqa: N802
        return ("Asks the family's scene-graph (or grounding) task of each tile: OBJECTS are the rotated boxes "
                "(label, tile, provenance), RELATIONS lines from subject to object with the predicate and both "
                "object ids. Objects found twice where tiles overlap (same label, overlapping more than "
                "MERGE_OVERLAP of the smaller) are merged, keeping the copy farther from its tile's edge. "
                "Resumes like Caption raster tiles." + MAX_TILES_HELP + RETRY_HELP)

    def add_kind_parameters(self) -> None:
        self.addParameter(QgsProcessingParameterNumber(
            self.MERGE_OVERLAP, "Merge same-label objects overlapping more than (share of the smaller)",
            Qgis.ProcessingNumberParameterType.Double, 0.5, minValue=0.0, maxValue=1.0))
        self.addOutput(QgsProcessingOutputVectorLayer(self.OBJECTS, "Objects",
                                                      Qgis.ProcessingSourceType.VectorPolygon))
        self.addOutput(QgsProcessingOutputVectorLayer(self.RELATIONS, "Relations",
                                                      Qgis.ProcessingSourceType.VectorLine))

    def merge_threshold(self, parameters, context) -> float:
        return self.parameterAsDouble(parameters, self.MERGE_OVERLAP, context)

    def output_layers(self) -> OutputLayers:
        return [*super().output_layers(), (self.OBJECTS, OBJECTS, "objects"), (self.RELATIONS, RELATIONS,
                                                                               "relations")]


__all__ = ["CaptionTilesAlgorithm", "DetectTilesAlgorithm"]
