"""geovlm:askmap's scene graph task with no QUESTION asks the default scene-graph question, as
geovlm:detecttiles and `geovlm detect` do, rather than refusing the run."""
import sys
from pathlib import Path

from qgis.core import QgsProcessingFeedback, QgsRasterLayer

sys.path.insert(0, str(Path(__file__).parent))
from ask_engines import ScriptedEngine  # noqa: E402

GRAPH = ("<ref>building</ref><rbox>({<20><20><40><40>|<90>})</rbox> <rel>adjacent</rel> "
         "<ref>car</ref><rbox>({<60><60><70><70>|<90>})</rbox>.")


def test_scene_graph_without_a_question_asks_the_default_one(plugin, processing, data_dir):
    from geovlm.core.bulk import DEFAULT_GRAPH_QUESTION
    from geovlm.plugin.alg_ask_map import TASKS

    raster = QgsRasterLayer(str(data_dir / "rasters" / "cogeo.tif"), "cogeo")
    feedback = QgsProcessingFeedback()
    with ScriptedEngine("skysensegpt", GRAPH) as engine:
        result = processing.run("geovlm:askmap", {
            "LAYERS": [raster], "EXTENT": raster.extent(), "WIDTH": 256, "HEIGHT": 256,
            "TASK": TASKS.index("scene graph"), "QUESTION": "  ", "ENGINE": engine.url,
            "OBJECTS": "TEMPORARY_OUTPUT", "RELATIONS": "TEMPORARY_OUTPUT"}, feedback=feedback)
        sent = str(engine.posts[0]["messages"])
    assert DEFAULT_GRAPH_QUESTION in sent
    assert result["OBJECTS"].featureCount() == 2 and result["RELATIONS"].featureCount() == 1
    assert {f["question"] for f in result["OBJECTS"].getFeatures()} == {DEFAULT_GRAPH_QUESTION}
    assert "no QUESTION: asking the scene graph task's default" in feedback.textLog()
