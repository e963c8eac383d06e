"""The bands `geovlm:captionfeatures` shows the model (RED_BAND, GREEN_BAND, BLUE_BAND of RASTER, as the tile
algorithms): what the scripted engine on 127.0.0.1 receives for each feature's window, the plan the ledger
records (a rerun with the same bands resumes, with others is refused), bad bands refused in one line before any
engine is asked, the dialog's band choosers, and qgis_process on 16-bit NIR,R,G,B imagery."""
import subprocess

import pytest
from bulk_support import (
    browser_model_for_dialogs,
    check_band_chooser,
    constant_raster,
    empty_web_layer,
    ledger_rows,
    means,
    stored_plan,
)
from qgis.core import QgsProcessingException, QgsVectorLayer

# two squares on the pixel edges of `constant_raster`'s grid (origin 500000, 4000000; 10 m): windows of 50 x 50
# and 80 x 80 pixels, sent to GeoChat's square input without padding, so each image is the window's colour alone
SQUARES = {"a": (500100, 3999400, 500600, 3999900), "b": (501000, 3998000, 501800, 3998800)}


def polygons(path, boxes, epsg=32633):
    """A GeoPackage of one polygon per box {name: (xmin, ymin, xmax, ymax)} in EPSG:`epsg`, with a `name`."""
    from osgeo import ogr, osr

    srs = osr.SpatialReference()
    srs.ImportFromEPSG(epsg)
    ds = ogr.GetDriverByName("GPKG").CreateDataSource(str(path))
    layer = ds.CreateLayer("parcels", srs, ogr.wkbPolygon)
    layer.CreateField(ogr.FieldDefn("name", ogr.OFTString))
    for name, (x0, y0, x1, y1) in boxes.items():
        feature = ogr.Feature(layer.GetLayerDefn())
        feature.SetField("name", name)
        feature.SetGeometry(ogr.CreateGeometryFromWkt(f"POLYGON(({x0} {y0},{x1} {y0},{x1} {y1},{x0} {y1},{x0} {y0}))"))
        layer.CreateFeature(feature)
    ds = None
    return path


def captions(out):
    """{name: (caption status, caption)} of the features layer of a captionfeatures OUTPUT."""
    layer = QgsVectorLayer(f"{out}|layername=features", "features", "ogr")
    assert layer.isValid()
    return {f["name"]: (f["caption_status"], f["caption"]) for f in layer.getFeatures()}


def test_chosen_bands_reach_each_window_and_a_rerun_with_others_is_refused(plugin, processing, engines, tmp_path):
    """A 4-band 8-bit raster (10, 60, 120, 240): bands 4,3,2 send every window as (240, 120, 60), the default
    1,2,3 as (10, 60, 120). The plan records 4,3,2: the same bands resume (nothing asked again), other bands or
    none are refused naming the difference, and OVERWRITE asks again in the new bands."""
    raster = constant_raster(tmp_path / "four.tif", (10, 60, 120, 240))
    parcels = polygons(tmp_path / "parcels.gpkg", SQUARES)
    engine = engines()
    out = tmp_path / "f.gpkg"
    params = {"INPUT": str(parcels), "RASTER": str(raster), "RED_BAND": 4, "GREEN_BAND": 3, "BLUE_BAND": 2,
              "ENGINE": engine.url, "FAMILY": "geochat", "OUTPUT": str(out)}
    processing.run("geovlm:captionfeatures", params)
    assert means(engine, "channels") == [pytest.approx([240.0, 120.0, 60.0], abs=0.01)] * 2
    assert stored_plan(out)["bands"] == [4, 3, 2]
    assert {s for s, _ in captions(out).values()} == {"ok"} and len(ledger_rows(out)) == 2

    processing.run("geovlm:captionfeatures", params)  # resumed: nothing asked again
    assert engine.requests() == 2
    for changed, said in ((dict(RED_BAND=2, GREEN_BAND=3, BLUE_BAND=4), "4,3,2 there, 2,3,4 now"),
                          (dict(RED_BAND=None, GREEN_BAND=None, BLUE_BAND=None), "4,3,2 there, default now")):
        with pytest.raises(QgsProcessingException, match=rf"another plan.*bands \(red,green,blue\) {said}"):
            processing.run("geovlm:captionfeatures", dict(params, **changed))
    assert engine.requests() == 2 and stored_plan(out)["bands"] == [4, 3, 2]

    processing.run("geovlm:captionfeatures", dict(params, RED_BAND=2, GREEN_BAND=3, BLUE_BAND=4, OVERWRITE=True))
    assert means(engine, "channels")[2:] == [pytest.approx([60.0, 120.0, 240.0], abs=0.01)] * 2
    assert stored_plan(out)["bands"] == [2, 3, 4]

    default = tmp_path / "default.gpkg"
    processing.run("geovlm:captionfeatures", {k: v for k, v in params.items() if not k.endswith("_BAND")}
                   | {"OUTPUT": str(default)})
    assert means(engine, "channels")[4:] == [pytest.approx([10.0, 60.0, 120.0], abs=0.01)] * 2
    assert "bands" not in stored_plan(default)  # a default run's plan reads as before


def test_bands_chosen_on_a_real_landsat_scene_send_its_channels_in_that_order(plugin, processing, engines,
                                                                              data_dir, tmp_path):
    """RGB.byte.tif (a real 3-band Landsat scene): a parcel's window sent in bands 3,1,2 is the default image's
    blue, red, green, channel for channel."""
    from osgeo import gdal

    raster = data_dir / "rasters" / "RGB.byte.tif"
    ds = gdal.Open(str(raster))
    x0, dx, _, y0, _, dy = ds.GetGeoTransform()
    ds = None
    # pixels 300..400 x 300..400 (a quarter pixel inside, so the window is exactly those 100 x 100 pixels)
    box = (x0 + 300.25 * dx, y0 + 399.75 * dy, x0 + 399.75 * dx, y0 + 300.25 * dy)
    parcels = polygons(tmp_path / "parcels.gpkg", {"field": box}, epsg=32618)
    engine = engines()
    base = {"INPUT": str(parcels), "RASTER": str(raster), "ENGINE": engine.url, "FAMILY": "geochat"}
    processing.run("geovlm:captionfeatures", dict(base, OUTPUT=str(tmp_path / "default.gpkg")))
    processing.run("geovlm:captionfeatures", dict(base, OUTPUT=str(tmp_path / "brg.gpkg"), RED_BAND=3,
                                                  GREEN_BAND=1, BLUE_BAND=2))
    (red, green, blue), chosen = means(engine, "channels")
    assert min(abs(red - green), abs(green - blue), abs(blue - red)) > 1  # each band tells apart from the others
    assert chosen == pytest.approx([blue, red, green], abs=1e-6)
    assert captions(tmp_path / "brg.gpkg")["field"][0] == "ok"
    assert stored_plan(tmp_path / "brg.gpkg")["bands"] == [3, 1, 2]


@pytest.mark.parametrize("bands, said", [
    ((0, 2, 3), "the raster has 4 bands: choose three bands of 1..4 as red,green,blue, not 0,2,3"),
    ((2, 3, 5), "the raster has 4 bands: choose three bands of 1..4 as red,green,blue, not 2,3,5"),
    ((2, None, 4), "choose a red, a green and a blue band, or none of them"),
    ((2, "x", 4), "GREEN_BAND is a band number, not 'x'"),
])
def test_bad_bands_are_one_line_before_any_engine_is_asked(plugin, processing, engines, tmp_path, bands, said):
    raster = constant_raster(tmp_path / "four.tif", (10, 60, 120, 240))
    engine = engines()
    out = tmp_path / "f.gpkg"
    params = {"INPUT": str(polygons(tmp_path / "parcels.gpkg", SQUARES)), "RASTER": str(raster),
              "ENGINE": engine.url, "FAMILY": "geochat", "OUTPUT": str(out),
              **{name: band for name, band in zip(("RED_BAND", "GREEN_BAND", "BLUE_BAND"), bands)}}
    with pytest.raises(QgsProcessingException) as refused:
        processing.run("geovlm:captionfeatures", params)
    assert str(refused.value).splitlines()[-1].startswith(said), str(refused.value)
    assert not out.exists() and engine.requests() == 0


def test_qgis_process_captions_features_of_16_bit_nir_r_g_b_imagery_in_bands_2_3_4(engines, tmp_path,
                                                                                  qgis_process_env):
    """qgis_process on 16-bit NIR,R,G,B (NIR 0, red and green 3000, blue 0): RED_BAND=2 GREEN_BAND=3 BLUE_BAND=4
    sends each window as yellow (the default 1,2,3 would send cyan); the features layer is written; a rerun with
    other bands is refused as another plan, a band the raster lacks in one line, printed once."""
    raster = constant_raster(tmp_path / "nrgb.tif", (0, 3000, 3000, 0), dtype="uint16")
    parcels = polygons(tmp_path / "parcels.gpkg", SQUARES)
    engine = engines()
    out = tmp_path / "q.gpkg"
    exe, env = qgis_process_env
    args = [exe, "run", "geovlm:captionfeatures", "--", f"INPUT={parcels}", f"RASTER={raster}", "RED_BAND=2",
            "GREEN_BAND=3", "BLUE_BAND=4", f"ENGINE={engine.url}", "FAMILY=geochat", f"OUTPUT={out}"]
    dashed = args[:3] + [f"--{a}" for a in args[4:]]  # qgis_process's other spelling: --RED_BAND=2 ...
    run = subprocess.run(dashed, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert means(engine, "channels") == [pytest.approx([255.0, 255.0, 0.0], abs=0.01)] * 2
    assert {name: status for name, (status, _) in captions(out).items()} == {"a": "ok", "b": "ok"}
    assert stored_plan(out)["bands"] == [2, 3, 4]

    other = subprocess.run([a.replace("RED_BAND=2", "RED_BAND=1") for a in args], env=env, capture_output=True,
                           text=True, timeout=300)
    assert other.returncode != 0 and "bands (red,green,blue) 2,3,4 there, 1,3,4 now" in other.stdout + other.stderr
    bad = subprocess.run([a.replace("BLUE_BAND=4", "BLUE_BAND=5") for a in args], env=env, capture_output=True,
                         text=True, timeout=300)
    said = "the raster has 4 bands: choose three bands of 1..4 as red,green,blue, not 2,3,5"
    assert bad.returncode != 0 and (bad.stdout + bad.stderr).count(said) == 1, bad.stdout + bad.stderr
    assert engine.requests() == 2


def test_the_dialog_offers_the_rasters_bands_unset_by_default(plugin, processing, qgis_iface, tmp_path,
                                                              monkeypatch):
    """The Processing dialog's band choosers follow RASTER: they list the 4-band layer's bands, start unset (the
    default 1,2,3), and what is chosen is what the algorithm gets."""
    from qgis.core import QgsProject, QgsRasterLayer

    browser_model_for_dialogs(qgis_iface, monkeypatch)
    layer = QgsRasterLayer(str(constant_raster(tmp_path / "four.tif", (10, 60, 120, 240))), "four")
    parcels = QgsVectorLayer(f"{polygons(tmp_path / 'parcels.gpkg', SQUARES)}|layername=parcels", "parcels", "ogr")
    QgsProject.instance().addMapLayers([layer, parcels])
    try:
        dialog = processing.createAlgorithmDialog("geovlm:captionfeatures", {"INPUT": parcels.id(),
                                                                             "RASTER": layer.id()})
        params = dialog.createProcessingParameters()
        assert params["RASTER"] == layer.id() and params["INPUT"] == parcels.id()
        check_band_chooser(dialog, "GREEN_BAND", 3)
        dialog.deleteLater()
    finally:
        QgsProject.instance().removeAllMapLayers()


def test_a_web_layer_is_refused_in_one_line_with_or_without_bands(plugin, processing, tmp_path):
    """RASTER must be a file: a web layer is refused by the parameter check (printed once by qgis_process)."""
    from qgis.core import QgsApplication, QgsProcessingContext, QgsProject

    layer = empty_web_layer(tmp_path / "tiles")
    QgsProject.instance().addMapLayer(layer)
    try:
        context = QgsProcessingContext()
        context.setProject(QgsProject.instance())
        alg = QgsApplication.processingRegistry().createAlgorithmById("geovlm:captionfeatures")
        params = {"INPUT": str(polygons(tmp_path / "parcels.gpkg", SQUARES)), "RASTER": layer.id(),
                  "ENGINE": "http://127.0.0.1:9", "OUTPUT": str(tmp_path / "w.gpkg")}
        said = (False, "RASTER must be a raster file (GDAL): 'web' is a web layer")
        assert alg.checkParameterValues(params, context) == said
        assert alg.checkParameterValues(dict(params, RED_BAND=1, GREEN_BAND=1, BLUE_BAND=1), context) == said
        raster = constant_raster(tmp_path / "four.tif", (10, 60, 120, 240))
        assert alg.checkParameterValues(dict(params, RASTER=str(raster), RED_BAND=2, GREEN_BAND=3, BLUE_BAND=4),
                                        context) == (True, "")
    finally:
        QgsProject.instance().removeAllMapLayers()
