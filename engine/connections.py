"""HTTP/1.1 connections that cannot starve the server: a deadline for headers, a bounded connection count.

uvicorn's h11 protocol waits for a request's headers without a limit and counts every open connection
against `limit_concurrency`, so a few hundred clients that open a connection and never finish their headers
("slowloris") make every request, /health included, answer 503. `GuardedH11Protocol` closes a connection
that has not sent complete headers within `header_timeout_s` of its start or of the end of its previous
response (uvicorn's own keep-alive timer covers an idle connection after a response, and is then replaced
by this deadline as soon as a byte arrives); and when more than `max_connections` are open it closes the one
that has waited longest for its headers, so that a new client always gets in. Requests in progress are never
cut: the app bounds their bodies (`body_timeout_s`) and generation (`request_timeout_s`).
"""
from __future__ import annotations

import logging
import time
from typing import Optional

from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("geovlm.engine")


def guarded_protocol(header_timeout_s: float, max_connections: int) -> type:
    """An `H11Protocol` subclass with these limits (seconds, connections), for `uvicorn.Config(http=...)`.
    ValueError for a timeout that is not positive or fewer than 1 connection."""
    if header_timeout_s <= 0 or max_connections < 1:
        raise ValueError("header_timeout_s must be positive and max_connections at least 1")

    class GuardedH11Protocol(H11Protocol):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.limit_concurrency = None  # open connections are bounded here, requests by the app
            self._waiting_since: Optional[float] = None  # monotonic time it began to wait for headers
            self._header_timer = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._await_headers()
            if len(self.connections) > max_connections:
                self._evict()

        def connection_lost(self, exc) -> None:
            self._stop_waiting()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self._request_active():
                self._stop_waiting()
            elif self._header_timer is None and not self.transport.is_closing():
                self._await_headers()  # the first bytes of the next request on a kept-alive connection

        def on_response_complete(self) -> None:
            self._waiting_since = time.monotonic()  # idle: the first to go when connections run out
            super().on_response_complete()  # arms uvicorn's keep-alive timer; may start a pipelined request
            if self._request_active():
                self._stop_waiting()

        def _request_active(self) -> bool:
            return self.cycle is not None and not self.cycle.response_complete

        def _await_headers(self) -> None:
            self._waiting_since = time.monotonic()
            self._header_timer = self.loop.call_later(header_timeout_s, self._headers_late)

        def _stop_waiting(self) -> None:
            self._waiting_since = None
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_late(self) -> None:
            self._header_timer = None
            if self._request_active() or self.transport.is_closing():
                self._waiting_since = None
                return
            log.info("%s: no complete request headers within %.0f s; connection closed",
                     self.client[0] if self.client else "-", header_timeout_s)
            self._close()

        def _evict(self) -> None:
            waiting = [c for c in self.connections if getattr(c, "_waiting_since", None) is not None]
            if not waiting:
                log.warning("%d connections are open, all with requests in progress; refusing one",
                            len(self.connections))
                self._close()
                return
            oldest = min(waiting, key=lambda c: c._waiting_since)
            oldest._close()

        def _close(self) -> None:
            self._stop_waiting()
            self.connections.discard(self)
            if not self.transport.is_closing():
                self.transport.close()

    return GuardedH11Protocol
