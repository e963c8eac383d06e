"""The QGIS plugin: loads and unloads (twice), and its Processing algorithm writes real layers."""
import sys

import pytest
from qgis.core import QgsApplication, QgsProject, QgsRasterLayer, QgsVectorLayer

import geovlm


@pytest.fixture(scope="module")
def processing(qgis_app):
    sys.path.append("/usr/share/qgis/python/plugins")
    from processing.core.Processing import Processing

    Processing.initialize()
    import processing as proc

    return proc


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


def test_algorithm_runs_from_qgis_process(data_dir, tmp_path):
    """qgis_process finds the plugin's provider (Debian's wrapper is broken on 3.22: call the binary)."""
    import os
    import subprocess
    from pathlib import Path

    exe = Path("/usr/bin/qgis_process.bin")
    if not exe.exists():
        pytest.fail("qgis_process.bin not found: QGIS is not installed as `make setup` installs it")
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "geovlm").symlink_to(Path(geovlm.__file__).parent, target_is_directory=True)
    (tmp_path / "home").mkdir()
    env = dict(os.environ, HOME=str(tmp_path / "home"), QGIS_PLUGINPATH=str(plugins),
               QGIS_CUSTOM_CONFIG_PATH=str(tmp_path / "home"),
               XDG_RUNTIME_DIR=str(tmp_path), QT_QPA_PLATFORM="offscreen")
    enable = subprocess.run([str(exe), "plugins", "enable", "geovlm"], env=env, capture_output=True, text=True,
                            timeout=120)
    assert enable.returncode == 0, enable.stdout[-2000:] + enable.stderr[-2000:]
    answers = tmp_path / "a.txt"
    answers.write_text("{<0><0><50><50>|<90>}\n{<50><50><100><100>|<90>}\n")
    out = tmp_path / "objects.gpkg"
    run = subprocess.run(
        [str(exe), "--json", "run", "geovlm:parseanswers", "--", f"INPUT={answers}", "FAMILY=1",
         f"RASTER={data_dir / 'rasters' / 'cogeo.tif'}", f"OBJECTS={out}", f"RELATIONS={tmp_path / 'rel.gpkg'}"],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    layer = QgsVectorLayer(str(out), "objects", "ogr")
    assert layer.isValid() and layer.featureCount() == 2
    assert layer.crs().authid() == "EPSG:3857"


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
