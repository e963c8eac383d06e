"""The engine part of the dock's behaviour (`plugin.ask_session.AskSession`): the engine the next question
goes to, its state word in the dock's header, and the family whose tasks the task picker offers (asked of
the engine in a `FamilyProbe` task)."""
from __future__ import annotations

from typing import Optional, Tuple

from qgis.core import QgsApplication

from ..core.profiles import get_profile
from ..core.regions import family_tasks
from . import settings as engine_settings
from .ask_task import FamilyProbe
from .engine_access import authcfg_problem, engine_problem
from .engine_manager import state_text


class EngineHeader:
    """Mixed into AskSession, which holds `dock`, `manager` (plugin.engine_manager), `_engine`, `authcfg`,
    `transport`, `family`, `_probe` and `_remote_word`, and has `_engine_moved` (`ask_engine_wait.QuestionHold`)."""

    @property
    def engine(self) -> str:
        """"" (the configured engine), "local" or engine URLs; setting it updates the state line."""
        return self._engine

    @engine.setter
    def engine(self, value: str) -> None:
        self._engine = value
        self._settings_changed()

    def refresh_family(self) -> None:
        """Ask the engine its family in a QgsTask (a local engine only when it already runs: a probe never
        starts it); the task picker then offers that family's tasks."""
        local = self._engine == "local" or (not self._engine and engine_settings.load().mode == "local")
        if local and not self.manager.running():
            return
        self._stop_probe()
        self._probe = FamilyProbe(self._engine, self.authcfg, "", self.transport)
        self._probe.found.connect(self._family_found)
        QgsApplication.taskManager().addTask(self._probe)

    def _family_found(self, family: str) -> None:
        self._probe = None
        if family != self.family:
            self.family = family
            self.dock.set_tasks(family_tasks(get_profile(family)))

    def _stop_probe(self, wait_ms: int = 0) -> None:
        probe, self._probe = self._probe, None
        if probe is not None:
            try:
                probe.found.disconnect()
                probe.cancel()
                if wait_ms:
                    probe.waitForFinished(wait_ms)
            except (RuntimeError, TypeError):  # already finished and deleted by the task manager
                pass

    def _target(self) -> str:
        """The engine the next request goes to: "local" or its URLs (comma-separated), "" when none is set."""
        if self._engine:
            return self._engine
        value = engine_settings.load()
        return "local" if value.mode == "local" else ",".join(e.url for e in value.endpoints)

    def _send_problem(self) -> Optional[Tuple[str, str]]:
        """(line, state word) when the next question would be refused before any request goes out, else None:
        the engine's settings (`engine_access.engine_problem`: none configured, a malformed URL, the local engine
        not set up) or an authentication configuration that does not exist (`engine_access.authcfg_problem`: the
        dock's `authcfg`, or a configured endpoint's). Reads settings and configuration ids only (main thread)."""
        problem = engine_problem(self._engine)
        if problem:
            return problem, f"not sent — {problem}"
        value = engine_settings.load()
        configured = [e.authcfg for e in value.endpoints] if not self._engine and value.mode != "local" else []
        for authcfg in [self.authcfg, *configured]:
            if authcfg_problem(authcfg):
                return authcfg_problem(authcfg), f"authcfg {authcfg.strip()!r} not found"
        return None

    def _engine_state(self, *_) -> None:
        """The header from the current settings (or `engine`) and the last outcome: one state word."""
        target = self._target()
        local = target.lower() == "local"
        if local:
            state, detail = self.manager.state, self.manager.detail
            text = f"Engine (local): {state_text(state, detail)}"
        else:
            text = f"Engine (remote: {', '.join(target.split(',')) or 'none configured'}): {self._remote_word}"
        self.dock.restart.setVisible(local and self.manager.state == "down")
        self.dock.engine_state.setText(text)

    def _remote_state(self, words: str) -> None:
        self._remote_word = words
        self._engine_state()

    def _settings_changed(self) -> None:
        """Options saved (or `engine` set): another engine may serve another family, so the last one's is
        forgotten (it would be forced on the new engine); the header and task list follow."""
        self._remote_word = "not asked yet"
        configured = engine_settings.load().family
        self.family = configured
        if configured:
            self.dock.set_tasks(family_tasks(get_profile(configured)))
        self._engine_state()
        self.refresh_family()
        self._engine_moved()
