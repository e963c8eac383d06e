"""Engines for the ask tests, on 127.0.0.1: a scripted stand-in that speaks the engine's protocol (/health,
/v1/models with the family, streamed and whole chat completions) and answers a recorded text in a family's
syntax (for placement), and the real `geovlm serve` with the demo model."""
from __future__ import annotations

import base64
import json
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class ScriptedEngine:
    """`with ScriptedEngine("geochat", "a car {<10><20><40><60>|<90>}") as engine:` -> engine.url.

    `answer`: one text, a list answered in turn (the last one again after), or a function of the PNG bytes
    received that returns the text (a stand-in model that looks at the image). `piece_delay` seconds between
    streamed pieces of four characters; `posts` holds every request body and `images` the PNG bytes each
    carried."""

    def __init__(self, family: str, answer: str, piece_delay: float = 0.0, model: str = "scripted"):
        self.family, self.answer, self.piece_delay, self.model = family, answer, piece_delay, model
        self.posts, self.images = [], []
        self.server = None

    def __enter__(self) -> ScriptedEngine:
        engine = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _json(self, status, body):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):  # noqa: N802
                if self.path == "/v1/models":
                    entry = {"id": engine.model, "object": "model", "geovlm": {"family": engine.family}}
                    self._json(200, {"object": "list", "data": [entry]})
                else:
                    self._json(200, {"status": "ok"})

            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                engine.posts.append(body)
                url = body["messages"][0]["content"][0]["image_url"]["url"]
                engine.images.append(base64.b64decode(url.split(",", 1)[1]))
                if callable(engine.answer):
                    answer = engine.answer(engine.images[-1])
                else:
                    answers = engine.answer if isinstance(engine.answer, list) else [engine.answer]
                    answer = answers[min(len(engine.posts), len(answers)) - 1]
                if not body.get("stream"):
                    choice = {"index": 0, "message": {"role": "assistant", "content": answer}}
                    self._json(200, {"choices": [choice]})
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                try:
                    for i in range(0, len(answer), 4):
                        chunk = {"choices": [{"index": 0, "delta": {"content": answer[i:i + 4]}}]}
                        self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                        self.wfile.flush()
                        time.sleep(engine.piece_delay)
                    self.wfile.write(b"data: [DONE]\n\n")
                except OSError:  # the client left (Stop)
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __exit__(self, *exc):
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
