"""A `core.transport.Transport` on QGIS's network stack, for the engine client inside QGIS.

Requests go through `QgsNetworkAccessManager`, so the user's proxy, SSL exceptions and certificate settings
apply, and a `QgsAuthManager` configuration (`authcfg`: Basic, API header, PKI...) is applied to each request
with `updateNetworkRequest`/`updateNetworkReply`.

All of them run in one long-lived network thread of GeoVLM's own (an event loop with its own
`QgsNetworkAccessManager`); the calling thread (a `QgsTask`, a Processing worker, a client pool thread) only
hands the request over and reads events from a queue; a reply is deleted in the GUI thread (where PyQt's
monitor of the C++ objects it wraps lives: `_delete_in_gui_thread`). So no thread that ends leaves a network
manager with live replies behind (destroying those at thread exit takes Python's lock inside Qt's, which can deadlock
against a thread holding the former and waiting for the latter), streaming needs no event loop in the
caller, and a `CancelToken` cancelled from any thread aborts the reply at once. On the GUI thread the wait
keeps processing events (QGIS may need them for an authentication or SSL prompt), but it is meant for
workers. `stop_network_thread()` ends the thread; it must run before `QgsApplication.exitQgis()` (plugin
unload and the application's `aboutToQuit` call it; a script that exits QGIS itself calls it first).

Timeouts: `timeout` (seconds) bounds every wait for data (Qt's transfer timeout), and it replaces QGIS's
global network timeout for these requests (Settings ▸ Options ▸ Network, 60 s by default, too short for a model
thinking before its first token) by adjusting the timer QGIS attaches to each reply.
"""
from __future__ import annotations

import atexit
import queue
import threading
from typing import Dict, Iterator, Optional, Union

from qgis.core import QgsApplication, QgsNetworkAccessManager
from qgis.PyQt import sip
from qgis.PyQt.QtCore import (
    QByteArray,
    QCoreApplication,
    QEvent,
    QEventLoop,
    QObject,
    QTimer,
    QUrl,
    pyqtSignal,
    pyqtSlot,
)
from qgis.PyQt.QtNetwork import QNetworkReply, QNetworkRequest

from ..core.client import EngineError
from ..core.transport import AnswerTimeout, CancelToken, HttpResponse, Transport, TransportError

QGIS_TIMEOUT_TIMER = "timeoutTimer"  # the QTimer QgsNetworkAccessManager::createRequest parents to a reply
POLL_S = 0.05  # how often a waiting caller looks at its token and at the network thread


class AuthConfigError(EngineError):
    """A `QgsAuthManager` configuration could not be applied to a request (unknown id, locked store...)."""


class _Job:
    """One request; `events` carries ("headers", status, headers), ("data", bytes), ("end",) and
    ("error", exception) from the network thread to the caller. Its other fields belong to the network
    thread."""

    def __init__(self, method: str, url: str, headers: Dict[str, str], body: Optional[bytes], timeout_ms: int,
                 authcfg: str):
        self.method, self.url, self.headers, self.body = method, url, headers, body
        self.timeout_ms, self.authcfg = timeout_ms, authcfg
        self.events: queue.Queue = queue.Queue()
        self.reply: Optional[QNetworkReply] = None
        self.sent_headers = False
        self.dropped = False


class _Dispatcher(QObject):
    """Lives in the network thread; its signals, emitted from any thread, arrive there queued and in order.
    Its handlers never raise (PyQt aborts the process on an exception in a slot)."""

    start = pyqtSignal(object)
    abort = pyqtSignal(object)
    release = pyqtSignal(object)
    stop = pyqtSignal()

    def __init__(self, loop: QEventLoop):
        super().__init__()
        self.loop = loop
        self.jobs = set()
        self.start.connect(self._start)
        self.abort.connect(self._abort)
        self.release.connect(self._release)
        self.stop.connect(self._stop)

    @pyqtSlot(object)
    def _start(self, job: _Job) -> None:
        if job.dropped:
            return
        request = QNetworkRequest(QUrl(job.url))
        for name, value in job.headers.items():
            request.setRawHeader(name.encode("latin-1"), value.encode("latin-1"))
        request.setAttribute(QNetworkRequest.Attribute.CacheLoadControlAttribute,
                             QNetworkRequest.CacheLoadControl.AlwaysNetwork)
        request.setAttribute(QNetworkRequest.Attribute.CacheSaveControlAttribute, False)
        request.setTransferTimeout(job.timeout_ms)
        auth = QgsApplication.authManager()
        if job.authcfg:
            ok = auth.updateNetworkRequest(request, job.authcfg)
            if not (ok[0] if isinstance(ok, tuple) else ok):
                job.events.put(("error", AuthConfigError(
                    f"the authentication configuration {job.authcfg!r} could not be applied")))
                return
        manager = QgsNetworkAccessManager.instance()
        _follow_gui_proxy(manager)
        verb = job.method.upper().encode("ascii")
        if job.body is not None:
            reply = manager.sendCustomRequest(request, verb, QByteArray(job.body))
        elif verb == b"GET":
            reply = manager.get(request)
        else:
            reply = manager.sendCustomRequest(request, verb)
        if job.authcfg:
            auth.updateNetworkReply(reply, job.authcfg)
        timer = reply.findChild(QTimer, QGIS_TIMEOUT_TIMER)
        if timer is not None and timer.isActive():
            timer.start(job.timeout_ms)  # restarted by QGIS on progress, with this interval from now on
        job.reply = reply
        self.jobs.add(job)
        reply.metaDataChanged.connect(lambda: self._headers(job))
        reply.readyRead.connect(lambda: self._data(job))
        reply.finished.connect(lambda: self._finished(job))

    def _headers(self, job: _Job) -> None:
        reply = job.reply
        if reply is None:
            return
        status = reply.attribute(QNetworkRequest.Attribute.HttpStatusCodeAttribute)
        if job.sent_headers or status is None:
            return
        job.sent_headers = True
        headers = {bytes(k).decode("latin-1").lower(): bytes(v).decode("latin-1") for k, v in reply.rawHeaderPairs()}
        job.events.put(("headers", int(status), headers))

    def _data(self, job: _Job) -> None:
        self._headers(job)
        if job.reply is None or not job.reply.isOpen():  # released or aborted
            return
        data = bytes(job.reply.readAll())
        if data:
            job.events.put(("data", data))

    def _finished(self, job: _Job) -> None:
        self._data(job)
        reply = job.reply
        if reply is None:
            return
        error = reply.error()
        if error == QNetworkReply.NetworkError.NoError or (job.sent_headers and _is_http_status_error(error)):
            job.events.put(("end",))
        elif error == QNetworkReply.NetworkError.OperationCanceledError and not job.dropped:
            # Qt's transfer timeout or QGIS's timer: no data within the request timeout (a slow engine)
            seconds = job.timeout_ms / 1000
            job.events.put(("error", AnswerTimeout(f"timed out: no data within {seconds:g} s", seconds)))
        elif error == QNetworkReply.NetworkError.OperationCanceledError:
            job.events.put(("error", TransportError("aborted")))
        else:
            job.events.put(("error", TransportError(reply.errorString() or "no answer")))

    @pyqtSlot(object)
    def _abort(self, job: _Job) -> None:
        job.dropped = True
        if job.reply is not None and not job.reply.isFinished():
            job.reply.abort()  # finished() follows at once

    @pyqtSlot(object)
    def _release(self, job: _Job) -> None:
        job.dropped = True
        self.jobs.discard(job)
        reply = job.reply
        if reply is not None:
            if not reply.isFinished():
                reply.abort()  # finished() runs _finished now, while job.reply is still set
            job.reply = None
            _delete_in_gui_thread(reply)

    @pyqtSlot()
    def _stop(self) -> None:
        for job in list(self.jobs):
            job.events.put(("error", TransportError("GeoVLM's network thread stopped")))
            self._release(job)
        self.loop.quit()


def _delete_in_gui_thread(reply: QNetworkReply) -> None:
    """Delete a reply (and its children: QGIS's timeout timer) in the GUI thread, not here.

    PyQt watches every QObject made by C++ that it wraps (a reply, its timer) through the `destroyed` signal
    of a monitor that lives in the GUI thread (PyQt5's qpycore_event_handlers.cpp). Destroyed here, the
    notice reaches the monitor queued, later, with the object's address: by then a new reply may live at that
    address, and PyQt marks the new reply's wrapper deleted ("wrapped C/C++ object of type QNetworkReply has
    been deleted" in a slot here, then an abort or a segfault: about one request in 400-900 while the GUI
    thread processes events; scripts/qgis_transport_stress.py). Destroyed in the GUI thread, the notice is
    handled at once, before the address can be reused. (A process whose GUI thread never runs an event loop
    keeps its finished replies until it exits.)"""
    reply.setParent(None)  # only an object without a parent can change threads
    reply.moveToThread(QCoreApplication.instance().thread())
    reply.deleteLater()  # by the GUI thread's event loop


class _NetworkThread:
    """The thread that owns every request's reply; started on first use."""

    def __init__(self):
        self.ready = threading.Event()
        self.lock = threading.Lock()
        self.dispatcher: Optional[_Dispatcher] = None
        self.thread = threading.Thread(target=self._run, name="geovlm-network", daemon=True)
        self.thread.start()
        self.ready.wait(10)

    def _run(self) -> None:
        loop = QEventLoop()
        self.dispatcher = _Dispatcher(loop)
        self.ready.set()
        loop.exec()
        with self.lock:  # from now on `send` drops what comes
            dispatcher, self.dispatcher = self.dispatcher, None
        QCoreApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete)
        sip.delete(dispatcher)

    @property
    def alive(self) -> bool:
        return self.thread.is_alive() and self.dispatcher is not None

    def send(self, signal: str, *args) -> None:
        """Emit one of the dispatcher's signals from any thread (nothing once the thread has ended)."""
        with self.lock:
            if self.dispatcher is not None:
                getattr(self.dispatcher, signal).emit(*args)

    def stop(self, timeout: float = 5.0) -> None:
        self.send("stop")
        if self.thread is not threading.current_thread():
            self.thread.join(timeout)


_network: Optional[_NetworkThread] = None
_network_lock = threading.Lock()


def network_thread() -> _NetworkThread:
    """The running network thread, started now if needed."""
    global _network
    remember_gui_manager()
    with _network_lock:
        if _network is None or not _network.alive:
            _network = _NetworkThread()
            atexit.register(stop_network_thread)
            app = QCoreApplication.instance()
            if app is not None:  # before QGIS tears down what the thread's manager uses
                app.aboutToQuit.connect(stop_network_thread)
        return _network


def stop_network_thread() -> None:
    """End the network thread: requests in flight fail with `TransportError` (plugin unload, exit)."""
    global _network
    with _network_lock:
        net, _network = _network, None
    if net is not None:
        net.stop()
    atexit.unregister(stop_network_thread)


_gui_manager: Optional[QgsNetworkAccessManager] = None


def remember_gui_manager() -> None:
    """Note the GUI thread's network manager (call on the GUI thread: the plugin's initGui does): QGIS
    applies a change of the proxy settings to that one only; each request then follows it."""
    global _gui_manager
    if _on_gui_thread():
        _gui_manager = QgsNetworkAccessManager.instance()


def _follow_gui_proxy(manager: QgsNetworkAccessManager) -> None:
    """Give the network thread's manager the GUI manager's current proxy and exclusions (QGIS copies them
    into a thread's manager only when it is made)."""
    gui = _gui_manager
    if gui is None or sip.isdeleted(gui) or gui is manager:
        return
    wanted = (gui.fallbackProxy(), gui.excludeList(), gui.noProxyList())
    if wanted != (manager.fallbackProxy(), manager.excludeList(), manager.noProxyList()):
        # only on a change: Qt's HTTP thread reads these while requests run
        manager.setFallbackProxyAndExcludes(*wanted)


def _is_http_status_error(error) -> bool:
    """Qt reports 4xx/5xx answers as content errors (201-299) and server errors (401-499), except 400 and 418
    (ProtocolInvalidOperationError) and 407 (ProxyAuthenticationRequiredError) (Qt's statusCodeFromHttp, in
    qhttpthreaddelegate.cpp): they are HTTP answers, returned as responses like any other, their body the
    server's reason (QNetworkReply::NetworkError)."""
    error = QNetworkReply.NetworkError(int(error))
    return (200 < int(error) < 300 or 400 < int(error) < 500
            or error in (QNetworkReply.NetworkError.ProtocolInvalidOperationError,
                         QNetworkReply.NetworkError.ProxyAuthenticationRequiredError))


def _on_gui_thread() -> bool:
    app = QCoreApplication.instance()
    # the Python main thread is QGIS's GUI thread; QThread.currentThread() would make PyQt wrap (and watch)
    # a QThread made by C++ in every caller's thread
    return app is not None and threading.current_thread() is threading.main_thread()


class QgisTransport(Transport):
    """`Transport` over `QgsNetworkAccessManager`. `authcfg`: a `QgsAuthManager` configuration id for every
    URL, or a mapping {URL prefix: id} (the longest matching prefix wins; none: no authentication)."""

    def __init__(self, authcfg: Union[str, Dict[str, str], None] = None):
        if isinstance(authcfg, str):
            self.authcfgs = {"": authcfg} if authcfg else {}
        else:
            self.authcfgs = {k.rstrip("/"): v for k, v in (authcfg or {}).items() if v}

    def authcfg_for(self, url: str) -> str:
        matches = [prefix for prefix in self.authcfgs if url.startswith(prefix)]
        return self.authcfgs[max(matches, key=len)] if matches else ""

    def request(self, method, url, headers, body=None, timeout=60.0, cancel=None) -> HttpResponse:
        if QUrl(url).scheme() not in ("http", "https"):
            raise ValueError(f"engine URL must be http or https, not {url!r}")
        cancel = cancel or CancelToken()
        cancel.check()
        net = network_thread()
        job = _Job(method, url, dict(headers), body, max(1, int(timeout * 1000)), self.authcfg_for(url))
        net.send("start", job)
        remove = cancel.on_cancel(lambda: net.send("abort", job))
        released = []

        def close():
            remove()
            if not released:
                released.append(True)
                net.send("release", job)

        try:
            event = _next(job, net, cancel)
            if event[0] == "error":
                raise event[1]
            if event[0] != "headers":
                raise TransportError("the connection closed before an answer")
        except TransportError as exc:
            close()
            cancel.check()  # an abort we asked for is a cancellation
            raise _with_place(exc, f"{method} {url}") from None
        except BaseException:
            close()
            raise
        return HttpResponse(event[1], event[2], _chunks(job, net, cancel, url, close), close)


def _next(job: _Job, net: _NetworkThread, cancel: CancelToken):
    """The job's next event; raises `Cancelled` once `cancel` fires, `TransportError` if the thread ends."""
    gui = _on_gui_thread()
    while True:
        cancel.check()
        try:
            return job.events.get(timeout=POLL_S)
        except queue.Empty:
            if not net.alive:
                raise TransportError("GeoVLM's network thread stopped") from None
            if gui:
                QCoreApplication.processEvents()


def _chunks(job: _Job, net: _NetworkThread, cancel: CancelToken, url: str, close) -> Iterator[bytes]:
    try:
        while True:
            event = _next(job, net, cancel)
            if event[0] == "data":
                yield event[1]
            elif event[0] == "end":
                return
            elif event[0] == "error":
                cancel.check()
                raise _with_place(event[1], f"reading {url}")
    finally:
        close()


def _with_place(error: TransportError, place: str) -> TransportError:
    """`error` said with where it happened ("POST URL", "reading URL"), an `AnswerTimeout` (which the client
    reports as a slow engine, not an unreachable one) still one, with its seconds."""
    if isinstance(error, AnswerTimeout):
        return AnswerTimeout(f"{place}: {error}", error.seconds)
    return TransportError(f"{place}: {error}")
