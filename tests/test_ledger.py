"""The ledger (core/ledger.py) and the merge rule (core/dedupe.py) on their own: resume rule, one row per
tile, plan refusal, and duplicates merged the same whichever tile is committed first."""
import sqlite3
from pathlib import Path

import pytest

from geovlm.core.dedupe import convex_intersection, overlap_of_smaller
from geovlm.core.georef import GeoTransform
from geovlm.core.ledger import FAILED, OK, Ledger, LedgerError, RunPlan, TileResult
from geovlm.core.tiling import TilePlan

GT = GeoTransform(0.5, 0.0, 500000.0, 0.0, -0.5, 4100000.0)


def plan(kind="caption", question="Describe the image in detail.", tile=320, overlap=80):
    return RunPlan(kind, TilePlan(560, 320, tile, overlap), GT, question, "caption", "geochat", "m")


def box(x, y, w, h):
    """A pixel box as a map ring of the test geotransform."""
    return [GT.to_map(*p) for p in ((x, y), (x + w, y), (x + w, y + h), (x, y + h))]


def test_overlap_of_smaller_and_intersection():
    a, b = box(0, 0, 40, 30), box(20, 0, 20, 30)
    assert overlap_of_smaller(a, b) == pytest.approx(1.0)
    assert overlap_of_smaller(box(0, 0, 10, 10), box(5, 5, 10, 10)) == pytest.approx(0.25)
    assert overlap_of_smaller(box(0, 0, 10, 10), box(20, 0, 10, 10)) == 0.0
    assert len(convex_intersection(box(0, 0, 10, 10), box(5, 5, 10, 10))) == 4


def test_resume_rule_one_row_per_tile_and_plan_refusal(tmp_path):
    out = tmp_path / "l.gpkg"
    p = plan()
    first, second = list(p.tiles.tiles())
    with Ledger(out, p, epsg=32633, crs_wkt="EPSG:32633 stand-in") as ledger:
        ledger.record(TileResult(first, FAILED, error="HTTP 503"), "q", "m", "geochat")
        assert list(ledger.pending(p.tiles.tiles())) == [first, second]
        assert ledger.record(TileResult(first, OK, caption="a field"), "q", "m", "geochat")
        # a second run on the same output that answered the same tile later writes nothing
        with Ledger(out, p) as other:
            assert not other.record(TileResult(first, OK, caption="again"), "q", "m", "geochat")
            assert not other.record(TileResult(first, FAILED, error="late"), "q", "m", "geochat")
        assert list(ledger.pending(p.tiles.tiles())) == [second]
    with Ledger(out, p) as again:
        assert again.resumed and again.counts() == {"ok": 1}
    with pytest.raises(LedgerError, match="question"):
        Ledger(out, plan(question="What is here?"))
    with pytest.raises(LedgerError, match="tile 320 there, 256 now"):
        Ledger(out, plan(tile=256))
    con = sqlite3.connect(out)
    assert con.execute("SELECT COUNT(*), MIN(status), MIN(caption) FROM tiles").fetchone() == (1, "ok", "a field")
    assert con.execute("PRAGMA application_id").fetchone()[0] == 0x47504B47


@pytest.mark.parametrize("order", [(0, 1), (1, 0)])
def test_duplicates_merge_the_same_in_either_order_and_relations_follow(tmp_path, order):
    p = plan("detect")
    tiles = list(p.tiles.tiles())  # columns 0-320 and 240-560
    # tile 0 sees the building cut at its right edge (300-320) and a car; tile 1 sees the whole building
    results = {
        0: TileResult(tiles[0], OK, objects=[(0, "building", "rbox", 0.0, "", "", box(300, 250, 20, 30)),
                                             (1, "car", "rbox", 0.0, "", "", box(40, 40, 30, 50))],
                      relations=[(1, "adjacent", 0, "car", "building")]),
        1: TileResult(tiles[1], OK, objects=[(0, "building", "rbox", 0.0, "", "", box(300, 250, 40, 30))]),
    }
    out = tmp_path / "g.gpkg"
    with Ledger(out, p, epsg=32633) as ledger:
        for i in order:
            ledger.record(results[i], "q", "m", "skysensegpt")
    con = sqlite3.connect(out)
    objects = dict(con.execute("SELECT object_id, merged FROM objects").fetchall())
    assert objects == {f"{tiles[1].id}/0": 1, f"{tiles[0].id}/1": 0}
    rel = con.execute("SELECT subject_id, object_id FROM relations").fetchall()
    assert rel == [(f"{tiles[0].id}/1", f"{tiles[1].id}/0")]


PROVENANCE = "question, model, family, engine, time, seconds"


def graph_results(tiles):
    """Tile 0 answers a car beside a building, tile 1 a building linked to itself: two relations, one a tile."""
    return [TileResult(tiles[0], OK, engine="http://127.0.0.1:1", seconds=1.5,
                       objects=[(0, "building", "rbox", 0.0, "", "", box(20, 250, 20, 30)),
                                (1, "car", "rbox", 0.0, "", "", box(40, 40, 30, 50))],
                       relations=[(1, "adjacent", 0, "car", "building")]),
            TileResult(tiles[1], OK, engine="http://127.0.0.1:2", seconds=2.5,
                       objects=[(0, "building", "rbox", 0.0, "", "", box(500, 250, 40, 30))],
                       relations=[(0, "near", 0, "building", "building")])]


def test_relations_carry_the_provenance_their_objects_and_tile_carry(tmp_path):
    p = plan("detect")
    tiles = list(p.tiles.tiles())
    out = tmp_path / "g.gpkg"
    with Ledger(out, p, epsg=32633) as ledger:
        for i, result in enumerate(graph_results(tiles)):
            ledger.record(result, f"q{i}", "m", "skysensegpt")
    con = sqlite3.connect(out)
    tile_rows = {row[0]: row[1:] for row in con.execute(f"SELECT tile_id, {PROVENANCE} FROM tiles")}
    relations = con.execute(f"SELECT tile_id, predicate, {PROVENANCE} FROM relations ORDER BY fid").fetchall()
    assert [(r[0], r[1]) for r in relations] == [(tiles[0].id, "adjacent"), (tiles[1].id, "near")]
    assert all(r[2:] == tile_rows[r[0]] for r in relations)
    assert relations[0][2:6] == ("q0", "m", "skysensegpt", "http://127.0.0.1:1") and relations[1][7] == 2.5
    objects = con.execute(f"SELECT tile_id, {PROVENANCE} FROM objects").fetchall()
    assert all(o[1:] == tile_rows[o[0]] for o in objects)


def test_an_output_whose_relations_had_family_only_gets_their_provenance_on_resume(tmp_path):
    """An output written when relations had `family` only: resuming it adds the provenance columns, filled
    from each relation's tile, and the new tile's relations are written with theirs."""
    p = plan("detect")
    tiles = list(p.tiles.tiles())
    first, second = graph_results(tiles)
    out = tmp_path / "old.gpkg"
    with Ledger(out, p, epsg=32633) as ledger:
        ledger.record(first, "q", "m", "skysensegpt")
    con = sqlite3.connect(out)
    with con:  # the relations table as the earlier version made it
        con.execute("CREATE TABLE old AS SELECT fid, geom, tile_id, subject_id, predicate, object_id, "
                    "subject_label, object_label, family FROM relations")
        con.execute("DROP TABLE relations")
        con.execute("ALTER TABLE old RENAME TO relations")
    con.close()
    with Ledger(out, p) as ledger:
        assert ledger.resumed
        ledger.record(second, "q", "m", "skysensegpt")
    con = sqlite3.connect(out)
    tile_rows = {row[0]: row[1:] for row in con.execute(f"SELECT tile_id, {PROVENANCE} FROM tiles")}
    relations = con.execute(f"SELECT tile_id, {PROVENANCE} FROM relations").fetchall()
    assert len(relations) == 2 and all(r[1:] == tile_rows[r[0]] and None not in r for r in relations)


def test_a_refusal_names_what_differs_in_one_readable_line(tmp_path):
    out = tmp_path / "l.gpkg"
    base = dict(kind="caption", tiles=TilePlan(560, 320, 320, 80), geotransform=GT, question="q", task="caption",
                family="geochat", model="m", crs="EPSG:3857", pixels="a" * 16)
    Ledger(out, RunPlan(**base)).close()
    other = dict(base, tiles=TilePlan(600, 320, 320, 80), crs="EPSG:32616", pixels="b" * 16)
    with pytest.raises(LedgerError) as refused:
        Ledger(out, RunPlan(**other), overwrite_flag="--overwrite")
    message = str(refused.value)
    assert "\n" not in message and "{" not in message and "[" not in message
    assert "raster width 560 there, 600 now" in message
    assert "CRS EPSG:3857 there, EPSG:32616 now" in message
    assert f"pixels (sample digest) {'a' * 16} there, {'b' * 16} now" in message
    assert "height" not in message and "question" not in message  # only what differs, each once
    assert message.count(" there, ") == 3
    with pytest.raises(LedgerError, match=r"geotransform 0\.5,0,500000,0,-0\.5,4100000 there, "
                       r"0\.5,0,500000\.25,0,-0\.5,4100000 now"):  # every digit that differs is shown
        Ledger(out, RunPlan(**dict(base, geotransform=GeoTransform(0.5, 0.0, 500000.25, 0.0, -0.5, 4100000.0))))
    assert message.endswith("(--overwrite)")
    with pytest.raises(LedgerError, match=r"\(tick Overwrite\)$"):
        Ledger(out, RunPlan(**dict(base, pixels="c" * 16)), overwrite_flag="tick Overwrite")
    # an output of the GeoVLM before the raster's identity was recorded: said so, not a list of differences
    con = sqlite3.connect(out)
    with con:
        con.execute("UPDATE geovlm_plan SET fingerprint = 'old', plan = ?", ('{"schema": 1, "raster": {}}',))
    con.close()
    with pytest.raises(LedgerError, match="another GeoVLM version .*--overwrite"):
        Ledger(out, RunPlan(**base))
    with Ledger(out, RunPlan(**base), overwrite=True) as fresh:
        assert not fresh.resumed


def test_a_geopackage_with_other_layers_is_never_overwritten(tmp_path):
    """--overwrite replaces a bulk run's output, never a GeoPackage holding the user's own layers."""
    from geovlm.core import gpkg

    out = tmp_path / "mine.gpkg"
    con = gpkg.connect(str(out))
    with con:
        srs = gpkg.add_srs(con, None, 32631)
        gpkg.create_table(con, "my_buildings", [("name", str)], "POLYGON", srs)
    con.close()
    for overwrite in (False, True):
        with pytest.raises(LedgerError, match=r"holds other layers \(my_buildings\).*choose another output"):
            Ledger(str(out), plan(), overwrite=overwrite)
    check = sqlite3.connect(str(out))
    assert [r[0] for r in check.execute("SELECT table_name FROM gpkg_contents")] == ["my_buildings"]
    check.close()


def test_bands_and_asked_nodata_tiles_are_part_of_the_plan(tmp_path):
    """They change what the model is sent: a rerun with other bands, or asking the nodata tiles a first run
    skipped, is another plan, not a resume of old answers. The default reads as before (explicit 1,2,3 too)."""
    out = tmp_path / "b.gpkg"
    base = dict(kind="caption", tiles=TilePlan(560, 320, 320, 80), geotransform=GT, question="q", task="caption",
                family="geochat", model="m", crs="EPSG:3857", pixels="a" * 16)
    Ledger(out, RunPlan(**base)).close()
    Ledger(out, RunPlan(**dict(base, bands=(1, 2, 3)))).close()  # the default named: a resume
    with pytest.raises(LedgerError, match=r"bands \(red,green,blue\) default there, 3,2,1 now"):
        Ledger(out, RunPlan(**dict(base, bands=(3, 2, 1))))
    with pytest.raises(LedgerError, match=r"nodata-only tiles skipped there, asked now"):
        Ledger(out, RunPlan(**dict(base, keep_nodata=True)))


def test_a_folder_or_a_file_that_is_not_a_database_is_never_overwritten_and_a_missing_folder_is_made(tmp_path):
    """`--overwrite` replaces a bulk run's output only: a folder named .gpkg (which raised IsADirectoryError) and a
    text file named .gpkg (which was deleted) are refused in one line and left as they are; a damaged earlier
    output (SQLite's header, nothing readable) may still be replaced; a missing parent folder is made, as
    `geovlm parse --out` makes it."""
    from geovlm.core.ledger import output_problem

    folder = tmp_path / "dir.gpkg"
    folder.mkdir()
    (folder / "kept.txt").write_text("mine")
    text = tmp_path / "notes.gpkg"
    text.write_text("hello\n")
    for path, said in ((folder, f"{folder} is a folder: give a .gpkg file as the output"),
                       (text, f"{text} exists and is not a GeoPackage: choose another output (it is left as it is)")):
        assert output_problem(str(path)) == said
        for overwrite in (False, True):
            with pytest.raises(LedgerError) as refused:
                Ledger(path, plan(), overwrite=overwrite)
            assert str(refused.value) == said
    assert (folder / "kept.txt").read_text() == "mine" and text.read_text() == "hello\n"
    damaged = tmp_path / "damaged.gpkg"
    with Ledger(damaged, plan()):
        pass
    damaged.write_bytes(damaged.read_bytes()[:100])
    assert output_problem(str(damaged)) is None
    with Ledger(damaged, plan(), overwrite=True) as ledger:
        assert not ledger.resumed
    deep = tmp_path / "new" / "folder" / "run.gpkg"
    with Ledger(deep, plan()):
        pass
    assert deep.is_file()


@pytest.mark.skipif(not Path("/proc/self").exists(), reason="needs Linux's /proc, where no file can be created")
def test_an_output_that_cannot_be_created_is_said_so_not_called_a_damaged_geopackage():
    out = "/proc/geovlm-ledger-test.gpkg"
    with pytest.raises(LedgerError) as refused:
        Ledger(out, plan())
    assert str(refused.value).startswith(f"cannot create {out}: ") and not Path(out).exists()


def test_another_part_of_the_same_raster_is_named_as_another_extent(tmp_path):
    """Plans over windows of one raster (an extent: the QGIS algorithms' EXTENT, the command line's --extent)
    differ in size and corner only; the refusal names the two map rectangles, in QGIS's extent order, rather
    than widths, heights and geotransforms."""
    out = tmp_path / "part.gpkg"
    base = dict(kind="caption", tiles=TilePlan(560, 320, 320, 80), geotransform=GT, question="q", task="caption",
                family="geochat", model="m", crs="EPSG:32616", pixels="a" * 16)
    Ledger(out, RunPlan(**base)).close()
    window = dict(base, tiles=TilePlan(200, 320, 320, 80), geotransform=GT.window(100, 0))
    with pytest.raises(LedgerError) as refused:
        Ledger(out, RunPlan(**window))
    assert ("another plan (extent 500000,500280,4099840,4100000 there, 500050,500150,4099840,4100000 now); "
            in str(refused.value))
    with pytest.raises(LedgerError, match=r"extent .* there, .* now; question q there, 'what now\?' now\)"):
        Ledger(out, RunPlan(**dict(window, question="what now?")))
