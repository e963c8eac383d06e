"""A `core.transport.Transport` on QGIS's network stack, for the engine client inside QGIS.

Requests go through `QgsNetworkAccessManager.instance()` of the calling thread (QGIS gives every thread its
own, set up like the GUI thread's), so the user's proxy, SSL exceptions and certificate settings apply, and a
`QgsAuthManager` configuration (`authcfg`: Basic, API header, PKI...) is applied to each request with
`updateNetworkRequest`/`updateNetworkReply`. The body streams: the response's chunks are read as they
arrive by running a local `QEventLoop` in the calling thread, so call it from a worker thread or `QgsTask`
(on the GUI thread it works but nests an event loop). A `CancelToken` cancelled from any thread aborts the
reply at once (a queued signal into the request's thread).

Timeouts: `timeout` (seconds) bounds every wait for data (Qt's transfer timeout), and it replaces QGIS's
global network timeout for these requests (Settings ▸ Network, 60 s by default, too short for a model
thinking before its first token) by adjusting the timer QGIS attaches to each reply.
"""
from __future__ import annotations

import threading
from typing import Dict, Iterator, Optional, Union

from qgis.core import QgsApplication, QgsNetworkAccessManager
from qgis.PyQt import sip
from qgis.PyQt.QtCore import QByteArray, QEventLoop, QObject, QTimer, QUrl, pyqtSignal
from qgis.PyQt.QtNetwork import QNetworkReply, QNetworkRequest

from ..core.client import EngineError
from ..core.transport import Cancelled, CancelToken, HttpResponse, Transport, TransportError

QGIS_TIMEOUT_TIMER = "timeoutTimer"  # the QTimer QgsNetworkAccessManager::createRequest parents to a reply


class AuthConfigError(EngineError):
    """A `QgsAuthManager` configuration could not be applied to a request (unknown id, locked store...)."""


class _Waker(QObject):
    """Lives in the request's thread; `fire` emitted from another thread arrives there queued."""

    fire = pyqtSignal()


class _Reply:
    """One QNetworkReply driven from its own thread: waits for headers, then hands out chunks."""

    def __init__(self, reply: QNetworkReply, cancel: CancelToken, url: str, timeout_ms: int):
        self.reply = reply
        self.url = url
        self.cancel = cancel
        self.loop = QEventLoop()
        self.waker = _Waker()
        self._lock = threading.Lock()  # a cancel from another thread never meets a waker being deleted
        self._closed = False
        reply.readyRead.connect(self.loop.quit)
        reply.finished.connect(self.loop.quit)
        reply.metaDataChanged.connect(self.loop.quit)
        self.waker.fire.connect(reply.abort)
        self.waker.fire.connect(self.loop.quit)
        self._remove = cancel.on_cancel(self._wake)
        timer = reply.findChild(QTimer, QGIS_TIMEOUT_TIMER)
        if timer is not None and timer.isActive():
            timer.start(timeout_ms)  # restarted by QGIS on progress, with this interval from now on

    def _wake(self) -> None:
        with self._lock:
            if not self._closed:
                self.waker.fire.emit()  # queued: the reply is aborted in its own thread

    def _status(self) -> Optional[int]:
        status = self.reply.attribute(QNetworkRequest.Attribute.HttpStatusCodeAttribute)
        return int(status) if status is not None else None

    def wait_headers(self) -> int:
        while self._status() is None and not self.reply.isFinished():
            self.loop.exec()
        self.cancel.check()
        status = self._status()
        if status is None:
            raise TransportError(self._error_text())
        return status

    def headers(self) -> Dict[str, str]:
        return {bytes(k).decode("latin-1").lower(): bytes(v).decode("latin-1")
                for k, v in self.reply.rawHeaderPairs()}

    def chunks(self) -> Iterator[bytes]:
        while True:
            self.cancel.check()
            if self.reply.bytesAvailable() > 0:
                yield bytes(self.reply.readAll())
                continue
            if self.reply.isFinished():
                error = self.reply.error()
                if error != QNetworkReply.NetworkError.NoError and not _is_http_status_error(error):
                    self.cancel.check()
                    raise TransportError(f"reading {self.url}: {self._error_text()}")
                return
            self.loop.exec()

    def _error_text(self) -> str:
        if self.reply.error() == QNetworkReply.NetworkError.OperationCanceledError:
            return "timed out or aborted"
        return self.reply.errorString() or "no answer"

    def close(self) -> None:
        self._remove()
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if not self.reply.isFinished():
            self.reply.abort()
        sip.delete(self.reply)  # in its own thread, which may have no event loop for deleteLater
        sip.delete(self.waker)


def _is_http_status_error(error) -> bool:
    """Qt reports 4xx/5xx answers as content errors (201-299) and server errors (401-499): they are HTTP
    answers, returned as responses like any other (QNetworkReply::NetworkError)."""
    return 200 < int(error) < 300 or 400 < int(error) < 500


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
        qurl = QUrl(url)
        if qurl.scheme() not in ("http", "https"):
            raise ValueError(f"engine URL must be http or https, not {url!r}")
        cancel = cancel or CancelToken()
        cancel.check()
        timeout_ms = max(1, int(timeout * 1000))
        request = QNetworkRequest(qurl)
        for name, value in headers.items():
            request.setRawHeader(name.encode("latin-1"), value.encode("latin-1"))
        request.setAttribute(QNetworkRequest.Attribute.CacheLoadControlAttribute,
                             QNetworkRequest.CacheLoadControl.AlwaysNetwork)
        request.setAttribute(QNetworkRequest.Attribute.CacheSaveControlAttribute, False)
        request.setTransferTimeout(timeout_ms)
        authcfg = self.authcfg_for(url)
        auth = QgsApplication.authManager()
        if authcfg:
            ok = auth.updateNetworkRequest(request, authcfg)
            if isinstance(ok, tuple):
                ok = ok[0]
            if not ok:
                raise AuthConfigError(f"the authentication configuration {authcfg!r} could not be applied")
        manager = QgsNetworkAccessManager.instance()
        data = QByteArray(body or b"")
        verb = method.upper().encode("ascii")
        reply = manager.sendCustomRequest(request, verb, data) if body is not None else (
            manager.get(request) if verb == b"GET" else manager.sendCustomRequest(request, verb))
        if authcfg:
            auth.updateNetworkReply(reply, authcfg)
        stream = _Reply(reply, cancel, url, timeout_ms)
        try:
            status = stream.wait_headers()
        except (Cancelled, TransportError) as exc:
            stream.close()
            if isinstance(exc, TransportError):
                raise TransportError(f"{method} {url}: {exc}") from None
            raise
        return HttpResponse(status, stream.headers(), stream.chunks(), stream.close)
