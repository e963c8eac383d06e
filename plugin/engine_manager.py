"""The plugin's local engine: one `engine.launcher.LocalEngine` per QGIS process, with a state the GUI shows.

`EngineManager` (get it with `engine_manager()`) starts the engine on demand from any thread, shares it
between every caller in the process, tells its state through `stateChanged(state, detail)` (delivered queued
to receivers in the GUI thread) and stops it at plugin unload (`shutdown`) or interpreter exit (the launcher's
own atexit hook). States:

- "not_set_up": no engine Python (neither configured nor made by "Set up the local engine…");
- "stopped": set up, not running (it starts on the first request);
- "starting": the launcher is waiting for /health (the model loads): after a start, `detail` "loading the model:
  <model folder or demo model>"; after a crash, as the launcher starts it again, "<how it ended>; restart 1 of 3;
  loading the model: ..." (`starting_text` words either for a person);
- "ready": running; `model` and `device` say what it serves;
- "busy": running, with requests in flight;
- "down": the start failed or the engine crashed more often than the launcher restarts it; `detail` is the
  engine's last error line.
"""
from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass
from typing import Optional, Tuple

from qgis.core import Qgis, QgsMessageLog, QgsTask
from qgis.PyQt.QtCore import QCoreApplication, QObject, QThread, pyqtSignal

from ..core.client import EngineClient, EngineError
from ..core.transport import CancelToken
from ..engine.launcher import EngineStartError, LocalEngine
from . import settings as engine_settings

LOG_TAG = "GeoVLM"
STATES = ("not_set_up", "stopped", "starting", "ready", "busy", "down")
STATE_WORDS = {"not_set_up": "not set up", "stopped": "stopped, starts on the first question",
               "starting": "starting…", "ready": "ready", "busy": "busy", "down": "down"}


def state_text(state: str, detail: str = "") -> str:
    """The local engine's `state` (one of STATES) in words, then ": `detail`": the one text the Options page and
    the Ask dock show. While the engine would run from the set-up's venv (no engine Python named in the Options),
    "not_set_up" and "stopped" are the set-up's own words (`engine_setup.setup_text`, as the set-up dialog says
    them: "not set up", "an unfinished set-up (cancelled or failed): Repair finishes it", ...), "stopped" adding
    that it starts on the first question; while a set-up runs, what it does ("being set up…": `running_text`).
    "starting" with its detail reads as `starting_words` says it, then "…"."""
    if state == "starting" and detail:
        return starting_words(detail) + "…"
    words = STATE_WORDS.get(state, state)
    if state in ("not_set_up", "stopped") and not engine_settings.load().python:
        from .engine_setup import running_text, setup_text

        words = running_text() or setup_text() + ("; starts on the first question" if state == "stopped" else "")
    return f"{words}: {detail}" if detail else words


@dataclass(frozen=True)
class LocalConfig:
    """What a local engine is started with; a change restarts it on the next request."""

    python: str
    model_dir: str
    family: str
    start_timeout_s: float


def starting_words(detail: str) -> str:
    """A "starting" state's `detail` ("loading the model: X", or after a crash "was killed by signal 9; restart 1
    of 3; loading the model: X") for a person: "starting (loading the model: X)" or "restarting: it was killed
    by signal 9; restart 1 of 3 (loading the model: X)"."""
    head, _, model = detail.rpartition("; ")
    if not head:
        return f"starting ({model})" if model else "starting"
    return f"restarting: it {head} ({model})"


def loading(config: Optional[LocalConfig]) -> str:
    """What a starting engine loads, in words: "loading the model: <model folder>" or "...: demo model"."""
    return f"loading the model: {(config.model_dir if config else '') or 'demo model'}"


def last_line(text: str) -> str:
    """The last non-empty line of an engine's output or error (what one-line messages quote)."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[-1] if lines else str(text).strip()


class EngineManager(QObject):
    """Holds the process's local engine. All methods are safe from any thread; `start` blocks (call it from
    a worker thread or a `QgsTask`), `restart` does not."""

    stateChanged = pyqtSignal(str, str)  # noqa: N815 (Qt's naming): state, detail
    settingsChanged = pyqtSignal()  # noqa: N815 (Qt's naming): the engine settings were saved (Options)

    def __init__(self, parent=None):
        super().__init__(parent)
        self._lock = threading.RLock()
        self._start_lock = threading.Lock()
        self._engine: Optional[LocalEngine] = None
        self._config: Optional[LocalConfig] = None
        self._inflight = 0
        self._clients = weakref.WeakSet()  # clients of the local engine, told at once when it is given up
        self.state = "stopped"
        self.detail = ""
        self.model = ""
        self.device = ""
        self.stand_in = False
        self.restart_count = 0  # the launcher's restarts of a crashed engine in this process, all engines together
        self._task: Optional[QgsTask] = None

    # ------------------------------------------------------------ state

    def _set(self, state: str, detail: str = "", force: bool = False) -> None:
        with self._lock:
            if (state, detail) == (self.state, self.detail) and not force:
                return
            self.state, self.detail = state, detail
        self.stateChanged.emit(state, detail)

    def refresh(self) -> str:
        """Re-derive the idle state from the settings ("not_set_up" or "stopped") unless an engine runs; told to
        `stateChanged` even when it is the same state, since the set-up's words (`state_text`) may have changed
        (a set-up cancelled, repaired or removed meanwhile)."""
        with self._lock:
            if self._engine is not None and self._engine.running():
                return self.state
        self._set("stopped" if engine_settings.engine_python() else "not_set_up", force=True)
        return self.state

    def settings_saved(self) -> None:
        """Call after `settings.save`: re-derive the idle state and tell `settingsChanged` (the dock's header
        and task list follow the new settings)."""
        self.refresh()
        self.settingsChanged.emit()

    def config_from_settings(self) -> LocalConfig:
        value = engine_settings.load()
        return LocalConfig(engine_settings.engine_python(value), value.model_dir, value.family,
                           value.start_timeout_s)

    # ------------------------------------------------------------ engine

    def start(self, config: Optional[LocalConfig] = None, cancel: Optional[CancelToken] = None) -> Tuple[str, str]:
        """Start the engine (or reuse the running one with the same config); returns (url, api_key).

        Blocks until /health answers (minutes on a first start that prepares the demo model). Raises
        `EngineStartError` with the engine's own output when it does not come up ("down"), `RuntimeError` when no
        engine Python is set up. A cancelled `cancel` stops a start in progress, as `stop` does: then the state is
        "stopped" again (it starts on the next request), not "down", and `EngineStartError` is raised."""
        config = config or self.config_from_settings()
        if not config.python:
            self._set("not_set_up")
            raise RuntimeError("the local engine is not set up")
        with self._start_lock:
            with self._lock:
                engine = self._engine
                if engine is not None and engine.running() and self._config == config:
                    return engine.url, engine.api_key
            if engine is not None:
                engine.stop()
            engine = LocalEngine(
                python=config.python, model=config.model_dir or None, family=config.family or None,
                start_timeout=config.start_timeout_s, on_down=self._on_down, on_restart=self._on_restart,
                on_restarted=self._on_restarted,
            )
            with self._lock:
                self._engine, self._config = engine, config
            self._set("starting", loading(config))
            remove = cancel.on_cancel(engine.stop) if cancel is not None else (lambda: None)
            try:
                url = engine.start()
            except EngineStartError as exc:
                with self._lock:
                    stopped = (cancel is not None and cancel.cancelled) or self._engine is not engine
                    if stopped and self._engine is engine:
                        self._engine, self._config = None, None
                if stopped:  # cancelled, or stopped (`stop`, unload): not down, it starts on the next request
                    self.refresh()
                    raise
                self._set("down", last_line(exc))
                QgsMessageLog.logMessage(f"the local engine did not start: {exc}", LOG_TAG, Qgis.MessageLevel.Critical)
                raise
            finally:
                remove()
            self._describe(url, engine.api_key)
            QgsMessageLog.logMessage(f"local engine ready at {url}: {self.model} on {self.device}", LOG_TAG,
                                     Qgis.MessageLevel.Info)
            return url, engine.api_key

    def _describe(self, url: str, key: str) -> None:
        try:
            [entry] = EngineClient(url, api_key=key, attempts=3).models()["data"][:1]
        except (EngineError, ValueError, KeyError) as exc:
            self._set("down", f"the engine at {url} does not list its model: {exc}")
            return
        info = entry.get("geovlm") or {}
        with self._lock:
            self.model = str(entry.get("id") or "")
            self.device = str(info.get("device") or "")
            self.stand_in = bool(info.get("random_stand_in"))
        self._set("busy" if self._inflight else "ready", self.summary())

    def summary(self) -> str:
        """"<model> on <device>" (and that the demo model's answers are noise)."""
        text = f"{self.model} on {self.device or 'an unknown device'}"
        return text + (" (demo model: a random stand-in, its answers are noise)" if self.stand_in else "")

    def watch(self, client: EngineClient) -> None:
        """Tell `client` at once (`EngineClient.engine_down`) when the launcher gives up on the local engine, so
        its requests stop retrying and fail with the reason instead of waiting out their retry window."""
        with self._lock:
            self._clients.add(client)

    def _on_down(self, error: Optional[str]) -> None:
        reason = last_line(error or "the local engine stopped")
        with self._lock:
            clients = list(self._clients)
        for client in clients:
            client.engine_down(f"the local engine is down: {reason}")
        self._set("down", reason)
        QgsMessageLog.logMessage(f"the local engine is down: {error}", LOG_TAG, Qgis.MessageLevel.Critical)

    def _on_restart(self, line: str) -> None:
        """The launcher's watcher starts a crashed engine again (`line`: "was killed by signal 9; restart 1 of
        3"): "starting" until `_on_restarted` or `_on_down`."""
        with self._lock:
            config = self._config
            self.restart_count += 1
        self._set("starting", f"{line}; {loading(config)}")
        QgsMessageLog.logMessage(f"the local engine {line}", LOG_TAG, Qgis.MessageLevel.Warning)

    def _on_restarted(self) -> None:
        """The restarted engine answers /health: what it serves, then "ready" (or "busy")."""
        with self._lock:
            engine = self._engine
        if engine is not None and engine.url:
            self._describe(engine.url, engine.api_key)

    def start_later(self) -> bool:
        """Start the engine with the current settings in a `QgsTask` (the caller does not wait; `stateChanged`
        tells how it goes), unless it runs with them already. "starting" is said at once, so a caller that waits
        for it (`ask_engine_wait.EngineWait`) waits from now. A start that fails reads "down" with its last
        error line; `shutdown` (unload) stops it. Returns whether a start is under way now (False: the engine
        runs with these settings, or no engine Python is set up: the request itself says so)."""
        config = self.config_from_settings()
        with self._lock:
            if self.state == "starting":
                return True
            if not config.python or (self._engine is not None and self._engine.running() and self._config == config):
                return False
            if self._task is not None:  # a restart is under way: it stops the engine, then starts it
                return True

            def run(task):
                if task.isCanceled():  # unloaded before it ran: no engine
                    return False
                try:
                    self.start(config)
                except RuntimeError:  # EngineStartError: said by the state ("down", or "stopped" when stopped), logged
                    return False
                return True

            # Silent: the dock, the Options page and the log say how the start went (QGIS would add "Task
            # complete" or "Task failed" notifications beside them)
            task = self._task = QgsTask.fromFunction(
                "Start the GeoVLM engine", run, on_finished=lambda exc, _result=None: self._started(task, exc),
                flags=QgsTask.Flag.CanCancel | QgsTask.Flag.CancelWithoutPrompt | QgsTask.Flag.Silent)
        self._set("starting", loading(config))
        from qgis.core import QgsApplication

        QgsApplication.taskManager().addTask(task)
        return True

    def _started(self, task: QgsTask, exception) -> None:
        if self._task is task:  # not a restart begun since
            self._task = None
        if exception is not None and not task.isCanceled():  # unexpected: a failed start is said by the state
            QgsMessageLog.logMessage(f"starting the local engine failed: {exception}", LOG_TAG,
                                     Qgis.MessageLevel.Warning)

    def give_up_by(self) -> Optional[float]:
        """While the local engine starts or restarts: the `time.monotonic()` by which its launcher has it up or has
        given it up (`LocalEngine.give_up_by`); None when no launch is under way, or none is known yet."""
        with self._lock:
            engine = self._engine
        return engine.give_up_by() if engine is not None else None

    def restarts_left(self) -> int:
        """The restarts the launcher may still make after the one under way (0 during a first start)."""
        with self._lock:
            engine = self._engine
        return engine.restarts_left() if engine is not None else 0

    def starting_text(self) -> str:
        """While "starting": what the engine does, for a person (`starting_words` of its detail)."""
        with self._lock:
            detail = self.detail
        return starting_words(detail)

    def running(self) -> bool:
        with self._lock:
            return self._engine is not None and self._engine.running()

    @property
    def engine(self) -> Optional[LocalEngine]:
        """The launcher in use (None before the first start); for its pid, log and URL."""
        return self._engine

    # ------------------------------------------------------------ requests in flight

    def request_started(self) -> None:
        with self._lock:
            self._inflight += 1
        if self.state in ("ready", "busy"):
            self._set("busy", self.summary())

    def request_finished(self) -> None:
        with self._lock:
            self._inflight = max(0, self._inflight - 1)
            idle = self._inflight == 0
        if idle and self.state == "busy":
            self._set("ready", self.summary())

    # ------------------------------------------------------------ stop and restart

    def stop(self) -> None:
        """Stop the engine (requests in flight finish first, as `LocalEngine.stop` does)."""
        with self._lock:
            engine, self._engine, self._config = self._engine, None, None
        if engine is not None:
            engine.stop()
        self.refresh()

    def restart(self) -> QgsTask:
        """Stop and start again with the current settings, in a `QgsTask` (returned; the GUI does not wait)."""
        def run(task):
            self.stop()
            if task.isCanceled():  # unloaded meanwhile: no new engine
                return False
            token = CancelToken()
            task.taskTerminated.connect(token.cancel)  # shutdown() cancels: a start in progress stops
            self.start(cancel=token)
            return True

        task = QgsTask.fromFunction("Restart the GeoVLM engine", run, on_finished=self._restarted)
        self._task = task
        from qgis.core import QgsApplication

        QgsApplication.taskManager().addTask(task)
        return task

    def _restarted(self, exception, _result=None) -> None:
        self._task = None
        if exception is not None:
            QgsMessageLog.logMessage(f"restarting the local engine failed: {exception}", LOG_TAG,
                                     Qgis.MessageLevel.Warning)

    def shutdown(self) -> None:
        """Plugin unload: cancel a restart in progress and stop the engine."""
        task, self._task = self._task, None
        if task is not None:
            try:
                task.cancel()
            except RuntimeError:  # already deleted by the task manager
                pass
        self.stop()


_manager: Optional[EngineManager] = None
_manager_lock = threading.Lock()


def engine_manager() -> EngineManager:
    """The process's `EngineManager`, made on first use and living in the GUI thread."""
    global _manager
    with _manager_lock:
        if _manager is None:
            _manager = EngineManager()
            app = QCoreApplication.instance()
            if app is not None and QThread.currentThread() is not app.thread():
                _manager.moveToThread(app.thread())
            _manager.refresh()
        return _manager


def shutdown_engine() -> None:
    """Plugin unload: stop the local engine if one was made in this process (and make none), and end the
    network thread of the QGIS transport."""
    with _manager_lock:
        manager = _manager
    if manager is not None:
        manager.shutdown()
    from .qgis_transport import stop_network_thread

    stop_network_thread()
