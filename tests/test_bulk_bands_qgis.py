"""The bands a bulk run in QGIS shows the model (RED_BAND, GREEN_BAND, BLUE_BAND) and whether it asks nodata-only
tiles (SKIP_NODATA), as `geovlm caption --bands r,g,b --keep-nodata` does: what the scripted engine on 127.0.0.1
receives, the plan both tools record (so either resumes the other's run and refuses another choice), bad bands
refused in one line before any engine is asked, and qgis_process with bands chosen."""
import subprocess
import sys
from pathlib import Path

import pytest
from qgis.core import QgsApplication, QgsProcessingException, QgsVectorLayer

sys.path.insert(0, str(Path(__file__).parent))
from bulk_support import (  # noqa: E402
    browser_model_for_dialogs,
    check_band_chooser,
    constant_raster,
    empty_web_layer,
    ledger_rows,
    means,
    run_cli,
    stored_plan,
)


def test_chosen_bands_are_what_the_model_sees_and_the_cli_resumes_the_run(plugin, processing, engines, tmp_path):
    """A 4-band 8-bit raster (10, 60, 120, 240): bands 4,3,2 send (240, 120, 60), the default 1,2,3 (10, 60, 120).
    The plan records 4,3,2, so `geovlm caption --bands 4,3,2` resumes the run (nothing asked again) and another
    choice of bands, or asking nodata-only tiles, is refused as another plan naming the difference."""
    raster = constant_raster(tmp_path / "four.tif", (10, 60, 120, 240))
    engine = engines()
    out = tmp_path / "c.gpkg"
    params = {"INPUT": str(raster), "TILE_SIZE": 256, "RED_BAND": 4, "GREEN_BAND": 3, "BLUE_BAND": 2,
              "ENGINE": engine.url, "FAMILY": "geochat", "OUTPUT": str(out)}
    processing.run("geovlm:captiontiles", params)
    assert means(engine) == [pytest.approx(140.0, abs=0.01)]
    assert stored_plan(out)["bands"] == [4, 3, 2] and "nodata_tiles" not in stored_plan(out)
    code, stdout, stderr = run_cli("caption", raster, "--tile", 256, "--bands", "4,3,2", "--engine", engine.url,
                                   "--family", "geochat", "--out", out, "--no-progress")
    assert code == 0 and " 0 asked" in stdout and "1 resumed" in stdout, stdout + stderr
    for changed, said in ((dict(RED_BAND=None, GREEN_BAND=None, BLUE_BAND=None),
                           "bands (red,green,blue) 4,3,2 there, default now"),
                          (dict(RED_BAND=2), "bands (red,green,blue) 4,3,2 there, 2,3,2 now"),
                          (dict(SKIP_NODATA=False), "nodata-only tiles skipped there, asked now")):
        with pytest.raises(QgsProcessingException, match=said.replace("(", r"\(").replace(")", r"\)")):
            processing.run("geovlm:captiontiles", dict(params, **changed))
    assert len(means(engine)) == 1
    processing.run("geovlm:captiontiles", {k: v for k, v in params.items() if not k.endswith("_BAND")}
                   | {"OUTPUT": str(tmp_path / "default.gpkg")})
    assert means(engine)[-1] == pytest.approx((10 + 60 + 120) / 3, abs=0.01)
    assert "bands" not in stored_plan(tmp_path / "default.gpkg")  # a default run's plan reads as before


def test_a_one_band_raster_is_grey_by_default_and_with_its_band_chosen(plugin, processing, engines, tmp_path):
    """One band (100): grey by default as before, no bands in the plan; 1,1,1 chosen sends the same image."""
    raster = constant_raster(tmp_path / "one.tif", (100,))
    engine = engines()
    base = {"INPUT": str(raster), "TILE_SIZE": 256, "ENGINE": engine.url, "FAMILY": "geochat"}
    processing.run("geovlm:captiontiles", dict(base, OUTPUT=str(tmp_path / "a.gpkg")))
    processing.run("geovlm:captiontiles", dict(base, OUTPUT=str(tmp_path / "b.gpkg"), RED_BAND=1, GREEN_BAND=1,
                                               BLUE_BAND=1))
    assert means(engine) == [pytest.approx(100.0, abs=0.01)] * 2
    assert "bands" not in stored_plan(tmp_path / "a.gpkg") and stored_plan(tmp_path / "b.gpkg")["bands"] == [1, 1, 1]


@pytest.mark.parametrize("bands, said", [
    ((0, 2, 3), "the raster has 4 bands: choose three bands of 1..4 as red,green,blue, not 0,2,3"),
    ((4, 3, 5), "the raster has 4 bands: choose three bands of 1..4 as red,green,blue, not 4,3,5"),
    ((4, 3, None), "choose a red, a green and a blue band, or none of them"),
    (("x", 3, 2), "RED_BAND is a band number, not 'x'"),
])
def test_bad_bands_are_one_line_before_any_engine_is_asked(plugin, processing, engines, tmp_path, bands, said):
    raster = constant_raster(tmp_path / "four.tif", (10, 60, 120, 240))
    engine = engines()
    out = tmp_path / "c.gpkg"
    params = {"INPUT": str(raster), "TILE_SIZE": 256, "ENGINE": engine.url, "FAMILY": "geochat", "OUTPUT": str(out),
              **{name: band for name, band in zip(("RED_BAND", "GREEN_BAND", "BLUE_BAND"), bands)}}
    with pytest.raises(QgsProcessingException) as refused:
        processing.run("geovlm:captiontiles", params)
    assert str(refused.value).splitlines()[-1].startswith(said), str(refused.value)
    assert not out.exists() and engine.requests() == 0


def test_kept_nodata_tiles_are_asked_and_skipped_ones_are_not(plugin, processing, engines, tmp_path):
    """A raster whose every pixel is nodata: skipped by default (nothing asked), asked as a black image with
    SKIP_NODATA false, as `geovlm caption --keep-nodata` asks it."""
    raster = constant_raster(tmp_path / "empty.tif", (0, 0, 0), nodata=0)
    engine = engines()
    base = {"INPUT": str(raster), "TILE_SIZE": 256, "ENGINE": engine.url, "FAMILY": "geochat"}
    processing.run("geovlm:captiontiles", dict(base, OUTPUT=str(tmp_path / "skip.gpkg")))
    assert engine.requests() == 0 and {s for _, s in ledger_rows(tmp_path / "skip.gpkg")} == {"skipped"}
    processing.run("geovlm:captiontiles", dict(base, SKIP_NODATA=False, OUTPUT=str(tmp_path / "keep.gpkg")))
    assert means(engine) == [0.0] and {s for _, s in ledger_rows(tmp_path / "keep.gpkg")} == {"ok"}
    assert stored_plan(tmp_path / "keep.gpkg")["nodata_tiles"] == "asked"
    code, stdout, stderr = run_cli("caption", raster, "--tile", 256, "--keep-nodata", "--engine", engine.url,
                                   "--family", "geochat", "--out", tmp_path / "cli.gpkg", "--no-progress")
    assert code == 0 and means(engine) == [0.0, 0.0], stdout + stderr


def test_qgis_process_with_bands_chosen_on_16_bit_imagery(engines, tmp_path, qgis_process_env):
    """qgis_process on 16-bit NIR,R,G,B (NIR 0, the rest 3000): RGB=2,3,4 sends every band stretched to 255
    (the default 1,2,3 would send NIR's 0 as red); the tiles layer is written; a wrong band is one line."""
    raster = constant_raster(tmp_path / "nrgb.tif", (0, 3000, 3000, 3000), dtype="uint16")
    engine = engines()
    out = tmp_path / "q.gpkg"
    exe, env = qgis_process_env
    args = [exe, "run", "geovlm:captiontiles", "--", f"INPUT={raster}", "TILE_SIZE=128", "RED_BAND=2",
            "GREEN_BAND=3", "BLUE_BAND=4", f"ENGINE={engine.url}", "FAMILY=geochat", f"OUTPUT={out}"]
    run = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert means(engine) == [pytest.approx(255.0, abs=0.01)] * 4
    tiles = QgsVectorLayer(f"{out}|layername=tiles", "tiles", "ogr")
    assert tiles.isValid() and tiles.featureCount() == 4 and tiles.crs().authid() == "EPSG:32633"
    assert {f["status"] for f in tiles.getFeatures()} == {"ok"} and stored_plan(out)["bands"] == [2, 3, 4]
    bad = subprocess.run([a.replace("BLUE_BAND=4", "BLUE_BAND=7") for a in args], env=env, capture_output=True,
                         text=True, timeout=300)
    said = "the raster has 4 bands: choose three bands of 1..4 as red,green,blue, not 2,3,7"
    assert bad.returncode != 0 and (bad.stdout + bad.stderr).count(said) == 1, bad.stdout + bad.stderr
    assert engine.requests() == 4


def test_the_dialog_offers_the_layers_bands_unset_by_default(plugin, processing, qgis_iface, tmp_path, monkeypatch):
    """The Processing dialog's band choosers follow INPUT: they list the 4-band layer's bands, start unset (the
    default 1,2,3), and what is chosen is what the algorithm gets."""
    from qgis.core import QgsProject, QgsRasterLayer

    browser_model_for_dialogs(qgis_iface, monkeypatch)
    layer = QgsRasterLayer(str(constant_raster(tmp_path / "four.tif", (10, 60, 120, 240))), "four")
    QgsProject.instance().addMapLayer(layer)
    try:
        dialog = processing.createAlgorithmDialog("geovlm:captiontiles", {"INPUT": layer.id()})
        check_band_chooser(dialog, "RED_BAND", 4)
        dialog.deleteLater()
    finally:
        QgsProject.instance().removeAllMapLayers()


def test_bands_of_a_web_layer_are_refused_in_one_line(plugin, processing, tmp_path):
    """A web layer is rendered in its own colours: bands chosen for one are refused by the parameter check."""
    from qgis.core import QgsProcessingContext, QgsProject

    layer = empty_web_layer(tmp_path / "tiles")
    QgsProject.instance().addMapLayer(layer)
    try:
        context = QgsProcessingContext()
        context.setProject(QgsProject.instance())
        alg = QgsApplication.processingRegistry().createAlgorithmById("geovlm:captiontiles")
        params = {"INPUT": layer.id(), "RED_BAND": 1, "GREEN_BAND": 1, "BLUE_BAND": 1, "RESOLUTION": 10.0,
                  "EXTENT": "0,5120,0,5120 [EPSG:3857]", "ENGINE": "http://127.0.0.1:9",
                  "OUTPUT": str(tmp_path / "w.gpkg")}
        assert alg.checkParameterValues(params, context) == (
            False, "'web' is a web layer, rendered in its own colours: leave the bands unset")
        assert alg.checkParameterValues({k: v for k, v in params.items() if not k.endswith("_BAND")}, context)[0]
    finally:
        QgsProject.instance().removeAllMapLayers()
