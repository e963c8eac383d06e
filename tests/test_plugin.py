"""The QGIS plugin: loads and unloads (twice), and its Processing algorithm writes real layers."""
import json

import pytest
from qgis.core import QgsApplication, QgsProject, QgsRasterLayer, QgsVectorLayer

import geovlm


def test_plugin_loads_and_unloads_twice(qgis_iface):
    registry = QgsApplication.processingRegistry()
    for _ in range(2):
        plugin = geovlm.classFactory(qgis_iface)
        plugin.initGui()
        assert registry.providerById("geovlm") is not None
        assert registry.algorithmById("geovlm:parseanswers") is not None
        assert plugin.actions and plugin.actions[0].text().startswith("Parse saved answers")
        plugin.unload()
        assert registry.providerById("geovlm") is None
        assert plugin.actions == []


def test_the_two_toolbar_buttons_look_different(qgis_iface):
    """The toolbar gets two GeoVLM buttons, *Parse saved answers into layers…* and *Ask the map…*: with one icon
    for both, a user could tell them apart only by hovering over each."""
    plugin = geovlm.classFactory(qgis_iface)
    plugin.initGui()
    try:
        by_text = {action.text(): action for action in plugin.actions}
        parse, ask = by_text["Parse saved answers into layers…"], by_text["Ask the map…"]
        images = [action.icon().pixmap(32, 32).toImage() for action in (parse, ask)]
        assert not images[0].isNull() and not images[1].isNull() and images[0] != images[1]
    finally:
        plugin.unload()


def test_parse_algorithm_places_answers_on_a_raster(qgis_iface, processing, data_dir, tmp_path):
    plugin = geovlm.classFactory(qgis_iface)
    plugin.initProcessing()
    try:
        raster = QgsRasterLayer(str(data_dir / "rasters" / "cogeo.tif"), "cogeo")
        QgsProject.instance().addMapLayer(raster)
        answers = tmp_path / "answers.txt"
        answers.write_text("a road {<0><0><50><50>|<90>}\nnothing here\n{<50><50><100><100>|<90>}{<1><2>\n")
        out_obj, out_rel = str(tmp_path / "objects.gpkg"), str(tmp_path / "relations.gpkg")
        result = processing.run("geovlm:parseanswers", {
            "INPUT": str(answers), "FAMILY": list(geovlm.core.profiles.family_names()).index("geochat"),
            "FIELD": "answer", "RASTER": raster, "IMAGE_SIZE": "100x100",
            "OBJECTS": out_obj, "RELATIONS": out_rel,
        })
        layer = QgsVectorLayer(result["OBJECTS"], "objects", "ogr")
        assert layer.isValid() and layer.featureCount() == 2
        assert layer.crs().authid() == "EPSG:3857"
        first = next(f for f in layer.getFeatures() if f["line"] == 1)
        assert first["label"] == "road"
        box = first.geometry().boundingBox()
        ext = raster.extent()
        assert box.xMinimum() == pytest.approx(ext.xMinimum())
        assert box.yMaximum() == pytest.approx(ext.yMaximum())
        assert box.width() == pytest.approx(ext.width() / 2)
        QgsProject.instance().removeMapLayer(raster.id())
    finally:
        plugin.unload()


def test_algorithm_runs_from_qgis_process(data_dir, tmp_path, qgis_process_env):
    """qgis_process (Debian's wrapper, which works from QGIS 3.34 on) finds the plugin's provider; FAMILY is
    the family's name as in the other GeoVLM algorithms (its title and the enum's number work too), and
    RELATIONS may be left out."""
    import subprocess

    exe, env = qgis_process_env
    answers = tmp_path / "a.txt"
    answers.write_text("a road {<0><0><50><50>|<90>}\n{<50><50><100><100>|<90>}\n")

    def run(family, *more):
        out = tmp_path / f"objects-{family}.gpkg"
        done = subprocess.run(
            [str(exe), "--json", "run", "geovlm:parseanswers", "--", f"INPUT={answers}", f"FAMILY={family}",
             f"RASTER={data_dir / 'rasters' / 'cogeo.tif'}", f"OBJECTS={out}", *more],
            env=env, capture_output=True, text=True, timeout=120)
        return done, out

    placed = []
    for family, more in (("1", [f"RELATIONS={tmp_path / 'rel.gpkg'}"]), ("geochat", []), ("GeoChat", [])):
        done, out = run(family, *more)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        results = json.loads(done.stdout)["results"]
        assert results["RELATIONS"] == (str(tmp_path / "rel.gpkg") if more else None)
        layer = QgsVectorLayer(str(out), "objects", "ogr")
        assert layer.isValid() and layer.featureCount() == 2 and layer.crs().authid() == "EPSG:3857"
        placed.append(sorted((f["label"], f["family"], f.geometry().asWkt(3)) for f in layer.getFeatures()))
    assert placed[0] == placed[1] == placed[2] and ("road", "geochat") in [row[:2] for row in placed[0]]
    refused, out = run("gpt4")
    assert refused.returncode != 0 and not out.exists()
    assert "unknown model family 'gpt4': one of llava15, geochat," in refused.stdout + refused.stderr
    refused, out = run("99")  # a number past the list: the same line, not "Incorrect parameter value for FAMILY"
    assert refused.returncode != 0 and not out.exists()
    assert "unknown model family '99': one of llava15," in refused.stdout + refused.stderr


def test_a_family_given_by_title_is_remembered_as_its_name(qgis_iface, processing, tmp_path):
    from geovlm.plugin.alg_parse_answers import remembered
    from geovlm.plugin.families import family_of

    names = list(geovlm.core.profiles.family_names())
    assert [family_of(v, numbers=True) for v in ("qwen25vl", "Qwen2.5-VL", " GEOCHAT ", "LLaVA-1.5", 1, "7")] == [
        "qwen25vl", "qwen25vl", "geochat", "llava15", names[1], names[7]]
    for bad in ("", "99", "-1", "gpt4"):
        with pytest.raises(ValueError, match="unknown model family"):
            family_of(bad, numbers=True)
    with pytest.raises(ValueError, match=r"unknown model family '1': one of llava15, .*skyeyegpt$"):
        family_of("1")  # numbers only where the dialog's list gives them
    answers = tmp_path / "a.txt"
    answers.write_text('[{"bbox_2d": [10, 20, 60, 90], "label": "car"}]\n')
    plugin = geovlm.classFactory(qgis_iface)
    plugin.initProcessing()
    try:
        result = processing.run("geovlm:parseanswers", {
            "INPUT": str(answers), "FAMILY": "Qwen2.5-VL", "FIELD": "answer", "IMAGE_SIZE": "100x100",
            "OBJECTS": str(tmp_path / "o.gpkg")})
    finally:
        plugin.unload()
    assert result["RELATIONS"] is None
    [feature] = QgsVectorLayer(result["OBJECTS"], "o", "ogr").getFeatures()
    assert feature["family"] == "qwen25vl" and feature["label"] == "car"
    assert remembered()["FAMILY"] == "qwen25vl"  # the toolbar dialog's enum opens on it (its value: the name)


@pytest.mark.parametrize("size, message", [("axb", "WxH"), ("0x100", "positive")])
def test_parse_algorithm_refuses_a_bad_image_size_clearly(qgis_iface, processing, tmp_path, size, message):
    from qgis.core import QgsProcessingException

    plugin = geovlm.classFactory(qgis_iface)
    plugin.initProcessing()
    try:
        answers = tmp_path / "answers.txt"
        answers.write_text("{<0><0><50><50>|<90>}\n")
        with pytest.raises(QgsProcessingException, match=message):
            processing.run("geovlm:parseanswers", {
                "INPUT": str(answers), "FAMILY": 1, "FIELD": "answer", "IMAGE_SIZE": size,
                "OBJECTS": str(tmp_path / "o.gpkg"), "RELATIONS": str(tmp_path / "r.gpkg"),
            })
    finally:
        plugin.unload()


def _rings(layer):
    return sorted((f["line"], f["object_id"], [(p.x(), p.y()) for p in f.geometry().asPolygon()[0][:-1]])
                  for f in layer.getFeatures())


def test_plugin_and_cli_place_boxes_alike_on_a_rotated_raster(qgis_iface, processing, data_dir, tmp_path, capsys):
    """rotated.tif has a rotated, sheared geotransform: QGIS's extent is its north-up bounding box, so the
    plugin must read the true geotransform (osgeo.gdal), as the command line does through rasterio."""
    from geovlm.cli import main

    raster_path = data_dir / "rasters" / "rotated.tif"
    answers = tmp_path / "rot.txt"
    answers.write_text("{<0><0><50><50>|<90>}\n{<10><20><90><70>|<30>}\n{<0><0><100><100>|<90>}\n")
    cli_out = tmp_path / "cli.gpkg"
    assert main(["parse", str(answers), "--family", "geochat", "--raster", str(raster_path),
                 "--out", str(cli_out)]) == 0
    plugin = geovlm.classFactory(qgis_iface)
    plugin.initProcessing()
    try:
        raster = QgsRasterLayer(str(raster_path), "rotated")
        assert raster.isValid()
        QgsProject.instance().addMapLayer(raster)
        result = processing.run("geovlm:parseanswers", {
            "INPUT": str(answers), "FAMILY": list(geovlm.core.profiles.family_names()).index("geochat"),
            "FIELD": "answer", "RASTER": raster, "OBJECTS": str(tmp_path / "plugin.gpkg"),
            "RELATIONS": str(tmp_path / "plugin_rel.gpkg")})
        QgsProject.instance().removeMapLayer(raster.id())
    finally:
        plugin.unload()
    from_plugin = _rings(QgsVectorLayer(result["OBJECTS"], "p", "ogr"))
    from_cli = _rings(QgsVectorLayer(f"{cli_out}|layername=objects", "c", "ogr"))
    assert len(from_plugin) == len(from_cli) == 3
    for (line_p, id_p, ring_p), (line_c, id_c, ring_c) in zip(from_plugin, from_cli):
        # 4 corners, more where a rotated box is clipped at the image's edge
        assert (line_p, id_p) == (line_c, id_c) and len(ring_p) == len(ring_c) >= 4
        for (xp, yp), (xc, yc) in zip(ring_p, ring_c):
            assert abs(xp - xc) <= 1e-9 * max(1.0, abs(xc)) and abs(yp - yc) <= 1e-9 * max(1.0, abs(yc))
    # The footprint of the whole image (Qwen2-VL's 0..1000 of a resized, unpadded input) is the raster's true
    # footprint, which its north-up extent cannot be.
    from osgeo import gdal

    whole = tmp_path / "whole.txt"
    whole.write_text("<|box_start|>(0,0),(1000,1000)<|box_end|>\n")
    plugin.initProcessing()
    try:
        raster = QgsRasterLayer(str(raster_path), "rotated")
        QgsProject.instance().addMapLayer(raster)
        result = processing.run("geovlm:parseanswers", {
            "INPUT": str(whole), "FAMILY": list(geovlm.core.profiles.family_names()).index("qwen2vl"),
            "FIELD": "answer", "RASTER": raster, "OBJECTS": "TEMPORARY_OUTPUT", "RELATIONS": "TEMPORARY_OUTPUT"})
        QgsProject.instance().removeMapLayer(raster.id())
    finally:
        plugin.unload()
    (_, _, ring), = _rings(result["OBJECTS"])
    c, a, b, f, d, e = gdal.Open(str(raster_path)).GetGeoTransform()
    for col, row in ((0, 0), (10, 0), (10, 15), (0, 15)):
        corner = (c + a * col + b * row, f + d * col + e * row)
        assert min((x - corner[0]) ** 2 + (y - corner[1]) ** 2 for x, y in ring) < 1e-18


def test_a_raster_without_georeferencing_gives_pixel_layers_as_the_cli_does(qgis_iface, processing, tmp_path):
    """A TIFF with no geotransform, no CRS and no GCPs (a PNG renamed): QGIS's CRS for it is unknown, which a
    GeoPackage wrote as an undefined geographic SRS (degrees); the layers are in GeoVLM's pixel CRS instead, the
    boxes where `geovlm parse --raster` puts them, and the log says why."""
    from osgeo import gdal
    from qgis.core import QgsCoordinateReferenceSystem
    from qt_support import RecordingFeedback

    from geovlm.cli import main
    from geovlm.core.georef import PIXEL_CRS_WKT

    raster_path = tmp_path / "photo.tif"
    gdal.GetDriverByName("GTiff").Create(str(raster_path), 200, 100, 3, gdal.GDT_Byte).FlushCache()
    answers = tmp_path / "a.txt"
    answers.write_text("[[10, 20, 30, 40, 90]]\n")
    cli_out = tmp_path / "cli.gpkg"
    assert main(["parse", str(answers), "--family", "earthdial", "--raster", str(raster_path),
                 "--out", str(cli_out)]) == 0
    plugin = geovlm.classFactory(qgis_iface)
    plugin.initProcessing()
    feedback = RecordingFeedback()
    try:
        raster = QgsRasterLayer(str(raster_path), "photo")
        assert raster.isValid() and not raster.crs().isValid()
        QgsProject.instance().addMapLayer(raster)
        result = processing.run("geovlm:parseanswers", {
            "INPUT": str(answers), "FAMILY": "earthdial", "RASTER": raster,
            "OBJECTS": str(tmp_path / "plugin.gpkg")}, feedback=feedback)
        QgsProject.instance().removeMapLayer(raster.id())
    finally:
        plugin.unload()
    from_plugin = QgsVectorLayer(result["OBJECTS"], "p", "ogr")
    from_cli = QgsVectorLayer(f"{cli_out}|layername=objects", "c", "ogr")
    pixels = QgsCoordinateReferenceSystem.fromWkt(PIXEL_CRS_WKT).description()
    assert from_plugin.crs().description() == from_cli.crs().description() == pixels
    assert not from_plugin.crs().isGeographic()
    assert _rings(from_plugin) == _rings(from_cli) == [(1, 0, [(20, -20), (60, -20), (60, -40), (20, -40)])]
    assert any("photo has no georeferencing" in text for text in feedback.info)


def test_a_raster_with_a_geotransform_but_no_crs_gives_layers_in_its_map_units_not_degrees(
        qgis_iface, processing, tmp_path):
    """A rotated raster with a geotransform and no CRS (as rasterio's rotated.tif): QGIS's unknown CRS was written
    by the GeoPackage as its "Undefined geographic SRS", so y = 4,100,000 read as a latitude, and nothing was said.
    The layers are in a Cartesian CRS of the raster's map units, the boxes where `geovlm parse --raster` puts
    them, and the log says so."""
    from osgeo import gdal, ogr
    from qt_support import RecordingFeedback

    from geovlm.cli import main

    raster_path = tmp_path / "rotated.tif"
    ds = gdal.GetDriverByName("GTiff").Create(str(raster_path), 120, 80, 1, gdal.GDT_Byte)
    ds.SetGeoTransform((500000, 0.8, 0.6, 4100000, 0.6, -0.8))
    ds = None
    answers = tmp_path / "a.txt"
    answers.write_text("[[10, 20, 30, 40, 0]]\n")
    cli_out = tmp_path / "cli.gpkg"
    assert main(["parse", str(answers), "--family", "earthdial", "--raster", str(raster_path),
                 "--out", str(cli_out)]) == 0
    plugin = geovlm.classFactory(qgis_iface)
    plugin.initProcessing()
    feedback = RecordingFeedback()
    try:
        result = processing.run("geovlm:parseanswers", {
            "INPUT": str(answers), "FAMILY": "earthdial", "RASTER": str(raster_path),
            "OBJECTS": str(tmp_path / "plugin.gpkg")}, feedback=feedback)
    finally:
        plugin.unload()
    from_plugin = QgsVectorLayer(result["OBJECTS"], "p", "ogr")
    from_cli = QgsVectorLayer(f"{cli_out}|layername=objects", "c", "ogr")
    for path, name in ((result["OBJECTS"], None), (cli_out, "objects")):  # QGIS's isGeographic() is False for
        data = ogr.Open(str(path))                                        # a GeoPackage's "Undefined geographic"
        srs = (data.GetLayer(name) if name else data.GetLayer(0)).GetSpatialRef()
        assert srs is None or not srs.IsGeographic(), f"{path} is written in degrees"
    assert _rings(from_plugin) == _rings(from_cli)
    assert any("rotated has no CRS: the layers are placed by its geotransform" in text for text in feedback.info)


@pytest.mark.parametrize("with_raster", [False, True])
def test_pixel_or_map_unit_layers_written_as_a_geojson_sequence(qgis_iface, processing, tmp_path, with_raster):
    """A GeoJSON sequence is WGS 84 by definition: GDAL refused layers in an engineering CRS (image pixels, or the
    map units of a raster without a CRS): "Could not create layer ...: Failed to create coordinate transformation
    ... WGS84", nothing written. They are written without a CRS, and the log says so."""
    from osgeo import gdal
    from qt_support import RecordingFeedback

    answers = tmp_path / "a.txt"
    answers.write_text("[[10, 20, 30, 40, 0]]\n[[50, 50, 60, 70, 0]]\n")
    params = {"INPUT": str(answers), "FAMILY": "earthdial", "OBJECTS": str(tmp_path / "o.geojsonl")}
    if with_raster:
        raster_path = tmp_path / "rotated.tif"
        ds = gdal.GetDriverByName("GTiff").Create(str(raster_path), 120, 80, 1, gdal.GDT_Byte)
        ds.SetGeoTransform((500000, 0.8, 0.6, 4100000, 0.6, -0.8))
        ds = None
        params["RASTER"] = str(raster_path)
    plugin = geovlm.classFactory(qgis_iface)
    plugin.initProcessing()
    feedback = RecordingFeedback()
    try:
        processing.run("geovlm:parseanswers", params, feedback=feedback)
    finally:
        plugin.unload()
    lines = [json.loads(line.lstrip("\x1e")) for line in (tmp_path / "o.geojsonl").read_text().splitlines() if line]
    assert [f["properties"]["line"] for f in lines] == [1, 2]
    assert any("OBJECTS: a GeoJSON sequence is in WGS 84 by definition" in w for w in feedback.warnings)


def test_parse_algorithm_names_outputs_after_the_input_and_reports_counts(qgis_iface, processing, tmp_path):
    from qgis.core import QgsProcessingContext, QgsProcessingOutputLayerDefinition
    from qt_support import RecordingFeedback

    plugin = geovlm.classFactory(qgis_iface)
    plugin.initProcessing()
    try:
        answers = tmp_path / "harbour.txt"
        answers.write_text("<p>ship</p> {<0><0><50><50>|<90>}\n")
        project = QgsProject.instance()
        context = QgsProcessingContext()
        context.setProject(project)
        feedback = RecordingFeedback()
        result = processing.run("geovlm:parseanswers", {
            "INPUT": str(answers), "FAMILY": list(geovlm.core.profiles.family_names()).index("geochat"),
            "FIELD": "answer", "IMAGE_SIZE": "200x100",
            "OBJECTS": QgsProcessingOutputLayerDefinition("TEMPORARY_OUTPUT", project),
            "RELATIONS": QgsProcessingOutputLayerDefinition("TEMPORARY_OUTPUT", project)},
            context=context, feedback=feedback)
        assert any("1 objects, 0 relations" in m for m in feedback.info + feedback.warnings)
        assert any("pixels of a 200x100 image" in m for m in feedback.info + feedback.warnings)
        details = context.layersToLoadOnCompletion()
        assert sorted(d.name for d in details.values()) == ["harbour objects", "harbour relations"]
        objects = result["OBJECTS"]
        objects = objects if not isinstance(objects, str) else context.getMapLayer(objects)
        assert not objects.crs().isGeographic() and "GeoVLM image pixels" in objects.crs().description()
        (tmp_path / "wrong.txt").write_text("[[10, 20, 30, 40, 90]]\n")
        feedback = RecordingFeedback()
        processing.run("geovlm:parseanswers", {
            "INPUT": str(tmp_path / "wrong.txt"), "FAMILY": list(geovlm.core.profiles.family_names()).index("geochat"),
            "FIELD": "answer", "OBJECTS": "TEMPORARY_OUTPUT", "RELATIONS": "TEMPORARY_OUTPUT"},
            feedback=feedback)
        assert any("No box found in 1 answers" in m for m in feedback.info + feedback.warnings)
    finally:
        plugin.unload()


def test_parse_algorithm_names_every_bad_json_line_and_parses_the_good_ones(qgis_iface, processing, tmp_path):
    from qgis.core import QgsProcessingException
    from qt_support import RecordingFeedback

    plugin = geovlm.classFactory(qgis_iface)
    plugin.initProcessing()
    try:
        src = tmp_path / "garbage.jsonl"
        lines = ['{"answer": "{<0><0><50><50>|<90>}"}', "not json", '{"text": "x"}'] + ["{broken"] * 11
        src.write_text("\n".join(lines + ['{"answer": "{<10><10><20><20>|<0>}"}']) + "\n")
        params = {"INPUT": str(src), "FAMILY": list(geovlm.core.profiles.family_names()).index("geochat"),
                  "FIELD": "answer", "OBJECTS": "TEMPORARY_OUTPUT", "RELATIONS": "TEMPORARY_OUTPUT"}
        feedback = RecordingFeedback()
        result = processing.run("geovlm:parseanswers", params, feedback=feedback)
        assert feedback.errors[:2] == [f"{src}:2: not a JSON object (the file looks like JSON lines)",
                                       f"{src}:3: no field 'answer'"]
        assert len(feedback.errors) == 11 and feedback.errors[-1] == "... and 3 more bad lines"
        assert any("2 answers read: 2 objects" in m and "13 bad lines left out" in m for m in feedback.info)
        assert result["OBJECTS"].featureCount() == 2
        src.write_text('{"text": "a"}\n')
        with pytest.raises(QgsProcessingException, match="No line of .* could be read"):
            processing.run("geovlm:parseanswers", params)
    finally:
        plugin.unload()


def test_parse_without_a_raster_in_a_geographic_project_says_why_qgis_cannot_show_the_pixels(
        qgis_iface, processing, tmp_path):
    from qgis.core import QgsCoordinateReferenceSystem, QgsProcessingContext
    from qt_support import RecordingFeedback

    plugin = geovlm.classFactory(qgis_iface)
    plugin.initProcessing()
    feedback = RecordingFeedback()

    project = QgsProject.instance()
    before = project.crs()
    try:
        answers = tmp_path / "harbour.txt"
        answers.write_text("<p>ship</p> {<0><0><50><50>|<90>}\n")
        project.setCrs(QgsCoordinateReferenceSystem("EPSG:4326"))
        context = QgsProcessingContext()
        context.setProject(project)
        processing.run("geovlm:parseanswers", {
            "INPUT": str(answers), "FAMILY": list(geovlm.core.profiles.family_names()).index("geochat"),
            "FIELD": "answer", "IMAGE_SIZE": "200x100", "OBJECTS": "TEMPORARY_OUTPUT",
            "RELATIONS": "TEMPORARY_OUTPUT"}, context=context, feedback=feedback)
        [hint] = [w for w in feedback.warnings if "EPSG:4326" in w]
        assert "image pixels" in hint and "No transform available" in hint
        assert "raster" in hint and "new project" in hint
    finally:
        project.setCrs(before)
        plugin.unload()


def test_geojson_outputs_keep_json_looking_strings_strings(qgis_iface, processing, data_dir, tmp_path):
    """GDAL < 3.8 (QGIS 3.40's 3.6 here) writes a string that parses as JSON as an array or object; the
    algorithm's GeoJSON and GeoJSONSeq outputs keep it the string the parser gave, character for character."""
    from osgeo import gdal

    from geovlm.core.parsing import parse_answer
    from geovlm.core.profiles import get_profile

    answers = tmp_path / "answers.jsonl"
    qwen = '[{"bbox_2d": [10, 20, 60, 90], "label": "[1, 2]"}, {"bbox_2d":[0,0,50,50],"label":"car"}]'
    answers.write_text(json.dumps({"answer": qwen}) + "\n")
    expected = [(o.label, o.source) for o in parse_answer(qwen, get_profile("qwen25vl"), (100, 100)).objects]
    assert expected == [("[1, 2]", '{"bbox_2d": [10, 20, 60, 90], "label": "[1, 2]"}'),
                        ("car", '{"bbox_2d":[0,0,50,50],"label":"car"}')]
    plugin = geovlm.classFactory(qgis_iface)
    plugin.initProcessing()
    try:
        raster = str(data_dir / "rasters" / "cogeo.tif")
        for suffix in ("geojson", "geojsonl", "geojsons", "gpkg"):
            result = processing.run("geovlm:parseanswers", {
                "INPUT": str(answers), "FAMILY": list(geovlm.core.profiles.family_names()).index("qwen25vl"),
                "FIELD": "answer", "RASTER": raster, "OBJECTS": str(tmp_path / f"objects.{suffix}"),
                "RELATIONS": str(tmp_path / f"relations.{suffix}")})
            layer = QgsVectorLayer(result["OBJECTS"], "objects", "ogr")
            assert layer.isValid() and layer.featureCount() == 2
            assert [(f["label"], f["source"]) for f in layer.getFeatures()] == expected, (gdal.__version__, suffix)
            assert layer.fields().field("source").typeName() == "String"
        written = json.loads((tmp_path / "objects.geojson").read_text(encoding="utf-8"))
        assert [f["properties"]["source"] for f in written["features"]] == [s for _, s in expected]
        assert written["crs"]["properties"]["name"].endswith("3857")
        lines = (tmp_path / "objects.geojsonl").read_text(encoding="utf-8").splitlines()
        assert [json.loads(line)["properties"]["label"] for line in lines] == ["[1, 2]", "car"]
    finally:
        plugin.unload()


def test_the_geojson_string_workaround_is_for_geojson_files_on_gdal_before_3_8(tmp_path):
    from qgis.core import QgsProcessingException

    from geovlm.plugin import geojson_output as out

    assert out.gdal_keeps_strings(3080000) and not out.gdal_keeps_strings(3060200)
    assert out.geojson_path("/x/a.GeoJSON") == "/x/a.GeoJSON" and out.geojson_path("ogr:/x/a.json|layername=a")
    assert out.geojson_path("/x/a.geojsonl") and out.geojson_path("/x/a.geojsons")
    assert out.geojson_path("/x/a.gpkg") == "" and out.geojson_path("memory:objects") == ""
    assert [out.looks_like_json(v) for v in ("[1]", "{}", "[", "a[1]", " [1]", None, 3)] == [True, True] + [False] * 5
    path = tmp_path / "two.geojson"
    path.write_text('{"type": "FeatureCollection", "features": [{"properties": {"a": [1]}}]}')
    with pytest.raises(QgsProcessingException, match="holds 1 features, not the 2 written"):
        out.restore_strings(path, {(0, "a"): "[1]"}, 2)
    out.restore_strings(path, {(0, "a"): "[1]"}, 1)
    assert json.loads(path.read_text())["features"][0]["properties"]["a"] == "[1]"
    sequence = tmp_path / "rfc8142.geojsons"  # GeoJSON text sequences: each feature after a record separator
    sequence.write_text('\x1e{"properties": {"a": [1], "b": "x"}}\n\x1e{"properties": {"a": {"k": 2}}}\n')
    out.restore_strings(sequence, {(0, "a"): "[1]", (1, "a"): '{"k":2}'}, 2)
    assert sequence.read_text() == ('\x1e{"properties": {"a": "[1]", "b": "x"}}\n'
                                    '\x1e{"properties": {"a": "{\\"k\\":2}"}}\n')


def test_from_gdal_3_8_the_geojson_driver_is_asked_to_keep_strings(qgis_iface, processing, data_dir, tmp_path,
                                                                   monkeypatch):
    """With a GDAL that has AUTODETECT_JSON_STRINGS, the option reaches the driver and nothing is rewritten
    (on this machine's older GDAL the driver says it does not know the option, which proves it got there)."""
    from osgeo import gdal

    from geovlm.plugin import geojson_output

    monkeypatch.setattr(geojson_output, "gdal_keeps_strings", lambda version=None: True)
    answers = tmp_path / "answers.txt"
    answers.write_text('[{"bbox_2d": [10, 20, 60, 90], "label": "car"}]\n')
    said = []
    gdal.PushErrorHandler(lambda _cls, _no, message: said.append(message))
    plugin = geovlm.classFactory(qgis_iface)
    plugin.initProcessing()
    try:
        processing.run("geovlm:parseanswers", {
            "INPUT": str(answers), "FAMILY": list(geovlm.core.profiles.family_names()).index("qwen25vl"),
            "FIELD": "answer", "RASTER": str(data_dir / "rasters" / "cogeo.tif"),
            "OBJECTS": str(tmp_path / "o.geojson"), "RELATIONS": str(tmp_path / "r.gpkg")})
    finally:
        gdal.PopErrorHandler()
        plugin.unload()
    [source] = [f["properties"]["source"] for f in json.loads((tmp_path / "o.geojson").read_text())["features"]]
    if geojson_output.KEEPS_STRINGS_FROM > int(gdal.VersionInfo()):
        assert any("AUTODETECT_JSON_STRINGS" in m for m in said), said
        assert source == {"bbox_2d": [10, 20, 60, 90], "label": "car"}  # GDAL 3.6 alone: an object, not a string
    else:
        assert source == '{"bbox_2d": [10, 20, 60, 90], "label": "car"}'


def test_parse_algorithm_says_a_file_is_empty_and_a_folder_is_a_folder(qgis_iface, processing, tmp_path):
    from qgis.core import QgsProcessingException
    from qt_support import RecordingFeedback

    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    plugin = geovlm.classFactory(qgis_iface)
    plugin.initProcessing()
    try:
        said = RecordingFeedback()
        processing.run("geovlm:parseanswers", {"INPUT": str(empty), "FAMILY": "geochat",
                                               "OBJECTS": str(tmp_path / "o.gpkg")}, feedback=said)
        assert said.warnings == [f"{empty} holds no answers (it is empty, or blank lines only): the layers are empty."]
        with pytest.raises(QgsProcessingException, match=r"is a folder: give a file of saved answers"):
            processing.run("geovlm:parseanswers", {"INPUT": str(tmp_path), "FAMILY": "geochat",
                                                   "OBJECTS": str(tmp_path / "o2.gpkg")})
    finally:
        plugin.unload()
