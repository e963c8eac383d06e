"""A bulk run from QGIS's own Processing dialog (processing's AlgorithmDialog, headless) that ends with tiles or
features undone: the run fails (Run resumes) yet the answers it committed appear in the project as the layers
a successful run loads, styled alike; a resumed Run that completes them loads no second copy."""
import sys
import time
from pathlib import Path

import pytest
from qgis.core import QgsApplication, QgsProject, QgsVectorLayer

sys.path.insert(0, str(Path(__file__).parent))
from bulk_support import browser_model_for_dialogs, ledger_rows, wait_for_rows  # noqa: E402

STYLES = Path(__file__).resolve().parents[1] / "styles"


def run_dialog(dialog, timeout=120, kill_when=None):
    """Press Run in `dialog` and wait for its end; `kill_when`: (condition, action), the action called once
    the condition is true. (successful, results)."""
    finished = []
    dialog.algorithmFinished.connect(lambda ok, results: finished.append((ok, results)))
    dialog.runAlgorithm()
    deadline = time.monotonic() + timeout
    while not finished and time.monotonic() < deadline:
        QgsApplication.processEvents()
        if kill_when is not None and kill_when[0]():
            kill_when[1]()
            kill_when = None
        time.sleep(0.02)
    assert finished, "the dialog's run did not end"
    return finished[-1]


def project_layers(out):
    """{GeoPackage layer name: [project layers of it]} of the project's layers read from `out`."""
    found = {}
    for layer in QgsProject.instance().mapLayers().values():
        path, _, name = layer.source().partition("|layername=")
        if path == str(out):
            found.setdefault(name, []).append(layer)
    return found


def renderer_of(style, geometry):
    """The renderer type a layer gets from styles/<style>.qml."""
    layer = QgsVectorLayer(f"{geometry}?crs=EPSG:4326", "probe", "memory")
    layer.loadNamedStyle(str(STYLES / f"{style}.qml"))
    return layer.renderer().type()


def tile_params(data_dir, engine, out):
    return {"INPUT": str(data_dir / "rasters" / "RGB.byte.tif"), "TILE_SIZE": 256, "ENGINE": engine.url,
            "FAMILY": "geochat", "OUTPUT": str(out)}


def feature_params(data_dir, engine, out):
    return {"INPUT": str(data_dir / "rasters" / "geotiff_labels.geojson"),
            "RASTER": str(data_dir / "rasters" / "sample_geotiff.tif"), "ENGINE": engine.url, "FAMILY": "geochat",
            "OUTPUT": str(out)}


@pytest.mark.parametrize("alg_id, make_params, expected", [
    ("geovlm:captiontiles", tile_params, {"tiles": "tiles"}),
    ("geovlm:detecttiles", tile_params, {"tiles": "tiles", "objects": "objects", "relations": "relations"}),
    ("geovlm:captionfeatures", feature_params, {"tiles": "tiles", "features": "features"}),
])
def test_a_failed_dialog_run_shows_what_it_committed_and_a_resumed_run_no_second_copy(
        plugin, processing, qgis_iface, engines, data_dir, tmp_path, monkeypatch, alg_id, make_params, expected):
    """The dialog's run with two requests refused by the engine: Execution failed, yet each layer of OUTPUT is
    in the project once, styled as a successful run styles it (styles/), holding the answered and the failed;
    Run again asks for the two, succeeds, and the same layers (no second copy) show every answer."""
    browser_model_for_dialogs(qgis_iface, monkeypatch)
    engine = engines(refuse_first=2)
    out = tmp_path / "dialog.gpkg"
    QgsProject.instance().removeAllMapLayers()
    dialog = processing.createAlgorithmDialog(alg_id, make_params(data_dir, engine, out))
    try:
        ok, _ = run_dialog(dialog)
        assert not ok
        statuses = [s for _, s in ledger_rows(out)]
        assert statuses.count("failed") == 2 and statuses.count("ok") == len(statuses) - 2 > 0
        loaded = project_layers(out)
        assert sorted(loaded) == sorted(expected) and all(len(v) == 1 for v in loaded.values()), loaded
        tiles = loaded["tiles"][0]
        assert tiles.isValid() and sorted(f["status"] for f in tiles.getFeatures()) == sorted(statuses)
        for name, style in expected.items():
            if style:
                geometry = "LineString" if name == "relations" else "Polygon"
                assert loaded[name][0].renderer().type() == renderer_of(style, geometry)
        if "features" in loaded:  # outlines over the raster (styles/features.qml), not QGIS's random opaque fill
            assert loaded["features"][0].renderer().symbol().color().alpha() == 0
            answers = [f["caption_status"] for f in loaded["features"][0].getFeatures()]
            assert answers.count("failed") == 2 and answers.count("ok") == len(answers) - 2
        ok, _ = run_dialog(dialog)  # Run again: the two failed are asked again, the run succeeds
        assert ok
        again = project_layers(out)
        assert again == loaded
        assert {f["status"] for f in tiles.getFeatures()} == {"ok"}
        if "features" in loaded:
            assert {f["caption_status"] for f in loaded["features"][0].getFeatures()} == {"ok"}
    finally:
        dialog.close()
        dialog.deleteLater()
        QgsProject.instance().removeAllMapLayers()


def test_a_stopped_dialog_run_shows_its_tiles_and_the_resumed_run_grows_the_same_layer(
        plugin, processing, qgis_iface, engines, data_dir, tmp_path, monkeypatch):
    """The engine killed half-way (RETRY_WINDOW=1: the run stops a second later, the rest not asked): the tiles
    answered so far are the loaded layer, its count theirs; Run again against another engine asks the rest and
    the same layer, reread, counts and spans every tile."""
    browser_model_for_dialogs(qgis_iface, monkeypatch)
    first_engine, second_engine = engines("a", delay=0.3), engines("b")
    out = tmp_path / "stopped.gpkg"
    params = {"INPUT": str(data_dir / "rasters" / "sample_geotiff.tif"), "TILE_SIZE": 128,
              "ENGINE": first_engine.url, "FAMILY": "geochat", "CONCURRENCY": 2, "RETRY_WINDOW": 1,
              "OUTPUT": str(out)}
    QgsProject.instance().removeAllMapLayers()
    dialog = processing.createAlgorithmDialog("geovlm:captiontiles", params)
    try:
        ok, _ = run_dialog(dialog, kill_when=(lambda: wait_for_rows(out, 3, timeout=0.05) >= 3, first_engine.kill))
        assert not ok
        first = len(ledger_rows(out))
        (tiles,) = project_layers(out)["tiles"]
        assert tiles.featureCount() == first
        panel = dialog.mainWidget()
        chosen = panel.createProcessingParameters
        panel.createProcessingParameters = lambda *a, **k: dict(chosen(*a, **k), ENGINE=second_engine.url)
        ok, _ = run_dialog(dialog)
        assert ok and project_layers(out) == {"tiles": [tiles]}
        total = len(ledger_rows(out))
        assert total > first and tiles.featureCount() == total
        assert tiles.extent() == QgsVectorLayer(f"{out}|layername=tiles", "fresh", "ogr").extent()
    finally:
        dialog.close()
        dialog.deleteLater()
        QgsProject.instance().removeAllMapLayers()


def test_scripts_still_fail_and_load_nothing(plugin, processing, engines, data_dir, tmp_path):
    """processing.run and processing.runAndLoadResults of a run with tiles failed at the engine raise (a script,
    a graphical model stops there) and put no layer in the project: only the dialog shows a failed run's."""
    from qgis.core import QgsProcessingException

    QgsProject.instance().removeAllMapLayers()
    for run in (processing.run, processing.runAndLoadResults):
        engine = engines(run.__name__, refuse_first=2)
        out = tmp_path / f"{run.__name__}.gpkg"
        with pytest.raises(QgsProcessingException, match=r"^2 tiles failed at the engine"):
            run("geovlm:captiontiles", tile_params(data_dir, engine, out))
        QgsApplication.processEvents()
        assert [s for _, s in ledger_rows(out)].count("failed") == 2
        assert QgsProject.instance().mapLayers() == {}
