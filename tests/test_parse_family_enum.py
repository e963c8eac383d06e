"""geovlm:parseanswers' FAMILY list takes the family's name as its value: the Processing dialog opened with
FAMILY='earthdial' (as processing.createAlgorithmDialog, a Batch row, a run reopened from History or a model's
static value give it) parses with EarthDial's grammar, not the list's option 1 (GeoChat); the old numbers and the
titles are still read, and an unknown name is refused in one line."""
import sys
import time
from pathlib import Path

import pytest
from qgis.core import QgsApplication, QgsProcessingException, QgsProject, QgsSettings, QgsVectorLayer

from geovlm.core.profiles import family_names

sys.path.insert(0, str(Path(__file__).parent))
from bulk_support import browser_model_for_dialogs  # noqa: E402

# EarthDial's box (0-100 numbers, `[[x1, y1, x2, y2, θ]]`): GeoChat's grammar finds no box in it
EARTHDIAL_ANSWER = "[[10, 20, 30, 40, 0]]\n"


def params(tmp_path, family):
    answers = tmp_path / "a.txt"
    answers.write_text(EARTHDIAL_ANSWER)
    return {"INPUT": str(answers), "FAMILY": family, "FIELD": "answer", "IMAGE_SIZE": "200x100",
            "OBJECTS": str(tmp_path / f"o-{family}.gpkg")}


def objects_of(path):
    layer = QgsVectorLayer(str(path), "o", "ogr")
    assert layer.isValid()
    return sorted((f["family"], f.geometry().asWkt(3)) for f in layer.getFeatures())


EARTHDIAL_BOX = [("earthdial", "Polygon ((20 -20, 60 -20, 60 -40, 20 -40, 20 -20))")]


def test_the_family_list_holds_the_names_as_its_values(plugin):
    alg = QgsApplication.processingRegistry().algorithmById("geovlm:parseanswers")
    definition = alg.parameterDefinition("FAMILY")
    assert definition.usesStaticStrings() and definition.options() == list(family_names())
    assert definition.defaultValue() == "geochat"


def test_the_dialog_given_a_family_by_name_parses_with_its_grammar(plugin, processing, qgis_iface, tmp_path,
                                                                   monkeypatch):
    browser_model_for_dialogs(qgis_iface, monkeypatch)
    dialog = processing.createAlgorithmDialog("geovlm:parseanswers", params(tmp_path, "earthdial"))
    try:
        assert dialog.createProcessingParameters()["FAMILY"] == "earthdial"  # what Run and History get
        finished = []
        dialog.algorithmFinished.connect(lambda ok, results: finished.append((ok, results)))
        dialog.runAlgorithm()
        deadline = time.monotonic() + 60
        while not finished and time.monotonic() < deadline:
            QgsApplication.processEvents()
            time.sleep(0.02)
        assert finished and finished[-1][0], "the dialog's run did not succeed"
        assert objects_of(finished[-1][1]["OBJECTS"]) == EARTHDIAL_BOX
    finally:
        dialog.close()
        dialog.deleteLater()
        QgsProject.instance().removeAllMapLayers()


@pytest.mark.parametrize("family", ["earthdial", "EarthDial", family_names().index("earthdial"),
                                    str(family_names().index("earthdial"))])
def test_processing_run_takes_the_name_the_title_and_the_old_number(plugin, processing, tmp_path, family):
    result = processing.run("geovlm:parseanswers", params(tmp_path, family))
    assert objects_of(result["OBJECTS"]) == EARTHDIAL_BOX
    from geovlm.plugin.alg_parse_answers import remembered

    assert remembered()["FAMILY"] == "earthdial"


@pytest.mark.parametrize("family", ["gpt4", "99"])
def test_an_unknown_family_is_refused_in_one_line_and_nothing_written(plugin, processing, tmp_path, family):
    given = params(tmp_path, family)
    with pytest.raises(QgsProcessingException, match=f"unknown model family '{family}': one of llava15, "):
        processing.run("geovlm:parseanswers", given)
    assert not Path(given["OBJECTS"]).exists()


def test_a_number_remembered_by_an_older_geovlm_opens_as_its_name(plugin):
    from geovlm.plugin.alg_parse_answers import SETTINGS_KEY, remembered

    QgsSettings().setValue(f"{SETTINGS_KEY}/FAMILY", family_names().index("earthdial"))
    assert remembered()["FAMILY"] == "earthdial"
    QgsSettings().setValue(f"{SETTINGS_KEY}/FAMILY", 99)
    assert "FAMILY" not in remembered()  # the dialog opens on its default, not on a wrong family


def test_qgis_process_takes_the_name(tmp_path, qgis_process_env):
    import json
    import subprocess

    exe, env = qgis_process_env
    given = params(tmp_path, "earthdial")
    done = subprocess.run([str(exe), "--json", "run", "geovlm:parseanswers", "--",
                           *(f"{key}={value}" for key, value in given.items())],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert objects_of(json.loads(done.stdout)["results"]["OBJECTS"]) == EARTHDIAL_BOX


@pytest.mark.parametrize("family", ["earthdial", family_names().index("earthdial")])
def test_a_graphical_models_static_family_new_and_old(plugin, processing, tmp_path, family):
    """A model's child with FAMILY as a static value: the name (models saved now) or the list's number (models
    saved before the names were the values) both run EarthDial's grammar."""
    from qgis.core import (
        QgsProcessingContext,
        QgsProcessingFeedback,
        QgsProcessingModelAlgorithm,
        QgsProcessingModelChildAlgorithm,
        QgsProcessingModelChildParameterSource,
        QgsProcessingModelOutput,
    )

    given = params(tmp_path, family)
    child = QgsProcessingModelChildAlgorithm("geovlm:parseanswers")
    child.setChildId("parse")
    for key in ("INPUT", "FAMILY", "FIELD", "IMAGE_SIZE"):
        child.addParameterSources(key, [QgsProcessingModelChildParameterSource.fromStaticValue(given[key])])
    output = QgsProcessingModelOutput("objects")
    output.setChildOutputName("OBJECTS")
    output.setChildId("parse")
    child.setModelOutputs({"objects": output})
    model = QgsProcessingModelAlgorithm("family", "tests")
    model.addChildAlgorithm(child)
    model.updateDestinationParameters()
    context = QgsProcessingContext()
    context.setProject(QgsProject.instance())
    [destination] = [p.name() for p in model.destinationParameterDefinitions()]
    results, ok = model.run({destination: given["OBJECTS"]}, context, QgsProcessingFeedback())
    assert ok, results
    assert objects_of(given["OBJECTS"]) == EARTHDIAL_BOX
