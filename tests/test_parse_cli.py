"""`geovlm parse`: saved answers -> layers that QGIS opens, with clear errors for bad input."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
from qgis.core import QgsVectorLayer

from geovlm.cli import main


def _layer(path, name):
    layer = QgsVectorLayer(f"{path}|layername={name}", name, "ogr")
    assert layer.isValid(), f"QGIS cannot open {path} {name}"
    return layer


def test_real_answers_to_a_geopackage_that_qgis_opens(data_dir, tmp_path, capsys):
    out = tmp_path / "refer.gpkg"
    src = data_dir / "answers" / "earthdial_refer_nwpu_vhr10.jsonl"
    assert main(["parse", str(src), "--family", "earthdial", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("1601 answers, ")
    objects = _layer(out, "objects")
    n_objects = int(printed.split(", ")[1].split()[0])
    assert objects.featureCount() == n_objects > 1000
    assert [f.name() for f in objects.fields()][1:5] == ["line", "object_id", "label", "family"]
    first = next(objects.getFeatures())
    assert first["line"] == 1 and first["family"] == "earthdial" and first["kind"] in ("box", "rbox")
    assert first["label"] == "4 white small storage tank at the top left"
    assert _layer(out, "relations").featureCount() == 0


def test_geotransform_and_crs_place_boxes_on_the_map(tmp_path):
    src = tmp_path / "a.txt"
    src.write_text("{<0><0><50><50>|<90>}\n\n<p>ship</p> {<50><50><100><100>|<90>}\n")
    out = tmp_path / "a.geojson"
    args = ["parse", str(src), "--family", "geochat", "--geotransform", "2,0,1000,0,-2,5000",
            "--crs", "EPSG:32631", "--image-size", "200x100", "--out", str(out)]
    assert main(args) == 0
    data = json.loads(out.read_text())
    assert [f["properties"]["line"] for f in data["features"]] == [1, 3]
    ring = data["features"][1]["geometry"]["coordinates"][0]
    xs, ys = [p[0] for p in ring], [p[1] for p in ring]
    # GeoChat pads 200x100 to a 200-pixel square, the image in its rows 50..150: 50..100 % is columns 100..200
    # and rows 100..200 of the square, rows 50..150 of the image: its lower half lies in the padding band
    # and is clipped at the image's edge (row 100, y = 4800), in image pixels.
    assert (min(xs), max(xs)) == (1200, 1400) and (min(ys), max(ys)) == (4800, 4900)
    assert "32631" in json.dumps(data.get("crs", {})) or _layer_crs(out) == "EPSG:32631"
    assert (tmp_path / "a_relations.geojson").exists()


def _layer_crs(path):
    return QgsVectorLayer(str(path), "x", "ogr").crs().authid()


def test_scene_graph_relations_become_lines(tmp_path):
    src = tmp_path / "sg.jsonl"
    text = ("<ref>cars</ref><rbox>({<10><10><4><2>|<90>}, {<20><10><4><2>|<90>})</rbox> "
            "<rel>parked alongside with</rel> <ref>car_parking</ref><rbox>({<15><15><30><20>|<90>})</rbox>.")
    src.write_text(json.dumps({"answer": text}) + "\n")
    out = tmp_path / "sg.gpkg"
    assert main(["parse", str(src), "--family", "skysensegpt", "--image-size", "512x512", "--out", str(out)]) == 0
    rel = _layer(out, "relations")
    assert rel.featureCount() == 2
    feats = list(rel.getFeatures())
    assert {f["predicate"] for f in feats} == {"parked alongside with"}
    assert {f["object_id"] for f in feats} == {2}
    line = feats[0].geometry().asPolyline()
    # Pixel space: x = column, y = -row (upright in QGIS).
    assert (line[-1].x(), line[-1].y()) == pytest.approx((0.15 * 512, -0.15 * 512))


def test_pixel_space_layers_open_upright_in_a_local_crs_not_degrees(tmp_path, capsys):
    src = tmp_path / "a.txt"
    src.write_text("{<0><0><50><25>|<90>}\n")
    out = tmp_path / "a.gpkg"
    assert main(["parse", str(src), "--family", "geochat", "--image-size", "400x400", "--out", str(out)]) == 0
    assert "coordinates: pixels of a 400x400 image (x = column, y = -row" in capsys.readouterr().out
    layer = _layer(out, "objects")
    crs = layer.crs()
    assert crs.isValid() and not crs.isGeographic() and "GeoVLM image pixels" in crs.description()
    box = next(layer.getFeatures()).geometry().boundingBox()
    # 0..50 % of the columns, 0..25 % of the rows: y runs from 0 down to -100.
    assert (box.xMinimum(), box.xMaximum(), box.yMinimum(), box.yMaximum()) == pytest.approx((0, 200, -100, 0))


def test_pixel_space_geojson_is_upright_and_says_it_cannot_carry_the_crs(tmp_path, capsys):
    src = tmp_path / "a.txt"
    src.write_text("{<0><0><50><25>|<90>}\n")
    out = tmp_path / "a.geojson"
    assert main(["parse", str(src), "--family", "geochat", "--image-size", "400x400", "--out", str(out)]) == 0
    assert "GeoJSON cannot carry" in capsys.readouterr().err
    ring = json.loads(out.read_text())["features"][0]["geometry"]["coordinates"][0]
    assert min(p[1] for p in ring) == -100 and max(p[1] for p in ring) == 0


def test_no_box_in_a_non_empty_file_suggests_checking_the_family(tmp_path, capsys):
    src = tmp_path / "a.txt"
    src.write_text("[[10, 20, 30, 40, 90]]\n")  # EarthDial's syntax read as GeoChat's: nothing found
    assert main(["parse", str(src), "--family", "geochat", "--out", str(tmp_path / "o.gpkg")]) == 0
    assert "check that --family geochat" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--family", "nosuch"], "unknown model family"),
        (["--family", "geochat", "--geotransform", "1,2,3"], "six numbers"),
        (["--family", "geochat", "--geotransform", "0,0,0,0,0,0"], "singular"),
        (["--family", "geochat", "--image-size", "axb"], "WxH"),
        (["--family", "geochat", "--raster", "RASTER/../SOURCES.md"], "cannot read raster"),
        (["--family", "geochat", "--raster", "RASTER/missing.tif"], "raster not found"),
        (["--family", "geochat", "--raster", "RASTER"], "is a folder that GDAL cannot open as a raster"),
        (["--family", "geochat", "--geotransform", "1,0,0,0,-1,0", "--crs", "EPSG:999999"],
         "--crs: not a CRS that PROJ knows: 'EPSG:999999'"),
        (["--family", "geochat", "--set", "angle_sense=2"], "angle_sense"),
    ],
)
def test_bad_input_gives_a_clear_message(data_dir, tmp_path, capsys, args, message):
    src = tmp_path / "a.txt"
    src.write_text("{<0><0><50><50>|<90>}\n")
    args = [a.replace("RASTER", str(data_dir / "rasters")) for a in args]
    assert main(["parse", str(src), *args, "--out", str(tmp_path / "o.gpkg")]) == 2
    assert message in capsys.readouterr().err


def test_broken_json_lines_name_the_line(tmp_path, capsys):
    src = tmp_path / "a.jsonl"
    src.write_text('{"answer": "x"}\n{"answer": \n')
    assert main(["parse", str(src), "--family", "geochat", "--out", str(tmp_path / "o.gpkg")]) == 1
    assert "a.jsonl:2: not a JSON object" in capsys.readouterr().err


def test_console_script_and_module_entry_point(tmp_path):
    out = subprocess.run([sys.executable, "-m", "geovlm", "--help"], capture_output=True, text=True, check=True)
    assert "parse" in out.stdout


def test_to_crs_reprojects_every_vertex(data_dir, tmp_path):
    from pyproj import Transformer

    src = tmp_path / "a.txt"
    src.write_text("{<10><20><60><70>|<120>}\n")
    raster = data_dir / "rasters" / "sample_geotiff.tif"
    native, wgs84 = tmp_path / "native.geojson", tmp_path / "wgs84.geojson"
    assert main(["parse", str(src), "--family", "geochat", "--raster", str(raster), "--out", str(native)]) == 0
    assert main(["parse", str(src), "--family", "geochat", "--raster", str(raster), "--to-crs", "EPSG:4326",
                 "--out", str(wgs84)]) == 0
    ring_utm = json.loads(native.read_text())["features"][0]["geometry"]["coordinates"][0]
    ring_geo = json.loads(wgs84.read_text())["features"][0]["geometry"]["coordinates"][0]
    to_geo = Transformer.from_crs("EPSG:32616", "EPSG:4326", always_xy=True)
    for (x, y), (lon, lat) in zip(ring_utm, ring_geo):
        assert to_geo.transform(x, y) == pytest.approx((lon, lat), abs=1e-9)
    assert main(["parse", str(src), "--family", "geochat", "--to-crs", "EPSG:4326", "--out", str(wgs84)]) == 2


@pytest.mark.parametrize("to_crs, world", [("EPSG:4326", 360.0), ("EPSG:3857", 2 * 20037508.342789244)])
def test_to_crs_keeps_a_box_over_the_antimeridian_whole(tmp_path, to_crs, world, antimeridian_raster):
    # a 400 m wide raster in UTM zone 60S over Fiji, across 180 degrees (x = 819451.55 at its rows)
    from pyproj import Transformer

    raster = antimeridian_raster
    src = tmp_path / "a.jsonl"
    src.write_text(json.dumps({"answer": "[[0, 0, 100, 100, 0]][[0, 0, 10, 10, 0]]"}) + "\n")
    out = tmp_path / "a.geojson"
    assert main(["parse", str(src), "--family", "earthdial", "--raster", str(raster), "--to-crs", to_crs,
                 "--out", str(out)]) == 0
    whole, west = [f["geometry"]["coordinates"][0] for f in json.loads(out.read_text())["features"]]
    utm = [(819300, 8118100), (819700, 8118100), (819700, 8117900), (819300, 8117900), (819300, 8118100)]
    wrapped = [Transformer.from_crs("EPSG:32760", to_crs, always_xy=True).transform(x, y) for x, y in utm]
    assert min(x for x, _ in wrapped) < 0 < max(x for x, _ in wrapped)  # PROJ's own vertices: both world edges
    # the box stays one box at the edge of the world: each vertex PROJ's, or PROJ's plus one world's width
    assert max(x for x, _ in whole) - min(x for x, _ in whole) < world / 1e4
    for (x, y), (px, py) in zip(whole, wrapped):
        turns = (x - px) / world
        assert y == pytest.approx(py, abs=1e-6) and turns == pytest.approx(round(turns), abs=1e-12)
    # a box that does not cross keeps PROJ's vertices as they are
    assert all(0 < x < world / 2 for x, _ in west)


@pytest.mark.parametrize("place", [[], ["--geotransform", "2,0,1000,0,-2,5000", "--crs", "EPSG:32631"]])
def test_a_window_without_a_raster_is_one_line_not_ignored(tmp_path, capsys, place):
    # --window was silently dropped without --raster: the boxes landed on the whole image, not the window
    src = tmp_path / "a.txt"
    src.write_text("{<0><0><50><50>|<90>}\n")
    out = tmp_path / "a.gpkg"
    assert main(["parse", str(src), "--family", "geochat", "--window", "10,10,50,50", *place, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("geovlm parse: --window needs --raster") and "\n" not in err and not out.exists()


def test_to_crs_bends_the_edges_of_a_large_box_and_keeps_a_small_box_four_corners(tmp_path):
    # a 1-degree raster in EPSG:4326 at 45 N: the straight edges of a box over all of it are curves in UTM 32N
    # (the image of the top edge's midpoint lies 120 m off the chord between its corners' images)
    from pyproj import Transformer
    from shapely.geometry import Point, Polygon

    src = tmp_path / "a.jsonl"
    src.write_text(json.dumps({"answer": "[[0, 0, 100, 100, 0]][[50, 50, 51, 51, 0]]"}) + "\n")
    out = tmp_path / "a.geojson"
    assert main(["parse", str(src), "--family", "earthdial", "--geotransform", "0.001,0,9,0,-0.001,45.5",
                 "--crs", "EPSG:4326", "--image-size", "1000x1000", "--to-crs", "EPSG:32632", "--out",
                 str(out)]) == 0
    whole, small = [Polygon(f["geometry"]["coordinates"][0]) for f in json.loads(out.read_text())["features"]]
    to_utm = Transformer.from_crs("EPSG:4326", "EPSG:32632", always_xy=True)
    for lon, lat in ((9.5, 45.5), (10, 45), (9.5, 44.5), (9, 45), (9.25, 45.5), (9.9, 44.5)):  # edge points
        # within 1e-4 of an edge's length (11 m of 111 km: reprojection.EDGE_TOLERANCE), against 120 m unbent
        assert whole.exterior.distance(Point(to_utm.transform(lon, lat))) < 12
    assert whole.is_valid and len(small.exterior.coords) == 5  # four corners, closed


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be"])
def test_answers_saved_in_utf16_with_its_byte_order_mark_are_read(tmp_path, capsys, encoding):
    # Windows PowerShell 5's `python eval.py > answers.jsonl` writes UTF-16 LE with a byte-order mark: it was
    # refused as "not text (it contains NUL bytes ...)"
    src = tmp_path / "a.jsonl"
    rows = [{"answer": "[[10, 10, 20, 20, 0]]", "gt_bbox": "[[10, 10, 20, 20, 0]]", "size_group": "small"},
            {"answer": "café [[50, 50, 60, 60, 0]]", "gt_bbox": "[[0, 0, 5, 5, 0]]", "size_group": "small"}]
    text = "".join(json.dumps(r, ensure_ascii=False) + "\r\n" for r in rows)
    src.write_bytes((b"\xfe\xff" if encoding.endswith("be") else b"") + text.encode(encoding))
    assert main(["parse", str(src), "--family", "earthdial", "--out", str(tmp_path / "a.gpkg")]) == 0
    assert capsys.readouterr().out.startswith("2 answers, 2 objects")
    assert main(["eval", "detection", str(src), "--family", "earthdial", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["small"] == 0.5
    src.write_bytes(b"\xff\xfe" + "[[1, 2".encode("utf-16-le") + b"\x00")  # an odd byte: not UTF-16 after all
    assert main(["parse", str(src), "--family", "earthdial", "--out", str(tmp_path / "b.gpkg")]) == 2
    assert "is not text in UTF-16" in capsys.readouterr().err


def test_to_crs_that_cannot_show_the_image_is_one_line_not_infinite_coordinates(data_dir, tmp_path, capsys):
    # an orthographic view of the other side of the Earth: PROJ gives inf for every vertex, which was written
    # into the layer as POLYGON ((Infinity Infinity, ...))
    out = tmp_path / "far.gpkg"
    assert main(["parse", str(data_dir / "answers" / "earthdial_refer_ship.jsonl"), "--family", "earthdial",
                 "--raster", str(data_dir / "rasters" / "sample_geotiff.tif"), "--to-crs",
                 "+proj=ortho +lat_0=-37 +lon_0=93", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "462 of 462 features have no coordinates there" in err and not out.exists()


def test_a_raster_without_crs_is_placed_by_its_geotransform_and_said_so(data_dir, tmp_path, capsys):
    src = tmp_path / "a.txt"
    src.write_text("{<0><0><100><100>|<90>}\n")
    out = tmp_path / "a.geojson"
    raster = data_dir / "rasters" / "float32.tif"
    assert main(["parse", str(src), "--family", "geochat", "--raster", str(raster), "--out", str(out)]) == 0
    assert "has no CRS" in capsys.readouterr().err
    ring = json.loads(out.read_text())["features"][0]["geometry"]["coordinates"][0]
    # 3x2 pixels of 100 units, padded to a 3-pixel square (the image in rows 0..2 of it, offset 0): the box's
    # last row lies in the padding band and is clipped at the image's edge, in image pixels.
    xs, ys = [p[0] for p in ring], [p[1] for p in ring]
    assert (min(xs), max(xs)) == (0, 300) and (min(ys), max(ys)) == (0, 200)


@pytest.mark.parametrize("content, says", [
    (None, "contains NUL bytes"),  # a GeoTIFF given as the answers file
    (b"{<0><0><50><50>|<90>}\n\xff\xfe caf\xe9\n", "not text in UTF-8"),
])
def test_a_binary_input_is_said_to_be_not_text_and_exits_2(data_dir, tmp_path, capsys, content, says):
    src = data_dir / "rasters" / "cogeo.tif"
    if content is not None:
        src = tmp_path / "latin1.txt"
        src.write_bytes(content)
    assert main(["parse", str(src), "--family", "geochat", "--out", str(tmp_path / "o.gpkg")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0] and "is not text" in err[0]
    assert not (tmp_path / "o.gpkg").exists()


def test_a_folder_or_an_empty_raster_is_said_so(tmp_path, capsys):
    assert main(["parse", str(tmp_path), "--family", "geochat", "--out", str(tmp_path / "o.gpkg")]) == 2
    assert capsys.readouterr().err.strip() == f"geovlm parse: input {tmp_path} is a folder: give a file"
    assert not (tmp_path / "o.gpkg").exists()
    empty = tmp_path / "empty.tif"
    empty.write_bytes(b"")
    src = tmp_path / "a.txt"
    src.write_text("{<0><0><50><50>|<90>}\n")
    out = str(tmp_path / "o.gpkg")
    assert main(["parse", str(src), "--family", "geochat", "--raster", str(empty), "--out", out]) == 2
    assert capsys.readouterr().err.strip() == f"geovlm parse: raster {empty} is an empty file (0 bytes)"


def test_an_empty_answers_file_is_said_to_be_empty(tmp_path, capsys):
    src = tmp_path / "empty.jsonl"
    src.write_text("\n\n")
    assert main(["parse", str(src), "--family", "geochat", "--out", str(tmp_path / "o.gpkg")]) == 0
    err = capsys.readouterr().err
    assert f"note: {src} holds no answers (it is empty, or blank lines only)" in err


def test_an_output_format_it_cannot_write_is_the_only_line(tmp_path, capsys):
    src = tmp_path / "a.txt"
    src.write_text("{<0><0><50><50>|<90>}\n")
    assert main(["parse", str(src), "--family", "geochat", "--out", str(tmp_path / "o.shp")]) == 2
    assert capsys.readouterr().err.strip() == "geovlm parse: output must be .gpkg or .geojson, not '.shp'"


def test_a_geopackage_with_other_layers_is_never_overwritten(tmp_path, capsys):
    import sqlite3

    src = tmp_path / "a.txt"
    src.write_text("{<0><0><50><50>|<90>}\n")
    out = tmp_path / "o.gpkg"
    for _ in range(2):  # its own output is replaced by a rerun with --overwrite
        assert main(["parse", str(src), "--family", "geochat", "--out", str(out), "--overwrite"]) == 0
    capsys.readouterr()
    mine = tmp_path / "mine.gpkg"
    layer = QgsVectorLayer("Point?crs=EPSG:4326", "sites", "memory")
    from qgis.core import QgsCoordinateTransformContext, QgsVectorFileWriter

    options = QgsVectorFileWriter.SaveVectorOptions()
    options.layerName = "sites"
    QgsVectorFileWriter.writeAsVectorFormatV3(layer, str(mine), QgsCoordinateTransformContext(), options)
    before = mine.read_bytes()
    assert main(["parse", str(src), "--family", "geochat", "--out", str(mine)]) == 2
    assert main(["parse", str(src), "--family", "geochat", "--out", str(mine), "--overwrite"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (f"geovlm parse: {mine} exists and holds other layers (sites), which writing it would delete: "
                   "choose another output (it is left as it is)")
    assert mine.read_bytes() == before
    with sqlite3.connect(mine) as con:
        assert [r[0] for r in con.execute("SELECT table_name FROM gpkg_contents")] == ["sites"]
    text = tmp_path / "notes.gpkg"
    text.write_text("not a GeoPackage")
    assert main(["parse", str(src), "--family", "geochat", "--out", str(text)]) == 2
    assert "is not a GeoPackage" in capsys.readouterr().err and text.read_text() == "not a GeoPackage"


@pytest.mark.parametrize("suffix", [".gpkg", ".geojson"])
def test_an_earlier_output_is_replaced_only_with_overwrite(data_dir, tmp_path, capsys, suffix):
    """parse, like caption/detect, refuses to replace an earlier output in one line naming --overwrite."""
    out = tmp_path / f"o{suffix}"
    src = data_dir / "answers" / "earthdial_refer_nwpu_vhr10.jsonl"
    assert main(["parse", str(src), "--family", "earthdial", "--out", str(out)]) == 0
    before = _count(out)
    capsys.readouterr()
    small = tmp_path / "small.jsonl"
    small.write_text('{"answer": "[[10, 10, 20, 20, 0]]"}\n')
    assert main(["parse", str(small), "--family", "earthdial", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--overwrite" in err and str(out) in err, err
    if suffix == ".gpkg":
        assert f"{before} objects" in err and _layer(out, "objects").featureCount() == before > 1000
    else:
        assert "o_relations.geojson" in err and len(json.loads(out.read_text())["features"]) == before
    assert main(["parse", str(small), "--family", "earthdial", "--out", str(out), "--overwrite"]) == 0
    assert _count(out) == 1


@pytest.mark.parametrize("name", ["results.json", "parcels.geojson"])
def test_overwrite_never_replaces_json_that_is_not_an_earlier_output(tmp_path, capsys, name):
    # `parse results.json --out results.json --overwrite` replaced the answers being parsed with the layer made
    # of them, and --overwrite replaced a user's own GeoJSON: only an earlier output may be replaced
    rows = [{"answer": "[[10, 10, 20, 20, 0]]"}]
    mine = tmp_path / name
    if name.endswith(".geojson"):
        mine.write_text(json.dumps({"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {
            "parcel": "12/3"}, "geometry": {"type": "Point", "coordinates": [1, 2]}}]}))
        src = tmp_path / "a.jsonl"
        src.write_text(json.dumps(rows[0]) + "\n")
    else:
        mine.write_text(json.dumps(rows, indent=2))
        src = mine
    before = mine.read_bytes()
    for extra in ([], ["--overwrite"]):
        assert main(["parse", str(src), "--family", "earthdial", "--out", str(mine), *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and f"{mine} exists and is not an earlier output" in err, err
        assert mine.read_bytes() == before
    # its relations companion is guarded too
    (tmp_path / "out_relations.geojson").write_bytes(before)
    assert main(["parse", str(src), "--family", "earthdial", "--out", str(tmp_path / "out.geojson"),
                 "--overwrite"]) == 2
    assert not (tmp_path / "out.geojson").exists()


def _count(out):
    """Objects in a parse output."""
    if out.suffix == ".gpkg":
        return _layer(out, "objects").featureCount()
    return len(json.loads(out.read_text())["features"])


def test_every_bad_json_line_is_reported_and_the_good_ones_written(tmp_path, capsys):
    src = tmp_path / "garbage.jsonl"
    lines = ['{"answer": "[[10, 10, 20, 20, 0]]"}'] * 3 + ["not json", '{"text": "x"}', "[1, 2]"]
    lines += ['{"answer": "[[30, 30, 40, 40, 0]]"}'] + ["{broken"] * 12
    src.write_text("\n".join(lines) + "\n")
    out = tmp_path / "o.gpkg"
    assert main(["parse", str(src), "--family", "earthdial", "--out", str(out)]) == 1
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert err[:3] == [f"geovlm parse: {src}:4: not a JSON object (the file looks like JSON lines)",
                       f"geovlm parse: {src}:5: no field 'answer'",
                       f"geovlm parse: {src}:6: not a JSON object (the file looks like JSON lines)"]
    assert err[3:10] == [f"geovlm parse: {src}:{n}: not a JSON object (the file looks like JSON lines)"
                         for n in range(8, 15)]
    assert err[10] == "geovlm parse: ... and 5 more bad lines" and len(err) == 11
    assert captured.out.startswith("4 answers, 4 objects") and "15 bad lines left out" in captured.out
    assert sorted(f["line"] for f in _layer(out, "objects").getFeatures()) == [1, 2, 3, 7]
    # nothing readable at all: nothing written
    src.write_text('{"text": "a"}\n{"text": "b"}\n')
    assert main(["parse", str(src), "--family", "geochat", "--out", str(tmp_path / "none.gpkg")]) == 1
    assert "nothing written" in capsys.readouterr().err and not (tmp_path / "none.gpkg").exists()


def test_ask_out_refuses_an_earlier_output_before_loading_a_model(data_dir, tmp_path, capsys):
    src = tmp_path / "a.txt"
    src.write_text("{<0><0><50><50>|<90>}\n")
    out = tmp_path / "o.gpkg"
    assert main(["parse", str(src), "--family", "geochat", "--out", str(out)]) == 0
    capsys.readouterr()
    raster = str(data_dir / "rasters" / "cogeo.tif")
    assert main(["ask", raster, "what is here?", "--model", str(tmp_path / "no-model"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--overwrite" in err and "no-model" not in err, err
    assert _count(out) == 1


def test_a_broken_first_line_leaves_a_json_lines_file_json_lines(tmp_path, capsys):
    """The file's kind is not read from its first line alone: a broken first record is one bad line, not a reason
    to read every record as plain text (which parsed reference boxes as answers)."""
    src = tmp_path / "bad_first.jsonl"
    record = '{"answer": "[[10, 10, 20, 20, 0]]", "gt_bbox": "[[50, 50, 60, 60, 0]]"}\n'
    src.write_text('{"answer": broken\n' + record * 2)
    out = tmp_path / "o.gpkg"
    assert main(["parse", str(src), "--family", "earthdial", "--out", str(out)]) == 1
    captured = capsys.readouterr()
    assert captured.err.strip() == f"geovlm parse: {src}:1: not a JSON object (the file looks like JSON lines)"
    assert sorted(f["line"] for f in _layer(out, "objects").getFeatures()) == [2, 3]


def test_a_pretty_printed_json_array_is_read_as_its_records_not_its_lines(data_dir, tmp_path, capsys):
    """A results file written with json.dump(results, f, indent=1) (one array over many lines) gave each of its
    lines as a plain-text answer (23 "answers" from 3 records); it gives its records, numbered from 1, the same
    objects as the JSON lines they came from, and a bad element is named by its number."""
    records = [json.loads(line) for line in (data_dir / "answers" / "earthdial_refer_ship.jsonl").read_text(
        encoding="utf-8").splitlines()[:3]]
    lines, array = tmp_path / "three.jsonl", tmp_path / "three.json"
    lines.write_text("".join(json.dumps(r) + "\n" for r in records))
    array.write_text(json.dumps(records + [{"text": "x"}, "a string"], indent=1))
    assert main(["parse", str(lines), "--family", "earthdial", "--out", str(tmp_path / "a.gpkg")]) == 0
    expected = capsys.readouterr().out.splitlines()[0]
    assert main(["parse", str(array), "--family", "earthdial", "--out", str(tmp_path / "b.gpkg")]) == 1
    captured = capsys.readouterr()
    assert captured.out.startswith(expected.split(" ->")[0]) and "2 bad lines left out" in captured.out
    assert captured.err.strip().splitlines() == [
        f"geovlm parse: {array}: element 4: no field 'answer'",
        f"geovlm parse: {array}: element 5: not a JSON object (the file looks like a JSON array)"]

    def rings(path):
        return [(f["line"], f.geometry().asWkt(3)) for f in _layer(path, "objects").getFeatures()]
    assert rings(tmp_path / "b.gpkg") == rings(tmp_path / "a.gpkg") and len(rings(tmp_path / "a.gpkg")) == 3
    (tmp_path / "one.json").write_text(json.dumps(records[0], indent=2))  # one pretty-printed record
    assert main(["parse", str(tmp_path / "one.json"), "--family", "earthdial", "--out", str(tmp_path / "c.gpkg")]) == 0
    assert capsys.readouterr().out.startswith("1 answers, 1 objects")


def test_an_output_that_cannot_be_written_is_one_line_not_a_traceback(data_dir, tmp_path, capsys):
    """A folder that cannot be made (a file in the way) or a place where no file can be created (/proc) raised
    pyogrio's or the OS's traceback, for `ask --out` too (after the answer was streamed); now one line, exit 2."""
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    answers = str(data_dir / "answers" / "earthdial_refer_ship.jsonl")
    outs = [blocker / "x.gpkg"] + ([Path("/proc/geovlm-test.gpkg")] if Path("/proc/self").exists() else [])
    for out in outs:
        assert main(["parse", answers, "--family", "earthdial", "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"geovlm parse: cannot write {out}: ") and "\n" not in err, err


@pytest.mark.parametrize("north, warned", [(88.5, True), (45.5, False)])
def test_to_crs_web_mercator_past_85_degrees_is_warned_in_one_line(tmp_path, capsys, north, warned):
    # EPSG:3857 covers 85.06 S to 85.06 N: a box at 87.5-88.5 N came out at y = 2.1e7-2.4e7 m without a word
    src = tmp_path / "a.jsonl"
    src.write_text(json.dumps({"answer": "[[0, 0, 100, 100, 0]][[0, 0, 10, 10, 0]]"}) + "\n")
    out = tmp_path / "a.geojson"
    assert main(["parse", str(src), "--family", "earthdial", "--geotransform", f"0.001,0,9,0,-0.001,{north}",
                 "--crs", "EPSG:4326", "--image-size", "1000x1000", "--to-crs", "EPSG:3857", "--out",
                 str(out)]) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    if warned:
        assert err == ["geovlm parse: warning: 2 of 2 features reach latitudes outside EPSG:3857's area of use "
                       "(-85.06 to 85.06 degrees), where its coordinates are stretched beyond use; choose a CRS "
                       "that covers them (EPSG:4326, or a polar one such as EPSG:3413 or EPSG:3031)"]
    else:
        assert err == []
    assert len(json.loads(out.read_text())["features"]) == 2  # written all the same


def test_records_whose_answer_is_not_a_text_are_named_not_skipped_silently(tmp_path, capsys):
    src = tmp_path / "odd.jsonl"
    src.write_text('{"answer": "[[10, 10, 20, 20, 0]]"}\n{"answer": 42}\n{"answer": null}\n'
                   '{"answer": ["[[1, 1, 2, 2, 0]]"]}\n{"answer": true}\n')
    out = tmp_path / "o.gpkg"
    assert main(["parse", str(src), "--family", "earthdial", "--out", str(out)]) == 1
    captured = capsys.readouterr()
    assert captured.err.strip().splitlines() == [
        f"geovlm parse: {src}:2: field 'answer' is a number, not an answer text",
        f"geovlm parse: {src}:3: field 'answer' is null, not an answer text",
        f"geovlm parse: {src}:4: field 'answer' is a list, not an answer text",
        f"geovlm parse: {src}:5: field 'answer' is true/false, not an answer text"]
    assert captured.out.startswith("1 answers, 1 objects") and "4 bad lines left out" in captured.out
    # one pretty-printed array: each such element named by its number
    src = tmp_path / "odd.json"
    src.write_text(json.dumps([{"answer": None}, {"answer": "[[10, 10, 20, 20, 0]]"}], indent=1))
    assert main(["parse", str(src), "--family", "earthdial", "--out", str(tmp_path / "a.gpkg")]) == 1
    assert capsys.readouterr().err.strip() == (
        f"geovlm parse: {src}: element 1: field 'answer' is null, not an answer text")


@pytest.mark.parametrize("command", [["parse", "ANSWERS", "--family", "geochat", "--raster"],
                                     ["ask", "--model", "NOMODEL", "--out", "OUT", "--", "RASTER_ARG", "what?"]])
def test_a_vector_file_given_as_the_raster_is_said_to_be_one(data_dir, tmp_path, capsys, command):
    vector = data_dir / "rasters" / "geotiff_labels.geojson"
    src = tmp_path / "a.txt"
    src.write_text("{<0><0><50><50>|<90>}\n")
    args = [str(src) if a == "ANSWERS" else str(tmp_path / "m") if a == "NOMODEL" else
            str(tmp_path / "o.gpkg") if a == "OUT" else str(vector) if a == "RASTER_ARG" else a for a in command]
    if command[0] == "parse":
        args += [str(vector), "--out", str(tmp_path / "o.gpkg")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"geovlm {command[0]}: {vector} is a vector file (GeoJSON, 1 layer: geotiff_labels (Polygon)), "
                   "not a raster: give a raster image (GeoTIFF, PNG, JPEG, VRT...)"), err
    assert not (tmp_path / "o.gpkg").exists()


@pytest.mark.parametrize("north, to_crs", [(True, "EPSG:3413"), (False, "EPSG:3031")])
def test_a_whole_polar_cap_in_a_polar_projection_is_a_valid_disc(tmp_path, north, to_crs):
    """A raster of a whole polar cap (EPSG:4326, 180 W to 180 E, 60 to 90 degrees): its full-image box taken to a
    polar projection had its west and east edges on one meridian, a ring out to the pole and back along a line
    (a slit: shapely's "Ring Self-intersection"), its top edge collapsed into the pole. Now a valid polygon, the
    disc inside the 60th parallel (its area to 0.1 %, the edges bent as the projection bends them); a box off
    the seam keeps its four bent edges, as before."""
    import math

    from osgeo import gdal, osr
    from pyproj import Transformer
    from shapely.geometry import shape

    raster = tmp_path / "cap.tif"
    ds = gdal.GetDriverByName("GTiff").Create(str(raster), 360, 30, 3, gdal.GDT_Byte)
    ds.SetGeoTransform((-180, 1, 0, 90, 0, -1) if north else (-180, 1, 0, -60, 0, -1))
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(4326)
    ds.SetProjection(srs.ExportToWkt())
    ds = None
    src = tmp_path / "a.jsonl"
    src.write_text(json.dumps({"answer": "[[0, 0, 100, 100, 0]][[40, 10, 60, 90, 0]]"}) + "\n")
    out = tmp_path / "cap.geojson"
    assert main(["parse", str(src), "--family", "earthdial", "--raster", str(raster), "--to-crs", to_crs,
                 "--out", str(out)]) == 0
    disc, box = [shape(f["geometry"]) for f in json.loads(out.read_text())["features"]]
    assert disc.is_valid and disc.geom_type == "Polygon" and not disc.interiors
    x, y = Transformer.from_crs("EPSG:4326", to_crs, always_xy=True).transform(0, 60 if north else -60)
    radius = math.hypot(x, y)
    assert disc.area == pytest.approx(math.pi * radius ** 2, rel=1e-3)
    assert disc.contains(shape({"type": "Point", "coordinates": (0, 0)}).buffer(radius * 0.99))
    assert box.is_valid and box.area < disc.area / 4
