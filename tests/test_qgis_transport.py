"""The engine client's transport on QGIS's network stack: a body streams chunk by chunk, a cancelled token
aborts the request within a second (from a thread and from a QgsTask), QGIS's global network timeout is
replaced by the request's own, HTTP error answers are responses, and the user's proxy settings apply."""
import http.server
import threading
import time

import pytest
from qgis.core import QgsApplication, QgsNetworkAccessManager, QgsTask
from qgis.PyQt.QtCore import QCoreApplication

from geovlm.core.transport import AnswerTimeout, Cancelled, CancelToken, TransportError
from geovlm.plugin.qgis_transport import QgisTransport

PIECES = 5
GAP_S = 0.3


class Scripted(http.server.BaseHTTPRequestHandler):
    """/stream: PIECES chunks GAP_S apart; /hang: one chunk, then nothing for 20 s; /slow: headers after
    2 s; /missing: 404 with a JSON body, /status/N: status N with one. Every wait is bounded and ends when the
    server stops."""

    protocol_version = "HTTP/1.1"
    stop = threading.Event()

    def do_GET(self):  # noqa: N802
        if self.path == "/missing" or self.path.startswith("/status/"):
            body = b'{"error": {"message": "nothing here"}}'
            self.send_response(int(self.path.split("/")[-1]) if self.path.startswith("/status/") else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        if self.path == "/slow" and self.stop.wait(2.0):
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        count = PIECES if self.path == "/stream" else 1
        try:
            for i in range(count):
                self.wfile.write(f"data: {i}\n\n".encode())
                self.wfile.flush()
                if i + 1 < count and self.stop.wait(GAP_S):
                    return
            if self.path == "/hang":
                self.stop.wait(20)
        except OSError:
            pass  # the client went away

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def base(qgis_app):
    Scripted.stop.clear()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Scripted)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}"
    Scripted.stop.set()
    httpd.shutdown()
    thread.join(5)
    httpd.server_close()


def in_thread(function):
    """Run `function()` in a worker thread; returns (result or exception, seconds)."""
    out = {}

    def run():
        started = time.monotonic()
        try:
            out["value"] = function()
        except Exception as exc:
            out["value"] = exc
        out["seconds"] = time.monotonic() - started

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(30)
    assert not thread.is_alive()
    return out["value"], out["seconds"]


def test_the_body_streams_chunk_by_chunk(base):
    def read():
        started = time.monotonic()
        with QgisTransport().request("GET", base + "/stream", {}, timeout=10) as response:
            assert response.status == 200 and response.headers["content-type"] == "text/event-stream"
            return [(chunk, time.monotonic() - started) for chunk in response.chunks()]

    arrivals, _ = in_thread(read)
    assert b"".join(c for c, _ in arrivals) == b"".join(f"data: {i}\n\n".encode() for i in range(PIECES))
    assert len(arrivals) >= 3  # not one lump at the end
    assert arrivals[0][1] < arrivals[-1][1] - 2 * GAP_S


@pytest.mark.parametrize("path", ["/hang", "/slow"])
def test_cancel_from_another_thread_aborts_within_a_second(base, path):
    token = CancelToken()

    def read():
        with QgisTransport().request("GET", base + path, {}, timeout=30, cancel=token) as response:
            for _ in response.chunks():
                pass

    timer = threading.Timer(0.5, token.cancel)
    timer.start()
    error, seconds = in_thread(read)
    timer.join()
    assert isinstance(error, Cancelled) and seconds < 0.5 + 1.0


class ReadTask(QgsTask):
    """A QgsTask whose cancel() cancels the request's token: the pattern the algorithms and dock use."""

    def __init__(self, url):
        super().__init__("read", QgsTask.Flag.CanCancel)
        self.url = url
        self.token = CancelToken()
        self.error = None
        self.chunks = 0

    def run(self):
        try:
            with QgisTransport().request("GET", self.url, {}, timeout=30, cancel=self.token) as response:
                for _ in response.chunks():
                    self.chunks += 1
        except Cancelled as exc:
            self.error = exc
            return False
        return True

    def cancel(self):
        self.token.cancel()
        super().cancel()


def test_cancelling_the_qgis_task_cancels_the_request(base):
    task = ReadTask(base + "/hang")
    QgsApplication.taskManager().addTask(task)
    deadline = time.monotonic() + 10
    while task.chunks == 0 and time.monotonic() < deadline:
        QCoreApplication.processEvents()
        time.sleep(0.01)
    assert task.chunks == 1
    cancelled = time.monotonic()
    task.cancel()
    while task.status() not in (QgsTask.TaskStatus.Terminated, QgsTask.TaskStatus.Complete):
        assert time.monotonic() - cancelled < 1.0
        QCoreApplication.processEvents()
        time.sleep(0.01)
    assert task.status() == QgsTask.TaskStatus.Terminated and isinstance(task.error, Cancelled)


def test_the_request_timeout_replaces_qgis_network_timeout(base):
    before = QgsNetworkAccessManager.timeout()
    QgsNetworkAccessManager.setTimeout(1000)  # QGIS's own timer would give up on /slow (2 s before its headers)
    try:
        def read(timeout):
            return lambda: QgisTransport().request("GET", base + "/slow", {}, timeout=timeout).read()

        body, _ = in_thread(read(8.0))
        assert body == b"data: 0\n\n"
        assert read(8.0)() == body  # from the GUI thread too
        error, seconds = in_thread(read(0.5))
        assert isinstance(error, TransportError) and "timed out" in str(error) and seconds < 1.8
        assert isinstance(error, AnswerTimeout) and error.seconds == 0.5  # the client says: a slow engine
    finally:
        QgsNetworkAccessManager.setTimeout(before)


def test_an_http_error_is_a_response(base):
    def read():
        with QgisTransport().request("GET", base + "/missing", {}, timeout=5) as response:
            return response.status, response.read()

    (status, body), _ = in_thread(read)
    assert status == 404 and b"nothing here" in body


@pytest.mark.parametrize("status", [400, 401, 407, 409, 418, 422, 429, 500, 502, 503, 504])
def test_every_http_error_status_is_a_response_with_its_body(base, status):
    """Qt maps some statuses to errors outside its content and server ranges (400 and 418 to
    ProtocolInvalidOperationError, 407 to ProxyAuthenticationRequiredError): those are HTTP answers too, their
    body the engine's reason (a 400's "max_tokens too large" was read as no body: "HTTP 400" alone)."""
    def read():
        with QgisTransport().request("GET", f"{base}/status/{status}", {}, timeout=5) as response:
            return response.status, response.read()

    (got, body), _ = in_thread(read)
    assert got == status and b"nothing here" in body


def test_a_refused_connection_is_a_transport_error():
    with socket_port() as port:
        error, _ = in_thread(lambda: QgisTransport().request("GET", f"http://127.0.0.1:{port}/", {}, timeout=5))
    assert isinstance(error, TransportError) and "refused" in str(error).lower()


class socket_port:  # noqa: N801 (a context manager used like a function)
    """A loopback port nothing listens on (held bound, not listening, while in use)."""

    def __enter__(self):
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        return self.sock.getsockname()[1]

    def __exit__(self, *exc):
        self.sock.close()


class Proxy(http.server.BaseHTTPRequestHandler):
    """A stand-in HTTP proxy: answers every request itself and records the absolute URL it was asked for."""

    seen = []

    def do_GET(self):  # noqa: N802
        Proxy.seen.append(self.path)
        body = b"via the proxy"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_the_users_proxy_settings_apply(qgis_app):
    from qgis.core import QgsSettings

    proxy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    settings = QgsSettings()
    keys = {"proxy/proxyEnabled": True, "proxy/proxyType": "HttpProxy", "proxy/proxyHost": "127.0.0.1",
            "proxy/proxyPort": str(proxy.server_port), "proxy/proxyExcludedUrls": "", "proxy/noProxyUrls": ""}
    before = {key: settings.value(key) for key in keys}
    try:
        for key, value in keys.items():
            settings.setValue(key, value)
        QgsNetworkAccessManager.instance().setupDefaultProxyAndCache()  # as QGIS does when Options are saved
        with socket_port() as port:  # nothing listens there: only the proxy can answer
            url = f"http://127.0.0.1:{port}/v1/models"
            body, _ = in_thread(lambda: QgisTransport().request("GET", url, {}, timeout=5).read())
        assert body == b"via the proxy" and Proxy.seen == [url]
    finally:
        for key, value in before.items():
            if value is None:
                settings.remove(key)
            else:
                settings.setValue(key, value)
        QgsNetworkAccessManager.instance().setupDefaultProxyAndCache()
        proxy.shutdown()
        thread.join(5)
        proxy.server_close()


def test_stopping_the_network_thread_ends_requests_in_flight(base):
    from geovlm.plugin import qgis_transport

    def read():
        with QgisTransport().request("GET", base + "/hang", {}, timeout=30) as response:
            for _ in response.chunks():
                pass

    timer = threading.Timer(0.5, qgis_transport.stop_network_thread)  # as plugin unload does
    timer.start()
    error, seconds = in_thread(read)
    timer.join()
    assert isinstance(error, TransportError) and "network thread stopped" in str(error) and seconds < 2.5
    assert qgis_transport._network is None
    body, _ = in_thread(lambda: QgisTransport().request("GET", base + "/missing", {}, timeout=5).read())
    assert b"nothing here" in body  # the next request starts it again


def test_fifty_asks_in_a_qgis_task_all_succeed(qgis_app):
    """The dock's pattern: `EngineClient(url, transport=QgisTransport()).ask(...)` in a QgsTask, 50 times
    (a new client each time: 100 requests) against the scripted engine, streamed and whole answers, the GUI
    thread processing events: every one answers. Replies used to be deleted in the network thread, and
    PyQt's GUI-thread monitor of C++ objects then marked a later reply at the same address deleted ("wrapped
    C/C++ object of type QNetworkReply has been deleted", then an abort: one request in 400-900;
    scripts/qgis_transport_stress.py runs thousands)."""
    import sys
    from pathlib import Path

    from geovlm.core.client import EngineClient

    sys.path.insert(0, str(Path(__file__).parent))
    from ask_engines import ScriptedEngine

    answer = "a field {<10><20><40><60>|<90>}"
    png = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010802000000907753de0000000c4944415478"
                        "9c63f8cfc000000301010018dd8db00000000049454e44ae426082")  # one pixel
    outcomes = []

    def asks(task):
        for i in range(50):
            streamed = []
            try:
                client = EngineClient(engine.url, transport=QgisTransport(), retry_window=0.0)
                text, parsed = client.ask(png, None, "Describe the image", max_tokens=16,
                                          on_token=streamed.append if i % 2 else None)
                ok = text == answer and len(parsed.objects) == 1 and (not i % 2 or "".join(streamed) == answer)
                outcomes.append("ok" if ok else f"wrong answer {text!r}")
            except Exception as exc:  # noqa: BLE001  # every failure is counted and shown
                outcomes.append(f"{type(exc).__name__}: {exc}")
        return len(outcomes)

    with ScriptedEngine("geochat", answer) as engine:
        task = QgsTask.fromFunction("fifty asks", asks)
        QgsApplication.taskManager().addTask(task)
        deadline = time.monotonic() + 120
        while task.status() not in (QgsTask.TaskStatus.Complete, QgsTask.TaskStatus.Terminated):
            assert time.monotonic() < deadline, f"{len(outcomes)} of 50 asks done in 120 s"
            QCoreApplication.processEvents()
            time.sleep(0.01)
        assert len(engine.posts) == 50  # and 50 GET /v1/models
    failures = [o for o in outcomes if o != "ok"]
    assert task.status() == QgsTask.TaskStatus.Complete and len(outcomes) == 50 and not failures, failures[:5]
