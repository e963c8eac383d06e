"""The bulk algorithms' cap on a plan's size (`MAX_TILES`, as `geovlm caption --max-tiles`): a raster of 10^6 x
10^6 px (a VRT made in no time, `bulk_support.huge_vrt`) planned 3.8 million tiles and started asking them; now
it is refused in one line, worded as the command line words it (core.tiling.too_many_tiles) but for the names
of the settings, by the parameter check, by prepareAlgorithm (a graphical model's steps skip the check) and so
by processing.run and qgis_process, before any engine is started or asked. EXTENT, TILE_SIZE and MAX_TILES are
the ways on."""
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from qgis.core import QgsApplication, QgsProcessingContext, QgsProcessingException, QgsProject

sys.path.insert(0, str(Path(__file__).parent))
from bulk_support import empty_web_layer, huge_vrt, ledger_rows, run_cli  # noqa: E402
from qt_support import RecordingFeedback  # noqa: E402


def huge(tiles="3,818,116"):
    """The refusal of the huge VRT's plan of `tiles` tiles of 512 px (3,818,116 without overlap, 4,981,824 with
    the 64 px of detecttiles' default)."""
    return (f"the plan has {tiles} tiles of 512 px over the raster (1000000x1000000 px), more than MAX_TILES "
            "100,000: ask part of it (EXTENT), take larger tiles (TILE_SIZE), or raise MAX_TILES")


def context():
    made = QgsProcessingContext()
    made.setProject(QgsProject.instance())
    return made


def cancelled_after(feedback, seconds):
    """A started timer that cancels `feedback`: a run that asks the huge plan's tiles ends in the test's time."""
    timer = threading.Timer(seconds, feedback.cancel)
    timer.start()
    return timer


@pytest.mark.parametrize("alg, tiles", [("captiontiles", "3,818,116"), ("detecttiles", "4,981,824")])
def test_a_huge_plan_is_refused_in_one_line_before_any_engine_is_asked(plugin, processing, engines, tmp_path, alg,
                                                                       tiles):
    """Default MAX_TILES (100,000): the parameter check and prepareAlgorithm refuse the 3.8 million tile plan in
    the line the command line prints, with QGIS's names; processing.run raises it, in seconds, the engine never
    asked and no output written (before the cap the run started asking its tiles until cancelled)."""
    engine, said = engines(), huge(tiles)
    out = tmp_path / "huge.gpkg"
    params = {"INPUT": str(huge_vrt(tmp_path / "huge.vrt")), "ENGINE": engine.url, "FAMILY": "geochat",
              "OUTPUT": str(out)}
    made = QgsApplication.processingRegistry().createAlgorithmById(f"geovlm:{alg}")
    assert made.checkParameterValues(params, context()) == (False, said)
    with pytest.raises(QgsProcessingException) as refused:
        made.prepareAlgorithm(params, context(), RecordingFeedback())
    assert str(refused.value) == said
    feedback = RecordingFeedback()
    timer = cancelled_after(feedback, 20.0)
    started = time.monotonic()
    try:
        with pytest.raises(QgsProcessingException) as refused:
            processing.run(f"geovlm:{alg}", params, feedback=feedback)
    finally:
        timer.cancel()
    assert str(refused.value).splitlines()[-1] == said and time.monotonic() - started < 15
    assert (engine.arrivals(), engine.requests()) == (0, 0) and not out.exists()


def test_the_cap_is_the_users_to_set_and_reads_as_the_command_lines(plugin, processing, engines, data_dir, tmp_path):
    """RGB.byte.tif in 256 px tiles is 12 tiles: MAX_TILES 11 refuses it with the command line's line for
    --max-tiles 11, each option named as QGIS names it; MAX_TILES 12 runs it; MAX_TILES 0 (which the parameter
    check refuses, but a graphical model passes to prepareAlgorithm) is refused as --max-tiles 0 is."""
    raster = data_dir / "rasters" / "RGB.byte.tif"
    engine = engines()
    params = {"INPUT": str(raster), "TILE_SIZE": 256, "OVERLAP": 0, "ENGINE": engine.url, "FAMILY": "geochat",
              "OUTPUT": str(tmp_path / "d.gpkg")}
    code, _, stderr = run_cli("detect", raster, "--tile", 256, "--overlap", 0, "--max-tiles", 11, "--engine",
                              engine.url, "--out", tmp_path / "cli.gpkg", timeout=60)
    cli_line = stderr.strip().removeprefix("geovlm detect: ")
    assert code == 2 and cli_line.startswith("the plan has 12 tiles of 256 px over the raster (791x718 px)"), stderr
    for option, name in (("--extent 'xmin,xmax,ymin,ymax [CRS]'", "EXTENT"), ("--max-tiles", "MAX_TILES"),
                         ("--tile", "TILE_SIZE")):
        cli_line = cli_line.replace(option, name)
    made = QgsApplication.processingRegistry().createAlgorithmById("geovlm:detecttiles")
    assert made.checkParameterValues(dict(params, MAX_TILES=11), context()) == (False, cli_line)
    with pytest.raises(QgsProcessingException, match="^MAX_TILES must be at least 1, not 0$"):
        made.prepareAlgorithm(dict(params, MAX_TILES=0), context(), RecordingFeedback())
    assert engine.arrivals() == 0
    processing.run("geovlm:detecttiles", dict(params, MAX_TILES=12), feedback=RecordingFeedback())
    assert sorted(status for _, status in ledger_rows(tmp_path / "d.gpkg")) == ["ok"] * 12


def test_an_extent_of_a_huge_raster_runs_under_the_default_cap(plugin, processing, engines, tmp_path):
    """The first way on: EXTENT over 1200 x 800 px in the middle of the 10^6 px raster is 6 tiles of 512 px, asked
    and answered with MAX_TILES left at its default (as `geovlm caption --extent` asks them)."""
    col0, row0 = 500_000, 300_000
    x0, y0 = 101985 + 300 * col0, 2826915 - 300 * row0
    extent = f"{x0 + 10},{x0 + 1200 * 300 - 10},{y0 - 800 * 300 + 10},{y0 - 10} [EPSG:32618]"
    out = tmp_path / "part.gpkg"
    processing.run("geovlm:captiontiles", {"INPUT": str(huge_vrt(tmp_path / "huge.vrt")), "EXTENT": extent,
                                           "SKIP_NODATA": False, "ENGINE": engines().url, "FAMILY": "geochat",
                                           "OUTPUT": str(out)}, feedback=RecordingFeedback())
    assert [status for _, status in ledger_rows(out)] == ["ok"] * 6


def test_qgis_process_refuses_a_huge_plan_once_and_exits_1(engines, tmp_path, qgis_process_env):
    """qgis_process (offscreen, GDAL_PAM_ENABLED=NO: no .aux.xml beside the VRT) prints the refusal once and exits
    1, in seconds, the engine never asked; the help names MAX_TILES and its default."""
    exe, env = qgis_process_env
    env = dict(env, GDAL_PAM_ENABLED="NO")
    engine = engines()
    vrt, out = huge_vrt(tmp_path / "huge.vrt"), tmp_path / "huge.gpkg"
    started = time.monotonic()
    run = subprocess.run([exe, "run", "geovlm:captiontiles", "--", f"INPUT={vrt}", f"ENGINE={engine.url}",
                          "FAMILY=geochat", f"OUTPUT={out}"], env=env, capture_output=True, text=True, timeout=120)
    said = run.stdout + run.stderr
    assert run.returncode == 1 and said.count(huge()) == 1, said[-3000:]
    assert time.monotonic() - started < 60
    assert (engine.arrivals(), engine.requests()) == (0, 0) and not out.exists()
    assert not (tmp_path / "huge.vrt.aux.xml").exists()
    shown = subprocess.run([exe, "help", "geovlm:captiontiles"], env=env, capture_output=True, text=True,
                           timeout=120).stdout
    assert "MAX_TILES" in shown and "100,000 by default" in shown


def test_a_web_layer_rendered_over_a_huge_extent_is_refused_alike(plugin, tmp_path):
    """A web layer's plan is its EXTENT at RESOLUTION: a country at 0.5 m (400 x 300 km: 800,000 x 600,000 px) is
    1,831,836 tiles of 512 px, refused naming the extent's pixels of the web layer at that resolution, before
    any tile is rendered or engine asked (the XYZ URL below has no tile at all)."""
    layer = empty_web_layer(tmp_path)
    QgsProject.instance().addMapLayer(layer)
    try:
        params = {"INPUT": layer.id(), "EXTENT": "0,400000,6000000,6300000 [EPSG:3857]", "RESOLUTION": 0.5,
                  "ENGINE": "http://127.0.0.1:9", "FAMILY": "geochat", "OUTPUT": str(tmp_path / "web.gpkg")}
        said = ("the plan has 1,831,836 tiles of 512 px over the extent's 800000x600000 px of the web layer at 0.5 "
                "map units per pixel, more than MAX_TILES 100,000: ask part of it (EXTENT), take larger tiles "
                "(TILE_SIZE), or raise MAX_TILES")
        made = QgsApplication.processingRegistry().createAlgorithmById("geovlm:captiontiles")
        assert made.checkParameterValues(params, context()) == (False, said)
        with pytest.raises(QgsProcessingException) as refused:
            made.prepareAlgorithm(params, context(), RecordingFeedback())
        assert str(refused.value) == said
        assert made.checkParameterValues(dict(params, MAX_TILES=2_000_000), context()) == (True, "")
    finally:
        QgsProject.instance().removeMapLayer(layer.id())
    assert not (tmp_path / "web.gpkg").exists()
