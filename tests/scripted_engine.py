"""A scripted stand-in engine for bulk-run tests: an OpenAI-compatible server on 127.0.0.1 (standard library
HTTP, numpy, scipy and PIL to look at the image) that answers in a family's syntax from what the image really shows.

- caption family (any): "scripted caption of a WxH image, mean M" (M: the image's mean value).
- `--family skysensegpt`: every colour blob (a connected patch of one non-black RGB value: two separate patches of
  one colour are two blobs) becomes an object whose label comes from its red value (255: "storage_tank", 200:
  "car", else "building") with its upright box as SkySenseGPT writes one (`{<cx><cy><h><w>|<90>}`: upright is 90
  with w and h swapped, 0-100 of the image). The objects, in the order of their colours (the smallest RGB first;
  one colour's from the top), are paired, first with second, third with fourth, ..., each pair one sentence
  `<ref>A</ref><rbox>(..)</rbox> <rel>adjacent</rel> <ref>B</ref><rbox>(..)</rbox>.`
  as SkySenseGPT writes its image-level scene graphs (one relation a sentence, each object written once); an
  odd last object is a detection sentence `<ref>C</ref><rbox>(..)</rbox>.` (shared/reference/answer-formats.md,
  "SkySenseGPT scene graph (image level)"). The client sends images resampled to the model's
  input, so a blob is found as a model would see it: its colour is one that fills 3x3 neighbourhoods (the
  interior survives resampling), each pixel's share of that colour is its projection on it, and each edge of
  the box is where that share crosses one half, interpolated between the two pixels around it on the rows
  and columns through the blob's centre (a symmetric resampling kernel puts a step edge's half-way point on
  the edge itself; an edge on the image's border stays there).

Each request is logged as one JSON line (image size, mean, `channels`: the mean of its red, green and blue, and
`bands`: the rows at the top and bottom and the columns at the left and right filled wholly with the top-left
pixel's colour, the padding; `stream`: whether the answer was streamed) to `--log`.
`--stand-in`: /v1/models reports `random_stand_in: true` in its geovlm entry, as a `geovlm serve` of the demo
model does. `--arrivals FILE`: a line is appended to FILE as each chat request arrives (before any delay), so a
test can count the attempts of a client that gives up waiting. `--refuse-first N`: the first N chat requests
are refused with HTTP 400 (a request the engine rejects; the client does not retry it), unlogged. A request
with `"stream": true` (`geovlm ask`, `engine-check`, the dock) is answered as server-sent events of four
characters each, `--piece-delay S` apart, as `geovlm serve` streams; others whole (bulk runs). Run:
`python scripted_engine.py --ready-file F [--delay S] [--family F] [--log FILE] [--arrivals FILE] [--stand-in]
[--refuse-first N] [--piece-delay S]`; it writes {"url", "pid"} to F once listening.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import threading
import time

import numpy as np
from engine_http import EngineHandler, serve, url_of
from PIL import Image
from scipy import ndimage

LABELS = {255: "storage_tank", 200: "car"}


def pure_pixels(image: np.ndarray) -> np.ndarray:
    """HxW bool of an HxWx3 image: True where a non-black pixel's 3x3 neighbourhood is all its colour (False on
    the border)."""
    centre = image[1:-1, 1:-1]
    same = np.ones(centre.shape[:2], bool)
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            same &= np.all(image[dy:dy + centre.shape[0], dx:dx + centre.shape[1]] == centre, axis=2)
    pure = np.zeros(image.shape[:2], bool)
    pure[1:-1, 1:-1] = same & centre.any(axis=2)
    return pure


def pure_colours(image: np.ndarray) -> np.ndarray:
    """The non-black colours that fill some 3x3 neighbourhood of an HxWx3 image (k x 3 uint8)."""
    found = image[pure_pixels(image)]
    return np.unique(found, axis=0) if len(found) else np.zeros((0, 3), np.uint8)


def _crossing(share: np.ndarray, first: int, last: int):
    """(start, end) in pixel units where `share` (of a colour, along a line through its blob) crosses 0.5
    outside the blob's pure pixels `first`..`last`; the border where the blob reaches it."""
    n = len(share)
    while first > 0 and share[first - 1] >= 0.5:
        first -= 1
    while last < n - 1 and share[last + 1] >= 0.5:
        last += 1
    start = 0.0 if first == 0 else (first - 0.5) + (0.5 - share[first - 1]) / (share[first] - share[first - 1])
    end = float(n) if last == n - 1 else (last + 0.5) + (share[last] - 0.5) / (share[last] - share[last + 1])
    return start, end


def blob_boxes(image: np.ndarray):
    """[(colour, x0, y0, x1, y1)] in pixels of the image (sub-pixel edges) of its colour blobs: one a connected
    patch of a colour's pixels (4-connected, `scipy.ndimage.label`) with a pure pixel (`pure_pixels`), so two
    separate patches of one colour are two blobs; in the order of their colours, then of their first pixel (rows
    from the top). The edges are measured along the row and the column through the middle of the patch's box.
    Raises nothing for any HxWx3 uint8 image (one colour's separate patches made numpy's "zero-size array" before)."""
    pixels = image.astype(np.float64)
    pure = pure_pixels(image)
    boxes = []
    for colour in pure_colours(image):
        patches, count = ndimage.label(np.all(image == colour, axis=2))
        for index in range(1, count + 1):
            patch = patches == index
            if not (patch & pure).any():  # resampling's fringe, no blob of its own
                continue
            rows, cols = np.nonzero(patch)
            # a connected patch has pixels on every row and column its box spans: the middle ones too
            row, col = (rows.min() + rows.max()) // 2, (cols.min() + cols.max()) // 2
            c = colour.astype(np.float64)
            across, down = pixels[row] @ c / (c @ c), pixels[:, col] @ c / (c @ c)
            on_row, on_col = cols[rows == row], rows[cols == col]
            left, right = _crossing(across, on_row.min(), on_row.max())
            top, bottom = _crossing(down, on_col.min(), on_col.max())
            boxes.append((tuple(int(v) for v in colour), left, top, right, bottom))
    return boxes


def padding_bands(image: np.ndarray):
    """(top, bottom, left, right): rows and columns at each side filled wholly with the top-left pixel's colour."""
    uniform = np.all(image == image[0, 0], axis=2)
    rows, cols = uniform.all(axis=1), uniform.all(axis=0)

    def run(flags):
        return int(np.argmin(flags)) if not flags.all() else len(flags)

    return run(rows), run(rows[::-1]), run(cols), run(cols[::-1])


def describe(image: np.ndarray, family: str) -> str:
    """The scripted answer about an HxWx3 uint8 image."""
    height, width = image.shape[:2]
    if family != "skysensegpt":
        return f"scripted caption of a {width}x{height} image, mean {image.mean():.3f}"
    sentences = []
    for (r, _, _), x0, y0, x1, y1 in blob_boxes(image):
        cx, cy = 50 * (x0 + x1) / width, 50 * (y0 + y1) / height
        w, h = 100 * (x1 - x0) / width, 100 * (y1 - y0) / height
        label = LABELS.get(int(r), "building")
        sentences.append(f"<ref>{label}</ref><rbox>({{<{cx:.2f}><{cy:.2f}><{h:.2f}><{w:.2f}>|<90>}})</rbox>")
    if not sentences:
        return "I'm sorry, I cannot answer as the given image does not contain any given objects."
    # SkySenseGPT's image-level scene graph: one relation a sentence, "<ref>A</ref><rbox>(..)</rbox> <rel>R</rel>
    # <ref>B</ref><rbox>(..)</rbox>.", mixed with detection sentences "<ref>C</ref><rbox>(..)</rbox>."
    parts = [f"{sentences[i]} <rel>adjacent</rel> {sentences[i + 1]}." for i in range(0, len(sentences) - 1, 2)]
    return " ".join(parts + ([f"{sentences[-1]}."] if len(sentences) % 2 else []))


def make_handler(family: str, delay: float, log_path: str, stand_in: bool = False, refuse_first: int = 0,
                 arrivals: str = "", piece_delay: float = 0.0):
    """The request handler of a scripted engine of `family`: it answers each chat request with a description of
    the image it got (`describe`) after `delay` seconds, refuses the first `refuse_first` with a 400, appends a
    line per request to `arrivals` on arrival and, once answered, what it saw (size, means, padding) to
    `log_path`; a streamed answer waits `piece_delay` seconds between pieces."""
    lock = threading.Lock()
    refused = [0]

    class Handler(EngineHandler):
        def model_entry(self) -> dict:
            details = {"family": family, "random_stand_in": stand_in}
            return {"id": f"scripted-{family}", "object": "model", "geovlm": details}

        def do_POST(self):  # noqa: N802
            body, data = self.read_chat()
            if arrivals:
                with lock, open(arrivals, "a") as log:
                    log.write(f"{time.monotonic()}\n")
            with lock:
                refuse = refused[0] < refuse_first
                refused[0] += refuse
            if refuse:
                self.send_json(400, {"error": {"message": "scripted refusal", "type": "invalid_request_error"}})
                return
            image = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
            text = describe(image, family)
            time.sleep(delay)
            if log_path:
                with lock, open(log_path, "a") as log:
                    log.write(json.dumps({"size": [image.shape[1], image.shape[0]], "mean": float(image.mean()),
                                          "channels": image.reshape(-1, 3).mean(axis=0).tolist(),
                                          "bands": padding_bands(image), "pid": os.getpid(),
                                          "stream": bool(body.get("stream"))}) + "\n")
            self.send_answer(text, stream=bool(body.get("stream")), piece_delay=piece_delay)

    return Handler


def main() -> None:
    """Serve a scripted engine on a free loopback port until `--lifetime` seconds pass, its URL and process id
    written to `--ready-file` once it listens."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--family", default="geochat")
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--log", default="")
    parser.add_argument("--ready-file", required=True)
    parser.add_argument("--stand-in", action="store_true", help="report the model as a random stand-in")
    parser.add_argument("--arrivals", default="", help="append a line to this file as each request arrives")
    parser.add_argument("--refuse-first", type=int, default=0, help="refuse the first N chat requests (400)")
    parser.add_argument("--piece-delay", type=float, default=0.0, help="seconds between streamed pieces")
    parser.add_argument("--lifetime", type=float, default=300.0, help="exit after this many seconds")
    args = parser.parse_args()
    handler = make_handler(args.family, args.delay, args.log, args.stand_in, args.refuse_first, args.arrivals,
                           args.piece_delay)
    server = serve(handler, in_thread=False)
    threading.Timer(args.lifetime, server.shutdown).start()
    tmp = args.ready_file + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"url": url_of(server), "pid": os.getpid()}, f)
    os.replace(tmp, args.ready_file)
    server.serve_forever()
    os._exit(0)


if __name__ == "__main__":
    main()
