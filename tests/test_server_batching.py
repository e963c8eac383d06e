"""The batcher and the app in-process, on the real demo pipeline: requests in one window, streamed or not,
share one batched generation, a failing request fails alone, a cancelled request is skipped, a full queue
refuses, a slow request times out with 504 while the server goes on serving."""
import base64
import contextlib
import io
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from geovlm.engine.batching import Batcher, Busy
from geovlm.models.pipeline import GenRequest


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    from geovlm.models.demo_model import write_demo_model
    from geovlm.models.pipeline import VlmPipeline

    path = tmp_path_factory.getbasetemp() / "demo-model"
    if not (path / "geovlm.json").is_file():
        write_demo_model(path, seed=0)
    return VlmPipeline.load(path, providers=["CPUExecutionProvider"])


class Recorder:
    """The pipeline, with a log of the calls the batcher makes and a gate that holds `stream_batch` (a
    model as slow as the test needs) until it is opened."""

    def __init__(self, pipeline):
        self.pipeline = pipeline
        self.calls = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def info(self):
        return self.pipeline.info()

    def stream_batch(self, requests):
        self.calls.append(("batch", len(requests)))
        self.entered.set()
        assert self.gate.wait(60)
        return self.pipeline.stream_batch(requests)


def count_steps(recorder) -> list:
    """A list that collects each item of the recorder's `stream_batch` as the batcher takes it."""
    steps = []
    stream_batch = recorder.stream_batch

    def counted(requests):
        for item in stream_batch(requests):
            steps.append(item)
            yield item

    recorder.stream_batch = counted
    return steps


def image(seed):
    return np.random.default_rng(seed).integers(0, 256, (60 + seed, 90, 3), dtype=np.uint8)


def gen(seed, tokens=6):
    return GenRequest(image(seed), [("user", f"Describe the image {seed}")], max_new_tokens=tokens)


@pytest.fixture
def batcher_for(pipeline):
    made = []

    def make(**options):
        recorder = Recorder(pipeline)
        batcher = Batcher(recorder, **options)
        batcher.start()
        made.append(batcher)
        return batcher, recorder

    yield make
    for batcher in made:
        batcher.stop()


def test_requests_within_the_window_share_a_batch(batcher_for, pipeline):
    batcher, recorder = batcher_for(window_s=0.3, max_batch=4)
    jobs = [batcher.submit(gen(i)) for i in range(6)]
    results = [job.future.result(60) for job in jobs]
    assert recorder.calls == [("batch", 4), ("batch", 2)]
    assert [job.batch_size for job in jobs] == [4, 4, 4, 4, 2, 2]
    alone = [pipeline.generate_batch([gen(i)])[0].text for i in (0, 5)]
    assert [results[0].text, results[5].text] == alone


def test_streams_share_a_batch_with_the_others(batcher_for, pipeline):
    batcher, recorder = batcher_for(window_s=0.3, max_batch=8)
    streams = [batcher.submit_stream(gen(i, tokens=8)) for i in range(3)]
    plain = batcher.submit(gen(3, tokens=8))
    pieces = [list(batcher.pieces(job, timeout=60)) for job in streams]
    assert recorder.calls == [("batch", 4)]
    alone = [pipeline.generate_batch([gen(i, tokens=8)])[0] for i in range(4)]
    assert ["".join(p) for p in pieces] == [r.text for r in alone[:3]]
    assert all(len(p) > 2 for p in pieces)  # text in pieces, as decoded
    assert [p[-1].result.tokens for p in pieces] == [r.tokens for r in alone[:3]]  # the closing StreamDone
    assert plain.future.result(60).text == alone[3].text and plain.batch_size == 4


def test_a_short_answer_ends_while_its_batch_decodes_on(batcher_for, pipeline):
    """A 3-token request batched with a 600-token one gets its closing StreamDone (and a plain request its result)
    after its own last step, not when the batch ends: counted in the batch's steps, so not timing-dependent."""
    batcher, recorder = batcher_for(window_s=0.3, max_batch=4)
    steps = count_steps(recorder)
    short, plain = batcher.submit_stream(gen(1, tokens=3)), batcher.submit(gen(2, tokens=4))
    long = batcher.submit_stream(gen(3, tokens=600))
    short_pieces = list(batcher.pieces(short, timeout=60))
    long_pieces = list(batcher.pieces(long, timeout=60))
    assert recorder.calls == [("batch", 3)]
    ends = [k for k, item in enumerate(steps) for piece in item if getattr(piece, "result", None)]
    assert short_pieces[-1].result.tokens == 3 and len(ends) == 3  # one StreamDone per request
    assert ends[0] < 10 < ends[-1] == len(steps) - 1  # the short one's after its own steps, the long one's last
    assert plain.future.result(60).tokens == 4
    alone = pipeline.generate_batch([gen(i, tokens=t) for i, t in ((1, 3), (3, 600))])
    assert "".join(short_pieces) == alone[0].text and "".join(long_pieces) == alone[1].text
    assert long_pieces[-1].result.tokens == alone[1].tokens > 10
    assert short_pieces[-1].result.timings["decode"] < long_pieces[-1].result.timings["decode"]


def test_cancelled_jobs_are_skipped_and_a_full_queue_refuses(batcher_for):
    batcher, recorder = batcher_for(window_s=0.0, max_queue=2)
    recorder.gate.clear()
    busy = batcher.submit(gen(1))
    assert recorder.entered.wait(60)  # the worker holds it now
    skipped, kept = batcher.submit(gen(2)), batcher.submit(gen(3))
    with pytest.raises(Busy):
        batcher.submit(gen(4))
    skipped.cancel()
    recorder.gate.set()
    assert busy.future.result(60).tokens > 0 and kept.future.result(60).tokens > 0
    assert skipped.future.cancelled()
    assert recorder.calls == [("batch", 1), ("batch", 1)]


def test_timeout_is_a_504_and_the_server_goes_on(pipeline):
    from fastapi.testclient import TestClient

    from geovlm.engine.server import Settings, create_app

    buffer = io.BytesIO()
    Image.fromarray(image(0)).save(buffer, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "Describe"}]
    body = {"messages": [{"role": "user", "content": content}], "max_tokens": 4}
    recorder = Recorder(pipeline)
    recorder.gate.clear()
    with TestClient(create_app(recorder, Settings(request_timeout_s=0.5))) as client:
        slow = client.post("/v1/chat/completions", json=body)
        assert slow.status_code == 504 and slow.json()["error"]["type"] == "timeout_error"
        recorder.gate.set()
        reply = client.post("/v1/chat/completions", json=body)
        assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] <= 4
        missing = client.get("/v2/nothing")
        assert missing.status_code == 404 and "no route" in missing.json()["error"]["message"]


def chat_body(picture=0, text="Describe", **options):
    buffer = io.BytesIO()
    Image.fromarray(image(picture)).save(buffer, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": text}]
    return {"messages": [{"role": "user", "content": content}], "max_tokens": 4, **options}


def test_a_bad_seed_is_a_400_and_spares_its_window(pipeline):
    from fastapi.testclient import TestClient

    from geovlm.engine.server import Settings, create_app

    with TestClient(create_app(pipeline, Settings(batch_window_s=0.3))) as client:
        with ThreadPoolExecutor(2) as pool:
            good, bad = pool.map(
                lambda body: client.post("/v1/chat/completions", json=body),
                [chat_body(1, seed=7), chat_body(2, seed=2**70)],
            )
    assert good.status_code == 200 and good.json()["choices"][0]["message"]["content"]
    assert bad.status_code == 400 and "seed" in bad.json()["error"]["message"]


def test_a_failing_request_fails_alone(batcher_for, pipeline):
    batcher, recorder = batcher_for(window_s=0.3, max_batch=4)
    bad = gen(2)
    bad.seed = 2**70  # past the protocol's check: torch refuses it inside the batch
    jobs = [batcher.submit(r) for r in (gen(1), bad, gen(3))]
    with pytest.raises(ValueError):
        jobs[1].future.result(60)
    texts = [jobs[i].future.result(60).text for i in (0, 2)]
    assert texts == [pipeline.generate_batch([gen(i)])[0].text for i in (1, 3)]
    assert recorder.calls[0] == ("batch", 3) and len(recorder.calls) == 4  # then each one alone


class Poisoned(Recorder):
    """Fails every batch holding a question with "poison" in it, as a model does on a bad input."""

    def stream_batch(self, requests):
        if any("poison" in r.messages[0][1] for r in requests):
            self.calls.append(("failed", len(requests)))
            raise ValueError("a poisoned request")
        return super().stream_batch(requests)


@contextlib.contextmanager
def live_server(app):
    """`app` served by uvicorn on a free loopback port in a thread; yields its URL."""
    import uvicorn

    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, access_log=False)
    server = uvicorn.Server(config)
    sock = config.bind_socket()
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive()
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(30)


def test_the_client_gets_every_good_answer_beside_a_bad_request(pipeline):
    from geovlm.core.client import AskJob, EngineClient, EngineError
    from geovlm.engine.server import Settings, create_app

    recorder = Poisoned(pipeline)
    questions = ["Describe 1", "poison", "Describe 2", "Describe 3", "Describe 4"]
    with live_server(create_app(recorder, Settings(batch_window_s=0.3))) as url:
        png = base64.b64decode(chat_body()["messages"][0]["content"][0]["image_url"]["url"].split(",")[1])
        jobs = [AskJob(png, None, q) for q in questions]
        client = EngineClient(url, profile="geochat", max_concurrent=5, attempts=3, backoff=0.05)
        results = client.ask_many(jobs, max_tokens=4)
    assert all(isinstance(r, tuple) and r[0] for i, r in enumerate(results) if i != 1)
    assert isinstance(results[1], EngineError) and results[1].status == 400
    assert recorder.calls.count(("failed", 1)) == 1  # run alone once, and not sent again


def test_a_request_whose_client_left_is_dropped(pipeline):
    import socket

    import httpx

    from geovlm.engine.server import Settings, create_app

    recorder = Recorder(pipeline)
    recorder.gate.clear()
    with live_server(create_app(recorder, Settings(batch_window_s=0.0))) as url, httpx.Client(timeout=60) as http:

        def health():
            return http.get(url + "/health").json()

        def wait_for(condition):
            deadline = time.monotonic() + 10
            while not condition():
                assert time.monotonic() < deadline
                time.sleep(0.05)

        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(http.post, url + "/v1/chat/completions", json=chat_body(1))
            assert recorder.entered.wait(30)  # the worker holds the first request
            raw = json.dumps(chat_body(2)).encode()
            host, port = url[len("http://"):].split(":")
            with socket.create_connection((host, int(port))) as leaving:
                head = f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                leaving.sendall(f"{head}Content-Length: {len(raw)}\r\n\r\n".encode() + raw)
                wait_for(lambda: health()["waiting"] == 1)
            wait_for(lambda: health()["in_flight"] == 1)  # the second one's handler ended: its caller left
            recorder.gate.set()
            assert first.result(60).status_code == 200
        wait_for(lambda: health()["waiting"] == 0)
        assert recorder.calls == [("batch", 1)]  # the second request never reached the model


def test_queued_pixels_have_a_budget(batcher_for):
    batcher, recorder = batcher_for(window_s=0.0, max_pixels=12_000)
    recorder.gate.clear()
    held = batcher.submit(gen(0))  # 60 x 90 = 5400 pixels
    assert recorder.entered.wait(60)
    queued = batcher.submit(gen(1))  # 5490 more
    with pytest.raises(Busy, match="pixels"):
        batcher.submit(gen(2))
    recorder.gate.set()
    assert held.future.result(60).tokens and queued.future.result(60).tokens
    assert batcher.submit(gen(2)).future.result(60).tokens  # the budget is given back


def test_decoding_is_bounded_and_a_pixel_budget_answers_429(pipeline, monkeypatch):
    from fastapi.testclient import TestClient

    from geovlm.engine import server
    from geovlm.engine.server import Settings, create_app

    active, peak, lock = [0], [0], threading.Lock()
    parse = server.parse_chat

    def slow_parse(*args):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.2)
        try:
            return parse(*args)
        finally:
            with lock:
                active[0] -= 1

    monkeypatch.setattr(server, "parse_chat", slow_parse)
    recorder = Recorder(pipeline)
    settings = Settings(batch_window_s=0.0, decode_concurrency=2, max_queued_pixels=6000)
    with TestClient(create_app(recorder, settings)) as client, ThreadPoolExecutor(6) as pool:
        recorder.gate.clear()
        first = pool.submit(client.post, "/v1/chat/completions", json=chat_body(0))  # 5400 pixels, held
        assert recorder.entered.wait(60)
        replies = list(pool.map(lambda i: client.post("/v1/chat/completions", json=chat_body(i)), range(1, 6)))
        recorder.gate.set()
        assert first.result(60).status_code == 200
    assert peak[0] == 2  # five bodies at once, two decoded at a time
    assert {reply.status_code for reply in replies} == {429}
    assert "pixels" in replies[0].json()["error"]["message"] and replies[0].headers["retry-after"] == "1"


def test_a_stream_the_model_refuses_ends_with_a_400_error_event(pipeline):
    from fastapi.testclient import TestClient

    from geovlm.engine.server import Settings, create_app

    with TestClient(create_app(Poisoned(pipeline), Settings())) as client:
        reply = client.post("/v1/chat/completions", json=chat_body(1, "poison", stream=True))
    events = [json.loads(line[6:]) for line in reply.text.splitlines() if line.startswith("data: {")]
    assert events[-1]["error"]["code"] == 400 and "poisoned" in events[-1]["error"]["message"]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_health_says_when_the_worker_is_dead_and_shutdown_fits_the_launchers_wait(pipeline):
    import inspect

    from fastapi.testclient import TestClient

    from geovlm.engine.launcher import LocalEngine
    from geovlm.engine.server import BATCHER_STOP_S, Settings, create_app

    class Dying(Recorder):
        def stream_batch(self, requests):
            raise SystemExit  # ends the worker thread without a word

    with TestClient(create_app(Dying(pipeline), Settings(request_timeout_s=1.0))) as client:
        assert client.get("/health").status_code == 200
        assert client.post("/v1/chat/completions", json=chat_body(1)).status_code == 504
        health = client.get("/health")
    assert health.status_code == 503 and health.json()["status"] == "down"
    launcher_wait = inspect.signature(LocalEngine.stop).parameters["timeout"].default
    assert Settings().graceful_s + BATCHER_STOP_S < launcher_wait  # a graceful stop is never cut short


def test_every_route_but_health_needs_the_key(pipeline):
    from fastapi.testclient import TestClient

    from geovlm.engine.server import Settings, create_app

    with TestClient(create_app(pipeline, Settings(api_key="k"))) as client:
        for method, path in (("GET", "/v2/nothing"), ("GET", "/v1/models"), ("DELETE", "/v1/chat/completions")):
            reply = client.request(method, path)
            assert reply.status_code == 401 and reply.headers["www-authenticate"] == "Bearer", path
            assert reply.json()["error"]["type"] == "authentication_error"
        assert client.get("/health").status_code == 200
        assert client.get("/v2/nothing", headers={"Authorization": "Bearer k"}).status_code == 404


def test_a_batch_stops_when_every_caller_is_gone(batcher_for):
    batcher, recorder = batcher_for(window_s=0.0)
    steps = count_steps(recorder)
    job = batcher.submit_stream(gen(1, tokens=800))  # as many as the demo model's 1024-token context allows
    pieces = batcher.pieces(job, timeout=60)
    next(pieces)
    pieces.close()  # the caller leaves after the first piece
    assert batcher.submit(gen(2)).future.result(60).tokens  # the worker is free again
    assert len(steps) < 100  # not the 800 steps the whole answer takes
