"""One question to the engine as a `QgsTask`: the request runs in a worker thread (no layer or canvas access
there: the view was rendered and copied on the main thread), the answer streams out through a Qt signal, and
`finished()` (main thread) hands the parsed answer to whoever adds the features."""
from __future__ import annotations

import traceback
from typing import List, Optional, Tuple

from qgis.core import Qgis, QgsMessageLog, QgsTask
from qgis.PyQt.QtCore import pyqtSignal

from ..core.client import EngineError
from ..core.parsing import referred_phrase
from ..core.transport import Cancelled, CancelToken
from .ask_map import View, region_question, worded
from .ask_patience import INTERACTIVE_RETRY_S, PatientTransport, retry_line
from .engine_access import EngineRefused, EngineUnavailable, connect
from .image_source import QImageSource

LOG_TAG = "GeoVLM"


class EngineTask(QgsTask):
    """A cancellable `QgsTask` that reaches an engine: `engine`, `authcfg`, `family` and `transport` as
    `engine_access.connect` takes them (`open_engine()` connects with them). `cancel()` also aborts the
    request in flight through `cancel_token` (`core.transport.CancelToken`), within a fraction of a second."""

    def __init__(self, description: str, engine: str = "", authcfg: str = "", family: str = "", transport=None):
        # Silent: the dock says how each question ended; QGIS would add a "Task complete" notification for each
        super().__init__(description, QgsTask.Flag.CanCancel | QgsTask.Flag.Silent)
        self.engine, self.authcfg, self.family = engine, authcfg, family
        self.transport = transport  # None: engine_access's (QGIS's network stack for URLs)
        self.cancel_token = CancelToken()

    def cancel(self):
        self.cancel_token.cancel()
        super().cancel()

    def open_engine(self, wrap=None):
        """`engine_access.connect(...)` for this task (a context manager; raises EngineUnavailable); `wrap` as
        `connect` takes it."""
        return connect(self.engine, self.authcfg, self.family, cancel=self.cancel_token, transport=self.transport,
                       wrap=wrap)


class AskTask(EngineTask):
    """Ask `question` with the user task `task` (ask, describe, find, identify, scene graph) about `view`,
    after the conversation `history` [("user", q1), ("assistant", a1), ...] whose user turns are already in
    the family's words (the image goes with the first turn). `region`: for a region task, the region's
    vertices in the view's CRS, written in the family's syntax once the engine says which family it is.

    `engine`, `authcfg`, `family` as `engine_access.connect` takes them. Signals (delivered queued to the GUI
    thread): `token(str)` per streamed piece, `restarted()` when a broken stream is sent again (clear what was
    shown), `retrying(line)` at each failed attempt (`ask_patience.retry_line`: the engine's address, the cause, the
    attempt about to be made), `connected(info)` once the engine is reached (model, family, engine, notice),
    `answered(text, answer, info)` on success (info["worded"]: the question as sent, for the history),
    `failed(message)` with one line, never a traceback (`refusal` then says, in a few words, what the engine refused
    when it is up and refused the request: `engine_access.EngineRefused`). The engine is waited for as a person at
    the dock can wait (`ask_patience`: retries for INTERACTIVE_RETRY_S, REPLY_WAIT_S for a reply to begin), not as a
    bulk job. `cancel()` aborts the request within a fraction of a second; then `failed("stopped")`. The QgsTask
    itself ends completed, not terminated, after a stop and after a failure `failed` reports (the engine down, given
    up on): QGIS would say "Task failed" beside the dock's own line for the same failure."""

    token = pyqtSignal(str)
    restarted = pyqtSignal()
    retrying = pyqtSignal(str)
    connected = pyqtSignal(dict)
    answered = pyqtSignal(str, object, dict)
    failed = pyqtSignal(str)

    def __init__(self, view: View, history: List[Tuple[str, str]], task: str, question: str,
                 region: Optional[List[Tuple[float, float]]] = None, engine: str = "", authcfg: str = "",
                 family: str = "", max_tokens: int = 256, transport=None):
        super().__init__("GeoVLM: ask the map", engine, authcfg, family, transport)
        self.view, self.history, self.task, self.question, self.region = view, list(history), task, question, region
        self.max_tokens = max_tokens
        self.text, self.answer, self.info = "", None, {}
        self.error: Optional[str] = None
        self.refusal = ""  # the engine is up but refused the request (`EngineRefused.word`): the dock's state word

    def run(self) -> bool:
        try:
            with self.open_engine(self._patient) as connection:
                self.info = dict(connection.describe(), notice=connection.notice)
                self.connected.emit(self.info)
                profile = connection.profile
                text = region_question(profile, self.view.frame, self.region) if self.region else self.question
                self.info["worded"] = worded(profile, self.task, text)
                turns = self.history + [("user", self.info["worded"])]
                size = (self.view.frame.width, self.view.frame.height)
                self.text, self.answer = connection.client.ask(
                    QImageSource(self.view.image), size, turns, profile, on_token=self.token.emit,
                    on_restart=self.restarted.emit, cancel=self.cancel_token, max_tokens=self.max_tokens,
                    deadline_s=INTERACTIVE_RETRY_S)
            phrase = referred_phrase(self.info["worded"])  # a referring question's boxes are of what it names
            for obj in self.answer.objects:  # GeoChat and EarthDial answer it with boxes only: named as parse does
                obj.label = obj.label or phrase
            return True
        except Cancelled:  # the user's Stop is no failure: the task ends as completed ("Task failed" otherwise)
            self.error = "stopped"
            return True
        except (EngineUnavailable, EngineError, ValueError) as exc:
            self.error = " ".join(str(exc).split()) or type(exc).__name__
            self.refusal = exc.word if isinstance(exc, EngineRefused) else ""
        except Exception as exc:  # a worker must not raise into the task manager: one line, logged
            self.error = f"unexpected error: {type(exc).__name__}: {' '.join(str(exc).split())}"
            QgsMessageLog.logMessage(traceback.format_exc(), LOG_TAG, Qgis.MessageLevel.Critical)
        # A failure handled here (the engine down, given up on, an error) is said once, by whoever takes `failed`:
        # the task itself ends completed, or QGIS would say "Task failed" beside that line, for the same failure.
        return True

    def _patient(self, transport):
        """The connection's transport as a person at the dock waits on it (`ask_patience.PatientTransport`)."""
        return PatientTransport(transport, lambda url, reason, failures: self.retrying.emit(
            retry_line(url, reason, failures + 1)))

    def finished(self, result: bool) -> None:
        """Main thread."""
        if result and self.error is None:
            self.answered.emit(self.text, self.answer, self.info)
            return
        # said (message bar and GeoVLM log) by the dock that takes `failed`: logged here too, it read twice
        self.failed.emit(self.error or ("stopped" if self.isCanceled() else "the request failed"))


class FamilyProbe(EngineTask):
    """Reads which model family an engine serves (its /v1/models), so the dock offers only that family's
    tasks before the first question. `found(family)` on success (GUI thread); failures stay silent here
    (the question itself reports them): the task ends completed, or QGIS would say "Task failed" for it."""

    found = pyqtSignal(str)

    def __init__(self, engine: str = "", authcfg: str = "", family: str = "", transport=None):
        super().__init__("GeoVLM: which model family", engine, authcfg, family, transport)
        self.result_family = ""

    def run(self) -> bool:
        try:
            with self.open_engine() as connection:
                self.result_family = connection.profile.name
            return True
        except Exception:  # any failure: the dock keeps the tasks it shows  # noqa: BLE001
            self.result_family = ""
        return True

    def finished(self, result: bool) -> None:
        if result and self.result_family:
            self.found.emit(self.result_family)
