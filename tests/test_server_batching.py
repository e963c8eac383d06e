"""The batcher and the app in-process, on the real demo pipeline: requests in one window share one
`generate_batch`, streams run alone, a cancelled request is skipped, a full queue refuses, a slow request
times out with 504 while the server goes on serving."""
import base64
import io
import threading

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
    """The pipeline, with a log of the calls the batcher makes and a gate that holds `generate_batch` (a
    model as slow as the test needs) until it is opened."""

    def __init__(self, pipeline):
        self.pipeline = pipeline
        self.calls = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def info(self):
        return self.pipeline.info()

    def generate_batch(self, requests):
        self.calls.append(("batch", len(requests)))
        self.entered.set()
        assert self.gate.wait(60)
        return self.pipeline.generate_batch(requests)

    def stream(self, request):
        self.calls.append(("stream", 1))
        return self.pipeline.stream(request)


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


def test_a_stream_runs_alone_in_its_turn(batcher_for, pipeline):
    batcher, recorder = batcher_for(window_s=0.3, max_batch=8)
    first = [batcher.submit(gen(i)) for i in range(2)]
    stream = batcher.submit_stream(gen(7, tokens=8))
    last = batcher.submit(gen(3))
    pieces = list(batcher.pieces(stream, timeout=60))
    for job in [*first, last]:
        job.future.result(60)
    assert recorder.calls == [("batch", 2), ("stream", 1), ("batch", 1)]
    assert "".join(pieces) == pipeline.generate_batch([gen(7, tokens=8)])[0].text
    assert pieces[-1].result.tokens == 8  # the StreamDone that ends every stream


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
