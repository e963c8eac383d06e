"""Engines for the ask tests, on 127.0.0.1: a scripted stand-in that speaks the engine's protocol (/health,
/v1/models with the family, streamed and whole chat completions) and answers a recorded text in a family's
syntax (for placement), and the real `geovlm serve` with the demo model."""
from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from engine_http import EngineHandler, serve, url_of


class ScriptedEngine:
    """`with ScriptedEngine("geochat", "a car {<10><20><40><60>|<90>}") as engine:` -> engine.url.

    `answer`: one text, a list answered in turn (the last one again after), or a function of the PNG bytes
    received that returns the text (a stand-in model that looks at the image). `piece_delay` seconds between
    streamed pieces of four characters; `posts` holds every request body and `images` the PNG bytes each
    carried. `failing` (set it any time) makes it an engine whose HTTP front is up (/v1/models answers) but whose
    chat completions fail: "drop" reads each request and closes the connection without a reply, "silent" reads it
    and never answers (until the block ends); `dropped` counts those requests."""

    def __init__(self, family: str, answer: str, piece_delay: float = 0.0, model: str = "scripted"):
        self.family, self.answer, self.piece_delay, self.model = family, answer, piece_delay, model
        self.posts, self.images = [], []
        self.failing, self.dropped = None, 0
        self._closing = threading.Event()
        self.server = None

    def __enter__(self) -> ScriptedEngine:
        engine = self

        class Handler(EngineHandler):
            def model_entry(self) -> dict:
                return {"id": engine.model, "object": "model", "geovlm": {"family": engine.family}}

            def do_POST(self):  # noqa: N802
                if engine.failing:
                    self.rfile.read(int(self.headers["Content-Length"]))
                    engine.dropped += 1
                    if engine.failing == "silent":
                        engine._closing.wait(120)
                    self.close_connection = True
                    return
                body, image = self.read_chat()
                engine.posts.append(body)
                engine.images.append(image)
                if callable(engine.answer):
                    answer = engine.answer(image)
                else:
                    answers = engine.answer if isinstance(engine.answer, list) else [engine.answer]
                    answer = answers[min(len(engine.posts), len(answers)) - 1]
                self.send_answer(answer, bool(body.get("stream")), engine.piece_delay)

        self.server = serve(Handler)
        return self

    @property
    def url(self) -> str:
        """The engine's base URL on 127.0.0.1."""
        return url_of(self.server)

    def __exit__(self, *exc):
        self._closing.set()
        self.server.shutdown()
        self.server.server_close()


class DemoEngine:
    """`geovlm serve` from this venv with the demo model (a random stand-in: its answers are noise) on a free
    loopback port, without a key; stopped (terminate, then kill) on exit. Waits up to `start_s` for /health."""

    def __init__(self, start_s: float = 300.0):
        self.start_s, self.process, self.url = start_s, None, ""

    def __enter__(self) -> DemoEngine:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        exe = Path(sys.executable).with_name("geovlm")
        self.process = subprocess.Popen(  # nosec B603  # our own command line, no shell
            [str(exe), "serve", "--host", "127.0.0.1", "--port", str(port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + self.start_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"geovlm serve exited with {self.process.returncode}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as reply:  # nosec B310  # loopback
                    if reply.status == 200:
                        return self
            except OSError:
                time.sleep(0.5)
        self.__exit__()
        raise RuntimeError(f"geovlm serve did not answer /health within {self.start_s} s")

    def __exit__(self, *exc):
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
