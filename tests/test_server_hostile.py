"""A real `geovlm serve` (the demo model, loopback, a free port) against slow, huge and hostile clients: 600
connections that never finish their headers, deep JSON, degenerate sampling, clients that leave, a corrupt
JPEG, an over-long question and a burst of large bodies against the memory budget. Each case is bounded in
count and time; after each the server still answers."""
import base64
import io
import json
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from geovlm.engine.launcher import LocalEngine

sys.path.insert(0, str(Path(__file__).parent))
from models_support import corrupt_jpeg  # noqa: E402

KEY = "hostile-key-0123"
AUTH = {"Authorization": f"Bearer {KEY}"}


def png(seed=0, size=(90, 60)):
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def chat_body(image=None, text="Describe the image", mime="image/png", **options):
    url = f"data:{mime};base64,{base64.b64encode(image or png()).decode()}"
    content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": text}]
    return {"messages": [{"role": "user", "content": content}], "max_tokens": 4, **options}


def demo_engine(tmp_path_factory, *extra):
    from geovlm.models.demo_model import write_demo_model
    from geovlm.models.pipeline import ensure_encoder

    path = tmp_path_factory.getbasetemp() / "demo-model"
    if not (path / "geovlm.json").is_file():
        write_demo_model(path, seed=0)
    ensure_encoder(path)
    limits = ["--header-timeout", "3", "--max-body-mb", "4", "--memory-budget-mb", "10", "--max-tokens", "512",
              "--max-pixels", str(4096 * 4096)]
    return LocalEngine(model=str(path), extra_args=limits + list(extra), max_restarts=0, api_key=KEY)


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    engine = demo_engine(tmp_path_factory)
    engine.start()
    try:
        yield engine
    finally:
        engine.stop()


@pytest.fixture(scope="module")
def slow_engine(tmp_path_factory):
    """An engine whose requests wait 2 s in the batching window: a stand-in for a slow model, so that a client
    can leave before its answer is ready (the demo model answers 400 tokens in a quarter of a second)."""
    engine = demo_engine(tmp_path_factory, "--batch-window-ms", "2000")
    engine.start()
    try:
        yield engine
    finally:
        engine.stop()


def address(engine):
    host, port = engine.url[len("http://"):].rsplit(":", 1)
    return host, int(port)


def post(engine, body, timeout=30, **kwargs):
    return httpx.post(engine.url + "/v1/chat/completions", json=body, headers=AUTH, timeout=timeout, **kwargs)


def test_600_slow_connections_do_not_starve_health_or_a_small_request(engine):
    slow = []
    try:
        for _ in range(600):
            sock = socket.create_connection(address(engine), timeout=5)
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: appl")
            slow.append(sock)
        idle = socket.create_connection(address(engine), timeout=5)  # sends nothing at all
        slow.append(idle)
        started = time.monotonic()
        health = httpx.get(engine.url + "/health", timeout=2)
        assert health.status_code == 200 and time.monotonic() - started < 2
        started = time.monotonic()
        reply = post(engine, chat_body(), timeout=2)
        assert reply.status_code == 200 and reply.json()["choices"][0]["message"]["content"] is not None
        assert time.monotonic() - started < 2
        # The header deadline (3 s here) closes the slow and the idle connections.
        deadline = time.monotonic() + 10
        for sock in (slow[0], slow[299], idle):
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            assert sock.recv(100) in (b"",)
    finally:
        for sock in slow:
            sock.close()
    assert "no complete request headers within 3 s" in engine.log_path.read_text()


def test_deep_json_is_a_400(engine):
    raw = b'{"messages": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    reply = httpx.post(engine.url + "/v1/chat/completions", content=raw,
                       headers={**AUTH, "Content-Type": "application/json"}, timeout=30)
    assert reply.status_code == 400 and "nested too deeply" in reply.json()["error"]["message"]


def test_degenerate_sampling_is_greedy_not_a_500(engine):
    greedy = post(engine, chat_body(max_tokens=8)).json()["choices"][0]["message"]["content"]
    for options in ({"temperature": 1e-300}, {"top_p": 1e-300, "temperature": 1.0}):
        reply = post(engine, chat_body(max_tokens=8, **options))
        assert reply.status_code == 200, reply.text
        assert reply.json()["choices"][0]["message"]["content"] == greedy


def test_a_corrupt_jpeg_claiming_4000x4000_is_a_400(engine):
    reply = post(engine, chat_body(corrupt_jpeg(), mime="image/jpeg"))
    assert reply.status_code == 400 and "cut short or corrupt" in reply.json()["error"]["message"]


def test_an_over_long_question_is_refused_at_once_without_blocking_others(engine):
    huge = chat_body(text="lorem ipsum " * 300_000)  # 3.6 MB of text against a context of 1024 tokens
    results = {}

    def small():
        time.sleep(0.2)
        started = time.monotonic()
        results["small"] = (post(engine, chat_body(png(5))).status_code, time.monotonic() - started)

    helper = threading.Thread(target=small)
    helper.start()
    started = time.monotonic()
    reply = post(engine, huge)
    elapsed = time.monotonic() - started
    helper.join(30)
    assert reply.status_code == 400 and "characters" in reply.json()["error"]["message"], reply.text
    assert elapsed < 5
    assert results["small"][0] == 200 and results["small"][1] < 5


def test_clients_that_leave_are_499_and_one_info_line(slow_engine):
    engine = slow_engine
    host, port = address(engine)
    long = 400  # tokens: a generation that lasts well beyond the moment the client leaves
    body = json.dumps(chat_body(max_tokens=long)).encode()
    # 1. While the body is being sent.
    with socket.create_connection((host, port), timeout=5) as sock:
        head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
        sock.sendall(head + body[:100])
        time.sleep(0.3)
    # 2. During a plain generation, and 3. in the middle of a stream.
    for stream in (False, True):
        with socket.create_connection((host, port), timeout=5) as sock:
            payload = json.dumps(chat_body(max_tokens=long, stream=stream)).encode()
            head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
                    f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n").encode()
            sock.sendall(head + payload)
            if stream:
                received = b""
                for _ in range(20):  # the headers and the first event may come in separate packets
                    received += sock.recv(4096)
                    if b"data:" in received:
                        break
                assert b"data:" in received
            else:
                time.sleep(0.3)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and engine.log_path.read_text().count('" 499 ') < 3:
        time.sleep(0.2)
    assert httpx.get(engine.url + "/health", timeout=5).json()["held_bytes"] == 0
    log = engine.log_path.read_text()
    assert log.count('"POST /v1/chat/completions" 499') == 3, log[-3000:]
    assert "Traceback" not in log and "never retrieved" not in log and " ERROR " not in log


def test_large_bodies_beyond_the_memory_budget_are_429_and_memory_is_released(engine):
    host, port = address(engine)
    big = json.dumps(chat_body(text="x" * 10) | {"pad": "y" * 3_000_000}).encode()  # 3 MB bodies, budget 10 MiB
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(big)}\r\n\r\n").encode()
    held = []
    try:
        for _ in range(6):  # announced and partly sent: their bodies are held on the budget
            sock = socket.create_connection((host, port), timeout=10)
            sock.sendall(head + big[:1000])
            held.append(sock)
        time.sleep(0.5)
        statuses = []
        for sock in held:
            sock.sendall(big[1000:])
        for sock in held:
            statuses.append(int(sock.recv(64).split(b" ")[1]))
    finally:
        for sock in held:
            sock.close()
    assert 429 in statuses and 200 in statuses
    assert httpx.get(engine.url + "/health", timeout=5).json()["held_bytes"] == 0
    assert post(engine, chat_body()).status_code == 200


def test_the_server_still_serves_after_all_this(engine):
    with ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(lambda i: post(engine, chat_body(png(i))), range(4)))
    assert [r.status_code for r in replies] == [200] * 4


def test_the_memory_budget_lets_the_oldest_body_finish_and_refuses_the_others():
    from geovlm.engine.memory import MemoryBudget, OverBudget

    budget = MemoryBudget(100)
    first, second, alone = budget.reservation(), budget.reservation(), budget.reservation()
    first.reading(True)
    second.reading(True)
    first.resize(80)
    with pytest.raises(OverBudget, match="budget"):
        second.resize(30)
    assert second.size == 0 and budget.used == 80
    first.resize(150)  # the body that began first may pass the budget: bodies cannot refuse each other forever
    first.close()
    second.resize(90)
    second.close()
    assert budget.used == 0 and budget.peak == 150
    alone.resize(1000)  # nothing else held: one request within the body limit always gets through
    alone.close()
    assert budget.used == 0
