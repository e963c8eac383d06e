"""Serving benchmark: requests/s of `geovlm serve` (the demo model) at concurrency 1, 4 and 16, and what
request batching gives over concurrency 1 (plus streamed requests at 16, which share batches too, and a run
with batching off, to tell batching from overlap).

Each request carries its own image (no encoder-cache hits) and asks for at most --tokens new tokens. The
servers run as local engines on loopback; the client is GeoVLM's own (standard library only). Each level
runs in --rounds rounds and reports the median round, since a shared machine is noisy.

    python bench/bench_serving.py [--tokens 16] [--requests 16] [--rounds 3]
"""
from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def image(seed: int) -> bytes:
    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def run_level(client, concurrency: int, count: int, first_seed: int, tokens: int, stream: bool) -> dict:
    """`count` requests with `concurrency` in flight; throughput, latencies and the server's batch sizes."""
    images = [image(first_seed + i) for i in range(count)]
    before = client.health()
    latencies = []

    def one(data: bytes) -> None:
        start = time.perf_counter()
        on_token = (lambda piece: None) if stream else None
        client.ask(data, (320, 240), "Describe the image", max_tokens=tokens, on_token=on_token)
        latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, images))
    seconds = time.perf_counter() - start
    after = client.health()
    batches = max(1, after["batches"] - before["batches"])
    return {
        "concurrency": concurrency,
        "stream": stream,
        "requests": count,
        "seconds": seconds,
        "rps": count / seconds,
        "mean_ms": 1000 * statistics.mean(latencies),
        "p95_ms": 1000 * sorted(latencies)[int(0.95 * (len(latencies) - 1))],
        "batch": (after["requests"] - before["requests"]) / batches,
    }


def bench(extra_args, levels, per_round: int, rounds: int, tokens: int, seed: int):
    """The median round (by requests/s) of each (concurrency, stream) level, on one fresh engine."""
    from geovlm.core.client import EngineClient
    from geovlm.engine.launcher import LocalEngine

    with LocalEngine(extra_args=extra_args) as engine:
        client = EngineClient(engine.url, api_key=engine.api_key, max_concurrent=max(c for c, _ in levels))
        run_level(client, 2, 4, seed * 100_000, tokens, False)  # warm-up: first calls pay one-off costs
        medians = []
        for n, (c, stream) in enumerate(levels):
            count = per_round * max(1, c // 4)
            first = seed * 100_000 + 10_000 * (n + 1)
            runs = [run_level(client, c, count, first + 1000 * r, tokens, stream) for r in range(rounds)]
            medians.append(sorted(runs, key=lambda run: run["rps"])[rounds // 2])
        return medians


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=16, help="max new tokens per request")
    parser.add_argument("--requests", type=int, default=16, help="requests per round (x c/4 above 4)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per level; the median is shown")
    args = parser.parse_args(argv)

    print("starting local engines (demo model, a random stand-in) ...", file=sys.stderr, flush=True)
    levels = ((1, False), (4, False), (16, False), (16, True))
    batched = bench([], levels, args.requests, args.rounds, args.tokens, seed=1)
    unbatched = bench(["--max-batch", "1"], ((16, False),), args.requests, args.rounds, args.tokens, seed=2)
    base = batched[0]["rps"]
    print(f"\nServing the demo model on CPU ({os.cpu_count()} cores), <= {args.tokens} new tokens per request")
    print(f"{'setup':<24}{'conc.':>6}{'req':>6}{'s':>7}{'req/s':>8}{'mean ms':>9}{'p95 ms':>8}"
          f"{'batch':>7}{'speed-up':>10}")
    rows = [("batched, streamed" if r["stream"] else "batched (window 10 ms)", r) for r in batched]
    rows.append(("no batching (max 1)", unbatched[0]))
    for name, r in rows:
        print(f"{name:<24}{r['concurrency']:>6}{r['requests']:>6}{r['seconds']:>7.2f}{r['rps']:>8.2f}"
              f"{r['mean_ms']:>9.0f}{r['p95_ms']:>8.0f}{r['batch']:>7.1f}{r['rps'] / base:>9.2f}x")
    print(f"median of {args.rounds} rounds; speed-up: requests/s over concurrency 1; "
          "batch: mean requests per batched generation")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
