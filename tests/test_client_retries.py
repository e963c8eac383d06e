"""The engine client against small standard-library HTTP servers on loopback that misbehave on cue:
429, 5xx, slow replies, dropped connections, broken streams; several endpoints; cancellation."""
import base64
import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from geovlm.core.client import AskJob, Cancelled, CancelToken, EngineClient, EngineError, image_size_of
from geovlm.core.profiles import get_profile
from geovlm.core.transport import HttpResponse, Transport, TransportError

GEOCHAT = get_profile("geochat")
BOX_TEXT = "a plane {<10><20><50><60>|<90>}"


def png(width=200, height=100, color=(10, 120, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, format="PNG")
    return buffer.getvalue()


class Script:
    """What a fake engine does, request by request: a list of actions consumed in order, then `default`."""

    def __init__(self, actions=(), default="ok", text=BOX_TEXT, delay=0.0, later_text=None, stand_in=False):
        self.actions = list(actions)
        self.stand_in = stand_in  # /v1/models says it serves the demo model, as `geovlm serve` without --model
        self.default = default
        self.text = text
        self.later_text = later_text  # the answer from the second request on (a sampled answer differs)
        self.delay = delay
        self.lock = threading.Lock()
        self.posts = []  # parsed bodies of the chat requests, in arrival order
        self.active = 0
        self.peak = 0

    def next_action(self):
        with self.lock:
            return self.actions.pop(0) if self.actions else self.default


class Handler(BaseHTTPRequestHandler):
    script: Script

    def log_message(self, *args):  # keep the test output quiet
        pass

    def _json(self, status, body, headers=()):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in headers:
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):  # noqa: N802 (http.server's name)
        if self.path == "/v1/models":
            self._json(200, {"object": "list", "data": [{"id": "fake", "geovlm": {"family": "geochat",
                                                                      "random_stand_in": self.script.stand_in}}]})
        else:
            self._json(200, {"status": "ok"})

    def do_POST(self):  # noqa: N802
        script = self.script
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with script.lock:
            script.posts.append(body)
            script.active += 1
            script.peak = max(script.peak, script.active)
        try:
            self._answer(script, script.next_action(), body)
        finally:
            with script.lock:
                script.active -= 1

    def _answer(self, script, action, body):
        if action == "drop":
            self.close_connection = True
            self.connection.shutdown(2)
            return
        if action == "slow":
            time.sleep(3.0)
        time.sleep(script.delay)
        if action in ("429", "503-wait"):
            wait = "0" if action == "429" else "30"
            self._json(int(action[:3]), {"error": {"message": "busy"}}, [("Retry-After", wait)])
        elif action in ("500", "503"):
            self._json(int(action), {"error": {"message": "it broke"}})
        elif action == "400":
            self._json(400, {"error": {"message": "bad image, says the server"}})
        elif body.get("stream"):
            text = script.later_text if script.later_text and len(script.posts) > 1 else script.text
            self._stream(text, broken=action == "stream-drop", failed=action == "stream-error")
        else:
            reply = {"choices": [{"index": 0, "message": {"role": "assistant", "content": script.text}}]}
            self._json(200, reply)

    def _stream(self, text, broken, failed):
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        pieces = [text[i : i + 4] for i in range(0, len(text), 4)]
        for n, piece in enumerate(pieces):
            if broken and n == 2:
                self.connection.shutdown(2)
                return
            if failed and n == 2:
                error = {"error": {"message": "the model failed", "type": "server_error", "code": 500}}
                self.wfile.write(f"data: {json.dumps(error)}\n\n".encode())
                return
            chunk = {"choices": [{"index": 0, "delta": {"content": piece}}]}
            self.wfile.write(f"data: {json.dumps(chunk)}\r\n\r\n".encode())
            self.wfile.flush()
        self.wfile.write(b": a comment line\n\ndata: [DONE]\n\n")


class FakeEngines:
    """Fake engines on free loopback ports: `start(script)` gives a URL, `stop(url)` closes its port."""

    def __init__(self):
        self.servers = {}

    def __call__(self, script):
        handler = type("ScriptedHandler", (Handler,), {"script": script})
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{server.server_address[1]}"
        self.servers[url] = server
        return url

    def stop(self, url):
        server = self.servers.pop(url)
        server.shutdown()
        server.server_close()


@pytest.fixture
def serve():
    engines = FakeEngines()
    yield engines
    for url in list(engines.servers):
        engines.stop(url)


def client_for(urls, **options):
    options.setdefault("backoff", 0.02)
    options.setdefault("timeout", 5.0)
    return EngineClient(urls, **options)


def test_request_body_and_parsed_answer(serve):
    script = Script()
    client = client_for(serve(script) + "/v1")
    image = png(200, 100)
    text, answer = client.ask(image, None, "the plane", task="refer")
    assert text == BOX_TEXT
    [body] = script.posts
    assert body["model"] == "fake"
    assert body["temperature"] == 0.0 and body["stream"] is False and body["stop"] == ["</s>"]
    image_part, text_part = body["messages"][0]["content"]
    assert base64.b64decode(image_part["image_url"]["url"].split(",", 1)[1]) == image
    assert text_part["text"] == "[refer] Give me the location of <p> the plane </p>"
    assert "<image>" not in json.dumps(body)
    # The family profile (read from /v1/models) parsed the box in pixels of the 200x100 image sent.
    [obj] = answer.objects
    xs = [p[0] for p in obj.polygon]
    assert min(xs) == pytest.approx(20, abs=1.5) and max(xs) == pytest.approx(100, abs=1.5)


def test_conversation_turns_keep_their_roles(serve):
    script = Script()
    client = client_for(serve(script), profile="llava15")
    turns = [("user", "what is this?"), ("assistant", "a field"), ("user", "and the road?")]
    client.ask(png(), (200, 100), turns)
    messages = script.posts[0]["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert messages[1]["content"] == "a field" and messages[2]["content"] == "and the road?"
    with pytest.raises(ValueError):
        client.ask(png(), (200, 100), [("assistant", "hi")])


def test_retries_429_and_5xx_with_backoff(serve):
    script = Script(["429", "500", "503"])
    client = client_for(serve(script), backoff=0.1)
    started = time.monotonic()
    text, _ = client.ask(png(), (200, 100), "q")
    assert text == BOX_TEXT and len(script.posts) == 4
    # 429 said Retry-After: 0; then 0.2 and 0.4 s nominal, jittered to at least half.
    assert time.monotonic() - started >= 0.3


def test_gives_up_after_the_attempts(serve):
    script = Script(default="503")
    client = client_for(serve(script), attempts=3)
    with pytest.raises(EngineError, match="after 3 attempts.*it broke") as caught:
        client.ask(png(), (200, 100), "q")
    assert caught.value.status == 503 and len(script.posts) == 3


def test_a_500_is_tried_once_more_and_the_endpoint_stays_up(serve):
    script = Script(default="500")
    client = client_for(serve(script), attempts=5)
    with pytest.raises(EngineError, match="it broke") as caught:
        client.ask(png(), (200, 100), "q")
    assert caught.value.status == 500 and len(script.posts) == 2
    assert client.endpoints[0].failures == 0  # it answered: it is not down


def test_an_error_event_from_the_model_is_not_retried(serve):
    script = Script(["stream-error"])
    client = client_for(serve(script))
    shown = []
    with pytest.raises(EngineError, match="the model failed") as caught:
        client.ask(png(), (200, 100), "q", on_token=shown.append, on_restart=lambda: shown.append("<restart>"))
    assert caught.value.status == 500 and len(script.posts) == 1 and "<restart>" not in shown


def test_client_errors_are_not_retried(serve):
    script = Script(["400"])
    client = client_for(serve(script))
    with pytest.raises(EngineError, match="bad image, says the server") as caught:
        client.ask(png(), (200, 100), "q")
    assert caught.value.status == 400 and len(script.posts) == 1


def test_dropped_connection_is_retried(serve):
    script = Script(["drop", "drop"])
    client = client_for(serve(script))
    assert client.ask(png(), (200, 100), "q")[0] == BOX_TEXT
    assert len(script.posts) == 3


def test_timeout_then_retry(serve):
    script = Script(["slow"])
    client = client_for(serve(script), timeout=0.5)
    started = time.monotonic()
    assert client.ask(png(), (200, 100), "q")[0] == BOX_TEXT
    assert len(script.posts) == 2 and time.monotonic() - started < 2.5


def test_a_stream_sent_again_never_repeats_shown_text(serve):
    script = Script(["stream-drop"])
    client = client_for(serve(script))
    shown = []
    text, answer = client.ask(
        png(), (200, 100), "q", on_token=shown.append, on_restart=lambda: shown.append("<restart>")
    )
    assert text == BOX_TEXT and len(answer.objects) == 1
    assert "".join(shown) == BOX_TEXT and "<restart>" not in shown  # the second stream went on where it broke
    assert all(body["stream"] for body in script.posts) and len(script.posts) == 2


def test_a_stream_that_takes_another_path_is_restarted_once(serve):
    other = "two ships {<5><5><15><15>|<0>}"
    script = Script(["stream-drop"], later_text=other)
    client = client_for(serve(script))
    shown = []
    text, _ = client.ask(png(), (200, 100), "q", on_token=shown.append, on_restart=lambda: shown.append("<restart>"))
    assert text == other and shown.count("<restart>") == 1
    restart = shown.index("<restart>")
    assert "".join(shown[:restart]) == BOX_TEXT[:8] and "".join(shown[restart + 1 :]) == other


def test_no_restart_is_shown_when_only_connections_failed(serve):
    url = serve(Script())
    client = client_for([url, "http://127.0.0.1:1"], max_concurrent=1)
    shown = []
    for _ in range(4):
        client.ask(png(), (200, 100), "q", on_token=shown.append, on_restart=lambda: shown.append("<restart>"))
    assert "<restart>" not in shown and "".join(shown) == BOX_TEXT * 4


@pytest.mark.parametrize(
    "behaviour, options",
    [
        ("slow", {"timeout": 30}),  # cancelled from another thread during a slow reply
        ("503-wait", {"max_backoff": 20}),  # during backoff: Retry-After 30, capped to max_backoff
    ],
)
def test_cancel_from_another_thread(serve, behaviour, options):
    script = Script(default=behaviour)
    client = client_for(serve(script), **options)
    token = CancelToken()
    threading.Timer(0.3, token.cancel).start()
    started = time.monotonic()
    with pytest.raises(Cancelled):
        client.ask(png(), (200, 100), "q", cancel=token)
    assert time.monotonic() - started < 1.5 and len(script.posts) == 1


def test_each_request_goes_to_the_least_busy_endpoint(serve):
    slow, fast = Script(delay=1.0), Script(delay=0.02)
    client = client_for([serve(slow), serve(fast)], max_concurrent=3)
    threads = []
    for i in range(6):
        threads.append(threading.Thread(target=client.ask, args=(png(), (200, 100), f"q{i}")))
        threads[-1].start()
        time.sleep(0.1)
    for thread in threads:
        thread.join()
    # Once the slow endpoint holds one request, the idle one is always less busy.
    assert len(slow.posts) <= 1 and len(fast.posts) >= 5


def test_concurrency_limit_per_endpoint(serve):
    scripts = [Script(delay=0.3), Script(delay=0.3)]
    client = client_for([serve(s) for s in scripts], max_concurrent=2)
    jobs = [AskJob(png(), (200, 100), f"q{i}") for i in range(8)]
    started = time.monotonic()
    results = client.ask_many(jobs)
    elapsed = time.monotonic() - started
    assert all(r[0] == BOX_TEXT for r in results)
    assert [len(s.posts) for s in scripts] == [4, 4]
    assert [s.peak for s in scripts] == [2, 2]  # never more than the limit on one endpoint
    assert 0.55 < elapsed < 1.2  # two rounds of four at once


def test_a_dead_endpoint_is_avoided_and_every_job_answered_once(serve):
    live = Script()
    dead = serve(Script())
    client = client_for([dead, serve(live)], max_concurrent=2)
    client.profile()  # learnt from the first endpoint while it was up
    serve.stop(dead)  # from now on its connections are refused
    calls = []
    jobs = [AskJob(png(), (200, 100), f"question {i}") for i in range(12)]
    results = client.ask_many(jobs, on_result=lambda i, r: calls.append(i))
    assert sorted(calls) == list(range(12))
    assert all(r[0] == BOX_TEXT for r in results)
    asked = sorted(body["messages"][0]["content"][1]["text"] for body in live.posts)
    assert asked == sorted(f"question {i}" for i in range(12))
    assert client.endpoints[0].failures >= 1


def test_replaceable_transport():
    """A transport that is not HTTP at all (as the QGIS one will be): whole bodies, no streaming."""

    class Canned(Transport):
        def __init__(self):
            self.seen = []

        def request(self, method, url, headers, body=None, timeout=60.0, cancel=None):
            self.seen.append((method, url, headers.get("Authorization")))
            if url.endswith("/v1/models"):
                data = {"data": [{"id": "canned"}]}
            else:
                data = {"choices": [{"message": {"content": BOX_TEXT}}]}
            return HttpResponse(200, {}, iter([json.dumps(data).encode()]), lambda: None)

    transport = Canned()
    client = EngineClient("https://engine.example:9000", api_key="k", profile="geochat", transport=transport)
    text, answer = client.ask(png(), (200, 100), "q")
    assert text == BOX_TEXT and len(answer.objects) == 1
    assert transport.seen == [
        ("GET", "https://engine.example:9000/v1/models", "Bearer k"),
        ("POST", "https://engine.example:9000/v1/chat/completions", "Bearer k"),
    ]


def test_engine_without_a_family_needs_a_profile():
    class NoFamily(Transport):
        def request(self, method, url, headers, body=None, timeout=60.0, cancel=None):
            return HttpResponse(200, {}, iter([b'{"data": [{"id": "llava-hf/llava-1.5-7b-hf"}]}']), lambda: None)

    with pytest.raises(EngineError, match="configure the profile"):
        EngineClient("http://127.0.0.1:1", transport=NoFamily()).ask(png(), (200, 100), "q")


def test_image_size_from_png_and_jpeg():
    assert image_size_of(png(321, 123)) == (321, 123)
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48)).save(buffer, format="JPEG")
    assert image_size_of(buffer.getvalue()) == (64, 48)
    with pytest.raises(ValueError):
        image_size_of(b"GIF89a....")


def test_the_command_line_prints_a_resent_stream_once(serve, capsys):
    from geovlm.cli import main

    url = serve(Script(["stream-drop"]))
    assert main(["engine-check", "--engine", url, "--max-tokens", "8"]) == 0
    out, err = capsys.readouterr()
    assert f"{BOX_TEXT}\n" in out and out.count(BOX_TEXT[:8]) == 1
    assert "[stream broke; answer restarted]" not in err


def test_ask_through_an_engine_marks_a_stream_that_restarted(serve, capsys, data_dir):
    from geovlm.cli import main

    other = "two ships {<5><5><15><15>|<0>}"
    url = serve(Script(["stream-drop"], later_text=other))
    raster = str(data_dir / "rasters" / "cogeo.tif")
    assert main(["ask", raster, "q", "--engine", url, "--window", "0,0,64,48", "--max-new-tokens", "8"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith(f"{BOX_TEXT[:8]}\n{other}\n") and err.count("[stream broke; answer restarted]") == 1


def test_retries_run_for_a_window_of_time_not_a_count(serve):
    script = Script(default="503")
    client = client_for(serve(script), backoff=0.01, max_backoff=0.05, retry_window=1.0)
    started = time.monotonic()
    with pytest.raises(EngineError, match=r"attempts in 1 s.*it broke"):
        client.ask(png(), (200, 100), "q")
    assert 0.8 < time.monotonic() - started < 3 and len(script.posts) > 8  # more than the old five attempts
    posts = len(script.posts)
    with pytest.raises(EngineError, match="attempts in 0 s"):
        client.ask(png(), (200, 100), "q", deadline_s=0.2)  # a job's own deadline
    assert len(script.posts) - posts < posts
    with pytest.raises(EngineError, match=r"gave up after 1 attempt in 0 s"):  # no retry window: one attempt
        client_for(serve(script), backoff=0.01, retry_window=0.0).ask(png(), (200, 100), "q")


def test_an_engine_reported_down_ends_the_retries_at_once(serve):
    script = Script(default="503")
    client = client_for(serve(script), backoff=0.5, max_backoff=2.0, retry_window=60)
    threading.Timer(0.5, client.engine_down, ["the local engine crashed (status -9); restarted 3 times"]).start()
    started = time.monotonic()
    with pytest.raises(EngineError, match=r"^the engine is down: the local engine crashed \(status -9\)"):
        client.ask(png(), (200, 100), "q")
    assert time.monotonic() - started < 1.5
    with pytest.raises(EngineError, match="the engine is down"):
        client.health()


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://host/", "localhost:8000", "http://", "http://h:port"])
def test_engine_urls_must_be_http(url):
    with pytest.raises(ValueError, match="engine URL"):
        EngineClient(url)


def test_the_first_failure_of_each_request_is_reported_at_once_and_retries_go_on():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"  # closed again: connections are refused
    calls = []
    client = client_for(url, profile="geochat", backoff=0.05, max_backoff=0.1, retry_window=0.8,
                        on_first_failure=lambda message, window: calls.append((message, window, time.monotonic())))
    started = time.monotonic()
    with pytest.raises(EngineError, match=r"attempts in 1 s") as raised:
        client.ask(png(), (200, 100), "q")
    assert time.monotonic() - started > 0.6  # the window was used all the same
    assert int(str(raised.value).split()[3]) > 3  # "gave up after N attempts": retried, not stopped
    [(message, window, when)] = calls  # once for the request, not once per attempt
    assert message == f"cannot reach {url}: connection refused" and window == 0.8
    assert when - started < 0.5
    with pytest.raises(EngineError):
        client.models()
    assert len(calls) == 2  # a new request reports its own first failure


def test_an_engine_reached_but_silent_past_the_timeout_is_said_slow_not_unreachable(serve):
    """A connection taken but no answer within `timeout`: each attempt is given up after it and retried
    within the window; the first-failure line and the final error say the engine sent no answer within the
    timeout, not that it cannot be reached (a slow model wants a longer timeout, not another URL)."""
    url = serve(Script(default="slow"))  # 3 s before any answer
    calls = []
    client = client_for(url, timeout=0.5, retry_window=1.2, on_first_failure=lambda *a: calls.append(a))
    started = time.monotonic()
    with pytest.raises(EngineError, match=rf"gave up after \d attempts in \d s: POST {url}/v1/chat/completions: "
                       r"no answer within 0.5 s$"):
        client.ask(png(), (200, 100), "q", profile=get_profile("geochat"))
    assert time.monotonic() - started < 2.5  # the window and one more attempt at most, not the engine's 3 s
    assert [message for message, _ in calls] == [f"{url} sent no answer within 0.5 s"]


def test_no_failure_is_reported_for_a_request_that_succeeds_at_once_or_is_not_retried(serve):
    calls = []
    client = client_for(serve(Script()), on_first_failure=lambda *a: calls.append(a))
    client.ask(png(), (200, 100), "q")
    assert calls == []
    client = client_for(serve(Script(default="503")), retry_window=0.0, on_first_failure=lambda *a: calls.append(a))
    with pytest.raises(EngineError):
        client.ask(png(), (200, 100), "q")
    assert calls == []
    client = client_for(serve(Script(["503"])), on_first_failure=lambda *a: calls.append(a))
    client.ask(png(), (200, 100), "q")
    assert [m for m, _ in calls] == [f"{client.endpoints[0].url} answered HTTP 503"]


def test_ask_warns_when_family_differs_from_the_engines_and_hints_when_nothing_was_read(serve, capsys, data_dir):
    from geovlm.cli import main

    url = serve(Script())  # reports geochat and answers in GeoChat's syntax
    raster = str(data_dir / "rasters" / "cogeo.tif")
    argv = ["ask", raster, "q", "--engine", url, "--window", "0,0,64,48", "--max-new-tokens", "8"]
    assert main([*argv, "--family", "earthdial"]) == 0
    err = capsys.readouterr().err
    warning = [line for line in err.splitlines() if "warning" in line]
    assert warning == ["geovlm: warning: --family earthdial, but the engine reports geochat: its answers are read "
                       "in earthdial's syntax (leave --family out to use the engine's)"]
    assert "0 objects" in err and "check that --family earthdial is the family of the model" in err
    assert main([*argv, "--family", "geochat"]) == 0
    err = capsys.readouterr().err
    assert "warning" not in err and "check that --family" not in err and "1 objects" in err


def test_ask_through_an_engine_serving_the_demo_model_says_so(serve, capsys, data_dir):
    from geovlm.cli import main
    from geovlm.cli.engine_cmds import STAND_IN_NOTE

    raster = str(data_dir / "rasters" / "cogeo.tif")
    argv = ["ask", raster, "q", "--window", "0,0,64,48", "--max-new-tokens", "8"]
    assert main([*argv, "--engine", serve(Script(text="noise <p> 1 0 {<", stand_in=True))]) == 0
    err = capsys.readouterr().err
    assert err.count(STAND_IN_NOTE) == 2  # before the answer and after it, as a local `ask` says it
    assert "check that --family" not in err  # the stand-in's noise is no family's syntax
    assert main([*argv, "--engine", serve(Script())]) == 0
    assert STAND_IN_NOTE not in capsys.readouterr().err


def test_a_malformed_stream_event_is_one_line_naming_the_engine():
    """An engine whose stream holds an event that is not JSON (a broken proxy, a garbage stand-in) is said as
    that engine's unreadable event and retried like any unreadable reply, never as a bare JSON error."""

    class Garbled(Transport):
        def __init__(self):
            self.posts = 0

        def request(self, method, url, headers, body=None, timeout=60.0, cancel=None):
            if url.endswith("/v1/models"):
                return HttpResponse(200, {}, iter([json.dumps({"data": [{"id": "g"}]}).encode()]), lambda: None)
            self.posts += 1
            events = b'data: {"choices": [{"delta": {"content": "hi"}}]}\n\ndata: {not json\n\ndata: [DONE]\n\n'
            return HttpResponse(200, {}, iter([events]), lambda: None)

    transport = Garbled()
    client = EngineClient("http://127.0.0.1:9", profile="geochat", transport=transport, retry_window=0.5,
                          backoff=0.01)
    with pytest.raises(EngineError, match=r"http://127\.0\.0\.1:9: unreadable stream event '\{not json'") as caught:
        client.ask(png(), (200, 100), "q", on_token=lambda text: None)
    assert "\n" not in str(caught.value) and transport.posts >= 2


def test_a_reply_that_is_no_completion_is_retried():
    """JSON that is not a completion (`{}`, a proxy's own object) is retried like an unreadable reply, so
    another try (or another engine) answers the request instead of failing it at once."""

    class Empty(Transport):
        def __init__(self, empty_replies):
            self.empty_replies = empty_replies
            self.posts = 0

        def request(self, method, url, headers, body=None, timeout=60.0, cancel=None):
            if url.endswith("/v1/models"):
                return HttpResponse(200, {}, iter([json.dumps({"data": [{"id": "e"}]}).encode()]), lambda: None)
            self.posts += 1
            data = {} if self.posts <= self.empty_replies else {"choices": [{"message": {"content": BOX_TEXT}}]}
            return HttpResponse(200, {}, iter([json.dumps(data).encode()]), lambda: None)

    once = Empty(1)
    client = EngineClient("http://127.0.0.1:9", profile="geochat", transport=once, backoff=0.01)
    assert client.ask(png(), (200, 100), "q")[0] == BOX_TEXT and once.posts == 2
    always = EngineClient("http://127.0.0.1:9", profile="geochat", retry_window=0.3, backoff=0.01,
                          transport=Empty(10**6))
    with pytest.raises(EngineError, match=r"http://127\.0\.0\.1:9: unexpected completion \{\}"):
        always.ask(png(), (200, 100), "q")


def test_giving_up_says_the_time_it_took_not_the_window():
    """A request that times out after the retry window has passed (a slow engine: the request timeout is
    longer than the window) is said with the seconds it took, not those of the window."""

    class Slow(Transport):
        def request(self, method, url, headers, body=None, timeout=60.0, cancel=None):
            if url.endswith("/v1/models"):
                return HttpResponse(200, {}, iter([json.dumps({"data": [{"id": "s"}]}).encode()]), lambda: None)
            time.sleep(2.2)  # as a request timeout would
            raise TransportError(f"{method} {url}: timed out")

    client = EngineClient("http://127.0.0.1:9", profile="geochat", transport=Slow(), retry_window=0.5)
    with pytest.raises(EngineError, match=r"gave up after 1 attempt in 2 s: POST .*: timed out"):
        client.ask(png(), (200, 100), "q")
