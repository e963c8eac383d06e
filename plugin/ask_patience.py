"""How long a question asked in the dock waits for an engine that does not answer, and what the dock says meanwhile.

A bulk job rides out an engine restart: the client retries for its whole window (`core.client`,
DEFAULT_RETRY_WINDOW_S, 120 s; the local engine's start timeout plus 30 s), and each attempt may wait the
settings' request timeout (300 s) for data. A person at the dock should not wait like that in silence for an
engine that accepts connections and then drops every request, or never answers. So a question from the dock:

- says each failed attempt in the transcript as it happens (the engine by its address, the cause, the attempt
  about to be made), well within a second of it;
- is retried for INTERACTIVE_RETRY_S seconds, not the client's window (no attempt starts later);
- gives up on an attempt whose reply has not begun within REPLY_WAIT_S seconds (`PatientTransport`), and
  retries it as a dropped connection.

The bounds come from the response-time limits of interactive systems (Nielsen, *Usability Engineering*, 1993,
ch. 5.5: about 10 s is the limit for keeping a user's attention on a dialogue; beyond it, feedback must say what
is happening, and the user wants to get on with something else). The first retry notice comes within that
limit's first second. INTERACTIVE_RETRY_S = 15 s is the 10 s limit plus the backoff's slack: the client's jittered
backoff (0.25 s doubling, 0.5-1.5 x) fits about six attempts in it, enough to ride out a dropped connection, a
proxy reloading or a moment of 503 from a full server, and then the dock gives the question back (it stays in
the box; Send asks again) instead of holding it for two minutes. REPLY_WAIT_S = 10 s bounds only the wait for the
reply to begin (its status line), never the answer's tokens: an engine that is up sends the status line of a
streamed reply at once, before the model's first token (`geovlm serve` sends the role chunk first,
engine/server.py `_sse`; vLLM's OpenAI server does the same), and answers /v1/models in milliseconds, so ten
seconds without one means the engine is not answering (a hung process, a proxy holding the connection), not that
the model is slow. The waits between tokens keep the settings' request timeout. With an engine that never answers,
the dock gives up after about 20 s (the connection's two /v1/models tries, `engine_access.PROBE_ATTEMPTS`, or
two chat attempts); with one that drops every request, within 15 s (no attempt starts later: 7 attempts in 11 s,
measured in QGIS with a loopback engine that closes each connection).
"""
from __future__ import annotations

import threading
import urllib.parse
from typing import Callable, Optional

from ..core.client import RETRY_STATUSES
from ..core.transport import Cancelled, CancelToken, HttpResponse, Transport, TransportError

INTERACTIVE_RETRY_S = 15.0  # a dock question's retries stop after this (seconds; a bulk job: the client's window)
REPLY_WAIT_S = 10.0  # an attempt whose reply has not begun after this (seconds) counts as dropped


def engine_address(url: str) -> str:
    """The engine part of a request URL: scheme://host:port (what the dock names the engine by)."""
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.netloc else url


def retry_line(url: str, reason: str, attempt: int) -> str:
    """What the dock shows while it retries: "engine http://HOST:PORT not answering (<reason>), retrying (2)…",
    `attempt` being the attempt about to be made (2 after the first failure)."""
    return f"engine {engine_address(url)} not answering ({reason}), retrying ({attempt})…"


class PatientTransport(Transport):
    """Wraps `inner` (a `core.transport.Transport`) for a question asked in the dock.

    An attempt whose reply (status line and headers) has not begun within `reply_wait_s` seconds is abandoned
    and raises `TransportError` ("no reply within 10 s"), which the client retries as a dropped connection; the
    reply's body (the streamed tokens) is not bounded here. Each failed attempt (no reply, a dropped
    connection, or an HTTP status the client retries: 429, 500, 502, 503, 504) is told to
    `on_failure(url, reason, failures)` at once, from the requesting thread: `failures` counts the failed
    attempts since the last reply that was not one of those (so `failures + 1` is the attempt about to be
    made). A cancellation of the request's own `cancel` token (Stop) still raises `Cancelled`."""

    def __init__(self, inner: Transport, on_failure: Callable[[str, str, int], None],
                 reply_wait_s: float = REPLY_WAIT_S):
        self.inner, self.on_failure, self.reply_wait_s = inner, on_failure, reply_wait_s
        self.failures = 0
        self._lock = threading.Lock()

    def request(self, method, url, headers, body=None, timeout=60.0, cancel: Optional[CancelToken] = None):
        outer = cancel or CancelToken()
        outer.check()
        attempt = CancelToken()  # cancelled by Stop (outer), or before the reply begins by the timer
        unlink = outer.on_cancel(attempt.cancel)
        state = {"answered": False, "expired": False}

        def expire():
            with self._lock:
                if state["answered"]:
                    return
                state["expired"] = True
            attempt.cancel()

        timer = threading.Timer(self.reply_wait_s, expire)
        timer.daemon = True
        timer.start()
        silent = f"no reply within {self.reply_wait_s:g} s"
        try:
            response = self.inner.request(method, url, headers, body, timeout, attempt)
        except Cancelled:
            unlink()
            if outer.cancelled or not state["expired"]:
                raise
            self._failed(url, silent)
            raise TransportError(f"{method} {url}: {silent}") from None
        except TransportError as exc:
            unlink()
            self._failed(url, _reason(str(exc), method, url))
            raise
        except BaseException:
            unlink()
            raise
        finally:
            timer.cancel()
        with self._lock:
            state["answered"] = True
            expired = state["expired"]
        if expired and not outer.cancelled:  # the timer fired as the reply came: the attempt was aborted
            response.close()
            unlink()
            self._failed(url, silent)
            raise TransportError(f"{method} {url}: {silent}")
        if response.status in RETRY_STATUSES:
            self._failed(url, f"HTTP {response.status}")
        else:
            with self._lock:
                self.failures = 0

        def close():
            unlink()
            response.close()

        return HttpResponse(response.status, response.headers, response.chunks(), close)

    def _failed(self, url: str, reason: str) -> None:
        with self._lock:
            self.failures += 1
            failures = self.failures
        self.on_failure(url, reason, failures)


def _reason(text: str, method: str, url: str) -> str:
    """The cause in a transport's error line, without the request it names ("POST http://...: ")."""
    for prefix in (f"{method} {url}: ", f"reading {url}: "):
        if text.startswith(prefix):
            text = text[len(prefix):]
    text = " ".join(text.split())
    return (text[:97] + "...") if len(text) > 100 else text or "no reply"
