"""`geovlm:captiontiles` / `geovlm:detecttiles` in QGIS against scripted engines on 127.0.0.1: the same tiles
and footprints as `geovlm caption` (through qgis_process), a web layer (XYZ of local file:// tiles made with
gdal2tiles) captioned tile by tile, Cancel within a second then resume, and a scene graph as linked layers."""
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from qgis.core import (
    QgsApplication,
    QgsGeometry,
    QgsPointXY,
    QgsProcessingException,
    QgsRasterLayer,
    QgsVectorLayer,
)

import geovlm
from geovlm.core.georef import fit_plan
from geovlm.core.profiles import get_profile
from geovlm.core.tiling import TilePlan, plan_for_extent

sys.path.insert(0, str(Path(__file__).parent))
from bulk_support import inverted_copy, ledger_rows, run_cli  # noqa: E402
from qt_support import RecordingFeedback  # noqa: E402


def footprints(path):
    """{tile_id: (status, bounding box)} of a ledger's tiles layer read by QGIS."""
    layer = QgsVectorLayer(f"{path}|layername=tiles", "tiles", "ogr")
    assert layer.isValid()
    out = {}
    for f in layer.getFeatures():
        box = f.geometry().boundingBox()
        out[f["tile_id"]] = (f["status"], (box.xMinimum(), box.yMinimum(), box.xMaximum(), box.yMaximum()))
    return out, layer.crs()


def killed_after_rows(tool, args, out, rows=6) -> dict:
    """Start `qgis_process run ARGS` with `tool` (the qgis_process_env fixture's (exe, env)), SIGKILL its whole
    session once the ledger `out` holds `rows` answered tiles, give the engine half a second to finish the
    requests the killed run had in flight; the ledger's {tile_id: status} then."""
    import signal

    from bulk_support import wait_for_rows

    exe, env = tool
    proc = subprocess.Popen([exe, "run", *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        assert wait_for_rows(out, rows, timeout=120) >= rows
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    time.sleep(0.5)
    return dict(ledger_rows(out))


def qgis_process(tool, *args):
    """`qgis_process --json run ARGS` with `tool`, the (exe, env) of the qgis_process_env fixture."""
    exe, env = tool
    return subprocess.run([exe, "--json", "run", *args], env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("name, tile", [("sample_geotiff.tif", 256), ("RGB.byte.tif", 128)])
def test_qgis_process_gives_the_same_tiles_and_footprints_as_the_cli(engines, data_dir, tmp_path, qgis_process_env,
                                                                     name, tile):
    raster = data_dir / "rasters" / name
    engine = engines()
    cli_out, qgis_out = tmp_path / "cli.gpkg", tmp_path / "qgis.gpkg"
    code, _, stderr = run_cli("caption", raster, "--tile", tile, "--engine", engine.url, "--family", "geochat",
                              "--out", cli_out, "--no-progress")
    assert code == 0, stderr
    run = qgis_process(qgis_process_env, "geovlm:captiontiles", "--", f"INPUT={raster}", f"TILE_SIZE={tile}",
                       f"ENGINE={engine.url}", "FAMILY=geochat", f"OUTPUT={qgis_out}")
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    ours, crs = footprints(qgis_out)
    theirs, cli_crs = footprints(cli_out)
    assert sorted(ours) == sorted(theirs)
    for tile_id, (status, box) in theirs.items():
        assert ours[tile_id][0] == status
        assert ours[tile_id][1] == pytest.approx(box, abs=1e-6)
    assert crs == cli_crs
    # the same plan: the command line resumes the run QGIS made (nothing left to ask)
    code, stdout, _ = run_cli("caption", raster, "--tile", tile, "--engine", engine.url, "--family", "geochat",
                              "--out", qgis_out, "--no-progress")
    assert code == 0 and " 0 asked" in stdout and f"{len(ours)} resumed" in stdout


def test_an_xyz_layer_of_local_tiles_is_captioned_tile_by_tile(plugin, processing, engines, data_dir, tmp_path):
    from qgis.core import QgsCoordinateReferenceSystem, QgsCoordinateTransform, QgsProject

    tiles_dir = tmp_path / "xyz"
    gdal2tiles = shutil.which("gdal2tiles.py") or shutil.which("gdal2tiles")
    assert gdal2tiles, "gdal2tiles not found (Debian: gdal-bin, from QGIS's python3-gdal)"
    made = subprocess.run([gdal2tiles, "--xyz", "-z", "7-9", "-w", "none", "-q",
                           str(data_dir / "rasters" / "RGB.byte.tif"), str(tiles_dir)],
                          capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stderr[-2000:]
    uri = f"type=xyz&url=file://{tiles_dir}/{{z}}/{{x}}/{{y}}.png&zmin=7&zmax=9"
    layer = QgsRasterLayer(uri, "local xyz", "wms")
    assert layer.isValid()
    source = QgsRasterLayer(str(data_dir / "rasters" / "RGB.byte.tif"), "src")
    to_3857 = QgsCoordinateTransform(source.crs(), QgsCoordinateReferenceSystem("EPSG:3857"), QgsProject.instance())
    extent = to_3857.transformBoundingBox(source.extent())
    engine = engines()
    out = tmp_path / "xyz.gpkg"
    resolution, tile = 600.0, 128
    result = processing.run("geovlm:captiontiles", {
        "INPUT": layer, "EXTENT": f"{extent.xMinimum()},{extent.xMaximum()},{extent.yMinimum()},"
        f"{extent.yMaximum()} [EPSG:3857]", "RESOLUTION": resolution, "TILE_SIZE": tile, "ENGINE": engine.url,
        "FAMILY": "geochat", "OUTPUT": str(out)})
    assert result["OUTPUT"] == str(out)
    plan, gt = plan_for_extent(extent.xMinimum(), extent.yMinimum(), extent.xMaximum(), extent.yMaximum(),
                               resolution, tile)
    got, crs = footprints(out)
    assert crs.authid() == "EPSG:3857"
    assert sorted(got) == sorted(t.id for t in plan.tiles())
    for t in plan.tiles():
        x0, y1 = gt.to_map(t.col_off, t.row_off)
        x1, y0 = gt.to_map(t.col_off + t.width, t.row_off + t.height)
        assert got[t.id][1] == pytest.approx((x0, y0, x1, y1), abs=1e-6)
    statuses = [s for s, _ in got.values()]
    assert statuses.count("ok") == engine.requests() > 0
    # the rendered tiles carry the raster's pixels (not black), and the transparent margins were skipped
    import json

    means = [json.loads(line)["mean"] for line in engine.log.read_text().splitlines()]
    fitted = fit_plan(get_profile("geochat"), tile, tile)  # each tile sent as the model will see it
    assert min(means) > 1.0 and all(size == [fitted.input_width, fitted.input_height] for size in
                                    (json.loads(line)["size"] for line in engine.log.read_text().splitlines()))
    assert set(statuses) <= {"ok", "skipped"}


def test_cancel_stops_within_a_second_and_a_rerun_resumes(plugin, processing, engines, data_dir, tmp_path):
    raster = data_dir / "rasters" / "sample_geotiff.tif"
    engine = engines(delay=0.4)
    out = tmp_path / "c.gpkg"
    params = {"INPUT": str(raster), "TILE_SIZE": 128, "ENGINE": engine.url, "FAMILY": "geochat",
              "CONCURRENCY": 2, "OUTPUT": str(out)}
    feedback = RecordingFeedback()
    cancelled_at = []

    def cancel():
        cancelled_at.append(time.monotonic())
        feedback.cancel()

    timer = threading.Timer(2.0, cancel)
    timer.start()
    # a cancelled run fails (qgis_process exits 1, the dialog says it failed), its answered tiles kept
    with pytest.raises(QgsProcessingException, match=rf"^Cancelled: the answered tiles are kept in {out}; run "
                       "again with the same parameters"):
        processing.run("geovlm:captiontiles", params, feedback=feedback)
    stopped = time.monotonic() - cancelled_at[0]
    assert stopped < 1.0, f"took {stopped:.2f} s to stop"
    first = dict(ledger_rows(out))
    plan = TilePlan(900, 900, 128)
    assert 0 < len(first) < len(plan)
    time.sleep(0.5)
    asked_before = engine.requests()
    processing.run("geovlm:captiontiles", params)
    rows = ledger_rows(out)
    assert sorted(tid for tid, _ in rows) == sorted(t.id for t in plan.tiles())
    assert engine.requests() - asked_before == sum(1 for tid, s in rows if tid not in first and s == "ok")
    with pytest.raises(QgsProcessingException, match="another plan"):
        processing.run("geovlm:captiontiles", dict(params, TILE_SIZE=256))


def test_detect_tiles_writes_linked_objects_and_relations(plugin, processing, engines, tmp_path):
    import pyogrio
    from test_bulk_cli import BLOBS, EXPECTED_GRAPH, _scene_raster, scene_graph

    raster = tmp_path / "scene.tif"
    transform = _scene_raster(raster)
    engine = engines(family="skysensegpt")
    out = tmp_path / "scene.gpkg"
    result = processing.run("geovlm:detecttiles", {"INPUT": str(raster), "TILE_SIZE": 320, "OVERLAP": 80,
                                                  "ENGINE": engine.url, "OUTPUT": str(out)})
    objects = QgsVectorLayer(result["OBJECTS"], "objects", "ogr")
    relations = QgsVectorLayer(result["RELATIONS"], "relations", "ogr")
    assert objects.isValid() and relations.isValid()
    assert objects.featureCount() == len(BLOBS)
    assert sorted(scene_graph(pyogrio.read_dataframe(out, layer="objects"), pyogrio.read_dataframe(
        out, layer="relations"), transform)) == EXPECTED_GRAPH  # each (subject, predicate, object) of the answers
    ids = {f["object_id"] for f in objects.getFeatures()}
    assert all(f["subject_id"] in ids and f["object_id"] in ids for f in relations.getFeatures())
    assert objects.crs().authid() == "EPSG:32633"
    # relations say which engine, model and question gave them, as objects do (their tile's answer)
    provenance = ["question", "model", "family", "engine", "time", "seconds"]
    tiles = {f["tile_id"]: [f[name] for name in provenance]
             for f in QgsVectorLayer(f"{out}|layername=tiles", "tiles", "ogr").getFeatures()}
    assert set(provenance) <= set(relations.fields().names())
    for f in relations.getFeatures():
        assert [f[name] for name in provenance] == tiles[f["tile_id"]] and f["engine"] == engine.url
        assert f["model"] == "scripted-skysensegpt"
    # the command line finds the same merged objects at the same places
    code, _, stderr = run_cli("detect", raster, "--tile", 320, "--overlap", 80, "--engine", engine.url,
                              "--out", tmp_path / "cli.gpkg", "--no-progress")
    assert code == 0, stderr
    cli_objects = QgsVectorLayer(f"{tmp_path / 'cli.gpkg'}|layername=objects", "cli", "ogr")

    def places(layer):
        return sorted((f["label"], f.geometry().centroid().asPoint().x(), f.geometry().centroid().asPoint().y())
                      for f in layer.getFeatures())

    ours, theirs = places(objects), places(cli_objects)
    assert [p[0] for p in ours] == [p[0] for p in theirs]
    # each side fits the tiles to the model's input with its own resampler (Qt's bilinear here, PIL's bicubic
    # on the command line): the pixels differ a little, the places by under 0.05 pixel (0.025 m)
    assert np.allclose([p[1:] for p in ours], [p[1:] for p in theirs], rtol=0, atol=0.025)
    # and each object is its blob's footprint on the rotated grid, as the command line's test holds it
    for _, x, y, w, h in BLOBS:
        blob = QgsGeometry.fromPolygonXY([[QgsPointXY(*(transform * p)) for p in
                                           ((x, y), (x + w, y), (x + w, y + h), (x, y + h), (x, y))]])
        found = [f.geometry() for f in objects.getFeatures() if f.geometry().intersects(blob.centroid())]
        assert len(found) == 1
        assert found[0].symDifference(blob).area() < 5e-3 * blob.area()


def feature_windows(labels, raster, margin):
    """{osm_id: (width, height)} of each label's window on the raster (its bounding box grown by `margin`)."""
    from geovlm.models.imagery import import_rasterio

    windows = {}
    with import_rasterio().open(raster) as ds:
        for source in labels.getFeatures():
            box = source.geometry().boundingBox()
            col0, row0 = ~ds.transform * (box.xMinimum() - margin, box.yMaximum() + margin)
            col1, row1 = ~ds.transform * (box.xMaximum() + margin, box.yMinimum() - margin)
            width = min(ds.width, int(np.ceil(col1))) - max(0, int(np.floor(col0)))
            height = min(ds.height, int(np.ceil(row1))) - max(0, int(np.floor(row0)))
            windows[source["osm_id"]] = (width, height)
    return windows


def test_caption_features_keeps_attributes_and_sends_each_window(plugin, processing, engines, data_dir, tmp_path):
    import json

    labels = QgsVectorLayer(str(data_dir / "rasters" / "geotiff_labels.geojson"), "labels", "ogr")
    raster = data_dir / "rasters" / "sample_geotiff.tif"
    engine = engines()
    result = processing.run("geovlm:captionfeatures", {
        "INPUT": labels, "RASTER": str(raster), "MARGIN": 5.0, "ENGINE": engine.url, "FAMILY": "geochat",
        "OUTPUT": str(tmp_path / "captioned.gpkg")})
    out = QgsVectorLayer(result["FEATURES"], "out", "ogr")
    assert out.featureCount() == labels.featureCount() == engine.requests()
    assert {"osm_id", "building", "caption", "caption_status", "caption_model"} <= set(out.fields().names())
    assert out.crs() == labels.crs()
    profile = get_profile("geochat")
    side = profile.input_size
    for feature, source in zip(out.getFeatures(), labels.getFeatures()):
        assert feature["osm_id"] == source["osm_id"] and feature["caption_status"] == "ok"
        assert feature.geometry().equals(source.geometry())
        assert feature["caption"].startswith(f"scripted caption of a {side}x{side} image")
        assert feature["caption_model"] == "scripted-geochat"
    # each window was sent fitted to GeoChat's square input: padded on its short side with the profile's
    # colour, so the content the engine saw has the window's shape, plus at most one window pixel blended into
    # the padding on each side
    windows = feature_windows(labels, raster, 5.0)
    expected = sorted((side * min(w, h) / max(w, h), side / max(w, h)) for w, h in windows.values())
    seen = []
    for line in engine.log.read_text().splitlines():
        top, bottom, left, right = json.loads(line)["bands"]
        assert min(top + bottom, left + right) == 0  # one side is the input's whole side
        seen.append(side - max(top + bottom, left + right))
    for content, (short, scale) in zip(sorted(seen), expected):
        assert short - 1 <= content <= short + 2 * scale + 1, (content, short, scale)
    windows_layer = QgsVectorLayer(result["WINDOWS"], "windows", "ogr")
    assert windows_layer.featureCount() == labels.featureCount()


def test_caption_features_killed_half_way_then_resumed(engines, data_dir, tmp_path, qgis_process_env):
    """qgis_process SIGKILLed during `geovlm:captionfeatures`, then run again with the same OUTPUT: every
    feature's answer exactly once in the ledger, the rerun asks only for what was missing, the features
    layer holds every feature; another plan on that output is refused unless OVERWRITE."""
    labels = data_dir / "rasters" / "geotiff_labels.geojson"
    raster = data_dir / "rasters" / "sample_geotiff.tif"
    engine = engines(delay=0.2)
    out = tmp_path / "features.gpkg"
    args = ["geovlm:captionfeatures", "--", f"INPUT={labels}", f"RASTER={raster}", "MARGIN=5", "CONCURRENCY=2",
            f"ENGINE={engine.url}", "FAMILY=geochat", f"OUTPUT={out}"]
    first = killed_after_rows(qgis_process_env, args, out)
    total = QgsVectorLayer(str(labels), "labels", "ogr").featureCount()
    assert 6 <= len(first) < total
    asked_before = engine.requests()
    run = qgis_process(qgis_process_env, *args)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    rows = ledger_rows(out)
    assert len(rows) == len({tid for tid, _ in rows}) == total and {s for _, s in rows} == {"ok"}
    assert engine.requests() - asked_before == total - sum(1 for s in first.values() if s == "ok")
    features = QgsVectorLayer(f"{out}|layername=features", "features", "ogr")
    assert features.featureCount() == total
    assert {f["caption_status"] for f in features.getFeatures()} == {"ok"}
    # another plan (another margin) on the same output is refused, and allowed with OVERWRITE
    other = [a.replace("MARGIN=5", "MARGIN=10") for a in args]
    refused = qgis_process(qgis_process_env, *other)
    assert refused.returncode != 0 and "another plan" in refused.stdout + refused.stderr
    assert qgis_process(qgis_process_env, *other, "OVERWRITE=true").returncode == 0
    assert len(ledger_rows(out)) == total


def test_caption_features_cancel_says_how_to_resume_and_the_rerun_asks_the_rest(plugin, processing, engines,
                                                                                data_dir, tmp_path):
    labels = QgsVectorLayer(str(data_dir / "rasters" / "geotiff_labels.geojson"), "labels", "ogr")
    engine = engines(delay=0.3)
    out = tmp_path / "f.gpkg"
    params = {"INPUT": labels, "RASTER": str(data_dir / "rasters" / "sample_geotiff.tif"), "MARGIN": 5.0,
              "ENGINE": engine.url, "FAMILY": "geochat", "CONCURRENCY": 2, "OUTPUT": str(out)}
    feedback = RecordingFeedback()
    timer = threading.Timer(1.5, feedback.cancel)
    timer.start()
    with pytest.raises(QgsProcessingException, match="run again with the same parameters"):
        processing.run("geovlm:captionfeatures", params, feedback=feedback)
    first = dict(ledger_rows(out))
    assert 0 < len(first) < labels.featureCount()
    features = QgsVectorLayer(f"{out}|layername=features", "features", "ogr")  # written before the failure
    statuses = [f["caption_status"] for f in features.getFeatures()]
    assert statuses.count("ok") == len(first) and statuses.count("missing") == labels.featureCount() - len(first)
    time.sleep(0.5)
    asked_before = engine.requests()
    processing.run("geovlm:captionfeatures", params)
    rows = ledger_rows(out)
    assert len(rows) == len({tid for tid, _ in rows}) == labels.featureCount()
    assert engine.requests() - asked_before == labels.featureCount() - len(first)


def test_caption_features_failed_at_the_engine_fail_the_run_with_their_features_written(plugin, processing, engines,
                                                                                         data_dir, tmp_path):
    """captionfeatures whose engine refuses one window: the features layer is written (that feature `failed`,
    the others captioned), then the run fails naming the output; the rerun asks for that window only."""
    labels = QgsVectorLayer(str(data_dir / "rasters" / "geotiff_labels.geojson"), "labels", "ogr")
    engine = engines(refuse_first=1)
    out = tmp_path / "f.gpkg"
    params = {"INPUT": labels, "RASTER": str(data_dir / "rasters" / "sample_geotiff.tif"), "ENGINE": engine.url,
              "FAMILY": "geochat", "OUTPUT": str(out)}
    with pytest.raises(QgsProcessingException, match=rf"^1 feature failed at the engine \(first: .*HTTP 400 "
                       rf"scripted refusal\); the answered features are kept in {out}; run again"):
        processing.run("geovlm:captionfeatures", params)
    features = QgsVectorLayer(f"{out}|layername=features", "features", "ogr")
    statuses = [f["caption_status"] for f in features.getFeatures()]
    assert statuses.count("failed") == 1 and statuses.count("ok") == labels.featureCount() - 1
    asked = engine.requests()
    processing.run("geovlm:captionfeatures", params)
    assert engine.requests() - asked == 1 and {s for _, s in ledger_rows(out)} == {"ok"}


def test_request_timeout_gives_up_each_attempt_on_a_slow_engine_and_retries(plugin, processing, engines, data_dir,
                                                                            tmp_path):
    """REQUEST_TIMEOUT=1 against an engine that takes 60 s per answer: each attempt is given up after a second
    and sent again (the engine sees one attempt after another), as `geovlm caption --request-timeout` does;
    left empty, the settings' timeout (300 s) holds and the first attempt is still waiting. Out of range
    (0) is refused before any engine is asked."""
    engine = engines(delay=60.0)
    params = {"INPUT": str(data_dir / "rasters" / "RGB.byte.tif"), "TILE_SIZE": 1024, "ENGINE": engine.url,
              "FAMILY": "geochat", "CONCURRENCY": 1}
    with pytest.raises(QgsProcessingException):
        processing.run("geovlm:captiontiles", dict(params, REQUEST_TIMEOUT=0, OUTPUT=str(tmp_path / "zero.gpkg")))
    assert engine.arrivals() == 0 and not (tmp_path / "zero.gpkg").exists()
    for timeout, seconds, attempts in ((1.0, 5.0, range(3, 7)), (None, 3.0, range(1, 2))):
        before = engine.arrivals()
        feedback = RecordingFeedback()
        threading.Timer(seconds, feedback.cancel).start()
        run = dict(params, OUTPUT=str(tmp_path / f"{timeout}.gpkg"))
        if timeout is not None:
            run["REQUEST_TIMEOUT"] = timeout
        with pytest.raises(QgsProcessingException, match="^Cancelled:"):
            processing.run("geovlm:captiontiles", run, feedback=feedback)
        assert engine.arrivals() - before in attempts, (timeout, engine.arrivals() - before)


def test_retry_window_stops_a_run_whose_engine_never_answers_in_time(plugin, processing, engines, data_dir,
                                                                     tmp_path):
    """RETRY_WINDOW=3 with REQUEST_TIMEOUT=1 against an engine that takes 60 s per answer: the tile is retried
    for 3 s (a few attempts, each given up after a second), then the run stops by itself, saying it gave up,
    as `geovlm caption --retry-window 3` does, having said once at the first failure which settings to change;
    without RETRY_WINDOW the client's 120 s window would keep it retrying until the Cancel at 20 s. Out of
    bounds (below 0, beyond a day) is refused before any engine is asked, by the parameter check and by
    prepareAlgorithm (a graphical model's steps skip the check)."""
    from qgis.core import QgsProcessingContext, QgsProject

    engine = engines(delay=60.0)
    params = {"INPUT": str(data_dir / "rasters" / "RGB.byte.tif"), "TILE_SIZE": 1024, "ENGINE": engine.url,
              "FAMILY": "geochat", "CONCURRENCY": 1, "REQUEST_TIMEOUT": 1}
    alg = QgsApplication.processingRegistry().createAlgorithmById("geovlm:captiontiles")
    context = QgsProcessingContext()
    context.setProject(QgsProject.instance())
    for bad in (-1, 86401):
        run = dict(params, RETRY_WINDOW=bad, OUTPUT=str(tmp_path / "bad.gpkg"))
        with pytest.raises(QgsProcessingException):
            processing.run("geovlm:captiontiles", run)
        with pytest.raises(QgsProcessingException, match=rf"^RETRY_WINDOW must be a number of seconds from 0 to "
                           rf"86400, not {bad}$"):
            alg.prepareAlgorithm(run, context, RecordingFeedback())
    assert engine.arrivals() == 0 and not (tmp_path / "bad.gpkg").exists()
    feedback = RecordingFeedback()
    cancel = threading.Timer(20.0, feedback.cancel)
    cancel.start()
    started = time.monotonic()
    try:
        with pytest.raises(QgsProcessingException,
                           match=r"^Stopped: no engine answered \(gave up after [2-6] attempts in [2-5] s") as stopped:
            processing.run("geovlm:captiontiles", dict(params, RETRY_WINDOW=3, OUTPUT=str(tmp_path / "w.gpkg")),
                           feedback=feedback)
    finally:
        cancel.cancel()
    assert time.monotonic() - started < 15, str(stopped.value)
    assert not str(stopped.value).startswith("Cancelled") and 2 <= engine.arrivals() <= 6
    said = [w for w in feedback.warnings if "retrying" in w]  # at once, not after the window: which setting
    assert said == [f"{engine.url} sent no answer within 1 s (REQUEST_TIMEOUT to change); retrying for up to 3 s "
                    "(RETRY_WINDOW to change, Cancel to stop)"], feedback.warnings
    assert [s for _, s in ledger_rows(tmp_path / "w.gpkg")] == ["failed"]


def test_qgis_killed_half_way_then_the_cli_finishes_the_run(engines, data_dir, tmp_path, qgis_process_env):
    """A run started by qgis_process, SIGKILLed, is finished by `geovlm caption` (a server taking over):
    every tile exactly once, and the command line asks only for what QGIS had not committed."""
    raster = data_dir / "rasters" / "sample_geotiff.tif"
    engine = engines(delay=0.15)
    out = tmp_path / "c.gpkg"
    first = killed_after_rows(qgis_process_env, ["geovlm:captiontiles", "--", f"INPUT={raster}", "TILE_SIZE=128",
                                                 "CONCURRENCY=2", f"ENGINE={engine.url}", "FAMILY=geochat",
                                                 f"OUTPUT={out}"], out)
    plan = TilePlan(900, 900, 128)
    assert 6 <= len(first) < len(plan)
    asked_before = engine.requests()
    code, stdout, stderr = run_cli("caption", raster, "--tile", 128, "--engine", engine.url, "--family", "geochat",
                                   "--out", out, "--no-progress")
    assert code == 0, stderr
    rows = ledger_rows(out)
    assert sorted(tid for tid, _ in rows) == sorted(t.id for t in plan.tiles())
    assert {s for _, s in rows} <= {"ok", "skipped"}
    assert engine.requests() - asked_before == sum(1 for tid, s in rows if first.get(tid) != s and s == "ok")


def test_the_menu_opens_the_bulk_algorithms(qgis_iface):
    plugin = geovlm.classFactory(qgis_iface)
    plugin.initGui()
    try:
        titles = [a.text() for a in plugin.actions]
        assert {"Caption raster tiles…", "Find objects and relations in raster tiles…",
                "Caption polygon features…"} <= set(titles)
        registry = QgsApplication.processingRegistry()
        for alg in ("geovlm:captiontiles", "geovlm:detecttiles", "geovlm:captionfeatures"):
            assert registry.algorithmById(alg) is not None
    finally:
        plugin.unload()


def test_a_rotated_raster_gives_the_cli_footprints_in_qgis(plugin, processing, engines, data_dir, tmp_path):
    """rotated.tif (a rotated and sheared geotransform): QGIS reads the true grid, so each tile's polygon is
    the CLI's (rasterio's) parallelogram, vertex for vertex."""
    raster = data_dir / "rasters" / "rotated.tif"
    engine = engines()
    cli_out, qgis_out = tmp_path / "cli.gpkg", tmp_path / "qgis.gpkg"
    code, _, stderr = run_cli("caption", raster, "--tile", 4, "--engine", engine.url, "--family", "geochat",
                              "--out", cli_out, "--no-progress", "--keep-nodata")
    assert code == 0, stderr
    processing.run("geovlm:captiontiles", {"INPUT": str(raster), "TILE_SIZE": 4, "SKIP_NODATA": False,
                                           "ENGINE": engine.url, "FAMILY": "geochat", "OUTPUT": str(qgis_out)})

    def rings(path):
        layer = QgsVectorLayer(f"{path}|layername=tiles", "tiles", "ogr")
        return {f["tile_id"]: [(p.x(), p.y()) for p in f.geometry().asPolygon()[0]] for f in layer.getFeatures()}

    ours, theirs = rings(qgis_out), rings(cli_out)
    assert sorted(ours) == sorted(theirs) and len(ours) == len(TilePlan(10, 15, 4))
    for tile_id, ring in theirs.items():
        assert np.allclose(ours[tile_id], ring, rtol=0, atol=1e-6)
        assert abs(ring[1][1] - ring[0][1]) > 1e-9  # a top edge that is not horizontal: the rotation is kept


def test_caption_features_summary_counts_a_fresh_run_as_answered_features(plugin, processing, engines, data_dir,
                                                                          tmp_path):
    labels = QgsVectorLayer(str(data_dir / "rasters" / "geotiff_labels.geojson"), "labels", "ogr")
    n = labels.featureCount()
    params = {"INPUT": labels, "RASTER": str(data_dir / "rasters" / "sample_geotiff.tif"), "MARGIN": 5.0,
              "ENGINE": engines().url, "FAMILY": "geochat", "OUTPUT": str(tmp_path / "f.gpkg")}
    feedback = RecordingFeedback()
    processing.run("geovlm:captionfeatures", params, feedback=feedback)
    summary = [line for line in feedback.info if " asked, " in line]
    assert summary == [f"{n} features: {n} asked, {n} answered, 0 skipped (nodata), 0 failed, 0 resumed (done "
                       "before)"], feedback.info
    feedback = RecordingFeedback()
    processing.run("geovlm:captionfeatures", params, feedback=feedback)
    assert [line for line in feedback.info if " asked, " in line] == [
        f"{n} features: 0 asked, 0 answered, 0 skipped (nodata), 0 failed, {n} resumed (done before)"]


def test_a_damaged_raster_fails_its_unreadable_tiles_in_qgis_as_in_the_cli(engines, data_dir, tmp_path,
                                                                           qgis_process_env):
    """qgis_process on corrupt.tif: no traceback; every tile recorded, those GDAL cannot read `failed` with
    the reason (the same tiles as the command line's), named apart from engine failures, without the advice to
    rerun for them; it exits 1 as `geovlm caption` does, and a rerun asks the engine nothing more."""
    raster = data_dir / "rasters" / "corrupt.tif"
    engine = engines()
    code, _, stderr = run_cli("caption", raster, "--tile", 256, "--engine", engine.url, "--family", "geochat",
                              "--out", tmp_path / "cli.gpkg", "--no-progress")
    assert code == 1, stderr
    theirs = dict(ledger_rows(tmp_path / "cli.gpkg"))
    args = ("geovlm:captiontiles", "--", f"INPUT={raster}", "TILE_SIZE=256", f"ENGINE={engine.url}", "FAMILY=geochat",
            f"OUTPUT={tmp_path / 'qgis.gpkg'}")
    run = qgis_process(qgis_process_env, *args)
    said = run.stdout + run.stderr
    assert run.returncode == 1 and "Traceback" not in said, run.stdout[-3000:] + run.stderr
    rows = ledger_rows(tmp_path / "qgis.gpkg", columns="tile_id, status, error")
    assert {r[0]: r[1] for r in rows} == theirs and "ok" in theirs.values()
    failed = [r for r in rows if r[1] == "failed"]
    assert failed and all(r[2].startswith("pixels cannot be read") for r in failed)
    assert f"{len(failed)} tiles could not be read (" in said and "a rerun will not help those" in said
    assert f"the answered tiles are kept in {tmp_path / 'qgis.gpkg'}." in said and "ask them again" not in said
    asked = engine.requests()
    again = qgis_process(qgis_process_env, *args)
    assert again.returncode == 1 and engine.requests() == asked  # resumed: only the unreadable tiles read again


def test_tiles_failed_at_the_engine_fail_the_run_then_a_rerun_asks_only_them(engines, data_dir, tmp_path,
                                                                             qgis_process_env):
    """qgis_process whose engine refuses two tiles (HTTP 400): every answer is committed, the run exits 1
    (as `geovlm caption`; scripts can tell) saying how many failed, where the answered ones are and to run
    again; the same command then asks for those two only and exits 0."""
    engine = engines(refuse_first=2)
    out = tmp_path / "e.gpkg"
    args = ("geovlm:captiontiles", "--", f"INPUT={data_dir / 'rasters' / 'RGB.byte.tif'}", "TILE_SIZE=256",
            f"ENGINE={engine.url}", "FAMILY=geochat", f"OUTPUT={out}")
    run = qgis_process(qgis_process_env, *args)
    said = run.stdout + run.stderr
    assert run.returncode == 1 and "Traceback" not in said, said[-3000:]
    assert (f"2 tiles failed at the engine (first: {engine.url}/v1/chat/completions: HTTP 400 scripted refusal); "
            f"the answered tiles are kept in {out}; run again with the same parameters to ask them again.") in said
    statuses = [s for _, s in ledger_rows(out)]
    assert statuses.count("failed") == 2 and statuses.count("ok") == len(statuses) - 2 > 0
    asked = engine.requests()
    rerun = qgis_process(qgis_process_env, *args)
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    assert engine.requests() - asked == 2 and {s for _, s in ledger_rows(out)} == {"ok"}


def test_the_dialogs_task_fails_a_partial_run_with_its_layer_to_load_in_the_callers_context(plugin, processing,
                                                                                            engines, data_dir,
                                                                                            tmp_path):
    """As the dialog runs it (QgsProcessingAlgRunnerTask, in a thread of its own): a run with tiles failed at
    the engine ends failed, its one line in the log naming the output, its answered tiles in the file and its
    tiles layer among the caller's context's layers to load (which QGIS merges back from the run's thread only
    on success: `bulk_outputs.FailedRunLayers`); run again, it asks for the rest and succeeds, the same one
    layer to load."""
    from qgis.core import QgsProcessingAlgRunnerTask, QgsProcessingContext, QgsProject

    alg = QgsApplication.processingRegistry().algorithmById("geovlm:captiontiles")
    engine = engines(refuse_first=2)
    out = tmp_path / "dialog.gpkg"
    params = {"INPUT": str(data_dir / "rasters" / "RGB.byte.tif"), "TILE_SIZE": 256, "ENGINE": engine.url,
              "FAMILY": "geochat", "OUTPUT": str(out)}
    for expected in (False, True):
        context, feedback, done = QgsProcessingContext(), RecordingFeedback(), []
        context.setProject(QgsProject.instance())
        task = QgsProcessingAlgRunnerTask(alg, params, context, feedback)
        task.executed.connect(lambda ok, results, done=done: done.append(ok))
        QgsApplication.taskManager().addTask(task)
        deadline = time.monotonic() + 120
        while not done and time.monotonic() < deadline:
            QgsApplication.processEvents()
            time.sleep(0.02)
        assert done == [expected], feedback.errors
        loaded = list(context.layersToLoadOnCompletion())
        statuses = [s for _, s in ledger_rows(out)]
        assert loaded == [f"{out}|layername=tiles"]
        if not expected:
            assert statuses.count("failed") == 2 and statuses.count("ok") == len(statuses) - 2
            assert feedback.errors[-1].startswith("2 tiles failed at the engine") and str(out) in feedback.errors[-1]
        else:
            assert set(statuses) == {"ok"}


def test_detect_tiles_on_a_damaged_raster_goes_on_past_unreadable_tiles(plugin, processing, engines, data_dir,
                                                                        tmp_path):
    feedback = RecordingFeedback()
    with pytest.raises(QgsProcessingException, match=r"^4 tiles could not be read \(a rerun will not help those\); "
                       f"the answered tiles are kept in {tmp_path / 'd.gpkg'}"):
        processing.run("geovlm:detecttiles", {
            "INPUT": str(data_dir / "rasters" / "corrupt.tif"), "TILE_SIZE": 256, "OVERLAP": 0,
            "ENGINE": engines().url, "FAMILY": "geochat", "OUTPUT": str(tmp_path / "d.gpkg")},
            feedback=feedback)
    rows = ledger_rows(tmp_path / "d.gpkg", columns="tile_id, status, error")
    statuses = [r[1] for r in rows]
    assert len(rows) == 16 and 0 < statuses.count("failed") < 16 and statuses.count("ok") > 0
    assert any("could not be read" in e for e in feedback.errors), feedback.errors


def test_the_demo_model_is_named_once_in_the_log(plugin, processing, engines, data_dir, tmp_path):
    for stand_in, times in ((True, 1), (False, 0)):
        feedback = RecordingFeedback()
        processing.run("geovlm:captiontiles", {
            "INPUT": str(data_dir / "rasters" / "sample_geotiff.tif"), "TILE_SIZE": 512,
            "ENGINE": engines(str(stand_in), stand_in=stand_in).url, "FAMILY": "geochat",
            "OUTPUT": str(tmp_path / f"{stand_in}.gpkg")}, feedback=feedback)
        said = [line for line in feedback.warnings + feedback.info if "random stand-in" in line]
        assert len(said) == times, feedback.warnings + feedback.info


def test_progress_is_logged_about_every_ten_percent(plugin, processing, engines, data_dir, tmp_path):
    feedback = RecordingFeedback()
    processing.run("geovlm:captiontiles", {
        "INPUT": str(data_dir / "rasters" / "RGB.byte.tif"), "TILE_SIZE": 128, "CONCURRENCY": 2,
        "ENGINE": engines(delay=0.05).url, "FAMILY": "geochat", "OUTPUT": str(tmp_path / "p.gpkg")},
        feedback=feedback)
    total = len(ledger_rows(tmp_path / "p.gpkg"))
    counts = [int(text.split("/")[0]) for text in feedback.texts]
    assert total == 42 and counts and counts[-1] == total
    assert len(counts) == len(set(counts)) and len(counts) <= 12, feedback.texts


def test_the_bulk_dialogs_start_with_a_raster_layer_of_the_project(plugin, processing, qgis_iface, data_dir):
    from qgis.core import QgsProject

    registry = QgsApplication.processingRegistry()

    def default(alg_id, name="INPUT"):
        alg = registry.createAlgorithmById(alg_id)  # kept while its parameter is read
        return alg.parameterDefinition(name).defaultValue()

    QgsProject.instance().removeAllMapLayers()  # whatever earlier tests left in the project
    assert default("geovlm:captiontiles") is None
    first = QgsRasterLayer(str(data_dir / "rasters" / "RGB.byte.tif"), "first")
    second = QgsRasterLayer(str(data_dir / "rasters" / "cogeo.tif"), "second")
    vector = QgsVectorLayer(str(data_dir / "rasters" / "geotiff_labels.geojson"), "labels", "ogr")
    QgsProject.instance().addMapLayers([vector, first, second])
    try:
        qgis_iface.setActiveLayer(vector)
        for alg, name in (("geovlm:captiontiles", "INPUT"), ("geovlm:detecttiles", "INPUT"),
                          ("geovlm:captionfeatures", "RASTER")):
            assert default(alg, name) in (first.id(), second.id()), alg
        qgis_iface.setActiveLayer(second)
        assert default("geovlm:captiontiles") == second.id()
    finally:
        QgsProject.instance().removeAllMapLayers()


def test_caption_features_of_another_place_say_that_none_lies_over_the_raster(plugin, processing, engines, data_dir,
                                                                              tmp_path):
    labels = QgsVectorLayer(str(data_dir / "rasters" / "geotiff_labels.geojson"), "labels", "ogr")  # Chicago
    engine = engines()
    params = {"INPUT": labels, "RASTER": str(data_dir / "rasters" / "cogeo.tif"), "MARGIN": 5.0,  # elsewhere
              "ENGINE": engine.url, "FAMILY": "geochat", "OUTPUT": str(tmp_path / "f.gpkg")}
    feedback = RecordingFeedback()
    result = processing.run("geovlm:captionfeatures", params, feedback=feedback)
    n = labels.featureCount()
    assert [w for w in feedback.warnings if "lies over" in w] == [
        f"None of the {n} features lies over the raster (features in EPSG:32616, raster in EPSG:3857): are they of "
        "the same place? Nothing is asked; every feature is marked \"outside the raster\"."]
    assert engine.requests() == 0
    statuses = {f["caption_status"] for f in QgsVectorLayer(result["FEATURES"], "f", "ogr").getFeatures()}
    assert statuses == {"outside the raster"}


def test_caption_features_skip_empty_and_zero_area_polygons_with_a_status_and_caption_the_rest(plugin, processing,
                                                                                            engines, data_dir,
                                                                                            tmp_path):
    # POLYGON EMPTY ended in "cannot convert float NaN to integer"; a zero-area polygon over the raster was marked
    # "outside the raster".
    from qgis.core import QgsFeature, QgsFeatureRequest, QgsProcessingContext

    layer = QgsVectorLayer("Polygon?crs=EPSG:32616&field=name:string", "mixed", "memory")
    wkts = {"empty": "POLYGON EMPTY",
            "flat": "POLYGON((733700 3725000, 733800 3725000, 733750 3725000, 733700 3725000))",  # on a pixel edge
            "flat2": "POLYGON((733700 3725000.2, 733800 3725000.2, 733700 3725000.2))",  # inside a pixel row
            "square": "POLYGON((733700 3725000, 733750 3725000, 733750 3725050, 733700 3725050, 733700 3725000))",
            "far": "POLYGON((100 100, 100 100, 100 100, 100 100))"}  # zero area, far from the raster
    for name, wkt in wkts.items():
        feature = QgsFeature(layer.fields())
        feature.setAttributes([name])
        feature.setGeometry(QgsGeometry.fromWkt(wkt))
        assert layer.dataProvider().addFeature(feature)
    engine = engines()
    feedback = RecordingFeedback()
    context = QgsProcessingContext()  # as qgis_process ran it: QGIS's own check of valid geometries left off
    context.setInvalidGeometryCheck(QgsFeatureRequest.InvalidGeometryCheck.GeometryNoCheck)
    result = processing.run("geovlm:captionfeatures", {
        "INPUT": layer, "RASTER": str(data_dir / "rasters" / "sample_geotiff.tif"), "ENGINE": engine.url,
        "FAMILY": "geochat", "OUTPUT": str(tmp_path / "f.gpkg")}, context=context, feedback=feedback)
    out = QgsVectorLayer(result["FEATURES"], "f", "ogr")
    statuses = {f["name"]: f["caption_status"] for f in out.getFeatures()}
    assert statuses == {"empty": "empty geometry", "flat": "no area", "flat2": "no area", "square": "ok",
                        "far": "outside the raster"}
    assert engine.requests() == 1
    assert "Feature 1 has an empty geometry: not asked, marked \"empty geometry\"" in feedback.warnings
    assert ("2 features (2, 3) have no area: not asked, marked \"no area\"; give a MARGIN to caption the pixels "
            "around them") in feedback.warnings


def test_a_one_tile_run_says_1_tile_in_the_log(plugin, processing, engines, data_dir, tmp_path):
    feedback = RecordingFeedback()
    processing.run("geovlm:captiontiles", {
        "INPUT": str(data_dir / "rasters" / "RGB.byte.tif"), "TILE_SIZE": 1024,
        "ENGINE": engines().url, "FAMILY": "geochat", "OUTPUT": str(tmp_path / "one.gpkg")}, feedback=feedback)
    assert len(ledger_rows(tmp_path / "one.gpkg")) == 1
    said = feedback.info + feedback.texts
    assert any(line.startswith("1 tile of 1024 px") for line in said) and "1/1 tile" in feedback.texts, said
    assert any(line.startswith("1 tile: 1 asked") for line in said) and not any("1 tiles" in s for s in said)


def test_tiles_of_nan_only_are_nodata_skipped_in_qgis_as_in_the_cli(plugin, processing, engines, tmp_path):
    """A float raster whose top half is NaN with no nodata declared (its mask band says valid): those tiles are
    skipped as nodata (SKIP_NODATA) or sent black, not failed as unreadable, as `geovlm caption` does."""
    from osgeo import gdal, osr

    raster = tmp_path / "nan_top.tif"
    ds = gdal.GetDriverByName("GTiff").Create(str(raster), 256, 128, 1, gdal.GDT_Float32)
    ds.SetGeoTransform((500000, 1, 0, 4100000, 0, -1))
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32616)
    ds.SetProjection(srs.ExportToWkt())
    values = np.linspace(0, 1, 128 * 256, dtype=np.float32).reshape(128, 256)
    values[:64] = np.nan
    ds.GetRasterBand(1).WriteArray(values)
    ds = None
    for skip, statuses in ((True, {"skipped": 4, "ok": 4}), (False, {"ok": 8})):
        out = tmp_path / f"q{int(skip)}.gpkg"
        processing.run("geovlm:captiontiles", {"INPUT": str(raster), "TILE_SIZE": 64, "SKIP_NODATA": skip,
                                               "ENGINE": engines().url, "FAMILY": "geochat", "OUTPUT": str(out)})
        rows = [status for _, status in ledger_rows(out)]
        assert {s: rows.count(s) for s in set(rows)} == statuses


def test_a_cancelled_run_into_a_temporary_file_says_a_rerun_will_not_reuse_it(plugin, processing, engines,
                                                                              data_dir):
    engine = engines(delay=0.4)
    params = {"INPUT": str(data_dir / "rasters" / "sample_geotiff.tif"), "TILE_SIZE": 128, "ENGINE": engine.url,
              "FAMILY": "geochat", "CONCURRENCY": 2, "OUTPUT": "TEMPORARY_OUTPUT"}
    feedback = RecordingFeedback()
    threading.Timer(1.5, feedback.cancel).start()
    with pytest.raises(QgsProcessingException, match="^Cancelled:") as failed:
        processing.run("geovlm:captiontiles", params, feedback=feedback)
    said = [str(failed.value)]
    assert "run again" not in said[0]
    assert "are in a temporary file" in said[0] and "a rerun will not reuse" in said[0]
    assert "choose a .gpkg file as the output to be able to resume" in said[0]


def test_qgis_process_interrupted_exits_non_zero_and_a_rerun_resumes(engines, data_dir, tmp_path, qgis_process_env):
    """Ctrl-C (SIGINT) in qgis_process cancels the run: it says how to resume, exits non-zero (scripts can
    tell), keeps every answered tile, and the same command then asks only for the rest and exits 0."""
    import signal

    from bulk_support import wait_for_rows

    exe, env = qgis_process_env
    engine = engines(delay=0.3)
    out = tmp_path / "c.gpkg"
    args = [exe, "run", "geovlm:captiontiles", "--", f"INPUT={data_dir / 'rasters' / 'sample_geotiff.tif'}",
            "TILE_SIZE=128", f"ENGINE={engine.url}", "FAMILY=geochat", "CONCURRENCY=2", f"OUTPUT={out}"]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for_rows(out, 4, timeout=120) >= 4
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0, stdout[-2000:]
    assert f"Cancelled: the answered tiles are kept in {out}; run again" in stdout + stderr
    first = dict(ledger_rows(out))
    assert 4 <= len(first) < len(TilePlan(900, 900, 128))
    rerun = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    assert "(resuming)" in rerun.stdout and len(ledger_rows(out)) == len(TilePlan(900, 900, 128))


@pytest.mark.parametrize("name", ["cogeo.tif", "RGB.byte.tif", "sample_geotiff.tif", "RGBA.uint16.tif",
                                  "corrupt.tif", "rotated.tif"])
def test_qgis_and_the_cli_identify_a_raster_alike(qgis_app, data_dir, name):
    """The plan's pixel digest and CRS name are the same read by osgeo.gdal in QGIS and by rasterio on the
    command line (JPEG-compressed cogeo.tif included: decoders differ, stored blocks do not), so a run resumes
    across the two."""
    from geovlm.cli.bulk_cmds import RasterTiles, _crs
    from geovlm.plugin.alg_bulk_tiles import crs_name
    from geovlm.plugin.tile_sources import GdalTiles

    path = str(data_dir / "rasters" / name)
    cli = RasterTiles(path, None, False)
    try:
        assert GdalTiles(path, False).pixel_digest() == cli.pixel_digest()
        assert crs_name(QgsRasterLayer(path, "r").crs()) == _crs(cli.ds.crs.to_wkt() if cli.ds.crs else None)[2]
    finally:
        cli.close()


def test_processing_refuses_a_new_raster_on_the_same_grid_naming_overwrite(plugin, processing, engines, data_dir,
                                                                           tmp_path):
    source = data_dir / "rasters" / "cogeo.tif"
    changed = inverted_copy(source, tmp_path / "changed.tif")
    engine = engines()
    out = tmp_path / "c.gpkg"
    params = {"INPUT": str(source), "TILE_SIZE": 512, "ENGINE": engine.url, "FAMILY": "geochat", "OUTPUT": str(out)}
    processing.run("geovlm:captiontiles", params)
    with pytest.raises(QgsProcessingException) as refused:
        processing.run("geovlm:captiontiles", dict(params, INPUT=str(changed)))
    said = str(refused.value)
    assert "another plan (pixels (sample digest)" in said and "Overwrite an output of another plan" in said, said
    assert "OVERWRITE=true" in said
    processing.run("geovlm:captiontiles", dict(params, INPUT=str(changed), OVERWRITE=True))
    assert {s for _, s in ledger_rows(out)} == {"ok"} and engine.requests() == 2 * len(ledger_rows(out))


@pytest.mark.parametrize("proj", ["+proj=ortho +lat_0=10 +lon_0=5 +datum=WGS84 +units=m",
                                  "+proj=laea +lat_0=52 +lon_0=10 +x_0=4321000 +y_0=3210000 +ellps=GRS80 +units=m",
                                  "+proj=utm +zone=33 +ellps=intl +towgs84=-87,-98,-121,0,0,0,0 +units=m"])
def test_qgis_and_the_cli_name_a_crs_without_an_epsg_code_alike(qgis_app, tmp_path, proj):
    """A custom CRS (no EPSG code; the last one rasterio's default 70 % match takes for EPSG:23033, QGIS not)
    gets the same name in the plan from QGIS as from the command line."""
    from rasterio.transform import from_origin

    from geovlm.cli.bulk_cmds import _crs
    from geovlm.models.imagery import import_rasterio
    from geovlm.plugin.alg_bulk_tiles import crs_name

    rasterio = import_rasterio()
    path = tmp_path / "custom.tif"
    with rasterio.open(path, "w", driver="GTiff", width=8, height=8, count=1, dtype="uint8",
                       crs=rasterio.crs.CRS.from_proj4(proj), transform=from_origin(500, 800, 1, 1)) as dst:
        dst.write(np.zeros((1, 8, 8), np.uint8))
        wkt = dst.crs.to_wkt()
    name = crs_name(QgsRasterLayer(str(path), "r").crs())
    assert name == _crs(wkt)[2] and name.startswith("+") and "no_defs" not in name


@pytest.mark.parametrize("alg, changed, said", [
    ("captiontiles", {"OVERLAP": 600}, "overlap must be at least 0 and smaller than the tile size"),
    ("detecttiles", {"EXTENT": "0,10,0,10 [EPSG:4326]"}, "the extent does not overlap the raster"),
    ("captiontiles", {"OUTPUT": "c.txt"}, "OUTPUT must be a .gpkg: it is the ledger that lets a run resume"),
    ("detecttiles", {"ENGINE": "local"}, "the local engine is not set up: use "),
    ("captiontiles", {"ENGINE": "127.0.0.1:9"}, "an engine URL is http://host:port or https://host, not '127.0.0.1:9'"),
    ("captionfeatures", {"OUTPUT": "f.txt"}, "OUTPUT must be a .gpkg: it is the ledger that lets a run resume"),
    ("captionfeatures", {"ENGINE": "local"}, "the local engine is not set up: use "),
    ("captionfeatures", {"FAMILY": "nope"}, "unknown model family 'nope': one of llava15, geochat"),
    ("detecttiles", {"OUTPUT": "dir.gpkg"}, "is a folder: give a .gpkg file as the output"),
    ("captionfeatures", {"AUTHCFG": "nope123"}, "the authentication configuration 'nope123' does not exist in"),
    # a field the layer has under another case (no features layer was written at all) or the GeoPackage's fid
    # (refused once every answer had been asked)
    ("captionfeatures", {"FIELD": "BUILDING"}, "the layer already has a field 'BUILDING' (names are compared "
                                               "without case); name another FIELD"),
    ("captionfeatures", {"FIELD": "fid"}, "'fid' is the GeoPackage's feature id: name another FIELD"),
])
def test_a_run_that_would_stop_before_asking_is_refused_by_the_parameter_check(plugin, processing, data_dir,
                                                                               tmp_path, alg, changed, said):
    """A plan that cannot be made (an overlap not smaller than the tile, an EXTENT off the raster), an OUTPUT that
    is not a .gpkg or an engine that cannot be used is refused by checkParameterValues in one line (printed once
    by qgis_process, a message box in the dialog), not raised during the run (printed three times)."""
    from qgis.core import QgsProcessingContext, QgsProject

    rasters = data_dir / "rasters"
    params = {"INPUT": str(rasters / "cogeo.tif"), "TILE_SIZE": 512, "ENGINE": "http://127.0.0.1:9",
              "FAMILY": "geochat", "OUTPUT": "out.gpkg"}
    if alg == "captionfeatures":
        params = dict(params, INPUT=str(rasters / "geotiff_labels.geojson"), RASTER=str(rasters / "sample_geotiff.tif"))
    params = {k: str(tmp_path / v) if k == "OUTPUT" else v for k, v in dict(params, **changed).items()}
    context = QgsProcessingContext()
    context.setProject(QgsProject.instance())
    check = QgsApplication.processingRegistry().createAlgorithmById(f"geovlm:{alg}").checkParameterValues
    (tmp_path / "dir.gpkg").mkdir()
    ok, message = check(params, context)
    assert not ok and message.removeprefix(str(tmp_path / "dir.gpkg") + " ").startswith(said), message
    assert check(dict(params, **{k: v for k, v in {
        "OVERLAP": 0, "EXTENT": None, "OUTPUT": str(tmp_path / "out.gpkg"), "ENGINE": "http://127.0.0.1:9",
        "FAMILY": "geochat", "AUTHCFG": "", "FIELD": "caption"}.items() if k in changed}), context) == (True, "")


@pytest.mark.parametrize("alg, name, value, said", [
    ("detecttiles", "MERGE_OVERLAP", "nan", "MERGE_OVERLAP must be a share of the smaller object from 0 to 1, not nan"),
    ("detecttiles", "MERGE_OVERLAP", float("nan"),
     "MERGE_OVERLAP must be a share of the smaller object from 0 to 1, not nan"),
    ("captiontiles", "REQUEST_TIMEOUT", "nan", "REQUEST_TIMEOUT must be a number of seconds from 1 to 3600, not nan"),
    ("detecttiles", "RETRY_WINDOW", float("nan"), "RETRY_WINDOW must be a number of seconds from 0 to 86400, not nan"),
    ("captionfeatures", "RETRY_WINDOW", "nan", "RETRY_WINDOW must be a number of seconds from 0 to 86400, not nan"),
])
def test_a_number_that_is_nan_is_refused_by_the_parameter_check_and_prepare(plugin, processing, data_dir, tmp_path,
                                                                            alg, name, value, said):
    # nan passes QGIS's range check (every comparison with it is false): MERGE_OVERLAP=nan ran and exited 0.
    from qgis.core import QgsProcessingContext, QgsProject

    params = {"INPUT": str(data_dir / "rasters" / "cogeo.tif"), "TILE_SIZE": 512, "ENGINE": "http://127.0.0.1:9",
              "FAMILY": "geochat", "OUTPUT": str(tmp_path / "out.gpkg"), name: value}
    if alg == "captionfeatures":
        params.update(INPUT=str(data_dir / "rasters" / "geotiff_labels.geojson"),
                      RASTER=str(data_dir / "rasters" / "sample_geotiff.tif"))
    context = QgsProcessingContext()
    context.setProject(QgsProject.instance())
    made = QgsApplication.processingRegistry().createAlgorithmById(f"geovlm:{alg}")
    assert made.checkParameterValues(params, context) == (False, said)
    with pytest.raises(QgsProcessingException, match=f"^{said}$"):
        made.prepareAlgorithm(params, context, RecordingFeedback())
    assert not (tmp_path / "out.gpkg").exists()


@pytest.mark.parametrize("alg", ["captiontiles", "detecttiles", "captionfeatures", "parseanswers"])
def test_a_raster_georeferenced_by_gcps_only_is_refused_as_the_cli_refuses_it(plugin, processing, data_dir,
                                                                              tmp_path, alg):
    """QGIS shows a raster with GCPs and no geotransform as a warped copy: its grid (1399 px square for cogeo.tif
    turned 30°) is not the file's (1024 px), so tiles were cut on the copy's grid, read from the file's pixels
    (5 of 9 "damaged") and placed on the copy, and boxes were placed on it. Refused in one line before the run,
    as `geovlm caption`/`parse --raster` refuse it."""
    import math

    from osgeo import gdal
    from qgis.core import QgsProcessingContext, QgsProject

    turn, size = math.radians(30), 0.6
    gcps = [gdal.GCP(14321853.0 + size * (c * math.cos(turn) - r * math.sin(turn)),
                     4533021.0 - size * (c * math.sin(turn) + r * math.cos(turn)), 0, c, r)
            for c, r in ((0, 0), (1024, 0), (0, 1024), (1024, 1024))]
    raster = tmp_path / "gcps.tif"
    gdal.Translate(str(raster), str(data_dir / "rasters" / "cogeo.tif"), GCPs=gcps, outputSRS="EPSG:3857")
    params = {"INPUT": str(raster), "TILE_SIZE": 512, "ENGINE": "http://127.0.0.1:9", "FAMILY": "geochat",
              "OUTPUT": str(tmp_path / "out.gpkg")}
    if alg == "captionfeatures":
        params = dict(params, INPUT=str(data_dir / "rasters" / "geotiff_labels.geojson"), RASTER=str(raster))
    elif alg == "parseanswers":
        params = {"INPUT": str(data_dir / "answers" / "earthdial_refer_ship.jsonl"), "FAMILY": "earthdial",
                  "RASTER": str(raster), "OBJECTS": str(tmp_path / "o.gpkg")}
    context = QgsProcessingContext()
    context.setProject(QgsProject.instance())
    said = f"raster {raster} is georeferenced by GCPs only; warp it to a geotransform first"
    check = QgsApplication.processingRegistry().createAlgorithmById(f"geovlm:{alg}").checkParameterValues
    assert check(params, context) == (False, said)
    answers = data_dir / "answers" / "earthdial_refer_ship.jsonl"
    cli = subprocess.run([sys.executable, "-m", "geovlm", "parse", str(answers), "--family", "earthdial", "--raster",
                          str(raster), "--out", str(tmp_path / "cli.gpkg")], capture_output=True, text=True)
    assert cli.stderr.strip() == f"geovlm parse: {said}"


@pytest.mark.parametrize("alg", ["captiontiles", "detecttiles", "captionfeatures", "parseanswers", "askmap"])
def test_a_raster_file_qgis_cannot_load_is_named_with_the_reason_not_as_not_found(plugin, processing, data_dir,
                                                                                  tmp_path, alg):
    """QGIS's own check said "Could not load source layer for INPUT: x.tif not found" (askmap: "Incorrect
    parameter value for LAYERS") for a file that is there but empty or of another format: the line now says
    what `geovlm ask` says about it; a path that does not exist keeps QGIS's "not found"."""
    from qgis.core import QgsProcessingContext, QgsProject

    empty, text = tmp_path / "empty.tif", tmp_path / "notes.tif"
    empty.write_bytes(b"")
    text.write_text("hello\n")
    context = QgsProcessingContext()
    context.setProject(QgsProject.instance())
    check = QgsApplication.processingRegistry().createAlgorithmById(f"geovlm:{alg}").checkParameterValues
    name = {"captionfeatures": "RASTER", "parseanswers": "RASTER", "askmap": "LAYERS"}.get(alg, "INPUT")

    def params(raster):
        base = {"TILE_SIZE": 512, "ENGINE": "http://127.0.0.1:9", "FAMILY": "geochat",
                "OUTPUT": str(tmp_path / "out.gpkg"), name: str(raster)}
        if alg == "captionfeatures":
            base["INPUT"] = str(data_dir / "rasters" / "geotiff_labels.geojson")
        elif alg == "parseanswers":
            base = {"INPUT": str(data_dir / "answers" / "earthdial_refer_ship.jsonl"), "FAMILY": "earthdial",
                    "RASTER": str(raster), "OBJECTS": str(tmp_path / "o.gpkg")}
        elif alg == "askmap":
            base = {"LAYERS": [str(raster)], "EXTENT": "0,1,0,1 [EPSG:4326]", "QUESTION": "hi",
                    "ENGINE": "http://127.0.0.1:9"}
        return base

    assert check(params(empty), context) == (False, f"{name}: {empty} is an empty file (0 bytes)")
    ok, said = check(params(text), context)
    assert not ok and said.startswith(f"{name}: cannot read {text}: ") and "not recognized" in said
    ok, said = check(params(tmp_path / "missing.tif"), context)
    assert not ok and "cannot read" not in said and "empty file" not in said
    if alg != "askmap":  # a vector file where a raster is wanted: said as `geovlm parse --raster` says it
        from geovlm.models.imagery import vector_file_summary

        vector = data_dir / "rasters" / "geotiff_labels.geojson"
        assert vector_file_summary(vector) == "GeoJSON, 1 layer: geotiff_labels (Polygon)"  # the CLI's words
        assert check(params(vector), context) == (
            False, f"{name}: {vector} is a vector file (GeoJSON, 1 layer: geotiff_labels (Polygon)), not a raster: "
            "give a raster image (GeoTIFF, PNG, JPEG, VRT...)")


@pytest.mark.parametrize("alg", ["captiontiles", "parseanswers"])
@pytest.mark.parametrize("geotransform, said", [((500000, 0, 0, 4100000, 0, 0), "is singular"),
                                                ((500000, float("nan"), 0, 4100000, 0, -1), "non-finite")])
def test_a_raster_whose_geotransform_places_nothing_is_one_line_as_in_the_cli(plugin, processing, data_dir,
                                                                               tmp_path, alg, geotransform, said):
    """A header with pixels of no size (or NaN): the command line ended in a ValueError traceback; both now
    name the raster and what to do, in one line, before anything runs."""
    from osgeo import gdal, osr
    from qgis.core import QgsProcessingContext, QgsProject

    raster = tmp_path / "bad_header.tif"
    ds = gdal.GetDriverByName("GTiff").Create(str(raster), 20, 10, 3, gdal.GDT_Byte)
    ds.SetGeoTransform(geotransform)
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32616)
    ds.SetProjection(srs.ExportToWkt())
    ds = None
    answers = data_dir / "answers" / "earthdial_refer_ship.jsonl"
    cli = subprocess.run([sys.executable, "-m", "geovlm", "parse", str(answers), "--family", "earthdial", "--raster",
                          str(raster), "--out", str(tmp_path / "cli.gpkg")], capture_output=True, text=True)
    err = cli.stderr.strip().splitlines()
    assert cli.returncode == 2 and len(err) == 1 and "Traceback" not in cli.stderr, cli.stderr
    assert err[0].startswith(f"geovlm parse: raster {raster} cannot place anything: its geotransform ")
    assert said in err[0]
    params = {"INPUT": str(raster), "TILE_SIZE": 512, "ENGINE": "http://127.0.0.1:9", "FAMILY": "geochat",
              "OUTPUT": str(tmp_path / "out.gpkg")}
    if alg == "parseanswers":
        params = {"INPUT": str(answers), "FAMILY": "earthdial", "RASTER": str(raster),
                  "OBJECTS": str(tmp_path / "o.gpkg")}
    context = QgsProcessingContext()
    context.setProject(QgsProject.instance())
    ok, message = QgsApplication.processingRegistry().createAlgorithmById(f"geovlm:{alg}").checkParameterValues(
        params, context)
    assert not ok and message.startswith(f"raster {raster} cannot place anything: its geotransform ")
    assert said in message
