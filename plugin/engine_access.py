"""One way for the plugin's algorithms and dock to reach an engine: `connect()` gives an `EngineConnection`.

The engine is the plugin's local one (started on demand by the process's `EngineManager` and shared) or
remote URLs reached over QGIS's network stack (`QgisTransport`: the user's proxy, SSL and authentication
settings apply; keys come from `QgsAuthManager` configurations, never from a string). `connect` asks the
engine's /v1/models once, so a connection in hand has a model id and a family profile, and every failure to
get there is one `EngineUnavailable` line.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence

from ..core.client import EngineClient, EngineError, check_distinct_urls
from ..core.profiles import Profile
from ..core.transport import Cancelled, CancelToken, HttpClientTransport, HttpResponse, Transport
from ..engine.launcher import EngineStartError
from . import settings as engine_settings
from .engine_manager import EngineManager, engine_manager, last_line
from .families import family_of
from .qgis_transport import AuthConfigError, QgisTransport

LOCAL = "local"
PROBE_ATTEMPTS = 2  # /v1/models tries when connecting: a down engine is reported in about a second


class EngineUnavailable(EngineError):
    """No usable engine: not set up, did not start, down, or a URL that is not an engine. One line."""


class EngineRefused(EngineUnavailable):
    """The engine is up, but the request was refused before the question went out: its key refused (HTTP 401/403
    on /v1/models) or the authentication configuration could not be applied. `word`: what is wrong in a few words
    for a state line ("key refused (HTTP 401)"); the message is the whole line."""

    def __init__(self, message: str, word: str):
        super().__init__(message)
        self.word = word


class _CountingTransport(Transport):
    """The local engine's transport: tells the manager when requests start and end (its "busy" state)."""

    def __init__(self, inner: Transport, manager: EngineManager):
        self.inner = inner
        self.manager = manager

    def request(self, method, url, headers, body=None, timeout=60.0, cancel=None):
        self.manager.request_started()
        try:
            response = self.inner.request(method, url, headers, body, timeout, cancel)
        except BaseException:
            self.manager.request_finished()
            raise
        done = []

        def finished():
            if not done:
                done.append(True)
                self.manager.request_finished()
            response.close()

        return HttpResponse(response.status, response.headers, response.chunks(), finished)


class EngineConnection:
    """A ready engine: `client` (an `EngineClient` to call `ask`/`ask_many`/`models`), the resolved
    `profile`, the served `model` id, the `endpoints` URLs in use and `engine` ("local" or the URLs as
    given). `stand_in` is True when the engine serves the demo model (a random stand-in: its answers are
    noise, and `notice` says so). `close()` releases what the connection holds; a shared local engine keeps
    running (the plugin stops it at unload)."""

    def __init__(self, client: EngineClient, profile: Profile, model: str, engine: str, info: Dict,
                 on_close=None):
        self.client = client
        self.profile = profile
        self.model = model
        self.engine = engine
        self.endpoints: List[str] = [e.url for e in client.endpoints]
        self.info = dict(info)
        self.stand_in = bool(info.get("random_stand_in"))
        self.device = str(info.get("device") or "")
        self._on_close = on_close

    @property
    def reported_family(self) -> str:
        """The family the engine reports in /v1/models (ours does), by its GeoVLM name; "" when it gives none
        (vLLM, SGLang)."""
        reported = str(self.info.get("family") or "")
        try:
            return family_of(reported) if reported else ""
        except ValueError:  # a family this plugin does not know: as the engine says it
            return reported

    @property
    def notice(self) -> str:
        """What every answer of this engine must carry ("" for a real model read in its own family): that the
        demo model is a random stand-in, and that the family given (a parameter, or Settings ▸ Options ▸ GeoVLM) is not
        the one the engine reports, so its answers are read and its views fitted in another family's way."""
        notes = ["Demo model: a random stand-in, its answers are noise."] if self.stand_in else []
        reported, used = self.reported_family, self.profile.name
        if reported and reported != used:
            notes.append(f"The model family is set to {used}, but the engine reports {reported}: its answers are "
                         f"read, and the views sent, as {used}'s (set the family to {reported}, or leave it empty "
                         "to read it from the engine).")
        return " ".join(notes)

    def describe(self) -> Dict[str, str]:
        """Provenance for feature fields: {"model", "family", "engine"} ("local" or the endpoint URLs)."""
        return {"model": self.model, "family": self.profile.name,
                "engine": LOCAL if self.engine == LOCAL else ",".join(self.endpoints)}

    def close(self) -> None:
        on_close, self._on_close = self._on_close, None
        if on_close is not None:
            on_close()

    def __enter__(self) -> EngineConnection:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def connect(engine: str = "", authcfg: str = "", family: str = "", feedback=None,
            cancel: Optional[CancelToken] = None, transport: Optional[Transport] = None,
            wrap: Optional[Callable[[Transport], Transport]] = None) -> EngineConnection:
    """Reach an engine and read what it serves.

    engine: "" = the configured default (Settings ▸ Options ▸ GeoVLM), "local" = the plugin's local engine (started now
    if needed; blocks until it answers, minutes the first time), or comma-separated http(s) URLs. authcfg: a
    `QgsAuthManager` configuration id applied to remote requests (for the configured endpoints, each one's
    own). family: a family name, else the one the engine reports. feedback: a `QgsFeedback`/
    `QgsProcessingFeedback` (progress text; its cancel cancels `cancel` until `close`). transport: replaces
    the default (QGIS's network stack for URLs, the standard library for the loopback local engine). wrap: a
    function of the transport in use that returns the one to use instead (the dock's
    `ask_patience.PatientTransport`), for every request of the connection, /v1/models included.
    Safe from worker threads; never call it on the GUI thread with the local engine stopped (it would block).
    Raises `EngineUnavailable` (one line) and `Cancelled`."""
    token = cancel or CancelToken()
    unlink = _link_feedback(feedback, token)
    try:
        return _connect(engine.strip(), authcfg, family.strip(), feedback, token, transport, unlink,
                        wrap or (lambda used: used))
    except BaseException:
        unlink()
        raise


def engine_problem(engine: str = "", family: str = "") -> Optional[str]:
    """One line saying why `connect(engine, family=family)` would fail before any engine is reached (an
    unknown family, a malformed URL, no engine configured, the local engine not set up), or None. Reads the
    settings only (no request, no process): main thread fine, so a Processing algorithm can refuse in
    `checkParameterValues`, before its run."""
    value = engine_settings.load()
    try:
        if family.strip():
            family_of(family)
        engine = engine.strip() or (LOCAL if value.mode == "local" else ",".join(e.url for e in value.endpoints))
        if not engine:
            return _no_engine()
        if engine.lower() == LOCAL:
            return None if engine_manager().config_from_settings().python else _not_set_up()
        _urls(engine)
    except (ValueError, EngineUnavailable) as exc:
        return str(exc)
    return None


def authcfg_problem(authcfg: str) -> Optional[str]:
    """One line when `authcfg` names no configuration of QGIS's `QgsAuthManager` (a typo, or one made in another
    profile), else None: said before a run instead of as "could not be applied" once the engine is reached.
    Reads the configuration ids only (no master password asked): main thread fine."""
    from qgis.core import QgsApplication

    authcfg = (authcfg or "").strip()
    manager = QgsApplication.authManager()
    if not authcfg or manager is None or manager.isDisabled() or authcfg in manager.configIds():
        return None
    return (f"the authentication configuration {authcfg!r} does not exist in this QGIS profile "
            "(Settings ▸ Options ▸ Authentication lists them)")


def _no_engine() -> str:
    return f"no engine configured: add an engine URL in {engine_settings.OPTIONS_PATH}, or use the local engine"


def _not_set_up() -> str:
    return (f"the local engine is not set up: use {engine_settings.SETUP_MENU_PATH} (or name the engine's Python "
            f"in {engine_settings.OPTIONS_PATH})")


def _connect(engine, authcfg, family, feedback, token, transport, unlink, wrap) -> EngineConnection:
    value = engine_settings.load()
    try:
        family = family_of(family) if family else ""
    except ValueError as exc:
        raise EngineUnavailable(str(exc)) from None
    family = family or value.family
    if not engine:
        engine = LOCAL if value.mode == "local" else ",".join(e.url for e in value.endpoints)
        if not engine:
            raise EngineUnavailable(_no_engine())
        authcfgs = {e.url.rstrip("/"): e.authcfg for e in value.endpoints if e.authcfg}
    else:
        authcfgs = {}
    if engine.lower() == LOCAL:
        client = _local_client(value, family, feedback, token, transport, wrap)
    else:
        urls = _urls(engine)
        if authcfg:
            authcfgs.update({u.rstrip("/"): authcfg for u in urls})
        client = EngineClient(urls, profile=family or None, timeout=value.request_timeout_s,
                              transport=wrap(transport or QgisTransport(authcfgs)))
    info = _probe(client, token)
    profile = _profile_of(client, token)
    return EngineConnection(client, profile, str(info.get("id") or ""), LOCAL if engine.lower() == LOCAL else engine,
                            info, on_close=unlink)


def _urls(engine: str) -> List[str]:
    urls = [u.strip() for u in engine.split(",") if u.strip()]
    try:
        urls = [engine_settings.check_url(u) for u in urls]
        check_distinct_urls(urls)
        return urls
    except ValueError as exc:
        raise EngineUnavailable(str(exc)) from None


def _local_client(value, family, feedback, token, transport, wrap) -> EngineClient:
    manager = engine_manager()
    config = manager.config_from_settings()
    if not config.python:
        manager.refresh()
        raise EngineUnavailable(_not_set_up())
    if feedback is not None and not manager.running() and hasattr(feedback, "pushInfo"):
        feedback.pushInfo("Starting the local engine (the first start prepares the model: minutes)…")
    try:
        url, key = manager.start(config, token)
    except EngineStartError as exc:
        token.check()
        raise EngineUnavailable(f"the local engine did not start: {last_line(exc)}") from None
    # Requests ride out a restart of a crashed engine (its model load included: the start timeout), as the
    # command line's local engine does; when the launcher gives up, the manager tells the client at once.
    client = EngineClient(url, api_key=key, profile=family or None, timeout=value.request_timeout_s,
                          retry_window=config.start_timeout_s + 30.0,
                          transport=wrap(_CountingTransport(transport or HttpClientTransport(), manager)))
    manager.watch(client)
    return client


def _probe(client: EngineClient, token: CancelToken) -> Dict:
    """The first model of /v1/models: its "geovlm" details (family, device, random_stand_in...) and "id"."""
    attempts, client.attempts = client.attempts, PROBE_ATTEMPTS
    try:
        entries = client.models(token).get("data") or []
        if not entries:
            raise EngineError(f"{client.endpoints[0].url} serves no model")
        entry = next((e for e in entries if e.get("id") == client.model), entries[0])
        return dict(entry.get("geovlm") or {}, id=entry.get("id"))
    except Cancelled:
        raise
    except EngineError as exc:
        line, status = _one_line(exc, [e.url for e in client.endpoints]), getattr(exc, "status", None)
        if status in (401, 403):
            raise EngineRefused(line, f"key refused (HTTP {status})") from None
        if isinstance(exc, AuthConfigError):
            raise EngineRefused(line, "authentication configuration not applied") from None
        raise EngineUnavailable(line) from None
    finally:
        client.attempts = attempts


def _profile_of(client: EngineClient, token: CancelToken) -> Profile:
    """The family given, else the one the engine reports (the client keeps it for its requests)."""
    try:
        return client.profile(token)
    except Cancelled:
        raise
    except EngineError:
        raise EngineUnavailable(
            f"{client.endpoints[0].url} does not report its model family (vLLM does not): set the family"
        ) from None
    except (KeyError, ValueError) as exc:
        raise EngineUnavailable(f"the engine serves an unknown model family: {exc}") from None


def _one_line(exc: EngineError, urls: Sequence[str]) -> str:
    where = ", ".join(urls)
    status = getattr(exc, "status", None)
    text = " ".join(str(exc).split())
    if status in (401, 403):
        return f"the engine at {where} refused the request (HTTP {status}): check the authentication configuration"
    if status == 404:
        return f"{where} is not an engine (HTTP 404 on /v1/models): check the URL"
    if status is not None:
        return f"the engine at {where} answered HTTP {status}: {text}"
    if isinstance(exc, AuthConfigError) or "serves no model" in text:
        return text
    reason = text.rsplit(": ", 1)[-1] if ": " in text else text
    return f"the engine at {where} is down or unreachable ({reason})"


def _link_feedback(feedback, token: CancelToken):
    """Cancel `token` when `feedback` is cancelled (now or later); returns the unlinker."""
    if feedback is None or not hasattr(feedback, "canceled"):
        return lambda: None
    if feedback.isCanceled():
        token.cancel()
        return lambda: None
    feedback.canceled.connect(token.cancel)

    def unlink():
        try:
            feedback.canceled.disconnect(token.cancel)
        except (TypeError, RuntimeError):  # already disconnected, or the feedback is gone
            pass

    return unlink
