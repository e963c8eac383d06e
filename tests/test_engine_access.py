"""Reaching an engine from QGIS: `plugin.engine_access.connect` against a real `geovlm serve` (the demo model)
on loopback with a key from a `QgsAuthManager` configuration, the plugin's local engine through the
launcher, and the one-line `EngineUnavailable` for an engine that is down, not set up, or not an engine."""
import http.server
import io
import os
import socket
import sys
import threading
import time

import pytest
from PIL import Image
from qgis.core import QgsApplication, QgsTask
from qt_support import api_header_config, wait_for

from geovlm.engine.launcher import LocalEngine
from geovlm.plugin import settings as engine_settings
from geovlm.plugin.engine_access import EngineRefused, EngineUnavailable, connect
from geovlm.plugin.engine_manager import engine_manager


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (90, 120, 60)).save(buffer, format="PNG")
    return buffer.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


pytestmark = pytest.mark.usefixtures("geovlm_settings")  # each test starts from default settings


@pytest.fixture(scope="module")
def server():
    """A real `geovlm serve` on 127.0.0.1 serving the demo model, requiring a bearer key."""
    engine = LocalEngine(python=sys.executable, api_key="test-key-" + "x" * 8, start_timeout=300)
    engine.start()
    yield engine
    engine.stop()


@pytest.fixture(scope="module")
def auth_config(qgis_app, tmp_path_factory):
    """An API-header configuration holding the server's key, in a temporary auth database."""
    with api_header_config(tmp_path_factory.mktemp("auth"), "GeoVLM test engine", "Bearer test-key-xxxxxxxx") as found:
        yield found


def test_connect_to_a_url_with_an_authcfg_and_stream(server, auth_config):
    with connect(server.url, authcfg=auth_config) as conn:
        assert conn.model and conn.profile.name == conn.info["family"]
        assert conn.stand_in and "noise" in conn.notice  # the demo model says so
        assert conn.describe() == {"model": conn.model, "family": conn.profile.name, "engine": server.url}
        pieces = []
        text, answer = conn.client.ask(png(), None, "Describe the image", on_token=pieces.append, max_tokens=6)
        assert pieces and "".join(pieces) == text and answer.text == text


def test_the_configured_endpoints_with_their_own_authcfg(server, auth_config):
    engine_settings.save(engine_settings.EngineSettings(
        mode="remote", endpoints=[engine_settings.Endpoint(server.url, auth_config)]))
    with connect() as conn:
        assert conn.endpoints == [server.url] and conn.describe()["engine"] == server.url


def test_without_the_authcfg_the_key_is_missing(server):
    with pytest.raises(EngineUnavailable, match=r"refused the request \(HTTP 401\)") as err:
        connect(server.url)
    assert "\n" not in str(err.value)
    assert isinstance(err.value, EngineRefused) and err.value.word == "key refused (HTTP 401)"  # up, not down


def test_an_unknown_authcfg_is_one_line(server):
    with pytest.raises(EngineUnavailable, match="authentication configuration 'nosuch1' could not be applied") as err:
        connect(server.url, authcfg="nosuch1")
    assert isinstance(err.value, EngineRefused) and err.value.word == "authentication configuration not applied"


def test_connect_from_a_qgis_task(server, auth_config):
    """The Processing/dock path: connect and ask inside a QgsTask's worker thread."""
    result = {}

    def work(task):
        with connect(server.url, authcfg=auth_config) as conn:
            result["thread"] = threading.current_thread() is not threading.main_thread()
            return conn.client.ask(png(), None, "Describe the image", on_token=lambda t: None, max_tokens=4)[0]

    task = QgsTask.fromFunction("ask", work, on_finished=lambda exc, value=None: result.update(exc=exc, text=value))
    QgsApplication.taskManager().addTask(task)
    assert wait_for(lambda: "text" in result or result.get("exc"), 120)
    assert result["exc"] is None and isinstance(result["text"], str) and result["thread"]


def test_an_engine_that_is_down_is_one_clear_line():
    url = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(EngineUnavailable, match=r"is down or unreachable") as err:
        connect(url)
    assert time.monotonic() - started < 10
    assert url in str(err.value) and "\n" not in str(err.value)


def test_a_url_that_is_not_an_engine():
    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_error(404)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        with pytest.raises(EngineUnavailable, match=r"is not an engine \(HTTP 404 on /v1/models\): check the URL"):
            connect(f"http://127.0.0.1:{httpd.server_port}")
    finally:
        httpd.shutdown()
        thread.join(5)


@pytest.mark.parametrize("engine, message", [
    ("ftp://example.org", "an engine URL is http://host:port"),
    ("", "no engine configured"),
    ("http://127.0.0.1:9,HTTP://127.0.0.1:9/", "is listed twice"),
])
def test_bad_engine_strings(engine, message):
    engine_settings.save(engine_settings.EngineSettings(mode="remote"))
    with pytest.raises(EngineUnavailable, match=message):
        connect(engine)


def test_local_engine_not_set_up(tmp_path):
    engine_settings.save(engine_settings.EngineSettings(python=str(tmp_path / "no-python")))
    with pytest.raises(EngineUnavailable, match="the local engine is not set up"):
        connect("local")
    assert engine_manager().state == "not_set_up"


def test_local_engine_start_failure_quotes_the_engine(tmp_path):
    engine_settings.save(engine_settings.EngineSettings(python=sys.executable, model_dir=str(tmp_path / "nope")))
    with pytest.raises(EngineUnavailable, match=r"the local engine did not start: .*nope does not exist") as err:
        connect()
    assert "\n" not in str(err.value)
    assert engine_manager().state == "down" and "does not exist" in engine_manager().detail
    engine_manager().stop()


def test_local_engine_started_on_demand_shared_and_stopped():
    engine_settings.save(engine_settings.EngineSettings(python=sys.executable))
    manager = engine_manager()
    states = []
    manager.stateChanged.connect(lambda state, detail: states.append(state))
    try:
        with connect("local", family="geochat") as conn:
            pid = manager.engine.pid
            assert conn.describe() == {"model": conn.model, "family": "geochat", "engine": "local"}
            assert conn.stand_in and conn.device
            conn.client.ask(png(), None, "Describe the image", on_token=lambda t: None, max_tokens=4)
        with connect() as again:  # the configured default is the local engine: the same process serves
            assert manager.engine.pid == pid and again.profile.name == again.info["family"]
        assert wait_for(lambda: states[-1:] == ["ready"])
        assert states[:2] == ["starting", "ready"] and "busy" in states
        assert "demo model" in manager.detail
        manager.restart()  # the dock's Restart button: a task, the GUI does not wait
        assert manager.state in ("stopped", "starting", "ready")
        engine = lambda: manager.engine  # noqa: E731
        assert wait_for(lambda: manager.state == "ready" and engine() and engine().pid not in (None, pid)
                        and states[-1:] == ["ready"], 120)  # the state is set before its queued signal arrives
        assert states[-3:] == ["stopped", "starting", "ready"]
    finally:
        manager.shutdown()
    assert not manager.running() and manager.state == "stopped"


def test_plugin_unload_stops_the_local_engine(qgis_iface):
    import geovlm

    engine_settings.save(engine_settings.EngineSettings(python=sys.executable))
    plugin = geovlm.classFactory(qgis_iface)
    plugin.initGui()
    try:
        connect("local").close()
        pid = engine_manager().engine.pid
        assert engine_manager().running()
    finally:
        plugin.unload()
    assert not engine_manager().running() and engine_manager().engine is None
    from geovlm.plugin import qgis_transport

    assert qgis_transport._network is None  # the transport's network thread ended too
    with pytest.raises(ProcessLookupError):
        for _ in range(100):  # reaped by the launcher's stop; bounded wait for the kernel
            os.kill(pid, 0)
            time.sleep(0.05)


def test_a_local_engine_given_up_fails_requests_at_once_with_the_reason():
    """The launcher gives up (here: killed with no restart left): the manager tells the connection's client,
    whose requests fail in one line at once instead of retrying for the engine's whole restart window."""
    import signal

    from geovlm.core.client import EngineError

    engine_settings.save(engine_settings.EngineSettings(python=sys.executable))
    manager = engine_manager()
    try:
        with connect("local", family="geochat") as conn:
            assert conn.client.retry_window >= 60  # rides out a restart with its model load
            manager.engine.max_restarts = 0
            os.kill(manager.engine.pid, signal.SIGKILL)
            assert wait_for(lambda: manager.state == "down", 30)
            started = time.monotonic()
            with pytest.raises(EngineError, match="the local engine is down") as info:
                conn.client.ask(png(), None, "Describe the image", max_tokens=4)
            assert time.monotonic() - started < 5 and "\n" not in str(info.value)
    finally:
        manager.shutdown()


def test_a_family_other_than_the_engines_is_carried_by_every_answer():
    from geovlm.core.client import EngineClient
    from geovlm.core.profiles import get_profile
    from geovlm.plugin.engine_access import EngineConnection

    client = EngineClient("http://127.0.0.1:9")  # never asked: the connection holds what /v1/models said
    reported = {"family": "GeoChat", "random_stand_in": False}  # as an engine may spell it
    same = EngineConnection(client, get_profile("geochat"), "m", "http://127.0.0.1:9", reported)
    assert same.reported_family == "geochat" and same.notice == ""
    other = EngineConnection(client, get_profile("qwen25vl"), "m", "http://127.0.0.1:9", reported)
    assert other.notice.startswith("The model family is set to qwen25vl, but the engine reports geochat")
    demo = EngineConnection(client, get_profile("earthdial"), "m", "local", dict(reported, random_stand_in=True))
    assert demo.notice.startswith("Demo model: a random stand-in") and "engine reports geochat" in demo.notice
    silent = EngineConnection(client, get_profile("llava15"), "m", "http://127.0.0.1:9", {})  # vLLM reports none
    assert silent.reported_family == "" and silent.notice == ""
