"""The objects and relations layers that geovlm:askmap and geovlm:parseanswers load on completion (the
Processing dialog, `processing.runAndLoadResults`) are styled from styles/ as the bulk runs' layers are:
objects labelled with their label, relations labelled with their predicate."""
import sys
from pathlib import Path

from qgis.core import QgsProject, QgsRasterLayer

sys.path.insert(0, str(Path(__file__).parent))
from ask_engines import ScriptedEngine  # noqa: E402

GRAPH = ("<ref>building</ref><rbox>({<20><20><40><40>|<90>})</rbox> <rel>adjacent</rel> "
         "<ref>car</ref><rbox>({<60><60><70><70>|<90>})</rbox>.")


def _labelled_by(output):
    """The field that labels the project's layer of `output` (a layer id, or a file's path), None: unlabelled."""
    layers = [layer for layer in QgsProject.instance().mapLayers().values()
              if output in (layer.id(), layer.source().split("|")[0])]
    assert len(layers) == 1
    layer = layers[0]
    assert layer is not None and layer.featureCount() > 0
    return layer.labeling().settings().fieldName if layer.labelsEnabled() else None


def test_askmap_layers_load_styled(plugin, processing, data_dir):
    from geovlm.plugin.alg_ask_map import TASKS

    raster = QgsRasterLayer(str(data_dir / "rasters" / "cogeo.tif"), "cogeo")
    with ScriptedEngine("skysensegpt", GRAPH) as engine:
        result = processing.runAndLoadResults("geovlm:askmap", {
            "LAYERS": [raster], "EXTENT": raster.extent(), "WIDTH": 256, "HEIGHT": 256,
            "TASK": TASKS.index("scene graph"), "QUESTION": "the scene graph", "ENGINE": engine.url,
            "OBJECTS": "TEMPORARY_OUTPUT", "RELATIONS": "TEMPORARY_OUTPUT"})
    try:
        assert _labelled_by(result["OBJECTS"]) == '"label"'
        assert _labelled_by(result["RELATIONS"]) == '"predicate"'
    finally:
        QgsProject.instance().removeAllMapLayers()


def test_parseanswers_layers_load_styled(plugin, processing, tmp_path):
    answers = tmp_path / "graph.txt"
    answers.write_text(GRAPH + "\n")
    result = processing.runAndLoadResults("geovlm:parseanswers", {
        "INPUT": str(answers), "FAMILY": "skysensegpt", "OBJECTS": str(tmp_path / "o.gpkg"),
        "RELATIONS": str(tmp_path / "r.gpkg")})
    try:
        assert _labelled_by(result["OBJECTS"]) == '"label"'
        assert _labelled_by(result["RELATIONS"]) == '"predicate"'
    finally:
        QgsProject.instance().removeAllMapLayers()
