"""`geovlm:askmap`: the image sent is what QgsMapSettings renders, fitted to the model's input, and every box
lands where that map settings' own mapToPixel() puts its pixels (rotation 30 degrees, device pixel ratio 2,
EPSG:3857, EPSG:4326, UTM), also through a server that centre-crops what it receives."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsMapRendererCustomPainterJob,
    QgsMapSettings,
    QgsPointXY,
    QgsProject,
    QgsRasterLayer,
    QgsRectangle,
    QgsVectorLayer,
)
from qgis.PyQt.QtCore import QPoint, QSize, Qt
from qgis.PyQt.QtGui import QColor, QImage, QPainter

import geovlm
from geovlm.core.parsing import parse_answer
from geovlm.core.profiles import get_profile

sys.path.insert(0, str(Path(__file__).parent))
from ask_engines import DemoEngine, ScriptedEngine  # noqa: E402

ANSWER = ("a field {<10><20><40><60>|<90>} and a turned roof {<50><15><80><45>|<120>} and a road "
          "{<5><70><95><90>|<60>}")
SIZE, DPR, ROTATION = (400, 300), 2.0, 30.0


def view_extent(raster, crs):
    """The middle half of the raster, as an extent in `crs`."""
    e = raster.extent()
    middle = QgsRectangle(e.xMinimum() + e.width() / 4, e.yMinimum() + e.height() / 4,
                          e.xMaximum() - e.width() / 4, e.yMaximum() - e.height() / 4)
    ct = QgsCoordinateTransform(raster.crs(), crs, QgsProject.instance())
    return ct.transformBoundingBox(middle)


def reference_settings(raster, crs, extent):
    """QgsMapSettings made here with QGIS's own API, independently of the plugin."""
    ms = QgsMapSettings()
    ms.setLayers([raster])
    ms.setDestinationCrs(crs)
    ms.setOutputSize(QSize(*SIZE))
    ms.setDevicePixelRatio(DPR)
    ms.setRotation(ROTATION)
    ms.setExtent(extent)
    ms.setBackgroundColor(QColor(255, 255, 255))
    ms.setOutputImageFormat(QImage.Format.Format_ARGB32_Premultiplied)
    return ms


def reference_image(ms):
    image = QImage(ms.deviceOutputSize(), ms.outputImageFormat())
    image.setDevicePixelRatio(DPR)
    image.fill(QColor(255, 255, 255))
    painter = QPainter(image)
    QgsMapRendererCustomPainterJob(ms, painter).renderSynchronously()
    painter.end()
    image.setDevicePixelRatio(1.0)
    return image.convertToFormat(QImage.Format.Format_RGB32)


def padded_input(view, side_in, pad_color):
    """LLaVA's expand2square of a view (the view centred on a square of the pad colour, LLaVA's
    llava/mm_utils.py) resized to side_in x side_in with Qt's smooth transformation: the pixels a
    LLaVA-family model sees, built here without the plugin."""
    side = max(view.width(), view.height())
    square = QImage(side, side, QImage.Format.Format_RGB32)
    square.fill(QColor(*pad_color))
    painter = QPainter(square)
    painter.drawImage(QPoint((side - view.width()) // 2, (side - view.height()) // 2), view)
    painter.end()
    return square.scaled(side_in, side_in, Qt.AspectRatioMode.IgnoreAspectRatio,
                         Qt.TransformationMode.SmoothTransformation)


@pytest.mark.parametrize("authid", ["EPSG:3857", "EPSG:4326", "EPSG:32652"])
def test_qgis_process_askmap_places_boxes_at_map_to_pixel(qgis_app, data_dir, tmp_path, qgis_process_env, authid):
    exe, env = qgis_process_env
    path = data_dir / "rasters" / "cogeo.tif"
    raster = QgsRasterLayer(str(path), "cogeo")
    crs = QgsCoordinateReferenceSystem(authid)
    extent = view_extent(raster, crs)
    objects, image_out = tmp_path / "objects.gpkg", tmp_path / "seen.png"
    with ScriptedEngine("geochat", ANSWER) as engine:
        run = subprocess.run(
            [str(exe), "--json", "run", "geovlm:askmap", "--", f"LAYERS={path}",
             f"EXTENT={extent.xMinimum()!r},{extent.xMaximum()!r},{extent.yMinimum()!r},{extent.yMaximum()!r}"
             f" [{authid}]", f"ROTATION={ROTATION}", f"WIDTH={SIZE[0]}", f"HEIGHT={SIZE[1]}",
             f"DEVICE_PIXEL_RATIO={DPR}", "QUESTION=Describe the image", "TASK=1", f"ENGINE={engine.url}",
             f"OBJECTS={objects}", f"IMAGE={image_out}"],  # RELATIONS is optional
            env=env, capture_output=True, text=True, timeout=180)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        [sent] = engine.images
        assert engine.posts[0]["messages"][0]["content"][1]["text"] == "[grounding]Describe the image"
    results = json.loads(run.stdout)["results"]
    assert results["ANSWER"] == ANSWER and results["RELATIONS"] is None

    ms = reference_settings(raster, crs, extent)
    sent_image = QImage.fromData(sent, "PNG").convertToFormat(QImage.Format.Format_RGB32)
    geochat = get_profile("geochat")
    assert (sent_image.width(), sent_image.height()) == (504, 504)  # GeoChat's input, not the 800x600 view
    view = reference_image(ms)
    assert sent_image == padded_input(view, 504, geochat.pad_color), \
        "the image sent is not what QgsMapSettings renders, padded to a square and resized to the input"
    assert sent_image.pixelColor(252, 10) == QColor(*geochat.pad_color)  # the band above the 800x600 view

    view_size = (view.width(), view.height())
    expected = parse_answer(ANSWER, geochat, view_size).objects
    layer = QgsVectorLayer(str(objects), "objects", "ogr")
    assert layer.isValid() and layer.crs().authid() == authid
    features = sorted(layer.getFeatures(), key=lambda f: f["object_id"])
    assert [f["object_id"] for f in features] == [o.id for o in expected] and len(features) == 3
    m2p = ms.mapToPixel()
    worst = 0.0
    for feature, obj in zip(features, expected):
        ring = feature.geometry().asPolygon()[0][:-1]
        assert len(ring) == len(obj.polygon)  # 4 corners, more where a turned box is clipped at the edge
        for point, (col, row) in zip(ring, obj.polygon):
            pixel = m2p.transform(QgsPointXY(point))
            worst = max(worst, abs(pixel.x() * DPR - col), abs(pixel.y() * DPR - row))
        assert feature["family"] == "geochat" and feature["model"] == "scripted"
        assert feature["view_rotation"] == ROTATION and feature["image_width"] == SIZE[0] * DPR
    assert worst < 1e-6, f"a corner is {worst} pixels off"
    # IMAGE: what the model saw (the 504x504 input), its boxes drawn where the input's pixels show them.
    seen = QImage(str(image_out)).convertToFormat(QImage.Format.Format_RGB32)
    assert seen.size() == QSize(504, 504) and seen != sent_image
    assert seen.pixelColor(252, 10) == QColor(*geochat.pad_color)
    # the field {<10><20><40><60>|<90>}: its top edge at 20 % of the input (row 100.8) from 10 % to 40 %
    assert seen.pixelColor(126, 101) == QColor(255, 60, 0) and sent_image.pixelColor(126, 101) != QColor(255, 60, 0)


@pytest.fixture()
def plugin(qgis_iface):
    loaded = geovlm.classFactory(qgis_iface)
    loaded.initProcessing()
    yield loaded
    loaded.unload()


def _run(processing, engine_url, raster, task, feedback=None, **extra):
    crs = QgsCoordinateReferenceSystem("EPSG:3857")
    extent = view_extent(raster, crs)
    params = {"LAYERS": [raster], "EXTENT": f"{extent.xMinimum()},{extent.xMaximum()},{extent.yMinimum()},"
              f"{extent.yMaximum()} [EPSG:3857]", "ROTATION": ROTATION, "WIDTH": SIZE[0], "HEIGHT": SIZE[1],
              "DEVICE_PIXEL_RATIO": DPR, "TASK": task, "ENGINE": engine_url, "OBJECTS": "TEMPORARY_OUTPUT",
              "RELATIONS": "TEMPORARY_OUTPUT", **extra}
    return processing.run("geovlm:askmap", params, feedback=feedback), reference_settings(raster, crs, extent)


@pytest.mark.parametrize("family", ["geochat", "earthdial", "qwen2vl", "florence2"])
def test_identify_sends_the_region_in_the_family_syntax(plugin, processing, data_dir, family):
    """A region drawn on the map reaches the model as the family's numbers of the same pixels."""
    from geovlm.core.regions import encode_region, task_key
    from geovlm.plugin.alg_ask_map import TASKS

    raster = QgsRasterLayer(str(data_dir / "rasters" / "cogeo.tif"), "cogeo")
    ms = reference_settings(raster, QgsCoordinateReferenceSystem("EPSG:3857"), view_extent(raster, raster.crs()))
    m2p = ms.mapToPixel()
    pixels = [(203.0, 151.0), (497.0, 151.0), (497.0, 397.0), (203.0, 397.0)]  # device pixels (DPR 2)
    ring = [m2p.toMapCoordinatesF(c / DPR, r / DPR) for c, r in pixels]
    wkt = "POLYGON((" + ", ".join(f"{p.x()!r} {p.y()!r}" for p in ring + ring[:1]) + "))"
    profile = get_profile(family)
    with ScriptedEngine(family, "a building") as engine:
        result, _ = _run(processing, engine.url, raster, TASKS.index("identify"),
                         REGION=f"CRS=EPSG:3857;{wkt}")
        sent = engine.posts[0]["messages"][0]["content"][1]["text"]
    image_size = (int(SIZE[0] * DPR), int(SIZE[1] * DPR))
    assert sent == profile.question(task_key(profile, "identify"), encode_region(pixels, profile, image_size))
    assert result["ANSWER"] == "a building"


@pytest.mark.parametrize("wkt, said", [
    ("POLYGON((0 0, 100 0, 100 100, 0 0))", "REGION lies outside the view"),  # the view is at x 14.3e6
    ("POINT(14322100 4532600)", "REGION covers no area of the view"),
    ("POLYGON((14322100 4532600, 14322100 4532600, 14322100 4532600, 14322100 4532600))",
     "REGION covers no area of the view"),
])
def test_an_identify_region_outside_the_view_or_without_area_is_refused_before_asking(plugin, processing,
                                                                                      data_dir, wkt, said):
    """Such a region was sent clipped to the image's edge (or as a zero-size box): the model was asked about
    what it cannot see. Refused in one line by the parameter check; the engine is not asked."""
    from qgis.core import QgsProcessingException

    from geovlm.plugin.alg_ask_map import TASKS

    raster = QgsRasterLayer(str(data_dir / "rasters" / "cogeo.tif"), "cogeo")
    with ScriptedEngine("geochat", "a building") as engine:
        with pytest.raises(QgsProcessingException, match=said):
            _run(processing, engine.url, raster, TASKS.index("identify"), REGION=f"CRS=EPSG:3857;{wkt}")
        assert engine.posts == []


def test_engine_down_is_one_clear_line(plugin, processing, data_dir):
    from qgis.core import QgsProcessingException

    raster = QgsRasterLayer(str(data_dir / "rasters" / "cogeo.tif"), "cogeo")
    with ScriptedEngine("geochat", "") as engine:
        url = engine.url
    down = r"^the engine at http://127\.0\.0\.1:\d+ is down or unreachable"
    with pytest.raises(QgsProcessingException, match=down) as info:
        _run(processing, url, raster, 0, QUESTION="What is here?")
    assert "\n" not in str(info.value)


def test_a_task_the_family_lacks_is_refused_clearly(plugin, processing, data_dir):
    from qgis.core import QgsProcessingException

    from geovlm.plugin.alg_ask_map import TASKS

    raster = QgsRasterLayer(str(data_dir / "rasters" / "cogeo.tif"), "cogeo")
    with ScriptedEngine("llava15", "x") as engine:
        with pytest.raises(QgsProcessingException, match="llava15 cannot 'find'; it can: ask, describe"):
            _run(processing, engine.url, raster, TASKS.index("find"), QUESTION="cars")
        assert engine.posts == []


def test_an_authentication_configuration_that_does_not_exist_is_refused_before_the_run(plugin, processing,
                                                                                        data_dir):
    """AUTHCFG with a typo was found only once the view was rendered and the engine reached ("could not be
    applied", printed three times by qgis_process); it is refused by the parameter check, nothing sent."""
    from qgis.core import QgsProcessingException

    raster = QgsRasterLayer(str(data_dir / "rasters" / "cogeo.tif"), "cogeo")
    with ScriptedEngine("geochat", "x") as engine:
        with pytest.raises(QgsProcessingException, match="the authentication configuration 'nope123' does not exist "
                           "in this QGIS profile"):
            _run(processing, engine.url, raster, 0, QUESTION="What is here?", AUTHCFG="nope123")
        assert engine.posts == []


def test_image_is_written_in_the_format_its_name_says(plugin, processing, data_dir, tmp_path):
    """IMAGE=seen.jpg held PNG bytes (always written as PNG); a suffix Qt writes gives that format, no suffix PNG."""
    raster = QgsRasterLayer(str(data_dir / "rasters" / "cogeo.tif"), "cogeo")
    with ScriptedEngine("geochat", "A road {<10><10><40><40>|<90>}.") as engine:
        for name, magic in (("seen.jpg", b"\xff\xd8\xff"), ("seen.png", b"\x89PNG"), ("seen", b"\x89PNG")):
            _run(processing, engine.url, raster, 0, QUESTION="What is here?", IMAGE=str(tmp_path / name))
            assert (tmp_path / name).read_bytes()[:len(magic)] == magic, name


@pytest.fixture(scope="module")
def demo_engine():
    with DemoEngine() as engine:
        yield engine


def test_askmap_with_the_real_demo_model(plugin, processing, data_dir, demo_engine):
    """The real engine (the demo model: a random stand-in, so its words are noise) through the algorithm:
    whatever boxes it writes land where mapToPixel puts their pixels, with the engine's model and family."""
    raster = QgsRasterLayer(str(data_dir / "rasters" / "cogeo.tif"), "cogeo")
    result, ms = _run(processing, demo_engine.url, raster, 1, QUESTION="Describe the image", MAX_TOKENS=24)
    text = result["ANSWER"]
    assert text.strip()
    layer = result["OBJECTS"]
    layer = layer if isinstance(layer, QgsVectorLayer) else QgsVectorLayer(layer, "o", "ogr")
    expected = parse_answer(text, get_profile("geochat"), (int(SIZE[0] * DPR), int(SIZE[1] * DPR))).objects
    features = sorted(layer.getFeatures(), key=lambda f: f["object_id"])
    assert len(features) == len(expected)
    m2p = ms.mapToPixel()
    for feature, obj in zip(features, expected):
        assert feature["model"] == "geovlm-demo-random" and feature["family"] == "geochat"
        for point, (col, row) in zip(feature.geometry().asPolygon()[0], obj.polygon):
            pixel = m2p.transform(QgsPointXY(point))
            assert pixel.x() * DPR == pytest.approx(col, abs=1e-6) and pixel.y() * DPR == pytest.approx(row, abs=1e-6)


def _recorded_earthdial():
    import json

    from conftest import DATA

    with open(DATA / "answers" / "earthdial_grounding_ucas_aod.jsonl", encoding="utf-8") as lines:
        return json.loads(next(lines))["answer"]


FAMILY_ANSWERS = {
    "geochat": "a car {<10><20><40><60>|<75>} and a roof {<50><15><80><45>|<90>}",
    "skysensegpt": "<ref>ship</ref><rbox>({<30.5><40.25><20><10>|<30>})</rbox> is <rel>parallelly docked at</rel> "
                   "<ref>dock</ref><rbox>({<60><50><30><12>|<90>})</rbox>.",
    "earthdial": None,  # a real EarthDial answer from the shared data
    "minigptv2": "<p>plane</p> {<12><14><30><40>}<delim>{<55><60><70><90>}",
    "llava15": "A building at [0.12, 0.30, 0.44, 0.61].",
    "qwen2vl": "<|object_ref_start|>tank<|object_ref_end|><|box_start|>(120,300),(400,610)<|box_end|>",
    "qwen25vl": '```json\n[{"bbox_2d": [40, 60, 300, 200], "label": "pool"}]\n```',
    "florence2": "roof<loc_120><loc_300><loc_400><loc_610>tree<loc_700><loc_100><loc_900><loc_300>",
}


@pytest.mark.parametrize("family", list(FAMILY_ANSWERS))
def test_each_family_answer_lands_at_map_to_pixel(plugin, processing, data_dir, family):
    """A scripted engine answering in each family's syntax: every box (rotated ones included) and relation
    lands where mapToPixel puts its pixels, with rotation 30 and device pixel ratio 2."""
    answer = FAMILY_ANSWERS[family] or _recorded_earthdial()
    raster = QgsRasterLayer(str(data_dir / "rasters" / "cogeo.tif"), "cogeo")
    with ScriptedEngine(family, answer) as engine:
        result, ms = _run(processing, engine.url, raster, 0, QUESTION="What is here?")
    size = (int(SIZE[0] * DPR), int(SIZE[1] * DPR))
    parsed = parse_answer(answer, get_profile(family), size)
    assert parsed.objects, "the recorded answer has boxes"
    layer = result["OBJECTS"]
    layer = layer if isinstance(layer, QgsVectorLayer) else QgsVectorLayer(layer, "o", "ogr")
    features = sorted(layer.getFeatures(), key=lambda f: f["object_id"])
    assert len(features) == len(parsed.objects)
    m2p = ms.mapToPixel()
    for feature, obj in zip(features, parsed.objects):
        assert feature["family"] == family and feature["label"] == obj.label
        for point, (col, row) in zip(feature.geometry().asPolygon()[0], obj.polygon):
            pixel = m2p.transform(QgsPointXY(point))
            assert abs(pixel.x() * DPR - col) < 1e-6 and abs(pixel.y() * DPR - row) < 1e-6
    relations = result["RELATIONS"]
    relations = relations if isinstance(relations, QgsVectorLayer) else QgsVectorLayer(relations, "r", "ogr")
    assert relations.featureCount() == len([r for r in parsed.relations
                                            if r.subject is not None and r.object is not None])
    assert relations.featureCount() == (1 if family == "skysensegpt" else 0)


@pytest.mark.parametrize("name", ["DEVICE_PIXEL_RATIO", "ROTATION"])
def test_a_view_number_that_is_nan_is_refused_by_the_parameter_check(plugin, data_dir, name):
    """nan passes QGIS's range check of a number parameter: DEVICE_PIXEL_RATIO=nan hung the render (QPainter:
    "Paint device returned engine == 0"), ROTATION=nan was refused as an extent the layers do not meet."""
    from qgis.core import QgsApplication, QgsProcessingContext

    raster = str(data_dir / "rasters" / "cogeo.tif")
    alg = QgsApplication.processingRegistry().algorithmById("geovlm:askmap")
    context = QgsProcessingContext()
    params = {"LAYERS": [raster], "EXTENT": raster, "QUESTION": "What?", "ENGINE": "http://127.0.0.1:9",
              name: float("nan")}
    ok, message = alg.checkParameterValues(params, context)
    assert not ok and message == f"{name} must be a number, not nan", message


@pytest.mark.parametrize("image, said", [("missing-folder/seen.png", "does not exist"),
                                         ("/proc/seen.png", "cannot be written")])
def test_an_image_that_cannot_be_written_is_refused_before_the_engine_is_asked(plugin, processing, data_dir,
                                                                               tmp_path, image, said):
    """IMAGE in a folder that does not exist or cannot be written: the engine answered, the objects were written,
    and then the run failed ("could not write the image"). Refused before the engine is asked."""
    from qgis.core import QgsProcessingException

    raster = str(data_dir / "rasters" / "cogeo.tif")
    path = tmp_path / image if not image.startswith("/") else Path(image)
    with ScriptedEngine("geochat", "a roof {<10><20><40><60>|<90>}") as engine:
        with pytest.raises(QgsProcessingException, match=f"IMAGE: the folder of {path} {said}"):
            processing.run("geovlm:askmap", {"LAYERS": [raster], "EXTENT": raster, "QUESTION": "What?",
                                             "ENGINE": engine.url, "OBJECTS": str(tmp_path / "o.gpkg"),
                                             "IMAGE": str(path)})
        assert engine.posts == []
    assert not (tmp_path / "o.gpkg").exists()


def test_a_complex_raster_that_qgis_does_not_draw_is_said_so(plugin, processing, tmp_path):
    """A SAR single-look complex raster (CFloat32): QGIS draws none of it, and the refusal said "every pixel is
    nodata or transparent", which it is not; it says that QGIS does not draw complex values, and what reads them."""
    from osgeo import gdal, osr
    from qgis.core import QgsProcessingException

    path = tmp_path / "slc.tif"
    ds = gdal.GetDriverByName("GTiff").Create(str(path), 64, 64, 1, gdal.GDT_CFloat32)
    ds.SetGeoTransform((500000, 1, 0, 4100000, 0, -1))
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32616)
    ds.SetProjection(srs.ExportToWkt())
    rng = np.random.default_rng(0)
    ds.GetRasterBand(1).WriteArray((rng.normal(size=(64, 64)) + 1j * rng.normal(size=(64, 64))).astype(np.complex64))
    ds = None
    with ScriptedEngine("geochat", "a ship") as engine:
        with pytest.raises(QgsProcessingException, match="'slc' holds complex values .*which QGIS does not draw"):
            processing.run("geovlm:askmap", {"LAYERS": [str(path)], "EXTENT": str(path), "QUESTION": "What?",
                                             "ENGINE": engine.url})
        assert engine.posts == []


def gdal_crs_is_geographic(path) -> bool:
    """Whether GDAL reads the CRS of the first layer of `path` as geographic (QGIS's isGeographic() says False
    for a GeoPackage's "Undefined geographic SRS")."""
    from osgeo import ogr

    data = ogr.Open(str(path))  # held: a layer of a dataset already collected crashes
    srs = data.GetLayer(0).GetSpatialRef()
    return bool(srs is not None and srs.IsGeographic())


def test_a_view_without_a_crs_writes_layers_in_map_units_not_degrees(plugin, processing, data_dir, tmp_path):
    """EXTENT taken from rotated.tif, which has a geotransform and no CRS: the view's CRS is QGIS's unknown one,
    which a GeoPackage wrote as its "Undefined geographic SRS" (degrees) and the log read "rendered ... in ,".
    The objects are in a Cartesian CRS of the map units, on the raster, and the log says so."""
    from qt_support import RecordingFeedback

    raster_path = data_dir / "rasters" / "rotated.tif"
    raster = QgsRasterLayer(str(raster_path), "rotated")
    assert raster.isValid() and not raster.crs().isValid()
    feedback = RecordingFeedback()
    with ScriptedEngine("geochat", "a roof {<10><20><40><60>|<90>}") as engine:
        result = processing.run("geovlm:askmap", {
            "LAYERS": [raster], "EXTENT": str(raster_path), "WIDTH": 200, "HEIGHT": 200, "QUESTION": "What?",
            "ENGINE": engine.url, "OBJECTS": str(tmp_path / "o.gpkg")}, feedback=feedback)
    layer = QgsVectorLayer(result["OBJECTS"], "o", "ogr")
    assert layer.featureCount() == 1
    assert not gdal_crs_is_geographic(result["OBJECTS"]), "written as degrees"
    extent = raster.extent()  # about square, as the view: the box (10-40 % across, 20-60 % down) lies in it
    box = layer.getFeature(1).geometry().boundingBox()
    assert extent.buffered(1.0).contains(box) and box.width() > 0.2 * extent.width()
    assert any("no CRS (the map units" in text for text in feedback.info), feedback.info
    assert any("the view has no CRS: the layers are in its map units" in text for text in feedback.info)


def _centre_cropping_model(png: bytes) -> str:
    """A stand-in for vLLM serving a llava-hf LLaVA-1.5: its processor resizes the short side to 336 and
    cuts out the centre 336 x 336 (CLIP's processor, not LLaVA's padding), then the "model" answers the box
    of the red pixels it sees, in LLaVA-1.5's [x0, y0, x1, y1] fractions of its input."""
    image = QImage.fromData(png, "PNG").convertToFormat(QImage.Format.Format_RGB32)
    w, h = image.width(), image.height()
    short = min(w, h)
    new_w, new_h = (336, 336 * h // short) if w == short else (336 * w // short, 336)
    resized = image.scaled(new_w, new_h, Qt.AspectRatioMode.IgnoreAspectRatio,
                           Qt.TransformationMode.SmoothTransformation)
    seen = resized.copy((new_w - 336) // 2, (new_h - 336) // 2, 336, 336)
    red = [(x, y) for y in range(336) for x in range(336)
           if (lambda c: c.red() > 200 and c.green() < 80 and c.blue() < 80)(seen.pixelColor(x, y))]
    if not red:
        return "I see no roof."
    xs, ys = [p[0] for p in red], [p[1] for p in red]
    return (f"the roof [{min(xs) / 336:.4f}, {min(ys) / 336:.4f}, {(max(xs) + 1) / 336:.4f}, "
            f"{(max(ys) + 1) / 336:.4f}]")


def test_a_centre_cropping_server_places_the_box_on_the_object(plugin, processing, tmp_path):
    """issue 8, part 1 case 2, through the plugin: a server whose own processor centre-crops (vLLM with a
    llava-hf checkpoint) sees exactly the padded input the plugin sends (its crop of a square is the
    identity), so the box of the red roof it answers lands on the roof on the map; the whole view sent as it
    is (what the plugin did before) would put that box far away."""
    from qgis.core import QgsFillSymbol

    from geovlm.core.client import EngineClient
    from geovlm.core.transport import HttpClientTransport
    from geovlm.plugin.ask_map import png_bytes

    roof = tmp_path / "roof.geojson"  # a 1000 m square, 250..350 x 50..150 px of an 800 x 400 view at 10 m/px
    roof.write_text(json.dumps({
        "type": "FeatureCollection", "crs": {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::3857"}},
        "features": [{"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": [
            [[2500, 2500], [3500, 2500], [3500, 3500], [2500, 3500], [2500, 2500]]]}}]}))
    layer = QgsVectorLayer(str(roof), "roof", "ogr")
    assert layer.isValid() and layer.crs().authid() == "EPSG:3857"
    layer.renderer().setSymbol(QgsFillSymbol.createSimple({"color": "255,0,0,255", "outline_style": "no"}))
    params = {"LAYERS": [layer], "EXTENT": "0,8000,0,4000 [EPSG:3857]", "ROTATION": 0.0, "WIDTH": 800,
              "HEIGHT": 400, "DEVICE_PIXEL_RATIO": 1.0, "TASK": 0, "QUESTION": "Where is the roof?",
              "OBJECTS": "TEMPORARY_OUTPUT", "RELATIONS": "TEMPORARY_OUTPUT"}
    with ScriptedEngine("llava15", _centre_cropping_model) as engine:
        result = processing.run("geovlm:askmap", dict(params, ENGINE=engine.url))
        [sent] = engine.images
        # What the plugin did before: the whole 800 x 400 view, which this server crops to its centre.
        ms = QgsMapSettings()
        ms.setLayers([layer])
        ms.setDestinationCrs(layer.crs())
        ms.setOutputSize(QSize(800, 400))
        ms.setExtent(QgsRectangle(0, 0, 8000, 4000))
        ms.setBackgroundColor(QColor(255, 255, 255))
        ms.setOutputImageFormat(QImage.Format.Format_ARGB32_Premultiplied)
        whole = QImage(ms.deviceOutputSize(), ms.outputImageFormat())
        whole.fill(QColor(255, 255, 255))
        painter = QPainter(whole)
        QgsMapRendererCustomPainterJob(ms, painter).renderSynchronously()
        painter.end()
        client = EngineClient(engine.url, transport=HttpClientTransport())
        _, unfitted = client.ask(png_bytes(whole), (800, 400), "Where is the roof?")
    assert QImage.fromData(sent, "PNG").size() == QSize(336, 336)  # LLaVA-1.5's input, padded
    assert "not fitted" in unfitted.warnings[0]

    m2p = ms.mapToPixel()
    corners = [m2p.transform(QgsPointXY(x, y)) for x, y in ((2500, 3500), (3500, 2500))]
    truth = (corners[0].x(), corners[0].y(), corners[1].x(), corners[1].y())
    assert truth == pytest.approx((250, 50, 350, 150), abs=1e-6)
    out = result["OBJECTS"]
    out = out if isinstance(out, QgsVectorLayer) else QgsVectorLayer(out, "o", "ogr")
    [feature] = list(out.getFeatures())
    box = feature.geometry().boundingBox()
    placed = [m2p.transform(QgsPointXY(box.xMinimum(), box.yMaximum())),
              m2p.transform(QgsPointXY(box.xMaximum(), box.yMinimum()))]
    got = (placed[0].x(), placed[0].y(), placed[1].x(), placed[1].y())
    one_input_pixel = 800 / 336  # the model's answer is good to a pixel of its 336 px input
    assert got == pytest.approx(truth, abs=1.5 * one_input_pixel), f"the roof is at {truth}, the box at {got}"
    (bad,) = unfitted.objects
    xs, ys = [p[0] for p in bad.polygon], [p[1] for p in bad.polygon]
    assert max(abs(min(xs) - truth[0]), abs(min(ys) - truth[1])) > 100  # sent unfitted: far off the roof


def test_the_streamed_answer_reaches_the_log_as_whole_lines(plugin, processing, data_dir):
    """Pieces of four characters are logged as the answer's lines, not one piece per log line."""
    from qt_support import RecordingFeedback

    answer = "a field {<10><20><40><60>|<90>}\nand a road beside it"
    raster = QgsRasterLayer(str(data_dir / "rasters" / "cogeo.tif"), "cogeo")
    feedback = RecordingFeedback()
    with ScriptedEngine("geochat", answer) as engine:
        result, _ = _run(processing, engine.url, raster, 0, feedback, QUESTION="What is here?")
    assert result["ANSWER"] == answer
    assert feedback.console == answer.split("\n")


def test_a_geojson_output_keeps_the_answer_and_the_box_sources_strings(plugin, processing, data_dir, tmp_path):
    """An answer that is JSON (Qwen2.5-VL's) is written to GeoJSON as the strings it was, on GDAL 3.6 too."""
    answer = '[{"bbox_2d": [40, 60, 300, 200], "label": "[1, 2]"}]'
    raster = QgsRasterLayer(str(data_dir / "rasters" / "cogeo.tif"), "cogeo")
    objects = tmp_path / "objects.geojson"
    with ScriptedEngine("qwen25vl", answer) as engine:
        result, _ = _run(processing, engine.url, raster, 0, QUESTION="What is here?", OBJECTS=str(objects),
                         RELATIONS=str(tmp_path / "relations.geojson"))
    assert result["ANSWER"] == answer
    [feature] = json.loads(objects.read_text(encoding="utf-8"))["features"]
    assert feature["properties"]["answer"] == answer and feature["properties"]["label"] == "[1, 2]"
    assert feature["properties"]["source"] == '{"bbox_2d": [40, 60, 300, 200], "label": "[1, 2]"}'
    [read] = QgsVectorLayer(str(objects), "o", "ogr").getFeatures()
    assert (read["answer"], read["label"]) == (answer, "[1, 2]")


def test_family_is_read_as_in_parseanswers(plugin, processing, data_dir):
    """FAMILY by name, alias or title in any case (plugin.families), an unknown one refused in one line."""
    from qgis.core import QgsProcessingException

    raster = QgsRasterLayer(str(data_dir / "rasters" / "cogeo.tif"), "cogeo")
    answers = ["a field {<10><20><40><60>|<90>}", "a field [0.10, 0.20, 0.40, 0.60]"]  # GeoChat's, LLaVA's
    with ScriptedEngine("llava15", answers) as engine:
        for family in ("GeoChat", "LLaVA-1.5"):
            result, _ = _run(processing, engine.url, raster, 0, QUESTION="What is here?", FAMILY=family)
            layer = result["OBJECTS"]
            layer = layer if isinstance(layer, QgsVectorLayer) else QgsVectorLayer(layer, "o", "ogr")
            assert {f["family"] for f in layer.getFeatures()} == {"geochat" if family == "GeoChat" else "llava15"}
        with pytest.raises(QgsProcessingException, match="unknown model family 'gpt4': one of llava15, geochat"):
            _run(processing, engine.url, raster, 0, QUESTION="What is here?", FAMILY="gpt4")


def test_askmap_in_a_background_task_as_the_processing_dialog_runs_it(plugin, processing, data_dir):
    """The Processing dialog runs an algorithm in a QgsProcessingAlgRunnerTask: prepareAlgorithm on the main
    thread (the layers are cloned there), processAlgorithm in a worker thread (the clones are rendered
    there, as QGIS's own "Convert map to raster" does). The worker sends the same pixels as a run on the main
    thread, and the boxes land at the same places."""
    from qgis.core import (
        QgsApplication,
        QgsProcessingAlgRunnerTask,
        QgsProcessingContext,
        QgsProcessingUtils,
    )
    from qgis.PyQt.QtCore import QCoreApplication, QThread
    from qt_support import RecordingFeedback, wait_for

    class ThreadFeedback(RecordingFeedback):
        """Also keeps, for each message, whether it came from the main thread."""

        def __init__(self):
            super().__init__()
            self.on_main = []

        def pushInfo(self, info):  # noqa: N802 (QGIS's name)
            super().pushInfo(info)
            self.on_main.append(QThread.currentThread() == QCoreApplication.instance().thread())

    def rings(layer):
        return [f.geometry().asWkt(9) for f in sorted(layer.getFeatures(), key=lambda f: f["object_id"])]

    raster = QgsRasterLayer(str(data_dir / "rasters" / "cogeo.tif"), "cogeo")
    with ScriptedEngine("geochat", ANSWER) as engine:
        main_result, _ = _run(processing, engine.url, raster, 0, QUESTION="What is here?")
        crs = QgsCoordinateReferenceSystem("EPSG:3857")
        extent = view_extent(raster, crs)
        params = {"LAYERS": [raster], "EXTENT": f"{extent.xMinimum()},{extent.xMaximum()},{extent.yMinimum()},"
                  f"{extent.yMaximum()} [EPSG:3857]", "ROTATION": ROTATION, "WIDTH": SIZE[0], "HEIGHT": SIZE[1],
                  "DEVICE_PIXEL_RATIO": DPR, "TASK": 0, "ENGINE": engine.url, "QUESTION": "What is here?",
                  "OBJECTS": "TEMPORARY_OUTPUT", "RELATIONS": "TEMPORARY_OUTPUT"}
        context, feedback, done = QgsProcessingContext(), ThreadFeedback(), []
        context.setProject(QgsProject.instance())
        algorithm = QgsApplication.processingRegistry().createAlgorithmById("geovlm:askmap")
        task = QgsProcessingAlgRunnerTask(algorithm, params, context, feedback)
        task.executed.connect(lambda ok, results: done.append((ok, results)))
        QgsApplication.taskManager().addTask(task)
        assert wait_for(lambda: done, 60), feedback.errors
    ok, results = done[0]
    assert ok, feedback.errors
    assert feedback.on_main and not any(feedback.on_main)  # processAlgorithm ran in a worker thread
    assert len(engine.images) == 2 and engine.images[1] == engine.images[0]
    main_layer = main_result["OBJECTS"]
    main_layer = main_layer if isinstance(main_layer, QgsVectorLayer) else QgsVectorLayer(main_layer, "o", "ogr")
    task_layer = QgsProcessingUtils.mapLayerFromString(results["OBJECTS"], context)
    assert len(rings(task_layer)) == 3 and rings(task_layer) == rings(main_layer)


def _qgis_process(exe, env, *params):
    run = subprocess.run([str(exe), "run", "geovlm:askmap", "--", *params], env=env, capture_output=True, text=True,
                         timeout=180)
    return run.returncode, run.stdout + run.stderr


def test_qgis_process_refuses_a_blank_view_in_one_line_and_asks_nothing(qgis_app, data_dir, qgis_process_env):
    """An EXTENT that none of the layers meets would be a white image, which a model answers anyway: refused
    before the engine is asked, the line printed once (QGIS prints an error raised during a run three times:
    twice from its message log, once from the feedback), and qgis_process exits non-zero."""
    exe, env = qgis_process_env
    cogeo = data_dir / "rasters" / "cogeo.tif"
    with ScriptedEngine("geochat", ANSWER) as engine:
        code, out = _qgis_process(exe, env, f"LAYERS={cogeo}", "EXTENT=0,10,0,10 [EPSG:4326]",
                                  "QUESTION=What is on this map?", f"ENGINE={engine.url}")
        assert engine.posts == [] and engine.images == []
    line = "nothing of the layers ('cogeo') lies in EXTENT 0,10,0,10 [EPSG:4326]"
    assert code != 0 and out.count(line) == 1, out[-3000:]


def test_qgis_process_prints_an_engine_that_cannot_be_used_once(qgis_app, data_dir, qgis_process_env):
    """The local engine not set up (a fresh profile), a malformed URL, an unknown family, a task the named
    family lacks: known before any engine is reached, so refused before the run, each line printed once."""
    exe, env = qgis_process_env
    cogeo = data_dir / "rasters" / "cogeo.tif"
    view = ("QUESTION=What is on this map?", f"LAYERS={cogeo}",
            "EXTENT=14321853,14322464,4532410,4533021 [EPSG:3857]")
    for params, line in (
            (["ENGINE=local"], "the local engine is not set up: use Plugins ▸ GeoVLM ▸ Set up the local engine…"),
            (["ENGINE=127.0.0.1:8000"], "an engine URL is http://host:port or https://host, not '127.0.0.1:8000'"),
            (["ENGINE=http://127.0.0.1:9", "FAMILY=gpt4"], "unknown model family 'gpt4': one of llava15"),
            (["ENGINE=http://127.0.0.1:9", "FAMILY=LLaVA-1.5", "TASK=2"],
             "llava15 cannot 'find'; it can: ask, describe")):
        code, out = _qgis_process(exe, env, *view, *params)
        assert code != 0 and out.count(line) == 1, (params, out[-3000:])


def test_qgis_process_refuses_a_layer_that_cannot_be_read_and_asks_nothing(qgis_app, data_dir, qgis_process_env):
    """corrupt.tif opens (its header is whole) but its full-resolution tiles cannot be read: QGIS draws a white
    image; the render's layer error refuses the run before the engine is asked."""
    exe, env = qgis_process_env
    corrupt = QgsRasterLayer(str(data_dir / "rasters" / "corrupt.tif"), "corrupt")
    e = corrupt.extent()
    with ScriptedEngine("geochat", ANSWER) as engine:
        code, out = _qgis_process(exe, env, f"LAYERS={corrupt.source()}",
                                  f"EXTENT={e.xMinimum()!r},{e.xMaximum()!r},{e.yMinimum()!r},{e.yMaximum()!r} "
                                  "[EPSG:3857]", "QUESTION=What is on this map?", f"ENGINE={engine.url}")
        assert engine.posts == []
    assert code != 0 and "ERROR:\tlayer 'corrupt' cannot be read: " in out and "IReadBlock failed" in out, out[-3000:]


def test_qgis_process_asks_without_an_objects_output(qgis_app, data_dir, tmp_path, qgis_process_env):
    """OBJECTS is optional, as RELATIONS: an ask for the answer alone writes no file."""
    exe, env = qgis_process_env
    raster = QgsRasterLayer(str(data_dir / "rasters" / "cogeo.tif"), "cogeo")
    extent = view_extent(raster, raster.crs())
    work = tmp_path / "work"
    work.mkdir()
    with ScriptedEngine("geochat", ANSWER) as engine:
        run = subprocess.run(
            [str(exe), "--json", "run", "geovlm:askmap", "--", f"LAYERS={raster.source()}",
             f"EXTENT={extent.xMinimum()!r},{extent.xMaximum()!r},{extent.yMinimum()!r},{extent.yMaximum()!r}"
             " [EPSG:3857]", "QUESTION=Describe the image", "TASK=1", f"ENGINE={engine.url}"],
            env=env, capture_output=True, text=True, timeout=180, cwd=work)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    results = json.loads(run.stdout)["results"]
    assert results["ANSWER"] == ANSWER and results["OBJECTS"] is None and results["RELATIONS"] is None
    assert list(work.iterdir()) == [] and len(engine.posts) == 1


def test_processing_run_refuses_an_extent_outside_the_layers(plugin, processing, data_dir):
    """processing.run (and the dialog) checks the parameters first: one line, and the engine is not asked; the
    GUI's "GeoVLM" log keeps the line, as a warning (qgis_process echoes only critical messages)."""
    from qgis.core import Qgis, QgsApplication, QgsProcessingException

    raster = QgsRasterLayer(str(data_dir / "rasters" / "cogeo.tif"), "cogeo")
    logged = []
    log = QgsApplication.messageLog()
    record = lambda message, tag, level: logged.append((message, tag, level))  # noqa: E731
    log.messageReceived.connect(record)
    try:
        with ScriptedEngine("geochat", ANSWER) as engine:
            with pytest.raises(QgsProcessingException, match=r"nothing of the layers \('cogeo'\) lies in EXTENT "
                               r"0,10,0,10 \[EPSG:4326\]"):
                _run(processing, engine.url, raster, 0, QUESTION="What is here?", EXTENT="0,10,0,10 [EPSG:4326]")
            assert engine.posts == []
    finally:
        log.messageReceived.disconnect(record)
    ours = [(m, level) for m, tag, level in logged if tag == "GeoVLM"]
    assert ours == [("askmap: nothing of the layers ('cogeo') lies in EXTENT 0,10,0,10 [EPSG:4326]",
                     Qgis.MessageLevel.Warning)]


NODATA_EXTENT = "341970,342183,1596477,1603902 [EPSG:32628]"  # within all-nodata.tif


def test_qgis_process_refuses_an_all_nodata_view_and_asks_nothing(qgis_app, data_dir, qgis_process_env, tmp_path):
    """all-nodata.tif meets the view but draws no pixel: QGIS renders only the white background, which a model
    answers anyway. Refused after the render, before the engine is asked; qgis_process exits non-zero."""
    exe, env = qgis_process_env
    seen = tmp_path / "seen.png"
    with ScriptedEngine("geochat", ANSWER) as engine:
        code, out = _qgis_process(exe, env, f"LAYERS={data_dir / 'rasters' / 'all-nodata.tif'}",
                                  f"EXTENT={NODATA_EXTENT}", "QUESTION=hi", f"ENGINE={engine.url}",
                                  f"IMAGE={seen}")
        assert engine.posts == []
    line = "nothing of the layers was drawn in this view: every pixel is nodata or transparent"
    assert code == 1 and line in out and not seen.exists(), out[-3000:]


def _white_raster(path, crs_wkt, origin):
    """A 3-band uint8 GeoTIFF whose every pixel is (255, 255, 255): drawn in exactly the background colour."""
    from osgeo import gdal

    ds = gdal.GetDriverByName("GTiff").Create(str(path), 64, 64, 3, gdal.GDT_Byte)
    ds.SetGeoTransform((origin[0], 10.0, 0.0, origin[1], 0.0, -10.0))
    ds.SetProjection(crs_wkt)
    for band in range(1, 4):
        ds.GetRasterBand(band).Fill(255)
    ds = None
    return path


def test_processing_run_refuses_all_nodata_but_asks_about_a_drawn_white_view(plugin, processing, data_dir,
                                                                              tmp_path):
    """The same refusal through processing.run; a raster drawn in exactly the background colour (every pixel
    white, on white) is a drawn view: its image is only background, but its transparent render is not, so it
    is asked about."""
    from qgis.core import QgsProcessingException

    nodata = QgsRasterLayer(str(data_dir / "rasters" / "all-nodata.tif"), "all-nodata")
    params = {"LAYERS": [nodata], "EXTENT": NODATA_EXTENT, "WIDTH": 300, "HEIGHT": 300, "QUESTION": "hi",
              "OBJECTS": "TEMPORARY_OUTPUT", "RELATIONS": "TEMPORARY_OUTPUT"}
    with ScriptedEngine("geochat", ANSWER) as engine:
        with pytest.raises(QgsProcessingException, match="^nothing of the layers was drawn in this view: every "
                                                         "pixel is nodata or transparent"):
            processing.run("geovlm:askmap", {**params, "ENGINE": engine.url})
        assert engine.posts == []
        white = QgsRasterLayer(str(_white_raster(tmp_path / "white.tif", nodata.crs().toWkt(), (342000, 1600000))),
                               "white")
        assert white.isValid()
        result = processing.run("geovlm:askmap", {**params, "LAYERS": [white], "ENGINE": engine.url,
                                                  "EXTENT": "342100,342500,1599500,1599900 [EPSG:32628]"})
        assert result["ANSWER"] == ANSWER and len(engine.posts) == 1
        sent = QImage.fromData(engine.images[0], "PNG").convertToFormat(QImage.Format.Format_RGB32)
        assert {sent.pixel(x, y) for x in range(0, sent.width(), 9) for y in range(0, sent.height(), 9)} == {
            QColor(255, 255, 255).rgb()}  # only white was sent, and it was asked about


def test_the_askmap_dialog_starts_with_the_active_raster_and_the_canvas_view(plugin, processing, qgis_iface,
                                                                             qgis_canvas, data_dir, monkeypatch):
    """As the bulk dialogs start with the active raster, `geovlm:askmap` starts with it and the view the map
    shows (its extent in the canvas's CRS, and its rotation); a run given only the question and the engine asks
    about that view. With no raster in the project it starts empty, as before."""
    from qgis.core import QgsApplication, QgsProject, QgsReferencedRectangle
    from qgis.gui import QgsBrowserGuiModel

    registry = QgsApplication.processingRegistry()

    def defaults():
        alg = registry.createAlgorithmById("geovlm:askmap")  # what the dialog makes when it opens
        return [alg.parameterDefinition(name).defaultValue() for name in ("LAYERS", "EXTENT", "ROTATION")]

    QgsProject.instance().removeAllMapLayers()
    assert defaults() == [None, None, 0.0]
    raster = QgsRasterLayer(str(data_dir / "rasters" / "cogeo.tif"), "cogeo")
    QgsProject.instance().addMapLayer(raster)
    try:
        QgsProject.instance().setCrs(QgsCoordinateReferenceSystem("EPSG:3857"))  # the canvas shows the project's
        qgis_canvas.setDestinationCrs(QgsCoordinateReferenceSystem("EPSG:3857"))
        qgis_canvas.setLayers([raster])
        extent = view_extent(raster, QgsCoordinateReferenceSystem("EPSG:3857"))
        qgis_canvas.setExtent(extent)
        qgis_canvas.setRotation(ROTATION)
        qgis_iface.setActiveLayer(raster)
        layers, start, rotation = defaults()
        assert layers == [raster.id()] and rotation == ROTATION
        assert isinstance(start, QgsReferencedRectangle) and start.crs().authid() == "EPSG:3857"
        assert start == qgis_canvas.mapSettings().extent() and start.intersects(extent)
        browser = QgsBrowserGuiModel()  # QGIS's own; the test interface has none
        monkeypatch.setattr(qgis_iface, "browserModel", lambda: browser, raising=False)
        dialog = processing.createAlgorithmDialog("geovlm:askmap")  # the dialog the Processing toolbox opens
        try:
            shown = dialog.mainWidget().createProcessingParameters()
        finally:
            dialog.deleteLater()
        assert shown["LAYERS"] in ([raster.id()], [raster.source()]) and shown["ROTATION"] == ROTATION, shown
        asked = {"QUESTION": "What is here?", "TASK": 0, "OBJECTS": "TEMPORARY_OUTPUT", "FAMILY": "geochat"}
        with ScriptedEngine("geochat", ANSWER) as engine:
            for given in (shown, {}):  # the dialog's values; processing.run with the defaults, as in the console
                result = processing.run("geovlm:askmap", {**given, **asked, "ENGINE": engine.url})
                assert result["OBJECTS"].featureCount() == 3 and result["OBJECTS"].crs().authid() == "EPSG:3857"
    finally:
        qgis_canvas.setLayers([])
        qgis_canvas.setRotation(0)
        QgsProject.instance().removeAllMapLayers()


def test_without_engine_it_asks_the_engine_of_the_options(plugin, processing, data_dir):
    """ENGINE defaulted to 'local': a user who set remote engines in Settings ▸ Options ▸ GeoVLM (as the dock and
    the bulk algorithms use them) was told in the dialog that the local engine is not set up. Left empty, it is the
    Options' engine, as in the bulk algorithms."""
    from geovlm.plugin import settings as engine_settings

    assert not plugin.provider.algorithm("askmap").parameterDefinition("ENGINE").defaultValue()
    raster = str(data_dir / "rasters" / "cogeo.tif")
    with ScriptedEngine("geochat", "a road {<5><70><95><90>|<60>}") as engine:
        engine_settings.save(engine_settings.EngineSettings(mode="remote",
                                                            endpoints=[engine_settings.Endpoint(engine.url)]))
        result = processing.run("geovlm:askmap", {"LAYERS": [raster], "EXTENT": raster, "WIDTH": 256, "HEIGHT": 256,
                                                  "QUESTION": "Describe the image", "TASK": 1,
                                                  "OBJECTS": "TEMPORARY_OUTPUT"})
    assert len(engine.posts) == 1 and result["OBJECTS"].featureCount() == 1
