"""`geovlm caption` / `geovlm detect` over part of a raster (`--extent`, QGIS's extent strings) and the cap on a
plan's size (`--max-tiles`): a huge VRT refused in one line before any engine is asked, or asked only where the
extent lies; resume with the same extent, another extent named as such; the same plan as the EXTENT of QGIS's
bulk algorithms (run in-process here, as qgis_process runs them)."""
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from geovlm.core.tiling import TilePlan
from geovlm.models.imagery import import_rasterio

sys.path.insert(0, str(Path(__file__).parent))
from bulk_support import huge_vrt, ledger_rows, run_cli  # noqa: E402

rasterio = import_rasterio()
from rasterio.windows import Window, bounds  # noqa: E402

DEAD = "http://127.0.0.1:9"  # nothing listens: a run that reached it would retry for --retry-window


def read_tiles(path):
    import pyogrio

    return pyogrio.read_dataframe(path, layer="tiles")


def test_a_huge_plan_is_refused_in_one_line_before_any_engine_is_asked(tmp_path):
    """A 10^6 x 10^6 px VRT planned 3.8 million tiles and started; now one line naming the count and the ways on,
    exit 2, in seconds (the dead engine's retry window is 60 s), nothing written."""
    vrt, out = huge_vrt(tmp_path / "huge.vrt"), tmp_path / "huge.gpkg"
    started = time.monotonic()
    code, stdout, stderr = run_cli("caption", vrt, "--engine", DEAD, "--retry-window", 60, "--out", out,
                                   "--no-progress", timeout=60)
    assert time.monotonic() - started < 30
    assert (code, stdout, stderr.strip()) == (2, "", (
        "geovlm caption: the plan has 3,818,116 tiles of 512 px over the raster (1000000x1000000 px), more than "
        "--max-tiles 100,000: ask part of it (--extent 'xmin,xmax,ymin,ymax [CRS]'), take larger tiles (--tile), "
        "or raise --max-tiles"))
    assert not out.exists()


def test_the_cap_is_the_users_to_set(data_dir, tmp_path):
    raster = data_dir / "rasters" / "RGB.byte.tif"  # 791 x 718 px: 4 x 3 tiles of 256 px
    code, _, stderr = run_cli("detect", raster, "--tile", 256, "--overlap", 0, "--max-tiles", 11, "--engine", DEAD,
                              "--retry-window", 60, "--out", tmp_path / "d.gpkg", timeout=60)
    assert code == 2 and stderr.startswith("geovlm detect: the plan has 12 tiles of 256 px over the raster "
                                           "(791x718 px), more than --max-tiles 11:"), stderr
    code, _, stderr = run_cli("detect", raster, "--max-tiles", 0, "--engine", DEAD, "--out", tmp_path / "d.gpkg")
    assert (code, stderr.strip()) == (2, "geovlm detect: --max-tiles must be at least 1, not 0")


def test_an_extent_of_a_huge_raster_asks_its_tiles_only_and_resumes(engines, tmp_path):
    """--extent over 1200 x 800 px in the middle of the 10^6 px VRT: 3 x 2 tiles of 512 px (the last moved back
    inside the extent), each footprint the window's; the same command resumes (nothing asked); another extent on
    that output is refused naming both extents; with --overwrite it runs."""
    vrt, out = huge_vrt(tmp_path / "huge.vrt"), tmp_path / "part.gpkg"
    col0, row0 = 500_000, 300_000
    x0, y0 = 101985 + 300 * col0, 2826915 - 300 * row0
    extent = f"{x0 + 10},{x0 + 1200 * 300 - 10},{y0 - 800 * 300 + 10},{y0 - 10}"  # inside pixels, rounded outwards
    engine = engines()
    args = ("caption", vrt, "--extent", extent, "--engine", engine.url, "--family", "geochat", "--out", out,
            "--no-progress")
    code, stdout, stderr = run_cli(*args)
    assert code == 0, stderr
    assert (f"6 tiles of 512 px (overlap 0) over pixels {col0},{row0} to {col0 + 1200},{row0 + 800} of the "
            "raster (--extent)") in stderr
    plan = TilePlan(1200, 800, 512)
    tiles = read_tiles(out)
    assert sorted(tiles.tile_id) == sorted(t.id for t in plan.tiles()) and (tiles.status == "ok").all()
    with rasterio.open(vrt) as ds:
        for t in plan.tiles():
            row = tiles[tiles.tile_id == t.id].iloc[0]
            window = Window(col0 + t.col_off, row0 + t.row_off, t.width, t.height)
            assert np.allclose(row.geometry.bounds, bounds(window, ds.transform), rtol=0, atol=1e-6)
    assert engine.requests() == 6
    code, stdout, stderr = run_cli(*args)
    assert code == 0 and "(resuming)" in stderr and engine.requests() == 6, stderr
    other = f"{x0},{x0 + 600 * 300},{y0 - 600 * 300},{y0}"
    code, _, stderr = run_cli(*args[:3], other, *args[4:])
    line = stderr.strip()
    assert code == 2 and "\n" not in line and engine.requests() == 6, stderr
    assert (f"holds a run of another plan (extent {x0:.12g},{x0 + 1200 * 300:.12g},{y0 - 800 * 300:.12g},"
            f"{y0:.12g} there, {x0:.12g},{x0 + 600 * 300:.12g},{y0 - 600 * 300:.12g},{y0:.12g} now)") in line
    assert "raster width" not in line and "geotransform" not in line
    code, stdout, stderr = run_cli(*args[:3], other, *args[4:], "--overwrite")
    assert code == 0 and engine.requests() == 6 + 4, stderr


def test_detect_over_an_extent_places_objects_on_the_map(engines, tmp_path):
    """The rotated scene of test_bulk_cli, asked only over its right-hand part: each object found is its blob's
    footprint on the map (the window's corner, not the raster's, is the plan's pixel (0, 0))."""
    import pyogrio
    from shapely.geometry import Polygon
    from test_bulk_cli import BLOBS, _scene_raster

    raster = tmp_path / "scene.tif"
    transform = _scene_raster(raster)
    # the map rectangle around pixels 240..560 x 0..320; the rotated grid widens it to columns 160.. in pixels
    corners = [transform * (c, r) for c in (240, 560) for r in (0, 320)]
    xs, ys = [x for x, _ in corners], [y for _, y in corners]
    engine = engines(family="skysensegpt")
    out = tmp_path / "right.gpkg"
    code, stdout, stderr = run_cli("detect", raster, "--tile", 320, "--overlap", 80, "--extent",
                                   f"{min(xs)},{max(xs)},{min(ys)},{max(ys)}", "--engine", engine.url, "--out", out,
                                   "--no-progress")
    assert code == 0, stderr
    objects = pyogrio.read_dataframe(out, layer="objects")
    area = read_tiles(out).geometry.union_all()  # the window the extent gave, on the map
    blobs = [Polygon([transform * p for p in ((x, y), (x + w, y), (x + w, y + h), (x, y + h))])
             for _, x, y, w, h in BLOBS]
    whole = [b for b in blobs if b.within(area)]
    assert len(whole) >= 3 and len(whole) < len(blobs)
    for blob in whole:  # found where it is, once
        [found] = [g for g in objects.geometry if g.intersects(blob.centroid)]
        assert found.symmetric_difference(blob).area < 5e-3 * blob.area
    for found in objects.geometry:  # a blob cut by the window's edge: its part inside
        [blob] = [b for b in blobs if b.intersection(found).area > 0.5 * found.area]
        assert found.difference(blob).area < 5e-3 * blob.area and found.difference(area).area < 5e-3 * blob.area


@pytest.mark.parametrize("extent, message", [
    ("1,2,3", "--extent needs xmin,xmax,ymin,ymax [CRS] (QGIS's order; the CRS is optional), e.g. "
     "'500000,510000,4100000,4110000 [EPSG:32616]', not '1,2,3'"),
    ("a,b,c,d", "--extent needs four numbers as xmin,xmax,ymin,ymax [CRS], e.g. '500000,510000,4100000,4110000 "
     "[EPSG:32616]', not 'a,b,c,d'"),
    ("0,nan,0,1", "--extent needs four finite numbers as xmin,xmax,ymin,ymax [CRS], not '0,nan,0,1'"),
    ("250000,200000,2700000,2800000", "--extent '250000,200000,2700000,2800000' is an empty rectangle: the order is "
     "xmin,xmax,ymin,ymax [CRS] (QGIS's), so xmin must be below xmax and ymin below ymax"),
    ("0,10,0,10 [EPSG:4326]", "--extent 0,10,0,10 [EPSG:4326] does not overlap the raster, whose extent is "
     "101985,339315,2611485,2826915 [EPSG:32618]"),
    ("50000,100000,200000,2700000", "--extent 50000,100000,200000,2700000 does not overlap the raster, whose "
     "extent is 101985,339315,2611485,2826915 [EPSG:32618]; read as xmin,ymin,xmax,ymax it would, but the order "
     "here is QGIS's, xmin,xmax,ymin,ymax [CRS]"),
    ("0,1,0,1 [EPSG:99999]", "--extent: unknown CRS 'EPSG:99999' (give e.g. EPSG:4326)"),
])
def test_a_bad_extent_is_one_line_before_any_engine_is_asked(data_dir, tmp_path, capsys, extent, message):
    from geovlm.cli import main

    out = tmp_path / "run.gpkg"
    argv = ["caption", str(data_dir / "rasters" / "RGB.byte.tif"), "--engine", DEAD, "--retry-window", "1",
            "--out", str(out)]
    assert main([*argv, "--extent", extent]) == 2
    assert capsys.readouterr().err.strip() == f"geovlm caption: {message}"
    assert not out.exists()


def test_an_extent_reaching_past_the_raster_is_said_with_the_order_when_that_is_the_likely_cause(data_dir, capsys):
    """GDAL's order (xmin,ymin,xmax,ymax, as gdalwarp -te) read in QGIS's mostly still meets a UTM raster, as a
    rectangle reaching far past it: the run asks the part inside, and a note says so and names the order."""
    from geovlm.cli.rasters import extent_window, open_frame, parse_extent

    frame = open_frame(data_dir / "rasters" / "RGB.byte.tif")
    assert extent_window(frame, parse_extent("150000,250000,2650000,2750000")) == (160, 256, 334, 334)
    assert capsys.readouterr().err == ""  # inside the raster: nothing to say
    assert extent_window(frame, parse_extent("150000,2650000,250000,2750000")) == (160, 256, 631, 462)
    assert capsys.readouterr().err.strip() == (
        "note: --extent 150000,2650000,250000,2750000 reaches past the raster, whose extent is 101985,339315,2611485,"
        "2826915 [EPSG:32618]: only its part inside is asked (pixels 160,256 to 791,718); read as xmin,ymin,xmax,ymax"
        " it would lie inside it: the order here is QGIS's, xmin,xmax,ymin,ymax [CRS]")
    extent_window(frame, parse_extent("300000,400000,2600000,2700000"))
    assert capsys.readouterr().err.strip().endswith("only its part inside is asked (pixels 659,422 to 791,718)")


def test_an_extent_in_another_crs_covers_it_in_the_rasters_pixels(data_dir):
    """An extent in EPSG:4326 over a UTM raster: the window is the smallest of whole pixels that holds the
    extent's edges taken to UTM."""
    from pyproj import Transformer

    from geovlm.cli.rasters import extent_window, open_frame, parse_extent

    frame = open_frame(data_dir / "rasters" / "RGB.byte.tif")
    extent = parse_extent("-77.5,-76.9,24.3,25.1 [EPSG:4326]")
    col, row, width, height = extent_window(frame, extent)
    to_utm = Transformer.from_crs("EPSG:4326", "EPSG:32618", always_xy=True)
    lon = np.r_[np.linspace(-77.5, -76.9, 50), np.full(50, -76.9), np.linspace(-76.9, -77.5, 50), np.full(50, -77.5)]
    lat = np.r_[np.full(50, 24.3), np.linspace(24.3, 25.1, 50), np.full(50, 25.1), np.linspace(25.1, 24.3, 50)]
    x, y = to_utm.transform(lon, lat)
    c, r = zip(*(frame.geotransform.to_pixel(a, b) for a, b in zip(x, y)))
    c, r = np.clip(c, 0, frame.width), np.clip(r, 0, frame.height)
    assert col <= c.min() < col + 1 and col + width - 1 < c.max() <= col + width
    assert row <= r.min() < row + 1 and row + height - 1 < r.max() <= row + height


def test_no_crs_in_the_extent_for_a_raster_without_one(tmp_path, capsys):
    from PIL import Image

    from geovlm.cli import main

    png = tmp_path / "plain.png"
    Image.new("RGB", (64, 64)).save(png)
    assert main(["caption", str(png), "--extent", "0,10,-10,0 [EPSG:4326]", "--engine", DEAD,
                 "--out", str(tmp_path / "o.gpkg")]) == 2
    assert capsys.readouterr().err.strip().endswith(
        "geovlm caption: --extent is in EPSG:4326, but the raster has no CRS: give the extent in its own "
        "coordinates, without [EPSG:4326]")


@pytest.mark.parametrize("extent, window", [
    ("150000.5,250100.7,2650000.2,2750000.9 [EPSG:32618]", (160, 256, 334, 334)),
    ("-77.5,-76.9,24.3,25.1 [EPSG:4326]", (480, 161, 208, 300)),  # QGIS's transformBoundingBox, pyproj's bounds
])
def test_the_same_extent_is_the_same_plan_in_qgis_and_on_the_command_line(plugin, processing, engines, data_dir,
                                                                          tmp_path, extent, window):
    """A run of geovlm:captiontiles with EXTENT is resumed by `geovlm caption --extent` with the same text:
    the same plan, nothing asked again (and the other way round: the plans' fingerprints are equal)."""
    raster = data_dir / "rasters" / "RGB.byte.tif"
    col, row, width, height = window
    engine = engines()
    out = tmp_path / "both.gpkg"
    processing.run("geovlm:captiontiles", {"INPUT": str(raster), "EXTENT": extent, "TILE_SIZE": 128,
                                           "ENGINE": engine.url, "FAMILY": "geochat", "OUTPUT": str(out)})
    asked = engine.requests()
    rows = ledger_rows(out)
    assert asked and len(rows) == len(TilePlan(width, height, 128))
    code, stdout, stderr = run_cli("caption", raster, "--tile", 128, "--extent", extent, "--engine", engine.url,
                                   "--family", "geochat", "--out", out, "--no-progress")
    assert code == 0 and "(resuming)" in stderr, stderr
    assert f"pixels {col},{row} to {col + width},{row + height} of the raster" in stderr
    assert engine.requests() == asked and ledger_rows(out) == rows
