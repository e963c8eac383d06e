"""Serving under hostile load: small requests while slow clients and large bodies are held, and the engine's
memory before, during and after a burst of large bodies.

One local engine (the demo model, loopback, default limits). Small requests (a 90x60 PNG, <= --tokens new
tokens, --concurrency in flight) are timed in rounds that alternate between a quiet server and one that holds
--slow connections which never finish their headers and --held large bodies (25 MiB announced, trickled and
never finished); the table gives the median round of each. Then --burst clients each send a complete 25 MiB
body at once (a small image plus 25 MiB of padding the server must buffer and parse), and the engine's
resident memory (VmRSS) is sampled before, at its peak during, and 3 s after the burst; the statuses show how
many the memory budget refused (429). Last, one 30 MB question (within the body limit) is timed to its
refusal, with a small request sent meanwhile.

    python bench/bench_hostile.py [--rounds 3] [--requests 24] [--slow 600] [--held 8] [--burst 40]
    python bench/bench_hostile.py --url http://127.0.0.1:PORT --pid PID   # a server started otherwise (another
                                                                          # version), key in GEOVLM_API_KEY
"""
from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import os
import socket
import statistics
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

os.environ.setdefault("HF_HUB_OFFLINE", "1")
BIG = 25 * 2**20


def png(seed: int) -> bytes:
    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (60, 90, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def body(seed: int, tokens: int, pad: int = 0) -> bytes:
    url = "data:image/png;base64," + base64.b64encode(png(seed)).decode()
    content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "Describe the image"}]
    message = {"messages": [{"role": "user", "content": content}], "max_tokens": tokens}
    if pad:
        message["padding"] = "x" * pad
    return json.dumps(message).encode()


def request(host: str, port: int, key: str, data: bytes, timeout: float = 120) -> int:
    """POST one body on a fresh connection; the status (0 when the connection failed)."""
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\nConnection: close\r\n\r\n")
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(head.encode() + data)
            reply = b""
            while b"\r\n" not in reply:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                reply += chunk
            while sock.recv(65536):  # the rest, so the server is not cut off mid-answer
                pass
        return int(reply.split(b" ", 2)[1]) if reply.startswith(b"HTTP/") else 0
    except OSError:
        return 0


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class Hostiles:
    """`slow` connections that never finish their headers and `held` large bodies trickled and never finished,
    reopened when the server closes them (its header and body deadlines), until `stop()`."""

    def __init__(self, host, port, key, slow: int, held: int):
        self.address, self.key, self.slow, self.held = (host, port), key, slow, held
        self.stop_event = threading.Event()
        self.threads = [threading.Thread(target=self._keep, args=(i,), daemon=True) for i in range(slow + held)]
        self.opened = 0

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        time.sleep(2.0)
        return self

    def __exit__(self, *exc):
        self.stop_event.set()
        for thread in self.threads:
            thread.join(5)

    def _keep(self, i: int) -> None:
        big = i >= self.slow
        while not self.stop_event.is_set():
            try:
                with socket.create_connection(self.address, timeout=5) as sock:
                    self.opened += 1
                    if big:
                        sock.sendall((f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                                      f"{self.key}\r\nContent-Type: application/json\r\nContent-Length: {BIG}"
                                      "\r\n\r\n").encode())
                    else:
                        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
                    while not self.stop_event.wait(1.0):
                        sock.sendall(b"x" * 1024 if big else b"X-Slow: 1\r\n")
            except OSError:
                self.stop_event.wait(0.2)  # closed by the server: open another


def small_round(host, port, key, count: int, concurrency: int, tokens: int, seed: int) -> dict:
    latencies, statuses = [], Counter()
    lock = threading.Lock()

    def one(i: int) -> None:
        start = time.perf_counter()
        status = request(host, port, key, body(seed + i, tokens))
        with lock:
            latencies.append(time.perf_counter() - start)
            statuses[status] += 1

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(count)))
    seconds = time.perf_counter() - start
    return {"rps": count / seconds, "p50": 1000 * statistics.median(latencies),
            "p95": 1000 * sorted(latencies)[int(0.95 * (len(latencies) - 1))], "ok": statuses[200], "n": count}


def burst(host, port, key, pid: int, clients: int, tokens: int) -> dict:
    data = body(7, tokens, pad=BIG - 2000)
    peak, done = [rss_mb(pid)], threading.Event()

    def sample():
        while not done.wait(0.05):
            peak.append(rss_mb(pid))

    before = rss_mb(pid)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    with ThreadPoolExecutor(clients) as pool:
        statuses = Counter(pool.map(lambda _: request(host, port, key, data), range(clients)))
    done.set()
    sampler.join()
    time.sleep(3.0)
    return {"before": before, "peak": max(peak), "after": rss_mb(pid), "statuses": dict(statuses)}


def huge_question(host, port, key, pid: int, tokens: int) -> dict:
    """A 30 MB question (within the 32 MiB body limit): seconds to its answer, a small request's seconds sent
    meanwhile, and the engine's RSS before, at the peak and 3 s after."""
    url = "data:image/png;base64," + base64.b64encode(png(3)).decode()
    content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "lorem ipsum " * 2_500_000}]
    data = json.dumps({"messages": [{"role": "user", "content": content}], "max_tokens": tokens}).encode()
    peak, done, small = [rss_mb(pid)], threading.Event(), {}

    def sample():
        while not done.wait(0.05):
            peak.append(rss_mb(pid))

    def small_one():
        time.sleep(0.3)
        start = time.perf_counter()
        small["status"] = request(host, port, key, body(11, tokens))
        small["s"] = time.perf_counter() - start

    before = rss_mb(pid)
    threads = [threading.Thread(target=sample, daemon=True), threading.Thread(target=small_one, daemon=True)]
    for thread in threads:
        thread.start()
    start = time.perf_counter()
    status = request(host, port, key, data)
    seconds = time.perf_counter() - start
    threads[1].join(120)
    done.set()
    threads[0].join()
    time.sleep(3.0)
    return {"status": status, "s": seconds, "small": small, "before": before, "peak": max(peak),
            "after": rss_mb(pid), "mb": len(data) / 1e6}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=4, help="max new tokens of a small request")
    parser.add_argument("--requests", type=int, default=24, help="small requests per round")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each kind, alternated; medians shown")
    parser.add_argument("--slow", type=int, default=600, help="connections that never finish their headers")
    parser.add_argument("--held", type=int, default=8, help="25 MiB bodies trickled and never finished")
    parser.add_argument("--burst", type=int, default=40, help="clients sending a 25 MiB body at once")
    parser.add_argument("--url", help="bench this running server instead of starting one (needs --pid)")
    parser.add_argument("--pid", type=int, help="the process id of the server at --url (for its memory)")
    args = parser.parse_args(argv)
    if bool(args.url) != bool(args.pid):
        parser.error("--url and --pid go together")

    from geovlm.engine.launcher import KEY_VARIABLE, LocalEngine

    if args.url:
        engine = contextlib.nullcontext(argparse.Namespace(url=args.url, pid=args.pid,
                                                           api_key=os.environ.get(KEY_VARIABLE, "")))
    else:
        print("starting a local engine (demo model, a random stand-in) ...", file=sys.stderr, flush=True)
        engine = LocalEngine()
    with engine as engine:
        host, port = engine.url[len("http://"):].rsplit(":", 1)
        port = int(port)
        key = engine.api_key
        small_round(host, port, key, 8, 2, args.tokens, 0)  # warm-up
        quiet, loaded = [], []
        for r in range(args.rounds):
            quiet.append(small_round(host, port, key, args.requests, args.concurrency, args.tokens, 1000 * r))
            with Hostiles(host, port, key, args.slow, args.held) as hostiles:
                loaded.append(small_round(host, port, key, args.requests, args.concurrency, args.tokens,
                                          500 + 1000 * r))
            print(f"round {r + 1}: hostile connections opened {hostiles.opened}", file=sys.stderr, flush=True)
        memory = burst(host, port, key, engine.pid, args.burst, args.tokens)
        huge = huge_question(host, port, key, engine.pid, args.tokens)

    def median(runs, key):
        return statistics.median(run[key] for run in runs)

    print(f"\nSmall requests ({args.concurrency} in flight, <= {args.tokens} tokens), demo model on CPU "
          f"({os.cpu_count()} cores), median of {args.rounds} alternated rounds")
    print(f"{'server':<48}{'req/s':>8}{'p50 ms':>8}{'p95 ms':>8}{'ok':>8}")
    for name, runs in (("quiet", quiet), (f"holding {args.slow} slow + {args.held} x 25 MiB bodies", loaded)):
        ok = f"{sum(r['ok'] for r in runs)}/{sum(r['n'] for r in runs)}"
        print(f"{name:<48}{median(runs, 'rps'):>8.2f}{median(runs, 'p50'):>8.0f}{median(runs, 'p95'):>8.0f}{ok:>8}")
    print(f"\nBurst of {args.burst} x 25 MiB bodies: engine RSS {memory['before']:.0f} MiB before, "
          f"{memory['peak']:.0f} MiB at the peak, {memory['after']:.0f} MiB 3 s after; statuses {memory['statuses']}")
    print(f"A {huge['mb']:.0f} MB question: status {huge['status']} in {huge['s']:.2f} s; a small request sent "
          f"meanwhile: {huge['small'].get('status')} in {huge['small'].get('s', float('nan')):.2f} s; engine RSS "
          f"{huge['before']:.0f} MiB before, {huge['peak']:.0f} MiB at the peak, {huge['after']:.0f} MiB 3 s after")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
