"""Cost of a bulk run's raster identity (core/raster_identity.py): the pixel-sample digest as the command
line reads it (rasterio) and as QGIS reads it (osgeo.gdal), against the SHA-256 of the whole file's bytes
(the alternative it replaces), on every shared raster and on a 40,960 x 40,960 px mosaic (a VRT of 40 x 40
copies of cogeo.tif, 5 GB of pixels, none written to disk). Also checks that both readers give the same
digest. Medians of --rounds alternated rounds, in milliseconds (a shared machine is noisy).

    python bench/bench_raster_identity.py [--rounds 5]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("GEOVLM_SHARED", ROOT.parent / "shared"))
sys.path.insert(0, str(ROOT.parent))


def mosaic_vrt(tile: Path, folder: Path, copies: int = 40) -> Path:
    """A VRT of copies x copies of `tile` side by side (its grid only: the bench reads its pixels)."""
    from osgeo import gdal

    src = gdal.Open(str(tile))
    w, h, n = src.RasterXSize, src.RasterYSize, src.RasterCount
    bands = []
    for b in range(1, n + 1):
        sources = "".join(
            f'<SimpleSource><SourceFilename relativeToVRT="0">{tile}</SourceFilename><SourceBand>{b}</SourceBand>'
            f'<SrcRect xOff="0" yOff="0" xSize="{w}" ySize="{h}"/>'
            f'<DstRect xOff="{j * w}" yOff="{i * h}" xSize="{w}" ySize="{h}"/></SimpleSource>'
            for i in range(copies) for j in range(copies))
        bands.append(f'<VRTRasterBand dataType="Byte" band="{b}">{sources}</VRTRasterBand>')
    path = folder / "mosaic.vrt"
    path.write_text(f'<VRTDataset rasterXSize="{w * copies}" rasterYSize="{h * copies}">{"".join(bands)}'
                    "</VRTDataset>")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    from geovlm.cli.bulk_cmds import RasterTiles
    from geovlm.models.file_hashes import file_sha256
    from geovlm.plugin.tile_sources import GdalTiles

    rasters = sorted(p for p in (SHARED / "data" / "rasters").glob("*.tif"))
    with tempfile.TemporaryDirectory() as tmp:
        rasters.append(mosaic_vrt(SHARED / "data" / "rasters" / "cogeo.tif", Path(tmp)))
        print("| raster | size | digest, rasterio (ms) | digest, GDAL (ms) | same | file SHA-256 (ms) |")
        print("|---|---|---|---|---|---|")
        for path in rasters:
            times = {"rasterio": [], "gdal": [], "file": []}
            digests = {}
            for _ in range(args.rounds):  # alternated, so load changes hit all three alike
                t = time.perf_counter()
                cli = RasterTiles(str(path), None, False)
                digests["rasterio"] = cli.pixel_digest()
                cli.close()
                times["rasterio"].append(time.perf_counter() - t)
                t = time.perf_counter()
                digests["gdal"] = GdalTiles(str(path), False).pixel_digest()
                times["gdal"].append(time.perf_counter() - t)
                t = time.perf_counter()
                file_sha256(path)
                times["file"].append(time.perf_counter() - t)
            med = {k: 1000 * statistics.median(v) for k, v in times.items()}
            from osgeo import gdal

            ds = gdal.Open(str(path))
            size = f"{ds.RasterXSize}x{ds.RasterYSize}x{ds.RasterCount}"
            print(f"| {path.name} | {size} | {med['rasterio']:.1f} | {med['gdal']:.1f} | "
                  f"{digests['rasterio'] == digests['gdal']} | {med['file']:.1f} |")
    print(f"\nload average: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; file SHA-256 of the VRT hashes its "
          "XML only (it does not see the pixels)")


if __name__ == "__main__":
    main()
