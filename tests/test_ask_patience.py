"""The dock's patience with an engine (plugin/ask_patience.py): an attempt whose reply does not begin in time
fails as a dropped one (retried by the client) and is told at once; Stop while waiting is still a stop."""
import socket
import threading
import time

import pytest

from geovlm.core.transport import Cancelled, CancelToken, HttpClientTransport, TransportError
from geovlm.plugin.ask_patience import PatientTransport, retry_line


@pytest.fixture()
def silent_url():
    """An engine that accepts connections and never answers."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        yield f"http://127.0.0.1:{silent.getsockname()[1]}"


def test_a_reply_that_does_not_begin_in_time_is_a_failed_attempt_told_at_once(silent_url):
    told = []
    transport = PatientTransport(HttpClientTransport(), lambda *args: told.append(args), reply_wait_s=0.3)
    for attempt in (1, 2):
        started = time.monotonic()
        with pytest.raises(TransportError, match="no reply within 0.3 s"):
            transport.request("GET", silent_url + "/v1/models", {}, timeout=60.0)
        assert time.monotonic() - started < 2.0  # not the 60 s request timeout
        assert told[-1] == (silent_url + "/v1/models", "no reply within 0.3 s", attempt)
    assert retry_line(*told[-1][:2], told[-1][2] + 1) == (
        f"engine {silent_url} not answering (no reply within 0.3 s), retrying (3)…")


def test_stop_while_waiting_for_the_reply_is_a_stop_not_a_failure(silent_url):
    told = []
    transport = PatientTransport(HttpClientTransport(), lambda *args: told.append(args), reply_wait_s=30.0)
    stop = CancelToken()
    threading.Timer(0.2, stop.cancel).start()
    started = time.monotonic()
    with pytest.raises(Cancelled):
        transport.request("GET", silent_url + "/v1/models", {}, timeout=60.0, cancel=stop)
    assert time.monotonic() - started < 2.0 and told == []
