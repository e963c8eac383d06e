"""A question asked in the dock while the plugin's own local engine starts or restarts (its model loads) waits
for it, instead of spending the dock's 15 s of retries (`ask_patience`) on an engine the plugin knows is coming.

The wait follows the engine manager's `stateChanged` signal (`engine_manager.EngineManager`: the launcher tells
it when a crashed engine is started again and when it answers /health), on the main thread: no polling, no
worker held. It ends when the engine is up (`ready`), when its start fails (`failed`, one line), or after the
engine's own start timeout (Settings ▸ Options ▸ GeoVLM: how long the launcher waits for /health), and
`cancel()` (Stop) ends it silently. Remote engines are not waited for: nothing tells the plugin that one is
loading.
"""
from __future__ import annotations

from qgis.PyQt.QtCore import QObject, QTimer, pyqtSignal

from . import settings as engine_settings
from .engine_manager import EngineManager, last_line

UP_STATES = ("ready", "busy")


def engine_coming(manager: EngineManager) -> bool:
    """True when the local engine is on its way up: "starting" (a start, or the launcher's restart after a
    crash), or said up while its process has just died (the launcher's watcher restarts it within a quarter
    of a second, or gives it up: "down")."""
    return manager.state == "starting" or (manager.state in UP_STATES and manager.engine is not None
                                           and not manager.running())


class EngineWait(QObject):
    """Waits for `manager`'s local engine to be up. `ready()` once it is (or once nobody starts it any more:
    stopped, or the settings changed, so the question itself starts it as the first question does);
    `failed(line)` when its start fails ("the local engine did not start: <its last error>") or it is not up
    after `timeout_s` seconds (default: the settings' start timeout). Each signal at most once, then the wait
    is over; `cancel()` ends it without either. Main thread."""

    ready = pyqtSignal()
    failed = pyqtSignal(str)

    def __init__(self, manager: EngineManager, timeout_s: float = 0.0, parent=None):
        super().__init__(parent)
        self.manager = manager
        self.timeout_s = timeout_s or engine_settings.load().start_timeout_s
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(self._expired)
        self._active = False

    def start(self) -> None:
        """Begin waiting (the manager's state is read now too: an engine already up is `ready` at once, queued)."""
        self._active = True
        self.manager.stateChanged.connect(self._state)
        self._timer.start(int(self.timeout_s * 1000))
        QTimer.singleShot(0, self._state)

    def active(self) -> bool:
        return self._active

    def cancel(self) -> None:
        """Stop waiting; neither signal is sent."""
        if not self._active:
            return
        self._active = False
        self._timer.stop()
        try:
            self.manager.stateChanged.disconnect(self._state)
        except TypeError:
            pass

    def _state(self, *_) -> None:
        if not self._active or engine_coming(self.manager):
            return
        state, detail = self.manager.state, self.manager.detail
        self.cancel()
        if state == "down":
            self.failed.emit(f"the local engine did not start: {last_line(detail) or 'no reason given'}")
        else:
            self.ready.emit()

    def _expired(self) -> None:
        if self._active:
            self.cancel()
            self.failed.emit(f"the local engine was not ready within {self.timeout_s:g} s (its start timeout, "
                             f"{engine_settings.OPTIONS_PATH})")


MAX_REASKS = 3  # a question whose local engine crashed under it is asked again at most this often (the launcher
# itself restarts a crashing engine 3 times in a row, then gives it up: `engine.launcher.LocalEngine`)


class QuestionHold:
    """Mixed into `ask_session.AskSession` (which holds `dock`, `manager`, `task`, `turns`, `_html`, `_streamed`,
    `_retry_note`, `_asked` = (question, task, region) of the question in hand, `_hold`, `_reasks` and
    `_restart_mark` (the manager's `restart_count` when the question's task began), and has
    `_ask`, `_failed`, `_show` and `_target`): a question for the local engine while it starts or restarts waits
    for it (`EngineWait`) and is sent once it is up, and one whose engine crashed under it is asked again once
    the launcher has restarted it; Stop ends the wait, nothing sent."""

    def _local_coming(self) -> bool:
        """The dock's engine is the plugin's local one, on its way up (`engine_coming`)."""
        return self._target().lower() == "local" and engine_coming(self.manager)

    def _hold_question(self) -> None:
        """Main thread: hold the question in hand (`_asked`) until the local engine is up."""
        self._hold = EngineWait(self.manager, parent=self)
        self._hold.ready.connect(self._engine_up)
        self._hold.failed.connect(self._engine_failed)
        self._hold.start()
        self.dock.set_busy(True)
        self._show()

    def _engine_up(self) -> None:
        self._hold = None
        self._ask(*self._asked)

    def _engine_failed(self, message: str) -> None:
        self._hold = None
        self._failed(message)

    def _engine_moved(self) -> None:
        """The Options were saved, or `engine` set, while a question waits for the local engine: when the dock's
        engine is another one now (or the local one is no longer coming), the question goes at once."""
        if self._hold is not None and not self._local_coming():
            self._hold.cancel()
            self._engine_up()

    def _stop_hold(self, say: bool = True) -> None:
        """Stop (or unload): the held question is not sent; it stays in the box."""
        hold, self._hold = self._hold, None
        if hold is None:
            return
        hold.cancel()
        if say:
            self.dock.set_busy(False)
            self._html.append("<p><i>stopped while waiting for the local engine to start: nothing was sent</i></p>")
            self._show()

    def _task_failed(self, message: str) -> None:
        """The question's task failed: when the local engine went down under it and is being restarted (the
        launcher restarts a crashed engine), the question is asked again once the engine is up (at most
        MAX_REASKS times), as the same turn; so is one whose engine was restarted while it ran and is up again
        already (its retries ran out just before); any other failure is said (`_failed`)."""
        up_again = self.manager.restart_count != self._restart_mark and self.manager.state in UP_STATES
        local = self._target().lower() == "local"
        if (message != "stopped" and local and (up_again or engine_coming(self.manager))
                and self._reasks < MAX_REASKS):
            self._reasks += 1
            self.task = None
            self.turns.pop()  # _ask makes the turn again
            self._streamed, self._retry_note = "", ""
            self._ask(*self._asked)
            return
        self._failed(message)

    def _engine_progress(self, *_) -> None:
        """The local engine's state changed: the transcript's waiting line follows it."""
        if self.task is not None or self._hold is not None:
            self._show()

    def _waiting_note(self) -> str:
        """The transcript's line while a question waits for the local engine to come up ("" when none does)."""
        if (self._hold is None and self.task is None) or not self._local_coming():
            return ""
        timeout = self._hold.timeout_s if self._hold is not None else engine_settings.load().start_timeout_s
        return (f"local engine {self.manager.starting_text()}… the question is sent as soon as it is ready (at "
                f"most {timeout:g} s, its start timeout)")
