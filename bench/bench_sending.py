"""Time a request spends outside the model: sending a 1024 px view whole (PNG) vs fitted to the model's input.

`geovlm serve` with the demo model (GeoChat geometry: padded to 504 px) on loopback, one request at a time
with at most --tokens new tokens, about the real 1024x1024 aerial photo `cogeo.tif`. Two ways, alternated in
one process (the machine is shared and noisy), medians of --rounds:

  whole view   the client PNG-encodes the 1024x1024 view (zlib level 6, PIL's default), the server decodes
               it and fits it to 504x504 (what GeoVLM did before it sent fitted images)
  fitted       the client fits the view to the model's 504x504 input (`models.preprocess.ArraySource`,
               bicubic, an uncompressed PNG: `encode_png`); the server decodes it and its fit is the identity

"outside the model" = the client's fit and encoding + the server's decoding and fit (the same steps
timed in this process on the same bytes), as a share of the whole request's wall time.

    python bench/bench_sending.py [--tokens 64] [--rounds 5]
"""
from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
SHARED = Path(os.environ.get("GEOVLM_SHARED", Path(__file__).resolve().parents[2] / "shared"))


def load_view():
    from geovlm.models.imagery import import_rasterio

    rasterio = import_rasterio()
    with rasterio.open(SHARED / "data" / "rasters" / "cogeo.tif") as ds:
        return ds.read([1, 2, 3]).transpose(1, 2, 0).copy()


def server_side(data: bytes, profile) -> float:
    """Seconds the server spends on the image before the model: decode (as engine/protocol.py) and fit."""
    import numpy as np
    from PIL import Image

    from geovlm.core.georef import fit_plan
    from geovlm.models.preprocess import fit_image

    start = time.perf_counter()
    with Image.open(io.BytesIO(data), formats=("PNG", "JPEG")) as image:
        image.load()
        pixels = np.asarray(image.convert("RGB"), dtype=np.uint8)
    fit_image(pixels, fit_plan(profile, pixels.shape[1], pixels.shape[0]), profile.pad_color)
    return time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=64, help="max new tokens per request")
    parser.add_argument("--rounds", type=int, default=5, help="alternations of the two ways; medians shown")
    args = parser.parse_args(argv)

    from PIL import Image

    from geovlm.core.client import EngineClient
    from geovlm.core.georef import fit_plan
    from geovlm.core.profiles import get_profile
    from geovlm.engine.launcher import LocalEngine
    from geovlm.models.preprocess import ArraySource

    view = load_view()
    profile = get_profile("geochat")
    plan = fit_plan(profile, view.shape[1], view.shape[0])
    print("starting the local engine (demo model, a random stand-in) ...", file=sys.stderr, flush=True)
    rows = {"whole view": [], "fitted": []}
    with LocalEngine() as engine:
        client = EngineClient(engine.url, api_key=engine.api_key, profile=profile)
        client.ask(ArraySource(view), None, "warm up", max_tokens=4)
        for _ in range(args.rounds):
            for way in rows:
                start = time.perf_counter()
                if way == "whole view":
                    buffer = io.BytesIO()
                    Image.fromarray(view).save(buffer, format="PNG")
                    data = buffer.getvalue()
                    prep = time.perf_counter() - start
                    client.ask(data, None, "Describe the image", max_tokens=args.tokens)
                else:  # the fit and encoding timed alone, then the request that does them itself
                    data = ArraySource(view).fitted(plan, profile.pad_color)
                    prep = time.perf_counter() - start
                    start = time.perf_counter()
                    client.ask(ArraySource(view), None, "Describe the image", max_tokens=args.tokens)
                total = time.perf_counter() - start
                rows[way].append((prep, server_side(data, profile), total, len(data)))
    print(f"\nA {view.shape[1]}x{view.shape[0]} view through `geovlm serve` (demo model, {profile.name} geometry: "
          f"{plan.input_width}x{plan.input_height} input), <= {args.tokens} new tokens, CPU "
          f"({os.cpu_count()} cores), median of {args.rounds} alternated rounds\n")
    print("| sent | bytes | client fit + encode ms | server decode + fit ms | request ms | outside the model |")
    print("|---|---|---|---|---|---|")
    for way, runs in rows.items():
        prep, server, total, size = (statistics.median(r[i] for r in runs) for i in range(4))
        print(f"| {way} | {size / 1024:,.0f} KiB | {prep * 1000:.0f} | {server * 1000:.0f} | {total * 1000:.0f} | "
              f"{(prep + server) / total:.1%} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
