"""The dock's behaviour: render the view without blocking QGIS (`plugin.view_render`), ask in a `QgsTask`,
stream the answer into the transcript, add its features in the task's `finished()`, keep the conversation
about the same image until "New view", and show the engine's state. Errors go to the message bar and the
"GeoVLM" log, never to a traceback dialog."""
from __future__ import annotations

import html
from typing import List, Optional, Tuple

from qgis.core import (
    Qgis,
    QgsApplication,
    QgsMapSettings,
    QgsMessageLog,
    QgsProject,
)
from qgis.PyQt.QtCore import QObject, QTimer
from qgis.PyQt.QtGui import QGuiApplication, QPixmap
from qgis.PyQt.QtWidgets import QFileDialog

from ..core.profiles import get_profile
from ..core.regions import ASK_TASKS, REGION_TASKS, family_tasks
from . import settings as engine_settings
from .ask_engine_header import EngineHeader
from .ask_engine_wait import QuestionHold
from .ask_export import Turn, to_html, to_markdown
from .ask_layers import AnswerLayers, answer_layer_ids, asks_how_many
from .ask_map import Provenance, View, ask_features, draw_boxes, png_bytes, view_frame
from .ask_rectangle import RectangleDrawing
from .ask_sources import check_region_in_view, region_ring, source_settings, view_key
from .ask_task import AskTask
from .drawn_rectangle import DrawnRectangle
from .engine_manager import engine_manager
from .qgis_geometry import qgis_crs
from .view_checks import blank_problem, render_problem
from .view_render import ViewRender

LOG_TAG = "GeoVLM"
STREAM_REDRAW_MS = 50  # the transcript shows streamed text at most this often


def relation_links(answer, fids: List[int], layer) -> List[Tuple[str, str]]:
    """[(text, "<layer id>/<feature id>")] of an answer's relations that became features of `layer` (those
    whose subject and object both have a box, in the answer's order, as `core.layer_rows.answer_rows` makes
    them; `fids` their feature ids): "0 building — adjacent → 2 building", the transcript's link to each."""
    if layer is None:
        return []
    names = {obj.id: f"{obj.id} {obj.label or obj.kind}" for obj in answer.objects}
    drawn = [rel for rel in answer.relations if rel.subject in names and rel.object in names]
    return [(f"{names[rel.subject]} — {rel.predicate} → {names[rel.object]}", f"{layer.id()}/{fid}")
            for rel, fid in zip(drawn, fids)]


class AskSession(EngineHeader, QuestionHold, QObject):
    """Drives an `ui.ask_dock.AskDock` on `iface`'s canvas. `engine` ("" = the configured one, "local", or
    URLs) and `authcfg` are passed to `engine_access.connect`. A question for the plugin's local engine while it
    starts or restarts waits for it (`ask_engine_wait.QuestionHold`)."""

    def __init__(self, iface, dock, engine: str = "", authcfg: str = ""):
        super().__init__(dock)
        self.iface, self.dock, self.canvas = iface, dock, iface.mapCanvas()
        self._engine, self.authcfg = engine, authcfg
        self.max_tokens = 256
        self.transport = None  # None: engine_access's default (QGIS's network stack for URLs)
        self.view: Optional[View] = None
        self.image = None
        self.view_source = None
        self.view_settings: Optional[QgsMapSettings] = None  # those of the pinned view
        self.history: List[Tuple[str, str]] = []
        self.turns: List[Turn] = []
        self.task: Optional[AskTask] = None
        self.layers: Optional[AnswerLayers] = None
        self._retired_layers: List[AnswerLayers] = []  # earlier GeoPackages (before the project was saved)
        self._where_note = ""  # where the features go, said with the first answer that has some for `layers`
        self.rectangle: Optional[DrawnRectangle] = None  # as dragged on screen, in the map's CRS of then
        self.family = engine_settings.load().family
        self._html: List[str] = []
        self._streamed = ""
        self._retry_note = ""  # the last failed attempt of the question in flight ("… retrying (2)…")
        # Streamed pieces are shown at most every 50 ms: redrawing the whole transcript for each one (thousands in a
        # long answer from a fast engine) froze QGIS (26 s for a 22,000-character answer)
        self._streaming = QTimer(self, singleShot=True, interval=STREAM_REDRAW_MS, timeout=self._show)
        self._probe = None
        self.renderer = ViewRender(self)  # the view is drawn in QGIS's render thread; the question waits here
        self.renderer.rendered.connect(self._rendered)
        self._pending: Optional[tuple] = None  # (question, task, region, source) of the view being rendered
        self._asked: Optional[tuple] = None  # (question, task, region) of the question in hand
        self._hold = None  # an ask_engine_wait.EngineWait while the question waits for the local engine
        self._reasks = 0  # times the question in hand was asked again after its local engine crashed
        self._restart_mark = 0  # the engine manager's restart_count when the question's task began
        self.dock.set_tasks(family_tasks(get_profile(self.family)) if self.family else list(ASK_TASKS))
        dock.send.clicked.connect(self.send)
        dock.stop.clicked.connect(self.stop)
        dock.closed.connect(self._cancel_render)
        dock.new_view.clicked.connect(self.new_view)
        dock.copy.clicked.connect(self.copy_answer)
        dock.export.clicked.connect(self._export_dialog)
        self.drawing = RectangleDrawing(self.canvas, dock.draw)  # Draw rectangle; it stays seen while the source
        self.drawing.drawn.connect(self._drawn)
        dock.source.currentIndexChanged.connect(self._band_visible)
        dock.visibilityChanged.connect(self._band_visible)
        dock.transcript.anchorClicked.connect(self._link)
        self.manager = engine_manager()
        self._remote_word = "not asked yet"
        self.manager.stateChanged.connect(self._engine_state)
        self.manager.stateChanged.connect(self._engine_progress)
        self.manager.settingsChanged.connect(self._settings_changed)
        dock.restart.clicked.connect(self.manager.restart)
        QgsProject.instance().cleared.connect(self._project_cleared)
        self._engine_state()
        self.refresh_family()

    # ------------------------------------------------------------ asking

    def busy(self) -> bool:
        """True while the view is being rendered or a question is being answered."""
        return self.renderer.active() or self.task is not None or self._hold is not None

    def send(self) -> None:
        """Ask the dock's question: about the conversation's view, or a new view rendered first (without
        blocking QGIS; the transcript says so, and Stop cancels it, then nothing is sent)."""
        question = self.dock.question.toPlainText().strip()
        task = self.dock.task.currentText()
        if self.busy():
            return
        try:
            if not question and task not in REGION_TASKS:
                raise ValueError("type a question")
            # The kind of view: a region's question (the selected feature, or a rectangle unless the conversation
            # is about that rectangle's image) is about the map, so a question about the rectangle next renders it.
            source = self.dock.source_key()
            if source == "selected" or (source == "rectangle" and task in REGION_TASKS
                                        and self.view_source != "rectangle"):
                source = "map"
            settings = None
            if self.view is None or source != self.view_source:
                settings = self._source_settings(source, task)
            region = None if task not in REGION_TASKS else region_ring(
                self.dock.source_key(), self.rectangle, self.canvas.mapSettings().destinationCrs(),
                self.iface.activeLayer(), settings.destinationCrs() if settings is not None else self._view_crs())
            if region is not None:
                frame = view_frame(settings) if settings is not None else self.view.frame
                check_region_in_view(self.dock.source_key(), region, frame, pinned=settings is None)
            refused = self._send_problem()
            if refused:
                self._remote_state(refused[1])
                raise ValueError(refused[0])
        except ValueError as exc:
            self._refused(str(exc))
            return
        self._html.append(f"<p><b>You ({html.escape(task)}):</b> {html.escape(question or '(the region)')}</p>")
        self._streamed, self._retry_note, self._reasks = "", "", 0
        if settings is None:
            if self._moved_since(source, task):
                self._html.append("<p><i>about the earlier view (the map has changed since): New view asks about "
                                  "the map as it is now</i></p>")
            self._ask(question, task, region)
            return
        self._pending = (question, task, region, source)
        self.dock.set_busy(True)
        self.renderer.start(settings)
        self._show()

    def _refused(self, problem: str) -> None:
        """Send found a problem before anything went out: one line in the transcript (a user who looked away from
        the message bar still reads it), the message bar and the log; the question stays in the box."""
        self._html.append(f"<p><i>{html.escape(problem)}: nothing was sent — the question is still in the box</i></p>")
        self._show()
        self.error(problem)

    def _source_settings(self, source: str, task: str) -> QgsMapSettings:
        """The map settings of the view `source` shows now; ValueError (one line) when it would be blank."""
        return source_settings(source, self.canvas.mapSettings(), self.dock.raster.currentLayer(), self.rectangle,
                               task in REGION_TASKS, engine_settings.load(), self._answer_layer_ids())

    def _answer_layer_ids(self) -> set:
        """The ids of this dock's answer layers (also those of earlier GeoPackages) and of the project's other
        answer layers (saved with the project, or made before the plugin was reloaded): never part of a view."""
        return ({i for kept in [self.layers, *self._retired_layers] if kept for i in kept.layer_ids()}
                | answer_layer_ids(QgsProject.instance()))

    def _moved_since(self, source: str, task: str) -> bool:
        """True when the source now shows another view than the pinned one (panned, turned, another layer)."""
        answers = self._answer_layer_ids()
        try:  # the answers' own layers, added to the map since, are no change of the view
            return view_key(self._source_settings(source, task), answers) != view_key(self.view_settings, answers)
        except ValueError:  # it shows nothing now
            return True

    def _rendered(self, settings: QgsMapSettings, image, errors, drawn: bool) -> None:
        """Main thread (the render job's finished()): the new view, then the question about it; a view with
        a layer that could not be read, or in which none of the layers drew a pixel (all nodata), is refused
        (a blank image would be asked about)."""
        question, task, region, source = self._pending
        self._pending = None
        problem = render_problem(errors) or (None if drawn else blank_problem("the view"))
        if problem:
            self.dock.set_busy(False)
            self._html.append(f"<p><i>{html.escape(problem)}: nothing was sent</i></p>")
            self._show()
            self.error(problem)
            return
        self.image = image
        self.view, self.view_source, self.history = View.of(settings, image), source, []
        self.view_settings = settings
        self._ask(question, task, region)

    def _cancel_render(self, wait: bool = False) -> None:
        """Stop (or the dock closed, New view, unload) while the view is rendered: the render stops and
        nothing is sent."""
        if not self.renderer.active():
            return
        self.renderer.cancel(wait)
        self._pending = None
        self.dock.set_busy(False)
        self._html.append("<p><i>stopped while rendering the view: nothing was sent</i></p>")
        self._show()

    def _ask(self, question: str, task: str, region) -> None:
        self._asked = (question, task, region)
        if self._local_starts():  # the plugin's local engine starts or restarts: sent once it is up
            self._hold_question()
            return
        self._restart_mark = self.manager.restart_count
        self.turns.append(Turn(question or "(the region)", task, view_extent=",".join(
            f"{v:.17g}" for v in self.view.extent), view_crs=self.view.frame.crs, view_rotation=self.view.rotation,
            image_size=f"{self.view.frame.width}x{self.view.frame.height}"))
        self.task = AskTask(self.view, self.history, task, question, region, self.engine, self.authcfg,
                            self.family, self.max_tokens, self.transport)
        self.task.token.connect(self._token)
        self.task.restarted.connect(self._restart_stream)
        self.task.retrying.connect(self._retrying)
        self.task.connected.connect(lambda info: self._remote_state("busy"))
        self.task.answered.connect(self._answered)
        self.task.failed.connect(self._task_failed)
        self.dock.set_busy(True)
        self._show()
        QgsApplication.taskManager().addTask(self.task)

    def _view_crs(self):
        return qgis_crs(self.view.frame.crs)

    def _token(self, piece: str) -> None:
        self._streamed += piece
        if self._retry_note:  # a retry got through
            self._retry_note = ""
            self._remote_state("busy")
        if not self._streaming.isActive():
            self._streaming.start()

    def _retrying(self, line: str) -> None:
        """An attempt failed and is retried (`ask_patience.retry_line`): said below the question until text comes."""
        self._retry_note = line
        self._remote_state("not answering, retrying…")
        self._show()

    def _restart_stream(self) -> None:
        self._streamed = ""
        self._show()

    def _show(self) -> None:
        self._streaming.stop()  # what it would show is shown now
        retrying = self._retry_note and self.task is not None and not self._streamed  # said instead of "Model:"
        streaming = (f"<p><i>{html.escape(self._retry_note)}</i></p>" if retrying else
                     f"<p><b>Model:</b> {html.escape(self._streamed)}</p>" if self.task is not None else
                     "<p><i>Rendering the view…</i></p>" if self.renderer.active() else "")
        waiting = self._waiting_note()  # the local engine starts: said below what streamed before it went down
        if waiting:
            streaming = (f"<p><b>Model:</b> {html.escape(self._streamed)}</p>" if self._streamed else "") + \
                f"<p><i>{html.escape(waiting)}</i></p>"
        self.dock.transcript.setHtml("".join(self._html) + streaming)
        bar = self.dock.transcript.verticalScrollBar()
        bar.setValue(bar.maximum())

    def _answered(self, text: str, answer, info: dict) -> None:
        """Main thread (the task's finished()): features, transcript, preview."""
        self.task = None
        self.dock.set_busy(False)
        self._remote_state("ready")
        turn = self.turns[-1]
        turn.answer, turn.model, turn.family, turn.engine = text, info["model"], info["family"], info["engine"]
        self.dock.copy.setEnabled(True)  # there is an answer to copy now
        if self.family != info["family"]:
            self.family = info["family"]
            self.dock.set_tasks(family_tasks(get_profile(self.family)))
        first = not self.history
        self.history += [("user", info["worded"]), ("assistant", text)]
        links = []
        try:
            if self.layers is not None and self.layers.project_saved():
                self._retired_layers.append(self.layers)  # its layers stay in the project, linked from the transcript
                self.layers = None
            if self.layers is None:
                self.layers = AnswerLayers()
                self._where_note = (
                    f"the project is not saved: features go to {self.layers.path} (kept; once the project is saved, "
                    "new answers go beside it)" if self.layers.unsaved else
                    f"the project is saved: features now go to {self.layers.path}" if self._retired_layers else "")
            provenance = Provenance(turn.question, turn.task, info["model"], info["family"], info["engine"], text)
            turn.time = provenance.time
            objects, relations = ask_features(answer, self.view, len(self.turns), provenance)
            ids, layer = self.layers.add(objects, relations, self._view_crs())
            if self._where_note and (ids or self.layers.added_relations[0]):  # said when the file is written
                turn.notes.append(self._where_note)
                self._where_note = ""
            # the layer's id too: an earlier GeoPackage (before the project was saved) has its own feature ids
            links = [(f"{obj.id} {obj.label or obj.kind}", f"{layer.id()}/{fid}")
                     for obj, fid in zip(answer.objects, ids)]
            links += relation_links(answer, *self.layers.added_relations)
            if ids and asks_how_many(turn.question):
                count, area = self.layers.total_area(layer, ids)
                turn.notes.append(f"{count} object{'' if count == 1 else 's'}, {area} in all (ellipsoidal)")
        except OSError as exc:
            self.error(str(exc))
        if info.get("notice"):
            turn.notes.append(info["notice"])
        boxed = draw_boxes(self.image, answer)
        turn.image_png = png_bytes(boxed) if first else b""
        self.dock.show_preview(QPixmap.fromImage(boxed))
        items = "".join(f'<li><a href="geovlm:{fid}">{html.escape(name)}</a></li>' for name, fid in links)
        notes = "".join(f"<li><i>{html.escape(n)}</i></li>" for n in turn.notes)
        self._html.append(f"<p><b>Model:</b> {html.escape(answer.plain_text or text)}</p>"
                          + (f"<ul>{items}{notes}</ul>" if items or notes else ""))
        self._show()

    def _failed(self, message: str) -> None:
        """Main thread: the question got no answer. A conversation that never got one does not keep its
        image: the next Send renders the view as it is then (a follow-up of an answer keeps it)."""
        refusal = getattr(self.task, "refusal", "")  # the engine is up but refused the request: not "down"
        self.task = None
        if not self.history:
            self.view, self.view_source, self.view_settings, self.image = None, None, None, None
        self.dock.set_busy(False)
        if self._streamed:  # read as it came: it stays, but cut short it is not parsed, nor placed on the map
            self._html.append(f"<p><b>Model (cut short, not placed on the map):</b> {html.escape(self._streamed)}</p>")
        kept = "" if message == "stopped" else " — the question is still in the box: Send asks it again"
        self._html.append(f"<p><i>{html.escape(message + kept)}</i></p>")
        self._show()
        self._remote_state("ready" if message == "stopped" else refusal or f"down — {message}")
        if message != "stopped":
            self.error(message)

    def stop(self) -> None:
        """Stop the render in progress (nothing is sent), the wait for the local engine, or the request in flight."""
        self._cancel_render()
        self._stop_hold()
        if self.task is not None:
            self.task.cancel()

    def new_view(self) -> None:
        self._cancel_render()
        self.view, self.view_source, self.history = None, None, []
        self._html.append("<hr><p><i>New view: the next question renders the map again.</i></p>")
        self._show()

    def _project_cleared(self) -> None:
        """A new project (New in the Project menu), or another one opened: the layers of the view and of the
        answers are deleted. The question in flight stops; the next one is about the new project's map, and its
        answers go where that project's go."""
        self.stop()
        self.view, self.view_source, self.view_settings, self.image, self.history = None, None, None, None, []
        self.layers, self._retired_layers = None, []
        self.dock.clear_preview()  # it showed the other project's map
        self._html.append("<hr><p><i>Another project: the next question renders its map.</i></p>")
        self._show()

    def copy_answer(self) -> None:
        """Put the last answer's raw text (as the model wrote it: what `geovlm parse` reads) on the clipboard."""
        answered = [t for t in self.turns if t.answer]
        if answered:
            QGuiApplication.clipboard().setText(answered[-1].answer)

    def export(self, path: str) -> str:
        """Write the conversation as Markdown (.md) or HTML (.html); returns the path."""
        writer = to_html if path.lower().endswith((".html", ".htm")) else to_markdown
        return str(writer([t for t in self.turns if t.answer], path))

    def _export_dialog(self) -> None:
        path, chosen = QFileDialog.getSaveFileName(self.dock, "Export the conversation", "",
                                                   "Markdown (*.md);;HTML (*.html)")
        if path and not path.lower().endswith((".md", ".html", ".htm")):  # a name typed without its suffix:
            path += ".html" if chosen.startswith("HTML") else ".md"  # the format chosen, not Markdown always
        if path:
            try:
                self.iface.messageBar().pushSuccess("GeoVLM", f"conversation written to {self.export(path)}")
            except OSError as exc:
                self.error(f"could not export: {exc}")

    # ------------------------------------------------------------ map interaction

    def _drawn(self, rectangle: DrawnRectangle) -> None:
        self.rectangle = rectangle  # in the map's CRS of then: the project's CRS may change before it is asked about
        if self.view_source == "rectangle":  # the conversation was about the old rectangle's image
            self.view, self.view_source = None, None
        self._band_visible()

    def _band_visible(self, *_) -> None:
        self.drawing.band.set_visible(self.dock.isVisible() and self.dock.source_key() == "rectangle")

    def _link(self, url) -> None:
        """A transcript link, `geovlm:<layer id>/<feature id>`: pan the map to that feature and flash it; one
        line when its layer was removed from the project."""
        layer_id, _, fid = url.toString().split(":", 1)[1].rpartition("/")
        layer = QgsProject.instance().mapLayer(layer_id)
        if layer is None:
            self.error("the layer of that answer is no longer in the project: add its GeoPackage again to see it")
            return
        self.canvas.panToFeatureIds(layer, [int(fid)], False)
        self.canvas.flashFeatureIds(layer, [int(fid)])

    def error(self, message: str) -> None:
        QgsMessageLog.logMessage(message, LOG_TAG, Qgis.MessageLevel.Warning)
        self.iface.messageBar().pushMessage("GeoVLM", message, Qgis.MessageLevel.Warning, 8)

    def shutdown(self, wait_ms: int = 5000) -> None:
        """Unload: cancel a request in flight and wait for its worker; nothing keeps running."""
        self._streaming.stop()
        self._stop_probe(wait_ms)
        self._cancel_render(wait=True)
        self._stop_hold(say=False)
        task, self.task = self.task, None
        if task is not None:
            for signal in (task.token, task.restarted, task.retrying, task.connected, task.answered, task.failed):
                try:
                    signal.disconnect()
                except TypeError:
                    pass
            task.cancel()
            task.waitForFinished(wait_ms)
        for signal, slot in ((self.manager.stateChanged, self._engine_state),
                             (self.manager.stateChanged, self._engine_progress),
                             (self.manager.settingsChanged, self._settings_changed),
                             (QgsProject.instance().cleared, self._project_cleared)):
            try:
                signal.disconnect(slot)
            except TypeError:
                pass
        self.drawing.remove()
