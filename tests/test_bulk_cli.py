"""`geovlm caption` / `geovlm detect` against scripted engines on 127.0.0.1: one feature per tile with its
exact footprint, resume after SIGKILL of the command or of the engine, two endpoints with one killed, a
refused plan change, and scene graphs merged across tile overlaps."""
import json
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from geovlm.core.georef import fit_plan
from geovlm.core.profiles import get_profile
from geovlm.core.tiling import TilePlan
from geovlm.models.imagery import import_rasterio, read_rgb
from geovlm.models.preprocess import fit_image

sys.path.insert(0, str(Path(__file__).parent))
from bulk_support import cli, inverted_copy, ledger_rows, run_cli, wait_for_rows  # noqa: E402

rasterio = import_rasterio()
from rasterio.windows import Window, bounds  # noqa: E402


def read_tiles(path):
    import pyogrio

    return pyogrio.read_dataframe(path, layer="tiles")


@pytest.mark.parametrize("name, tile", [("sample_geotiff.tif", 256), ("RGB.byte.tif", 128)])
def test_caption_one_feature_per_tile_with_the_window_footprint(engines, data_dir, tmp_path, name, tile):
    raster = data_dir / "rasters" / name
    engine = engines(delay=0.0)
    out = tmp_path / "captions.gpkg"
    code, stdout, stderr = run_cli("caption", raster, "--tile", tile, "--engine", engine.url, "--family",
                                   "geochat", "--out", out, "--no-progress")
    assert code == 0, stderr
    df = read_tiles(out)
    with rasterio.open(raster) as ds:
        plan = TilePlan(ds.width, ds.height, tile)
        empty = {t.id for t in plan.tiles() if not ds.dataset_mask(window=Window(*t.window)).any()}
        assert sorted(df.tile_id) == sorted(t.id for t in plan.tiles())
        for t in plan.tiles():
            row = df[df.tile_id == t.id].iloc[0]
            assert (row.row, row.col) == (t.row, t.col)
            left, bottom, right, top = bounds(Window(*t.window), ds.transform)
            assert np.allclose(row.geometry.bounds, (left, bottom, right, top), rtol=0, atol=1e-9)
            assert row.geometry.area == pytest.approx((right - left) * (top - bottom), rel=1e-12)
        assert df.crs.to_epsg() == ds.crs.to_epsg()
    assert set(df[df.status == "skipped"].tile_id) == empty
    answered = df[df.status == "ok"]
    assert len(answered) == len(plan) - len(empty) == engine.requests()
    assert answered.caption.str.startswith("scripted caption of a").all()
    assert (answered.model == "scripted-geochat").all() and (answered.engine == engine.url).all()
    assert (answered.question == "Describe the image in detail.").all() and (answered.seconds >= 0).all()
    assert f"{len(plan)} tiles: {len(plan) - len(empty)} asked" in stdout
    # the engine saw each tile fitted to GeoChat's input, exactly the pixels the model will see (issue 8)
    profile = get_profile("geochat")
    fitted = [fit_image(read_rgb(raster, t.window), fit_plan(profile, t.width, t.height),
                      profile.pad_color) for t in plan.tiles() if t.id not in empty]
    log = [json.loads(line) for line in engine.log.read_text().splitlines()]
    assert {tuple(entry["size"]) for entry in log} == {(profile.input_size, profile.input_size)}
    assert sorted(entry["mean"] for entry in log) == pytest.approx(sorted(float(f.mean()) for f in fitted),
                                                                    abs=1e-9)


def test_a_one_tile_run_says_1_tile(engines, data_dir, tmp_path):
    engine = engines(delay=0.0)
    code, stdout, stderr = run_cli("caption", data_dir / "rasters" / "RGB.byte.tif", "--tile", 1024, "--engine",
                                   engine.url, "--family", "geochat", "--out", tmp_path / "one.gpkg", "--no-progress")
    assert code == 0, stderr
    assert "geovlm caption: 1 tile of 1024 px" in stderr and "1 tiles" not in stderr + stdout
    assert "geovlm caption: 1 tile: 1 asked, 1 answered" in stdout


def test_another_plan_on_the_same_output_is_refused_unless_overwritten(engines, data_dir, tmp_path):
    raster = data_dir / "rasters" / "RGB.byte.tif"
    engine = engines()
    out = tmp_path / "c.gpkg"
    base = ("caption", raster, "--engine", engine.url, "--family", "geochat", "--out", out, "--no-progress")
    assert run_cli(*base, "--tile", 256)[0] == 0
    code, _, stderr = run_cli(*base, "--tile", 256, "--question", "What is here?")
    assert code == 2 and "another plan" in stderr and "question" in stderr and "overwrite" in stderr
    code, _, stderr = run_cli(*base, "--tile", 400, "--overwrite")
    assert code == 0, stderr
    assert {tid.split(":")[0] for tid, _ in ledger_rows(out)} == {TilePlan(791, 718, 400).fingerprint}
    (tmp_path / "other.gpkg").write_bytes(b"not a geopackage at all" * 100)
    code, _, stderr = run_cli(*base[:-3], "--out", tmp_path / "other.gpkg", "--tile", 256, "--no-progress")
    assert code == 2 and "other.gpkg exists and is not a GeoPackage: choose another output" in stderr


def _every_tile_once(out, plan):
    rows = ledger_rows(out)
    ids = Counter(tid for tid, _ in rows)
    assert set(ids) == {t.id for t in plan.tiles()} and set(ids.values()) == {1}
    return dict(rows)


def test_cli_killed_half_way_then_resumed_asks_only_what_was_missing(engines, data_dir, tmp_path):
    raster = data_dir / "rasters" / "sample_geotiff.tif"
    engine = engines(delay=0.15)
    out = tmp_path / "c.gpkg"
    args = ("caption", raster, "--tile", 128, "--engine", engine.url, "--family", "geochat", "--out", out,
            "--max-concurrent", 2, "--no-progress")
    proc = cli(*args)
    assert wait_for_rows(out, 8) >= 8
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    time.sleep(0.5)  # the engine finishes (and logs) the requests the killed command had in flight
    plan = TilePlan(900, 900, 128)
    first = dict(ledger_rows(out))
    assert 8 <= len(first) < len(plan)
    asked_before = engine.requests()
    code, stdout, stderr = run_cli(*args)
    assert code == 0, stderr
    statuses = _every_tile_once(out, plan)
    assert set(statuses.values()) <= {"ok", "skipped"}
    missing = [tid for tid in statuses if tid not in first or first[tid] == "failed"]
    asked_now = engine.requests() - asked_before
    skipped_now = sum(1 for tid in missing if statuses[tid] == "skipped")
    assert asked_now == len(missing) - skipped_now
    assert f"{len(plan) - len(missing)} resumed" in stdout


def test_engine_killed_half_way_then_resumed(engines, data_dir, tmp_path):
    raster = data_dir / "rasters" / "RGB.byte.tif"
    engine = engines("a", delay=0.1)
    out = tmp_path / "c.gpkg"
    args = ["caption", raster, "--tile", 128, "--family", "geochat", "--out", out, "--no-progress",
            "--max-concurrent", 2, "--retry-window", 2]
    proc = cli(*args, "--engine", engine.url)
    assert wait_for_rows(out, 6) >= 6
    engine.kill()
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1, stderr  # some tiles failed: the engine is gone, and the run stopped
    first = dict(ledger_rows(out))
    assert "failed" in first.values() and "rerun the same command" in stderr
    assert "stopped: no engine answered" in stdout
    again = engines("b")
    code, stdout, stderr = run_cli(*args, "--engine", again.url)
    assert code == 0, stderr
    plan = TilePlan(791, 718, 128)
    statuses = _every_tile_once(out, plan)
    assert set(statuses.values()) <= {"ok", "skipped"}
    retried = [tid for tid in statuses if first.get(tid) in (None, "failed")]
    assert again.requests() == len(retried) - sum(statuses[t] == "skipped" for t in retried)


def test_two_endpoints_one_killed_mid_run_every_tile_exactly_once(engines, data_dir, tmp_path):
    raster = data_dir / "rasters" / "sample_geotiff.tif"
    a, b = engines("a", delay=0.1), engines("b", delay=0.1)
    out = tmp_path / "c.gpkg"
    proc = cli("caption", raster, "--tile", 128, "--family", "geochat", "--out", out, "--no-progress",
               "--engine", f"{a.url},{b.url}", "--max-concurrent", 2)
    assert wait_for_rows(out, 6) >= 6
    b.kill()
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    statuses = _every_tile_once(out, TilePlan(900, 900, 128))
    assert set(statuses.values()) <= {"ok", "skipped"}
    engines_used = {e for (e,) in ledger_rows(out, columns="engine") if e}
    assert engines_used == {a.url, b.url}


def _scene_raster(path):
    """A 560x320 raster (EPSG:32633, 0.5 m pixels, rotated 30 degrees) with coloured blobs. Tiles of 320 px
    with 80 px overlap are two, sharing columns 240-320: two blobs lie wholly there, one is cut by the
    first tile's edge (columns 300-340)."""
    from affine import Affine

    data = np.zeros((3, 320, 560), np.uint8)
    for colour, x, y, w, h in BLOBS:
        for band, value in enumerate(colour):
            data[band, y:y + h, x:x + w] = value
    transform = Affine.translation(500000, 4100000) * Affine.rotation(30) * Affine.scale(0.5, -0.5)
    with rasterio.open(path, "w", driver="GTiff", width=560, height=320, count=3, dtype="uint8",
                       crs="EPSG:32633", transform=transform) as ds:
        ds.write(data)
    return transform


BLOBS = [((255, 10, 0), 20, 30, 40, 40), ((200, 20, 0), 80, 40, 30, 50), ((255, 30, 0), 250, 120, 30, 30),
         ((200, 40, 0), 285, 140, 30, 25), ((255, 50, 0), 450, 200, 40, 40), ((100, 60, 0), 300, 250, 40, 30)]


# The scripted engine pairs each tile's blobs in the order of their colours, one relation a sentence (SkySenseGPT's
# scene-graph sentences): the first tile (columns 0-320) sees blobs 5, 1, 3, 0, 2 (blob 5 cut by its edge): 5-1,
# 3-0, and 2 alone; the second (columns 240-560) sees 5, 3, 2, 4: 5-3, 2-4. (subject, predicate, object), as
# indices into BLOBS; the cut copy of blob 5 was merged into the second tile's whole copy.
EXPECTED_GRAPH = [(2, "adjacent", 4), (3, "adjacent", 0), (5, "adjacent", 1), (5, "adjacent", 3)]


def scene_graph(objects, relations, transform):
    """[(subject, predicate, object)] of a relations table, each object named by the index in BLOBS of the blob
    its object's centroid lies in."""
    from shapely.geometry import Polygon

    blobs = [Polygon([transform * p for p in ((x, y), (x + w, y), (x + w, y + h), (x, y + h))])
             for _, x, y, w, h in BLOBS]

    def blob(object_id):
        [centre] = objects[objects.object_id == object_id].geometry.centroid
        [index] = [i for i, b in enumerate(blobs) if b.contains(centre)]
        return index

    return [(blob(r.subject_id), r.predicate, blob(r.object_id)) for r in relations.itertuples()]


def test_detect_links_objects_and_relations_and_merges_duplicates(engines, tmp_path):
    import pyogrio
    from shapely.geometry import Polygon

    raster = tmp_path / "scene.tif"
    transform = _scene_raster(raster)
    engine = engines(family="skysensegpt")
    out = tmp_path / "scene.gpkg"
    code, stdout, stderr = run_cli("detect", raster, "--tile", 320, "--overlap", 80, "--engine", engine.url,
                                   "--out", out, "--no-progress")
    assert code == 0, stderr
    objects = pyogrio.read_dataframe(out, layer="objects")
    relations = pyogrio.read_dataframe(out, layer="relations")
    tiles = pyogrio.read_dataframe(out, layer="tiles")
    assert len(tiles) == 2 and (tiles.status == "ok").all() and sorted(tiles.objects) == [4, 5]
    # six blobs; the three seen by both tiles were merged: one object each
    assert len(objects) == 6, objects[["object_id", "label"]]
    assert sorted(objects.label) == ["building", "car", "car", "storage_tank", "storage_tank", "storage_tank"]
    assert objects.merged.sum() == 3
    assert objects.crs.to_epsg() == 32633
    # each object is its blob's footprint on the rotated grid; the cut blob kept the second tile's whole copy
    for _, x, y, w, h in BLOBS:
        blob = Polygon([transform * p for p in ((x, y), (x + w, y), (x + w, y + h), (x, y + h))])
        found = objects[objects.geometry.intersects(blob.centroid)]
        assert len(found) == 1
        assert found.iloc[0].geometry.symmetric_difference(blob).area < 5e-3 * blob.area  # 2-decimal percents
    ids = set(objects.object_id)
    assert set(relations.subject_id) <= ids and set(relations.object_id) <= ids
    centres = {r.object_id: r.geometry.centroid for r in objects.itertuples()}
    for rel in relations.itertuples():
        (x0, y0), (x1, y1) = rel.geometry.coords
        assert (x0, y0) == pytest.approx((centres[rel.subject_id].x, centres[rel.subject_id].y), abs=1e-6)
        assert (x1, y1) == pytest.approx((centres[rel.object_id].x, centres[rel.object_id].y), abs=1e-6)
    assert sorted(scene_graph(objects, relations, transform)) == EXPECTED_GRAPH
    # each relation has the provenance of the tile answer that gave it, as objects do
    provenance = ["question", "model", "family", "engine", "time", "seconds"]
    by_tile = tiles.set_index("tile_id")[provenance]
    assert relations[provenance].notna().all().all() and (relations.engine == engine.url).all()
    assert (relations[provenance].values == by_tile.loc[relations.tile_id].values).all()
    # the kept copy of a merged object is the one farther from its own tile's edge
    assert (objects[objects.merged > 0].edge_distance > 0).all()


def test_caption_and_detect_against_the_demo_model_engine(tmp_path_factory, data_dir, tmp_path):
    """Real model code end to end: `geovlm caption` and `geovlm detect` through a `geovlm serve` of the demo
    model (a random stand-in: its words are noise, but every tile must be answered once and recorded)."""
    from geovlm.cli.engine_cmds import STAND_IN_NOTE
    from geovlm.engine.launcher import LocalEngine
    from geovlm.models.demo_model import write_demo_model
    from geovlm.models.pipeline import ensure_encoder

    path = tmp_path_factory.getbasetemp() / "demo-model"
    if not (path / "geovlm.json").is_file():
        write_demo_model(path, seed=0)
    ensure_encoder(path)
    raster = data_dir / "rasters" / "cogeo.tif"
    with LocalEngine(model=str(path), max_restarts=0, api_key="bulk-test-key") as engine:
        for kind, family in (("caption", "geochat"), ("detect", "skysensegpt")):
            out = tmp_path / f"{kind}.gpkg"
            code, stdout, stderr = run_cli(kind, raster, "--tile", 512, "--overlap", 0, "--engine", engine.url,
                                           "--api-key", "bulk-test-key", "--family", family, "--out", out,
                                           "--max-new-tokens", 8, "--no-progress")
            assert code == 0, stderr
            assert "4 tiles: 4 asked, 4 answered" in stdout
            assert stderr.count(STAND_IN_NOTE) == 1  # the engine's /v1/models says it serves the stand-in
            rows = ledger_rows(out, columns="tile_id, status, model, answer")
            assert len(rows) == 4 and {r[1] for r in rows} == {"ok"}
            assert {r[2] for r in rows} == {"geovlm-demo-random"}
            assert all(r[3] for r in rows)  # the model said something about every tile


def test_ctrl_c_stops_cleanly_within_a_second_and_says_how_to_resume(engines, data_dir, tmp_path):
    raster = data_dir / "rasters" / "sample_geotiff.tif"
    engine = engines(delay=0.3)
    out = tmp_path / "c.gpkg"
    args = ("caption", raster, "--tile", 128, "--engine", engine.url, "--family", "geochat", "--out", out,
            "--max-concurrent", 2)
    proc = cli(*args)
    assert wait_for_rows(out, 4) >= 4
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=30)
    assert time.monotonic() - sent < 1.5
    assert proc.returncode == 130 and "Resume with the same command" in stderr, stderr[-2000:]
    assert "/64" in stderr  # the progress bar: tiles done / total
    done = dict(ledger_rows(out))
    assert 4 <= len(done) < 64 and set(done.values()) <= {"ok", "skipped"}
    code, stdout, _ = run_cli(*args, "--no-progress")
    assert code == 0 and f"{len(done)} resumed" in stdout


def test_a_damaged_raster_names_its_unreadable_tiles_apart_from_engine_failures(engines, data_dir, tmp_path):
    """corrupt.tif (truncated): its tiles that cannot be read fail with the reason, named as such, without the
    advice to rerun (a rerun reads the same damaged bytes); the others are answered."""
    out = tmp_path / "c.gpkg"
    code, stdout, stderr = run_cli("caption", data_dir / "rasters" / "corrupt.tif", "--tile", 256, "--engine",
                                   engines().url, "--family", "geochat", "--out", out, "--no-progress")
    rows = ledger_rows(out, columns="tile_id, status, error")
    failed = sorted(r[0] for r in rows if r[1] == "failed")
    assert code == 1 and len(rows) == 16 and 0 < len(failed) < 16
    assert all(r[2].startswith("pixels cannot be read") for r in rows if r[1] == "failed")
    assert f"{len(failed)} failed ({len(failed)} unreadable)" in stdout
    note = next(line for line in stderr.splitlines() if "could not be read" in line)
    assert all(tile_id in note for tile_id in failed) and "a rerun will not help those" in note
    assert "rerun the same command" not in stderr, stderr


def test_tiles_of_nan_only_are_nodata_skipped_not_failed_as_damaged(engines, tmp_path):
    """A float raster whose top half is NaN, with no nodata declared (its mask says every pixel is valid): the
    NaN-only tiles are nodata, skipped (sent black with --keep-nodata), not failed as 'damaged' with exit 1."""
    raster = tmp_path / "nan_top.tif"
    values = np.linspace(0, 1, 128 * 256, dtype=np.float32).reshape(128, 256)
    values[:64] = np.nan
    with rasterio.open(raster, "w", driver="GTiff", width=256, height=128, count=1, dtype="float32",
                       crs="EPSG:32616", transform=rasterio.transform.from_origin(500000, 4100000, 1, 1)) as ds:
        ds.write(values, 1)
    for keep, skipped, asked in (([], 4, 4), (["--keep-nodata"], 0, 8)):
        out = tmp_path / f"n{len(keep)}.gpkg"
        code, stdout, stderr = run_cli("caption", raster, "--tile", 64, "--engine", engines().url, "--family",
                                       "geochat", "--out", out, "--no-progress", *keep)
        assert code == 0, stderr
        assert f"8 tiles: {asked} asked, {asked} answered, {skipped} skipped (nodata), 0 failed" in stdout
        assert "damaged" not in stderr


def test_a_bulk_run_against_the_demo_model_says_so_once(engines, data_dir, tmp_path):
    from geovlm.cli.engine_cmds import STAND_IN_NOTE

    raster = data_dir / "rasters" / "sample_geotiff.tif"
    for stand_in, times in ((True, 1), (False, 0)):
        code, _, stderr = run_cli("caption", raster, "--tile", 512, "--engine",
                                  engines(str(stand_in), stand_in=stand_in).url,
                                  "--family", "geochat", "--out", tmp_path / f"{stand_in}.gpkg", "--no-progress")
        assert code == 0 and stderr.count(STAND_IN_NOTE) == times, stderr


def test_a_family_other_than_the_engines_is_warned_once(engines, data_dir, tmp_path):
    raster = data_dir / "rasters" / "cogeo.tif"
    url = engines("geochat", stand_in=True).url  # reports geochat and the random stand-in, as `geovlm serve`
    code, _, stderr = run_cli("caption", raster, "--tile", 512, "--engine", url, "--family", "earthdial",
                              "--out", tmp_path / "other.gpkg", "--no-progress")
    assert code == 0 and stderr.count("geovlm: warning: --family earthdial, but the engine reports geochat") == 1
    code, _, stderr = run_cli("caption", raster, "--tile", 512, "--engine", url, "--family", "geochat",
                              "--out", tmp_path / "same.gpkg", "--no-progress")
    assert code == 0 and "warning" not in stderr
    code, _, stderr = run_cli("detect", raster, "--engine", url, "--family", "foo", "--out", tmp_path / "x.gpkg")
    assert code == 2 and stderr.startswith("geovlm detect: --family: unknown model family 'foo'"), stderr


@pytest.mark.parametrize("kind, option, message", [
    ("caption", ["--max-new-tokens", "0"], "--max-new-tokens must be at least 1"),
    ("caption", ["--max-concurrent", "0"], "--max-concurrent must be at least 1"),
    ("caption", ["--engine", "http://127.0.0.1:9,http://127.0.0.1:9/"], "--engine: 'http://127.0.0.1:9/' is listed "
     "twice (also as 'http://127.0.0.1:9'): name each engine once (the requests each engine gets at once are set by "
     "the concurrency)"),
    ("detect", ["--merge-overlap", "5"], "--merge-overlap is a share of the smaller object, from 0 to 1, not 5.0"),
    ("caption", ["--bands", "1,2,9"], "--bands: the raster has 3 bands: choose three bands of 1..3 as red,green,blue, "
     "not 1,2,9"),
    ("detect", ["--bands", "0,1,2"], "--bands: the raster has 3 bands: choose three bands of 1..3 as red,green,blue, "
     "not 0,1,2"),
    ("caption", ["--request-timeout", "0"], "--request-timeout is the seconds one attempt waits, more than 0 and at "
     "most 3600, not 0"),
    ("detect", ["--request-timeout", "-5"], "--request-timeout is the seconds one attempt waits, more than 0 and at "
     "most 3600, not -5"),
    ("caption", ["--request-timeout", "1e9"], "--request-timeout is the seconds one attempt waits, more than 0 and at "
     "most 3600, not 1e+09"),
    ("caption", ["--request-timeout", "nan"], "--request-timeout is the seconds one attempt waits, more than 0 and at "
     "most 3600, not nan"),
])
def test_bad_run_options_are_one_line_before_any_tile_is_asked(data_dir, tmp_path, capsys, kind, option, message):
    from geovlm.cli import main

    out = tmp_path / "run.gpkg"  # the engine URL is never reached: the options are refused first
    argv = [kind, str(data_dir / "rasters" / "cogeo.tif"), "--engine", "http://127.0.0.1:9", "--out", str(out)]
    assert main([*argv, *option]) == 2
    assert capsys.readouterr().err.strip() == f"geovlm {kind}: {message}"
    assert not out.exists()


@pytest.mark.parametrize("kind, value", [("caption", "86401"), ("detect", "inf"), ("caption", "-1"),
                                         ("detect", "nan")])
def test_a_retry_window_past_a_day_is_one_line_before_any_engine_is_asked(data_dir, tmp_path, kind, value):
    """--retry-window is bounded as the bulk algorithms' RETRY_WINDOW (core.client.MAX_RETRY_WINDOW_S): a window of
    weeks, or for ever, is refused at once, not waited out at the first tile the dead engine below fails."""
    out = tmp_path / "run.gpkg"
    run = subprocess.run([sys.executable, "-m", "geovlm", kind, str(data_dir / "rasters" / "cogeo.tif"), "--engine",
                          "http://127.0.0.1:9", "--out", str(out), "--no-progress", "--retry-window", value],
                         capture_output=True, text=True, timeout=60)  # killed and failed if it retries
    assert (run.returncode, run.stderr.strip()) == (2, f"geovlm {kind}: --retry-window must be 0 or more seconds, "
                                                       f"at most 86400 (a day), not {float(value):g}")
    assert not out.exists()


def test_a_request_timeout_gives_up_on_a_slow_engine_within_it_as_the_client_retries(engines, data_dir, tmp_path):
    """An engine that takes 60 s to answer, --request-timeout 1 and --retry-window 3: each attempt is given up
    after 1 s and retried (as a connection that times out is) until the window has passed, then the run stops,
    to be resumed: exit 1 in seconds, not after the default 120 s per attempt."""
    engine = engines(delay=60.0)
    out = tmp_path / "slow.gpkg"
    started = time.monotonic()
    code, stdout, stderr = run_cli("caption", data_dir / "rasters" / "RGB.byte.tif", "--tile", 1024, "--engine",
                                   engine.url, "--family", "geochat", "--out", out, "--no-progress",
                                   "--request-timeout", 1, "--retry-window", 3, timeout=60)
    took = time.monotonic() - started
    assert code == 1, stderr
    assert (f"geovlm: {engine.url} sent no answer within 1 s (--request-timeout to change); retrying for up to 3 s "
            "(--retry-window to change, Ctrl-C to stop)") in stderr, stderr  # the first failure, said at once
    spent = [line for line in stdout.splitlines() if "stopped: no engine answered (gave up after" in line]
    assert spent and spent[0].endswith(f"/v1/chat/completions: no answer within 1 s); wrote {out}"), stdout
    attempts, seconds = (int(v) for v in spent[0].split("gave up after ")[1].split(" s:")[0].split(" attempts in "))
    assert attempts >= 2 and seconds <= 3 + 1 and took < 30, (spent, took)  # the window plus one attempt at most
    assert ledger_rows(out) == [(ledger_rows(out)[0][0], "failed")]


def test_a_new_raster_on_the_same_grid_or_in_another_crs_is_another_plan(engines, data_dir, tmp_path):
    """A new acquisition of the same grid (every pixel changed) and the same pixels in another CRS are refused
    on the first run's output, naming what differs and --overwrite; with --overwrite the new raster is asked."""
    import shutil

    source = data_dir / "rasters" / "cogeo.tif"
    changed = inverted_copy(source, tmp_path / "changed.tif")
    utm = tmp_path / "utm.tif"
    shutil.copyfile(source, utm)
    with rasterio.open(utm, "r+") as dst:
        dst.crs = rasterio.crs.CRS.from_epsg(32616)
    engine = engines()
    out = tmp_path / "kill.gpkg"
    args = ("--tile", 256, "--engine", engine.url, "--family", "geochat", "--out", out, "--no-progress")
    assert run_cli("caption", source, *args)[0] == 0
    asked = engine.requests()
    code, _, stderr = run_cli("caption", changed, *args)
    assert code == 2 and "another plan (pixels (sample digest)" in stderr and "(--overwrite)" in stderr, stderr
    assert "CRS" not in stderr and "resuming" not in stderr and len(stderr.strip().splitlines()) == 1
    code, _, stderr = run_cli("caption", utm, *args)
    assert code == 2 and "CRS EPSG:3857 there, EPSG:32616 now" in stderr and "pixels" not in stderr, stderr
    assert engine.requests() == asked  # nothing asked of a refused run
    code, stdout, stderr = run_cli("caption", utm, *args, "--overwrite")
    assert code == 0 and "resuming" not in stderr and "16 asked" in stdout, stderr
    assert read_tiles(out).crs.to_epsg() == 32616


def test_another_raster_size_is_refused_in_one_readable_line(engines, data_dir, tmp_path):
    engine = engines()
    out = tmp_path / "c.gpkg"
    args = ("--tile", 256, "--engine", engine.url, "--family", "geochat", "--out", out, "--no-progress")
    assert run_cli("caption", data_dir / "rasters" / "cogeo.tif", *args)[0] == 0
    code, _, stderr = run_cli("caption", data_dir / "rasters" / "RGB.byte.tif", *args)
    line = stderr.strip()
    assert code == 2 and "\n" not in line and "{" not in line and "'" not in line, line
    assert "raster width 1024 there, 791 now; raster height 1024 there, 718 now" in line
    assert "CRS EPSG:3857 there, EPSG:32618 now" in line and line.endswith("(--overwrite)")


def test_progress_into_a_log_file_is_a_bounded_number_of_lines(engines, data_dir, tmp_path):
    """stderr redirected (a pipe here, as a log file or `2>log`): no bar redrawn at every callback, but a line
    on the first tile, every 10 % and at the end (and every minute of a long run)."""
    engine = engines(delay=0.02)
    code, _, stderr = run_cli("caption", data_dir / "rasters" / "sample_geotiff.tif", "--tile", 64, "--engine",
                              engine.url, "--family", "geochat", "--out", tmp_path / "c.gpkg")
    assert code == 0, stderr
    progress = [line for line in stderr.splitlines() if "/225 tiles" in line]
    assert "\r" not in stderr and 3 <= len(progress) <= 12, stderr
    assert progress[-1].startswith("geovlm caption: 225/225 tiles, failed 0")
    eta = r"about ([1-9]\d* s|[1-9]\d* min|[1-9]\d* h( [1-9]\d* min)?) left|under 1 s left"
    left = re.compile(rf"geovlm caption: \d+/225 tiles, failed 0(, ({eta}))?")
    assert all(left.fullmatch(line) for line in progress), stderr  # never "about 0 s left"


def test_an_output_that_is_a_folder_or_not_a_geopackage_is_refused_before_any_engine_is_asked(data_dir, tmp_path):
    """With --overwrite too: a text file named .gpkg was deleted, a folder named .gpkg raised IsADirectoryError
    (a traceback), each after the engine was reached; now one line, exit 2, no engine contacted (the URL below
    would take the retry window to give up on), the file and the folder left as they are."""
    text, folder = tmp_path / "notes.gpkg", tmp_path / "dir.gpkg"
    text.write_text("hello\n")
    folder.mkdir()
    for out, said in ((text, f"{text} exists and is not a GeoPackage: choose another output (it is left as it is)"),
                      (folder, f"{folder} is a folder: give a .gpkg file as the output")):
        code, stdout, stderr = run_cli("detect", data_dir / "rasters" / "cogeo.tif", "--out", out, "--overwrite",
                                       "--engine", "http://127.0.0.1:9", "--retry-window", "60", "--no-progress",
                                       timeout=30)
        assert (code, stdout, stderr.strip()) == (2, "", f"geovlm detect: {said}")
    assert text.read_text() == "hello\n" and folder.is_dir()


@pytest.mark.parametrize("kind", ["caption", "detect"])
def test_a_geopackage_of_the_users_own_layers_is_refused_before_any_engine_is_asked(data_dir, tmp_path, kind):
    """It was refused only once the engine had answered (a local engine started first: slow); now one line,
    exit 2, no engine contacted (the URL below would take the retry window to give up on), --overwrite or not,
    and the user's layer left as it was."""
    import sqlite3

    from geovlm.core import gpkg

    out = tmp_path / "mine.gpkg"
    con = gpkg.connect(str(out))
    with con:
        gpkg.create_table(con, "my_fields", [("name", str)], "POLYGON", gpkg.add_srs(con, None, 32618))
    con.close()
    for overwrite in ((), ("--overwrite",)):
        code, stdout, stderr = run_cli(kind, data_dir / "rasters" / "cogeo.tif", "--out", out, *overwrite,
                                       "--engine", "http://127.0.0.1:9", "--retry-window", "60", "--no-progress",
                                       timeout=30)
        assert (code, stdout, stderr.strip()) == (2, "", f"geovlm {kind}: {out} holds other layers (my_fields), not "
                                                  "only a GeoVLM bulk run's; choose another output")
    con = sqlite3.connect(out)
    assert [r[0] for r in con.execute("SELECT table_name FROM gpkg_contents")] == ["my_fields"]
    con.close()


def test_edge_drop_on_a_raster_smaller_than_a_tile_is_refused_not_an_empty_run(data_dir, tmp_path):
    """`--edge drop` with a tile larger than the raster planned 0 tiles and "wrote" an empty output (exit 0)."""
    out = tmp_path / "drop.gpkg"
    code, stdout, stderr = run_cli("caption", data_dir / "rasters" / "RGB.byte.tif", "--tile", 1024, "--edge", "drop",
                                   "--engine", "http://127.0.0.1:9", "--out", out, "--no-progress", timeout=30)
    assert (code, stdout) == (2, "") and not out.exists()
    assert stderr.strip() == ("geovlm caption: no tile to ask: the raster (791x718 px) is smaller than one 1024 px "
                              "tile, and --edge drop leaves partial tiles out; give a smaller --tile or another --edge")


@pytest.mark.parametrize("engines, key, warned", [
    ("http://127.0.0.1:9,http://localhost:10,https://192.0.2.1:9", None, []),
    ("http://192.0.2.1:9,http://127.0.0.1:9", None, ["http://192.0.2.1:9 is plain http to another machine: the "
                                                      "images, with no API key, cross the network unencrypted"]),
    ("http://engine.example:8000", "k", ["http://engine.example:8000 is plain http to another machine: the images "
                                         "and the API key cross the network unencrypted"]),
])
def test_plain_http_to_another_machine_is_warned(capsys, monkeypatch, engines, key, warned):
    import argparse

    from geovlm.cli.serve_cmds import engine_for

    if key:
        monkeypatch.setenv("GEOVLM_API_KEY", key)
    else:
        monkeypatch.delenv("GEOVLM_API_KEY", raising=False)
    engine_for(argparse.Namespace(engine=engines, api_key=None, api_key_file=None, max_concurrent=1))
    lines = capsys.readouterr().err.splitlines()  # said before any engine is reached: none of these answers
    assert [line.split(" (use https")[0] for line in lines] == [f"geovlm: warning: {w}" for w in warned]
