"""A question asked in the dock while the plugin's own local engine starts or restarts (its model loads) waits
for it, instead of spending the dock's 15 s of retries (`ask_patience`) on an engine the plugin knows is coming.

The first question for a local engine that does not run starts it in the background (`EngineManager.start_later`,
a QgsTask of its own) and waits for it like any other question, so Stop means the question, not the engine: Stop
during that start (or during a restart after a crash) ends the wait and nothing is sent, while the engine goes on
starting ("starting…" in the header, then "ready"; never "down" with Restart showing), since the next question
needs it and it is shared by everything in QGIS; it stops when the plugin unloads or QGIS quits.

The wait follows the engine manager's `stateChanged` signal (`engine_manager.EngineManager`: the launcher tells
it when a crashed engine is started again and when it answers /health), on the main thread: no polling, no
worker held. It ends when the engine is up (`ready`), when its start fails or the launcher gives it up
(`failed`, one line, at once), or when the launcher's own bound has passed (`EngineWait`: each start up to the
engine's start timeout, Settings ▸ Options ▸ GeoVLM, and as many restarts as the launcher has left), and
`cancel()` (Stop) ends it silently. Remote engines are not waited for: nothing tells the plugin that one is
loading.
"""
from __future__ import annotations

import math
import time
from typing import Optional

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


DESCRIBE_S = 10.0  # beyond the launcher's bound: the manager asks the engine that answered /health what it serves
# (its /v1/models, milliseconds on an engine that is up) before it says "ready"


def _seconds(value: float) -> str:
    return f"{round(value, 1):g}"


class EngineWait(QObject):
    """Waits for `manager`'s local engine to be up. `ready()` once it is (or once nobody starts it any more:
    stopped, or the settings changed, so the question itself starts it as the first question does);
    `failed(line)` when its start fails or its launcher gives it up ("the local engine did not start: <its last
    error>", at once), or when it is not up by the launcher's own bound (`EngineManager.give_up_by`: the start
    under way and each restart the launcher has left, each up to the start timeout, plus DESCRIBE_S). The wait
    never ends while the launcher still starts the engine: each restart moves that bound on. While no bound is
    known (the manager says "starting" before its launcher has begun), `timeout_s` (default: the settings' start
    timeout) after the wait began, then the launcher's bound if one is known by then. Each signal at most once,
    then the wait is over; `cancel()` ends it without either. Main thread."""

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
        self._since = 0.0
        self._bound: Optional[float] = None  # the launcher's last known bound (time.monotonic())

    def start(self) -> None:
        """Begin waiting (the manager's state is read now too: an engine already up is `ready` at once, queued)."""
        self._active = True
        self._since = time.monotonic()
        self.manager.stateChanged.connect(self._state)
        self._arm()
        QTimer.singleShot(0, self._state)

    def active(self) -> bool:
        return self._active

    def deadline(self) -> float:
        """When the wait ends (`time.monotonic()`) unless the engine is up, or given up, before: the launcher's
        bound (the last one known) plus DESCRIBE_S, or, while none is known, `timeout_s` after the wait began."""
        bound = self.manager.give_up_by()
        if bound is not None:
            self._bound = bound
        return self._bound + DESCRIBE_S if self._bound is not None else self._since + self.timeout_s

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

    def _arm(self) -> None:
        self._timer.start(max(0, math.ceil((self.deadline() - time.monotonic()) * 1000)))

    def _state(self, *_) -> None:
        if not self._active:
            return
        if engine_coming(self.manager):
            self._arm()  # a restart began: the launcher's bound moved on
            return
        state, detail = self.manager.state, self.manager.detail
        self.cancel()
        if state == "down":
            self.failed.emit(f"the local engine did not start: {last_line(detail) or 'no reason given'}")
        else:
            self.ready.emit()

    def _expired(self) -> None:
        if not self._active:
            return
        deadline = self.deadline()
        if deadline > time.monotonic() and engine_coming(self.manager):  # the launcher began meanwhile
            self._arm()
            return
        self.cancel()
        why = ("as long as its launcher starts and restarts it, up to its start timeout each time, "
               f"{_seconds(self.timeout_s)} s" if self._bound is not None else "its start timeout")
        self.failed.emit(f"the local engine was not ready within {_seconds(deadline - self._since)} s ({why}, "
                         f"{engine_settings.OPTIONS_PATH})")


MAX_REASKS = 3  # a question whose local engine crashed under it is asked again at most this often (the launcher
# itself restarts a crashing engine 3 times in a row, then gives it up: `engine.launcher.LocalEngine`)


class QuestionHold:
    """Mixed into `ask_session.AskSession` (which holds `dock`, `manager`, `task`, `turns`, `_html`, `_streamed`,
    `_retry_note`, `_asked` = (question, task, region) of the question in hand, `_hold`, `_reasks` and
    `_restart_mark` (the manager's `restart_count` when the question's task began), and has
    `_ask`, `_failed`, `_show` and `_target`): a question for the local engine while it starts or restarts waits
    for it (`EngineWait`) and is sent once it is up (one for a local engine that does not run starts it first:
    `_local_starts`), and one whose engine crashed under it is asked again once the launcher has restarted it;
    Stop ends the wait, nothing sent, and the engine goes on starting."""

    def _local_coming(self) -> bool:
        """The dock's engine is the plugin's local one, on its way up (`engine_coming`)."""
        return self._target().lower() == "local" and engine_coming(self.manager)

    def _local_starts(self) -> bool:
        """The dock's engine is the plugin's local one and it is on its way up, or does not run with the current
        settings and is started now in the background (`EngineManager.start_later`): the question waits for it."""
        return self._local_coming() or (self._target().lower() == "local" and self.manager.start_later())

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
        """Stop (or unload): the held question is not sent; it stays in the box. The engine's start or restart
        goes on (unload stops it: `engine_manager.shutdown_engine`)."""
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
        """The transcript's line while a question waits for the local engine to come up ("" when none does): what
        the engine does, and how long the launcher may take: each start up to the start timeout, and the restarts
        it has left should this one fail ("… (at most 600 s, its start timeout; 2 more restarts at most if this
        one fails)")."""
        if (self._hold is None and self.task is None) or not self._local_coming():
            return ""
        timeout = self._hold.timeout_s if self._hold is not None else engine_settings.load().start_timeout_s
        left = self.manager.restarts_left()
        more = f"; {left} more restart{'s' if left != 1 else ''} at most if this one fails" if left else ""
        return (f"local engine {self.manager.starting_text()}… the question is sent as soon as it is ready (at "
                f"most {timeout:g} s, its start timeout{more})")
