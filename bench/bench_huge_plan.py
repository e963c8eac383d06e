"""A bulk run over a huge plan: how long `geovlm caption` takes to commit its first tile, and how much memory the
command holds meanwhile, for a VRT claiming --side x --side pixels (default 10^6 x 10^6: 3.8 million tiles of
512 px) over the shared RGB.byte.tif, against a stub engine on 127.0.0.1 that answers at once (--max-tiles raised to
let it start: by default such a plan is refused before any engine is asked).

The command runs in a subprocess; its resident memory is sampled every 0.1 s (/proc) until the ledger holds
--tiles committed tiles or --timeout seconds pass, then it is stopped (SIGINT: its clean stop).

    python bench/bench_huge_plan.py [--side 1000000] [--tiles 5] [--timeout 90]
"""
from __future__ import annotations

import argparse
import os
import signal
import sqlite3
import subprocess  # nosec B404  # runs this repository's own command
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_bulk import SHARED, stub_engine  # noqa: E402


def huge_vrt(path: Path, side: int) -> None:
    """A VRT of side x side pixels, 3 bands, whose top-left corner shows RGB.byte.tif (the rest: zeros)."""
    source = SHARED / "data" / "rasters" / "RGB.byte.tif"
    bands = "".join(
        f'<VRTRasterBand dataType="Byte" band="{b}"><SimpleSource><SourceFilename relativeToVRT="0">{source}'
        f'</SourceFilename><SourceBand>{b}</SourceBand><SrcRect xOff="0" yOff="0" xSize="791" ySize="718"/>'
        f'<DstRect xOff="0" yOff="0" xSize="791" ySize="718"/></SimpleSource></VRTRasterBand>' for b in (1, 2, 3))
    path.write_text(f'<VRTDataset rasterXSize="{side}" rasterYSize="{side}"><SRS>EPSG:32618</SRS>'
                    f'<GeoTransform>101985, 300, 0, 2826915, 0, -300</GeoTransform>{bands}</VRTDataset>')


def rss_mib(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def committed(out: Path) -> int:
    if not out.exists():
        return 0
    try:
        con = sqlite3.connect(f"file:{out}?mode=ro", uri=True, timeout=0.1)
        try:
            return con.execute("SELECT COUNT(*) FROM tiles").fetchone()[0]
        finally:
            con.close()
    except sqlite3.DatabaseError:
        return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--side", type=int, default=1_000_000)
    ap.add_argument("--tiles", type=int, default=5)
    ap.add_argument("--timeout", type=float, default=90.0)
    args = ap.parse_args(argv)
    server = stub_engine()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    with tempfile.TemporaryDirectory() as tmp:
        vrt, out = Path(tmp) / "huge.vrt", Path(tmp) / "out.gpkg"
        huge_vrt(vrt, args.side)
        cmd = [sys.executable, "-m", "geovlm", "caption", str(vrt), "--out", str(out), "--engine", url,
               "--family", "geochat", "--no-progress", "--keep-nodata", "--max-tiles", str(args.side ** 2)]
        started = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # nosec B603
        peak, first, done = 0.0, None, 0
        while time.monotonic() - started < args.timeout and proc.poll() is None:
            peak = max(peak, rss_mib(proc.pid))
            done = committed(out)
            if done and first is None:
                first = time.monotonic() - started
            if done >= args.tiles:
                break
            time.sleep(0.1)
        elapsed = time.monotonic() - started
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        server.shutdown()
        print(f"{args.side} x {args.side} px VRT, 512 px tiles; load {os.getloadavg()[0]:.1f}")
        print(f"first tile committed after: {f'{first:.1f} s' if first is not None else 'none'}; "
              f"{done} tiles after {elapsed:.1f} s; peak RSS {peak:.0f} MiB")
        print("stderr:", " | ".join(err.strip().splitlines()[:3]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
