"""HTTP transports for the engine client (standard library only).

A transport turns one HTTP request into an `HttpResponse` whose body can be read in chunks as it arrives.
The default is built on `http.client`; the QGIS side can plug in one built on `QgsBlockingNetworkRequest`
(proxies, authentication) by implementing `Transport.request`. A transport that can only deliver the whole
body at once just yields it as one chunk: streaming then degrades to one update, nothing breaks.
"""
from __future__ import annotations

import http.client
import socket
import threading
import urllib.parse
from typing import Callable, Dict, Iterator, List, Optional


class Cancelled(Exception):
    """The request was cancelled through its `CancelToken`."""


class TransportError(Exception):
    """No HTTP answer came back: refused, reset, dropped or timed out. Always worth a retry elsewhere."""


class AnswerTimeout(TransportError):
    """The engine took the connection and the request but sent nothing for `seconds` (the request timeout):
    slow (a long answer, a busy model), not unreachable."""

    def __init__(self, message: str, seconds: float):
        super().__init__(message)
        self.seconds = seconds


class CancelToken:
    """Cancels a request from any thread: wakes backoff sleeps and aborts the connection in use."""

    def __init__(self):
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._callbacks: List[Callable[[], None]] = []

    @property
    def cancelled(self) -> bool:
        """Whether `cancel` has been called."""
        return self._event.is_set()

    def cancel(self) -> None:
        """Cancel (once; later calls do nothing more) and run the callbacks registered with `on_cancel`."""
        with self._lock:
            self._event.set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()

    def check(self) -> None:
        """Raise `Cancelled` once the token is cancelled."""
        if self._event.is_set():
            raise Cancelled("request cancelled")

    def sleep(self, seconds: float) -> None:
        """Sleep, but raise `Cancelled` at once when the token is cancelled meanwhile."""
        if self._event.wait(max(0.0, seconds)):
            raise Cancelled("request cancelled")

    def on_cancel(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Run `callback` on cancellation (at once if already cancelled); returns its remover."""
        with self._lock:
            if not self._event.is_set():
                self._callbacks.append(callback)
                return lambda: self._remove(callback)
        callback()
        return lambda: None

    def _remove(self, callback) -> None:
        with self._lock:
            if callback in self._callbacks:
                self._callbacks.remove(callback)


class HttpResponse:
    """A status, lower-cased headers and a body read in chunks. `close` must be called (or use `with`)."""

    def __init__(self, status: int, headers: Dict[str, str], chunks: Iterator[bytes], close: Callable):
        self.status = status
        self.headers = headers
        self._chunks = chunks
        self._close = close

    def chunks(self) -> Iterator[bytes]:
        """The body's bytes as they arrive (one pass only)."""
        return self._chunks

    def read(self) -> bytes:
        """The rest of the body, whole."""
        return b"".join(self._chunks)

    def close(self) -> None:
        """Release the connection."""
        self._close()

    def __enter__(self) -> HttpResponse:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Transport:
    """The interface: one request, one response. Raise `TransportError` when no HTTP answer came back and
    `Cancelled` when `cancel` fired; an HTTP error status is a normal response."""

    def request(
        self,
        method: str,
        url: str,
        headers: Dict[str, str],
        body: Optional[bytes] = None,
        timeout: float = 60.0,
        cancel: Optional[CancelToken] = None,
    ) -> HttpResponse:
        """Send `body` (bytes or None) to `url` and return the response once its status and headers are in;
        `timeout` in seconds bounds the connect and each wait for data."""
        raise NotImplementedError


class HttpClientTransport(Transport):
    """`http.client` over plain HTTP or HTTPS. `timeout` bounds the connect and every wait for data; a
    cancellation shuts the socket down, which wakes a blocked read at once."""

    chunk_size = 16384

    def request(self, method, url, headers, body=None, timeout=60.0, cancel=None) -> HttpResponse:
        """`Transport.request`; ValueError for a URL that is not http or https."""
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"engine URL must be http or https, not {url!r}")
        cancel = cancel or CancelToken()
        cancel.check()
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        conn_class = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        conn = conn_class(parts.hostname, parts.port, timeout=timeout)
        lock = threading.Lock()
        aborted = []

        def abort():
            with lock:
                aborted.append(True)
                if conn.sock is not None:
                    try:
                        conn.sock.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass  # already closed by the peer

        remove = cancel.on_cancel(abort)

        def close():
            remove()
            conn.close()

        connected = False
        try:
            conn.connect()
            connected = True
            with lock:
                if aborted:
                    raise Cancelled("request cancelled")
            conn.request(method, target, body=body, headers=headers)
            raw = conn.getresponse()
        except Cancelled:
            close()
            raise
        except (OSError, http.client.HTTPException) as exc:
            close()
            cancel.check()
            if connected and isinstance(exc, socket.timeout):
                raise AnswerTimeout(f"{method} {url}: no answer within {timeout:g} s", timeout) from exc
            raise TransportError(f"{method} {url}: {exc or type(exc).__name__}") from exc
        response_headers = {k.lower(): v for k, v in raw.getheaders()}
        return HttpResponse(raw.status, response_headers, self._chunks(raw, url, cancel, timeout), close)

    def _chunks(self, raw: http.client.HTTPResponse, url: str, cancel: CancelToken,
                timeout: float) -> Iterator[bytes]:
        while True:
            try:
                chunk = raw.read1(self.chunk_size)
            except (OSError, http.client.HTTPException) as exc:
                cancel.check()
                if isinstance(exc, socket.timeout):
                    raise AnswerTimeout(f"reading {url}: no data within {timeout:g} s", timeout) from exc
                raise TransportError(f"reading {url}: {exc or type(exc).__name__}") from exc
            cancel.check()
            if not chunk:
                if raw.length:  # Content-Length announced more than came
                    raise TransportError(f"reading {url}: connection closed early")
                return
            yield chunk
