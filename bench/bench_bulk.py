"""Bulk-run benchmark: tiles/s of `geovlm caption`'s loop (core/bulk.run_tiles: rasterio windows -> fitted to
the model's input and PNG-encoded in the request's worker thread -> engine -> GeoPackage ledger) against the
demo-model engine at concurrency 1, 4 and 16 and over two engines; the share of each tile's time spent in the
loop's own thread (reading the window, the ledger commit); and the process's memory over 2,000 tiles against
a stub engine (it must stay flat).

Tiles are 128 px windows of the shared `cogeo.tif` (each a different image: no encoder-cache hits), at most
--tokens new tokens each. Each level runs --rounds times and the median round is shown (a shared machine is
noisy). The engines are local engines on loopback (the demo model: a random stand-in).

    python bench/bench_bulk.py [--tokens 8] [--rounds 3] [--memory-tiles 2000]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# GDAL's block cache grows up to GDAL_CACHEMAX (default 5 % of RAM) as a run reads a raster: bounded, but it
# would hide a leak of the run itself within 2,000 tiles; 16 MB lets the memory curve show the run alone.
os.environ.setdefault("GDAL_CACHEMAX", "16")
ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("GEOVLM_SHARED", ROOT.parent / "shared"))


def rss_mib() -> float:
    """This process's resident memory (Linux /proc)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def one_run(urls, keys, raster, tile, count, concurrency, tokens, workdir, run_id, on_progress=None):
    """`count` tiles of `raster` through run_tiles into a fresh ledger; the RunStats."""
    from geovlm.cli.bulk_cmds import RasterTiles
    from geovlm.core.bulk import EndpointRecorder, run_tiles
    from geovlm.core.client import EngineClient
    from geovlm.core.ledger import Ledger, RunPlan
    from geovlm.core.profiles import get_profile
    from geovlm.core.tiling import TilePlan
    from geovlm.models.imagery import import_rasterio

    rasterio = import_rasterio()
    with rasterio.open(raster) as ds:
        from geovlm.core.georef import GeoTransform

        t = ds.transform
        gt, width, height = GeoTransform(t.a, t.b, t.c, t.d, t.e, t.f), ds.width, ds.height
    plan = TilePlan(width, height, tile)
    tiles = list(plan.tiles())[:count]
    profile = get_profile("geochat")
    client = EngineClient(urls, api_key=keys[0], profile=profile, max_concurrent=concurrency)
    client.transport = EndpointRecorder(client.transport)
    if len(set(keys)) > 1:  # each local engine has its own key: send each its own
        client.transport.inner = _KeyedTransport(client.transport.inner, dict(zip(urls, keys)))
    run = RunPlan("caption", plan, gt, "Describe the image.", "caption", "geochat", f"bench-{run_id}")
    reader = RasterTiles(raster, None, True)
    with Ledger(Path(workdir) / f"run{run_id}.gpkg", run) as ledger:
        stats = run_tiles(client, ledger, tiles, reader, "Describe the image.", "caption", profile,
                          run.model, on_progress=on_progress, max_tokens=tokens)
    reader.close()
    return stats


class _KeyedTransport:
    """Puts each endpoint's own bearer key on its requests (two local engines, two random keys)."""

    def __init__(self, inner, keys):
        self.inner, self.keys = inner, keys

    def request(self, method, url, headers, body=None, timeout=60.0, cancel=None):
        base = url.split("/v1/")[0].split("/health")[0]
        headers = dict(headers, Authorization=f"Bearer {self.keys[base]}")
        return self.inner.request(method, url, headers, body, timeout, cancel)


def speed(args, workdir) -> list:
    from geovlm.engine.launcher import LocalEngine

    raster = SHARED / "data" / "rasters" / "cogeo.tif"
    rows = []
    with LocalEngine() as a, LocalEngine() as b:
        one_run([a.url], [a.api_key], raster, 128, 4, 2, args.tokens, workdir, "warm-a")
        one_run([b.url], [b.api_key], raster, 128, 4, 2, args.tokens, workdir, "warm-b")
        levels = [("one engine", [a], 1, 8), ("one engine", [a], 4, 16), ("one engine", [a], 16, 32),
                  ("two engines", [a, b], 8, 32)]
        for n, (name, engines, conc, count) in enumerate(levels):
            runs = []
            for r in range(args.rounds):
                stats = one_run([e.url for e in engines], [e.api_key for e in engines], raster, 128, count,
                                conc, args.tokens, workdir, f"{n}-{r}")
                runs.append(stats)
            med = sorted(runs, key=lambda s: s.ok / s.wall_s)[args.rounds // 2]
            per_tile = med.read_s + med.ask_s + med.write_s
            slots = conc * len(engines)
            idle = 1 - med.ask_s / (med.wall_s * min(slots, count))
            rows.append((name, slots, count, med.wall_s, med.ok / med.wall_s,
                         (med.read_s + med.write_s) / per_tile, idle, 1000 * med.read_s / count,
                         1000 * med.write_s / count, 1000 * med.ask_s / count))
    return rows


def stub_engine():
    """A stdlib engine on 127.0.0.1 answering every request at once with a fixed caption."""
    answer = json.dumps({"choices": [{"message": {"role": "assistant", "content": "a stub caption"}}]}).encode()
    models = json.dumps({"data": [{"id": "stub", "geovlm": {"family": "geochat"}}]}).encode()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def _send(self, body):
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):  # noqa: N802
            self._send(models)

        def do_POST(self):  # noqa: N802
            self.rfile.read(int(self.headers["Content-Length"]))
            self._send(answer)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def memory(args, workdir) -> list:
    """RSS after every 250 tiles of a run of --memory-tiles tiles (64 px windows of a synthetic raster)."""
    import numpy as np

    from geovlm.models.imagery import import_rasterio

    rasterio = import_rasterio()
    side = 64 * int(np.ceil(np.sqrt(args.memory_tiles)))
    raster = Path(workdir) / "big.tif"
    data = np.random.default_rng(0).integers(1, 256, (3, side, side), dtype=np.uint8)
    with rasterio.open(raster, "w", driver="GTiff", width=side, height=side, count=3, dtype="uint8",
                       crs="EPSG:3857", transform=rasterio.Affine(1, 0, 0, 0, -1, side), tiled=True) as ds:
        ds.write(data)
    del data
    server = stub_engine()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    marks = []

    def on_progress(stats):
        finished = stats.ok + stats.skipped + stats.failed
        if finished >= 250 * (len(marks) + 1):
            marks.append((finished, rss_mib()))

    start = rss_mib()
    stats = one_run([url], [None], raster, 64, args.memory_tiles, 4, 1, workdir, "memory", on_progress)
    server.shutdown()
    return [(0, start)] + marks, stats


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=8, help="max new tokens per tile")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per level; the median is shown")
    parser.add_argument("--memory-tiles", type=int, default=2000)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as workdir:
        marks, stats = memory(args, workdir)
        print(f"\nMemory of a bulk run over {stats.ok} tiles (stub engine, {stats.ok / stats.wall_s:.0f} tiles/s):")
        print("  " + "  ".join(f"{n}: {mib:.0f} MiB" for n, mib in marks))
        at = dict(marks)
        half = max(n for n in at if n <= marks[-1][0] // 2)
        print(f"  growth from tile {half} to {marks[-1][0]}: {at[marks[-1][0]] - at[half]:+.1f} MiB "
              f"(GDAL_CACHEMAX={os.environ['GDAL_CACHEMAX']} MB)")
        print("\nstarting two local engines (demo model, a random stand-in) ...", file=sys.stderr, flush=True)
        rows = speed(args, workdir)
    load = os.getloadavg()[0]
    print(f"\nBulk captioning, demo model on CPU ({os.cpu_count()} cores, load {load:.1f}), 128 px tiles of "
          f"cogeo.tif, <= {args.tokens} new tokens; median of {args.rounds} rounds")
    print(f"{'setup':<13}{'conc.':>6}{'tiles':>6}{'s':>7}{'tiles/s':>9}{'outside':>9}{'idle':>7}{'read ms':>9}"
          f"{'write ms':>9}{'ask ms':>8}")
    for name, conc, count, wall, tps, outside, idle, read_ms, write_ms, ask_ms in rows:
        print(f"{name:<13}{conc:>6}{count:>6}{wall:>7.2f}{tps:>9.2f}{100 * outside:>8.1f}%{100 * idle:>6.1f}%"
              f"{read_ms:>9.1f}{write_ms:>9.1f}{ask_ms:>8.0f}")
    print("outside: share of the summed per-tile time spent reading the window and committing it (fitting and "
          "encoding run in the request's thread, in ask ms); "
          "idle: share of the run's request slots (concurrency x wall time) not holding a request, i.e. the "
          "time the loop's own work kept the engines waiting (ask ms: the engine request, queueing included)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
