"""Two real `geovlm serve` processes with the demo model on free loopback ports: the official `openai`
client, batching parity, limits and errors, and one server killed in the middle of a batch of 50."""
import base64
import io
import json
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from PIL import Image

from geovlm.core.client import AskJob, EngineClient
from geovlm.engine.launcher import LocalEngine

KEY = "test-key-0123"


def encoded(seed, fmt="PNG", size=(90, 60)):
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def chat_body(image_bytes, text="Describe the image", mime="image/png", **options):
    url = f"data:{mime};base64,{base64.b64encode(image_bytes).decode()}"
    content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": text}]
    return {"messages": [{"role": "user", "content": content}], "max_tokens": 8, **options}


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    """Servers A and B (B with a short queue); both stopped at the end, whatever happened."""
    from geovlm.models.demo_model import write_demo_model
    from geovlm.models.pipeline import ensure_encoder

    path = tmp_path_factory.getbasetemp() / "demo-model"
    if not (path / "geovlm.json").is_file():
        write_demo_model(path, seed=0)
    ensure_encoder(path)  # once, before two servers would both export it
    limits = ["--max-body-mb", "1", "--max-pixels", "250000", "--max-tokens", "64", "--batch-window-ms", "30"]
    started = []
    try:
        for extra in (limits, limits + ["--max-queue", "4"]):
            engine = LocalEngine(model=str(path), extra_args=extra, max_restarts=0, api_key=KEY)
            engine.start()
            started.append(engine)
        yield started
    finally:
        for engine in started:
            engine.stop()


def test_official_openai_client(engines):
    import openai

    client = openai.OpenAI(base_url=engines[0].url + "/v1", api_key=KEY, max_retries=0, timeout=60)
    [model] = client.models.list().data
    details = model.model_extra["geovlm"]
    assert (details["family"], details["input_size"], details["fit"]) == ("geochat", 504, "pad")
    assert details["random_stand_in"] is True and model.id == "geovlm-demo-random"

    messages = chat_body(encoded(1))["messages"]
    reply = client.chat.completions.create(model=model.id, messages=messages, max_tokens=8)
    text = reply.choices[0].message.content
    assert text and reply.choices[0].finish_reason in ("stop", "length")
    assert 1 <= reply.usage.completion_tokens <= 8
    assert reply.usage.prompt_tokens > details["image_tokens"]  # the question and the image's tokens
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens

    stream = client.chat.completions.create(
        model=model.id, messages=messages, max_tokens=8, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == text and len(chunks) > 3  # greedy: the same answer, in pieces
    assert chunks[-1].usage.completion_tokens == reply.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == reply.usage.prompt_tokens

    jpeg = chat_body(encoded(1, "JPEG"), mime="image/jpeg")["messages"]
    assert client.chat.completions.create(model=model.id, messages=jpeg, max_tokens=4).choices[0].message.content


def test_twenty_concurrent_answers_equal_twenty_sequential(engines):
    a, b = engines
    jobs = [AskJob(encoded(i, size=(80 + 3 * i, 60)), None, f"Describe area {i}") for i in range(20)]
    together = EngineClient(a.url, api_key=KEY, max_concurrent=20).ask_many(jobs, max_tokens=12)
    one_by_one = EngineClient(b.url, api_key=KEY, max_concurrent=1)  # another server: no shared cache
    sequential = [one_by_one.ask(j.image, None, j.question, max_tokens=12)[0] for j in jobs]
    assert [r[0] for r in together] == sequential
    assert len(set(sequential)) > 10  # the answers really differ from image to image
    assert httpx.get(a.url + "/health").json()["largest_batch"] > 1


def test_concurrent_streams_share_batches(engines):
    url = engines[0].url
    auth = {"Authorization": f"Bearer {KEY}"}
    bodies = [chat_body(encoded(40 + i), f"Describe area {i}", max_tokens=12) for i in range(6)]
    with httpx.Client(timeout=60, headers=auth) as http:
        plain = [http.post(url + "/v1/chat/completions", json=b).json()["choices"][0]["message"]["content"]
                 for b in bodies]
        before = http.get(url + "/health").json()
        start = threading.Barrier(len(bodies))

        def stream(body):
            start.wait(10)
            with http.stream("POST", url + "/v1/chat/completions", json={**body, "stream": True}) as reply:
                events = [line[6:] for line in reply.iter_lines() if line.startswith("data: ")]
            assert events[-1] == "[DONE]"
            chunks = [json.loads(e) for e in events[:-1]]
            return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])

        with ThreadPoolExecutor(len(bodies)) as pool:
            streamed = list(pool.map(stream, bodies))
        after = http.get(url + "/health").json()
    assert streamed == plain
    assert after["requests"] - before["requests"] == len(bodies)
    assert 1 <= after["batches"] - before["batches"] < len(bodies)  # streams no longer run one by one


def test_limits_and_errors_and_the_server_goes_on(engines):
    url = engines[0].url + "/v1/chat/completions"
    good = chat_body(encoded(2))
    auth = {"Authorization": f"Bearer {KEY}"}
    with httpx.Client(timeout=60) as http:

        def still_serving():
            reply = http.post(url, json=good, headers=auth)
            assert reply.status_code == 200 and reply.json()["choices"][0]["message"]["content"]

        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
            reply = http.post(url, json=good, headers=headers)
            assert reply.status_code == 401 and reply.headers["www-authenticate"] == "Bearer"
            still_serving()
        assert http.get(engines[0].url + "/v1/models").status_code == 401
        assert http.get(engines[0].url + "/health").status_code == 200  # open, for launchers

        oversized = chat_body(os.urandom(1_200_000))  # 1.6 MB of base64 against a 1 MiB limit
        reply = http.post(url, json=oversized, headers=auth)
        assert reply.status_code == 413 and "limit" in reply.json()["error"]["message"]
        still_serving()

        raw = json.dumps(oversized).encode()
        chunked = (raw[i : i + 65536] for i in range(0, len(raw), 65536))  # no Content-Length: chunked
        reply = http.post(url, content=chunked, headers={**auth, "Content-Type": "application/json"})
        assert reply.request.headers.get("transfer-encoding") == "chunked"
        assert reply.status_code == 413 and "limit" in reply.json()["error"]["message"]
        still_serving()

        flat = io.BytesIO()
        Image.new("RGB", (600, 500), (90, 100, 80)).save(flat, format="PNG")
        big_image = chat_body(flat.getvalue())  # a small file of 300000 pixels; 250000 allowed
        reply = http.post(url, json=big_image, headers=auth)
        assert reply.status_code == 413 and "300000 pixels" in reply.json()["error"]["message"]
        still_serving()

        broken = chat_body(encoded(4)[:200])
        reply = http.post(url, json=broken, headers=auth)
        assert reply.status_code == 400 and "decoded" in reply.json()["error"]["message"]
        still_serving()

        for raw in (b"{", b'{"messages": "hi"}'):
            reply = http.post(url, content=raw, headers={**auth, "Content-Type": "application/json"})
            assert reply.status_code == 400 and reply.json()["error"]["type"] == "invalid_request_error"
        reply = http.post(url, json={**good, "model": "gpt-4o"}, headers=auth)
        assert reply.status_code == 404
        reply = http.post(url, json={**good, "max_tokens": 65}, headers=auth)
        assert reply.status_code == 400
        still_serving()

    # One log line per request, with its status.
    log = engines[0].log_path.read_text()
    assert log.count('"POST /v1/chat/completions" 401') == 3
    assert log.count('"POST /v1/chat/completions" 413') == 3
    assert log.count('"GET /v1/models" 401') == 1


def test_a_full_queue_answers_429_with_retry_after(engines):
    url = engines[1].url + "/v1/chat/completions"
    bodies = [chat_body(encoded(10 + i), max_tokens=32) for i in range(24)]
    with httpx.Client(timeout=60, headers={"Authorization": f"Bearer {KEY}"}) as http:
        with ThreadPoolExecutor(24) as pool:
            replies = list(pool.map(lambda b: http.post(url, json=b), bodies))
    statuses = [r.status_code for r in replies]
    assert set(statuses) == {200, 429}
    assert all(r.headers["retry-after"] == "1" for r in replies if r.status_code == 429)


def test_one_server_killed_in_the_middle_of_fifty(engines):
    a, b = engines
    questions = [f"Describe area {i}" for i in range(5)]
    images = [encoded(20 + i) for i in range(5)]
    reference = EngineClient(a.url, api_key=KEY)
    expected = [reference.ask(images[i], None, questions[i], max_tokens=8)[0] for i in range(5)]

    client = EngineClient([a.url, b.url], api_key=KEY, max_concurrent=4, backoff=0.05)
    client.profile()
    jobs = [AskJob(images[i % 5], None, questions[i % 5]) for i in range(50)]
    calls = {}
    lock = threading.Lock()
    at_kill = []  # (jobs done, requests in flight on B) when B was killed

    def on_result(index, result):
        with lock:
            calls[index] = calls.get(index, 0) + 1
            if len(calls) >= 10 and not at_kill:
                in_flight = httpx.get(b.url + "/health").json()["in_flight"]
                if in_flight:  # kill B only while it holds requests, so that they must move to A
                    at_kill.append((len(calls), in_flight))
                    os.kill(b.pid, signal.SIGKILL)

    started = time.monotonic()
    results = client.ask_many(jobs, on_result=on_result, max_tokens=8)
    [(done, in_flight)] = at_kill
    assert done < 40 and in_flight > 0 and b.running() is False
    assert calls == {i: 1 for i in range(50)}  # every job answered, none twice
    assert [r[0] if isinstance(r, tuple) else r for r in results] == [expected[i % 5] for i in range(50)]
    assert client.endpoints[1].failures >= 1  # requests in flight on B failed and went to A
    assert time.monotonic() - started < 60
