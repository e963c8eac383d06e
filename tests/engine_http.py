"""The HTTP plumbing the scripted test engines share (`ask_engines.ScriptedEngine` in the test's process,
`scripted_engine.py` in its own): the engine's protocol on 127.0.0.1 with the standard library's server.

A subclass of `EngineHandler` says which model it is (`model_entry()`) and answers a chat completion
(`do_POST`, with `read_chat()` and `send_answer()`); GET /v1/models lists that one model, any other GET is
/health's {"status": "ok"}. The JSON shapes are OpenAI's chat completions, whole or streamed as server-sent
events (`data: {...}` lines ending with `data: [DONE]`), as `geovlm serve` speaks them.
"""
from __future__ import annotations

import base64
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Tuple, Type


class EngineHandler(BaseHTTPRequestHandler):
    """One request of a scripted engine; subclasses define `model_entry()` and `do_POST()`."""

    def log_message(self, *args):  # quiet: no line per request on stderr
        pass

    def model_entry(self) -> dict:
        """The /v1/models entry of the one model served: {"id", "object", "geovlm": {"family", ...}}."""
        raise NotImplementedError

    def send_json(self, status: int, body) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):  # noqa: N802 (BaseHTTPRequestHandler's name)
        if self.path.startswith("/v1/models"):
            self.send_json(200, {"object": "list", "data": [self.model_entry()]})
        else:
            self.send_json(200, {"status": "ok"})

    def read_chat(self) -> Tuple[dict, bytes]:
        """(the request body, the bytes of its first message's image: PNG or JPEG as the client sent it)."""
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        url = next(c["image_url"]["url"] for c in body["messages"][0]["content"] if c["type"] == "image_url")
        return body, base64.b64decode(url.split(",", 1)[1])

    def send_answer(self, text: str, stream: bool = False, piece_delay: float = 0.0) -> None:
        """Answer `text` as one chat completion, or streamed in pieces of four characters `piece_delay`
        seconds apart (a client that leaves mid-stream ends it quietly)."""
        if not stream:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            self.send_json(200, {"choices": [choice]})
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        try:
            for i in range(0, len(text), 4):
                chunk = {"choices": [{"index": 0, "delta": {"content": text[i:i + 4]}}]}
                self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                self.wfile.flush()
                time.sleep(piece_delay)
            self.wfile.write(b"data: [DONE]\n\n")
        except OSError:  # the client left (Stop)
            pass


def serve(handler: Type[EngineHandler], in_thread: bool = True) -> ThreadingHTTPServer:
    """A server for `handler` on a free port of 127.0.0.1, serving from a daemon thread when `in_thread`
    (else the caller runs `serve_forever()`); its URL is `url_of(server)`."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    if in_thread:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def url_of(server: ThreadingHTTPServer) -> str:
    """The base URL (before /v1) of a server made by `serve`."""
    return f"http://127.0.0.1:{server.server_address[1]}"
