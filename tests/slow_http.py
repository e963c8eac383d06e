"""A slow file server on loopback: one file, with HTTP range requests (as GDAL's /vsicurl/ reads a cloud
optimised GeoTIFF), each answer held back `delay` seconds. A QGIS raster layer on `/vsicurl/<url>` then
renders as slowly as a far-away COG, and GDAL blocks the thread that reads it: the main thread, when the
map is rendered synchronously there."""
from __future__ import annotations

import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

_RANGE = re.compile(r"bytes=(\d+)-(\d*)")


class SlowFileServer:
    """`with SlowFileServer(path) as server:` serves `path` at `server.url` (http://127.0.0.1:<port>/<name>);
    set `server.delay` (seconds) to hold back each answer from then on; `server.requests` counts the GETs.
    Leaving the block wakes every held request (no thread outlives it)."""

    def __init__(self, path: Path, delay: float = 0.0):
        self.delay, self.requests = delay, 0
        self._closing = threading.Event()
        data, server = Path(path).read_bytes(), self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, body: bool):
                server._closing.wait(server.delay)
                found = _RANGE.fullmatch(self.headers.get("Range", ""))
                start, end = (int(found[1]), int(found[2] or len(data) - 1)) if found else (0, len(data) - 1)
                part = data[start:min(end, len(data) - 1) + 1]
                self.send_response(206 if found else 200)
                self.send_header("Content-Type", "image/tiff")
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Length", str(len(part)))
                if found:
                    self.send_header("Content-Range", f"bytes {start}-{start + len(part) - 1}/{len(data)}")
                self.end_headers()
                if body:
                    self.wfile.write(part)

            def do_HEAD(self):  # noqa: N802 (http.server's names)
                self._answer(False)

            def do_GET(self):  # noqa: N802
                server.requests += 1
                self._answer(True)

            def log_message(self, *args):
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/{Path(path).name}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def __enter__(self) -> SlowFileServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._closing.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)
