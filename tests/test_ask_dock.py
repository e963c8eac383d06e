"""The "Ask the map" dock with a real canvas (rotated 30 degrees) over a real raster: a scripted engine and
the real demo-model engine; streamed text in order, features added once per answer where mapToPixel puts
them, follow-ups about the same image, Stop within a second, engine down, unload during an answer."""
import json
import math
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from qgis.core import (
    QgsApplication,
    QgsPointXY,
    QgsProject,
    QgsRasterLayer,
    QgsRectangle,
    QgsTask,
    QgsVectorLayer,
)
from qgis.PyQt.QtCore import QUrl
from qgis.PyQt.QtGui import QColor, QImage

import geovlm
from geovlm.core.parsing import parse_answer
from geovlm.core.profiles import get_profile

sys.path.insert(0, str(Path(__file__).parent))
from ask_engines import DemoEngine, ScriptedEngine  # noqa: E402
from qt_support import wait_for  # noqa: E402
from test_ask_map import padded_input  # noqa: E402

ANSWER = "two fields {<10><20><40><60>|<90>} {<50><15><80><45>|<120>} beside a road {<5><70><95><90>|<60>}"


@pytest.fixture()
def dock(qgis_iface, qgis_canvas, qgis_new_project, data_dir, tmp_path):
    raster = QgsRasterLayer(str(data_dir / "rasters" / "cogeo.tif"), "cogeo")
    QgsProject.instance().addMapLayer(raster)
    QgsProject.instance().setFileName(str(tmp_path / "project.qgz"))
    qgis_canvas.window().show()  # a hidden canvas gets no resize event: its map settings keep an old size
    assert wait_for(lambda: qgis_canvas.mapSettings().outputSize() == qgis_canvas.viewport().size(), 5)
    assert qgis_canvas.mapSettings().outputSize().width() > 300
    qgis_canvas.setDestinationCrs(raster.crs())
    qgis_canvas.setLayers([raster])
    e = raster.extent()
    qgis_canvas.setExtent(QgsRectangle(e.xMinimum() + e.width() / 4, e.yMinimum() + e.height() / 4,
                                       e.xMaximum() - e.width() / 4, e.yMaximum() - e.height() / 4))
    qgis_canvas.setRotation(30)
    plugin = geovlm.classFactory(qgis_iface)
    plugin.initGui()
    plugin.open_ask_dock()
    assert plugin.ask.transport is None  # URLs go through QgisTransport, QGIS's network stack, as for a user
    qgis_iface.messageBar().clear_messages()
    yield plugin
    plugin.unload()
    qgis_canvas.setLayers([])  # before the next test clears the project: a shown canvas must not render them
    qgis_canvas.stopRendering()
    qgis_canvas.window().hide()
    QgsProject.instance().setFileName("")


def down_engine_url() -> str:
    """The URL of an engine that has just stopped: nothing listens there."""
    with ScriptedEngine("geochat", "") as engine:
        return engine.url


def ask(session, question, task="describe", wait=False):
    """Type `question`, pick `task` and Send; returns the AskTask once the view is rendered and the question
    asked. `wait`: also wait (30 s at most) until the answer or the failure is in, and assert that it came."""
    session.dock.question.setPlainText(question)
    session.dock.task.setCurrentText(task)
    session.send()
    assert wait_for(lambda: not session.renderer.active(), 30)  # the view is rendered, then the question asked
    assert session.task is not None
    task = session.task
    if wait:
        assert wait_for(lambda: not session.busy(), 30)
    return task


def objects_layers():
    return QgsProject.instance().mapLayersByName("geovlm_objects")


@pytest.fixture()
def python_errors(monkeypatch):
    """The exceptions a Qt slot raised during the test (PyQt hands them to sys.excepthook, which would only print
    them): a list of (type, value, traceback)."""
    errors = []
    monkeypatch.setattr(sys, "excepthook", lambda *info: errors.append(info))
    return errors


def test_dock_streams_in_order_and_adds_features_once_per_answer(dock, qgis_canvas, tmp_path):
    session = dock.ask
    with ScriptedEngine("geochat", ANSWER, piece_delay=0.002) as engine:
        session.engine = engine.url
        pieces = []
        ask(session, "Describe the image").token.connect(pieces.append)
        assert wait_for(lambda: not session.busy(), 30)
        assert "".join(pieces) == ANSWER and len(pieces) == len(range(0, len(ANSWER), 4))
        # What was sent: the rendered view padded to a square of GeoChat's colour, resized to its 504 px input.
        sent = QImage.fromData(engine.images[0], "PNG").convertToFormat(QImage.Format.Format_RGB32)
        assert sent == padded_input(session.view.image, 504, get_profile("geochat").pad_color)
        [layer] = objects_layers()
        assert layer.featureCount() == 3 and Path(layer.source().split("|")[0]) == tmp_path / "project_geovlm.gpkg"
        text = session.dock.transcript.toPlainText()
        assert "0 two fields" in text and "2 beside a road" in text  # one link per object

        # Where the boxes landed: the canvas's own mapToPixel, times its device pixel ratio.
        settings = qgis_canvas.mapSettings()
        dpr = settings.devicePixelRatio()
        size = (settings.deviceOutputSize().width(), settings.deviceOutputSize().height())
        expected = parse_answer(ANSWER, get_profile("geochat"), size).objects
        m2p = settings.mapToPixel()
        for feature, obj in zip(sorted(layer.getFeatures(), key=lambda f: f["object_id"]), expected):
            for point, (col, row) in zip(feature.geometry().asPolygon()[0], obj.polygon):
                pixel = m2p.transform(QgsPointXY(point))
                assert abs(pixel.x() * dpr - col) < 1e-6 and abs(pixel.y() * dpr - row) < 1e-6

        # Its link pans the map to the feature (and flashes it).
        road = next(f for f in layer.getFeatures() if f["object_id"] == 2)
        session.dock.transcript.anchorClicked.emit(QUrl(f"geovlm:{layer.id()}/{road.id()}"))
        assert road.geometry().boundingBox().contains(qgis_canvas.center())

        # A follow-up: the same image, the conversation so far, features appended to the same layer.
        ask(session, "How many fields are there?", "ask", wait=True)
        assert engine.images[1] == engine.images[0]
        roles = [m["role"] for m in engine.posts[1]["messages"]]
        assert roles == ["user", "assistant", "user"]
        assert engine.posts[1]["messages"][1]["content"] == ANSWER
        assert len(objects_layers()) == 1 and layer.featureCount() == 6
        assert "3 objects" in session.dock.transcript.toPlainText()
        assert "m²" in session.dock.transcript.toPlainText() or "km²" in session.dock.transcript.toPlainText()

        # New view: rendered again, a new conversation.
        session.new_view()
        ask(session, "Describe the image", wait=True)
        assert [m["role"] for m in engine.posts[2]["messages"]] == ["user"]
    md = session.export(str(tmp_path / "talk.md"))
    assert "How many fields" in Path(md).read_text() and (tmp_path / "talk_images" / "turn1.png").is_file()
    page = Path(session.export(str(tmp_path / "talk.html"))).read_text()
    assert "data:image/png;base64," in page and "EPSG:3857" in page


def test_stop_cancels_within_a_second(dock):
    session = dock.ask
    with ScriptedEngine("geochat", "a field " * 200, piece_delay=0.05) as engine:
        session.engine = engine.url
        pieces, ends = [], []
        task = ask(session, "Describe the image")
        task.token.connect(pieces.append)
        task.taskCompleted.connect(lambda: ends.append("completed"))
        task.taskTerminated.connect(lambda: ends.append("terminated"))  # QGIS shows "Task failed" for this
        assert wait_for(lambda: len(pieces) >= 2, 30)
        started = time.monotonic()
        session.dock.stop.click()
        assert wait_for(lambda: not session.busy(), 5)
        assert time.monotonic() - started < 1.0
    assert ends == ["completed"]  # a user's Stop is not a failure
    assert "stopped" in session.dock.transcript.toPlainText()
    assert session.dock.send.isEnabled() and not objects_layers()


@contextmanager
def task_statuses():
    """`with task_statuses() as statuses:` the QgsTask statuses the task manager reports within the block."""
    statuses = []
    record = lambda task_id, status: statuses.append(status)  # noqa: E731
    QgsApplication.taskManager().statusChanged.connect(record)
    try:
        yield statuses
    finally:
        QgsApplication.taskManager().statusChanged.disconnect(record)


def test_engine_down_gives_a_message_and_no_exception(dock, qgis_iface):
    """One message: the dock's (in the message bar and once in the GeoVLM log). The task ends completed: a
    terminated one makes QGIS say "Task failed" too."""
    session = dock.ask
    session.engine = down_engine_url()
    logged = []
    record = lambda message, tag, level: logged.append(message) if tag == "GeoVLM" else None  # noqa: E731
    QgsApplication.messageLog().messageReceived.connect(record)
    try:
        with task_statuses() as statuses:
            ask(session, "Describe the image", wait=True)
    finally:
        QgsApplication.messageLog().messageReceived.disconnect(record)
    [message] = qgis_iface.messageBar().get_messages(2) or qgis_iface.messageBar().get_messages(1)
    assert "down or unreachable" in message and "Traceback" not in message
    [line] = [line for line in logged if "down or unreachable" in line]  # the log says it once too
    assert message.endswith(line)
    assert QgsTask.TaskStatus.Complete in statuses and QgsTask.TaskStatus.Terminated not in statuses, statuses
    assert session.dock.send.isEnabled()


def test_unload_during_an_answer_leaves_no_running_task(qgis_iface, dock):
    session = dock.ask
    with ScriptedEngine("geochat", "a field " * 200, piece_delay=0.05) as engine:
        session.engine = engine.url
        pieces = []
        ask(session, "Describe the image").token.connect(pieces.append)
        assert wait_for(lambda: pieces, 30)
        dock.unload()
        assert dock.ask is None
        assert wait_for(lambda: QgsApplication.taskManager().countActiveTasks() == 0, 5)
    dock.initGui()  # the fixture unloads once more


def test_dock_with_the_real_demo_model(dock):
    session = dock.ask
    with DemoEngine() as engine:
        session.engine, session.max_tokens = engine.url, 24
        pieces = []
        ask(session, "Describe the image").token.connect(pieces.append)
        assert wait_for(lambda: not session.busy(), 240)
    turn = session.turns[-1]
    assert turn.answer and "".join(pieces) == turn.answer and turn.model == "geovlm-demo-random"
    assert "random stand-in" in session.dock.transcript.toPlainText()
    size = (session.view.frame.width, session.view.frame.height)
    expected = parse_answer(turn.answer, get_profile("geochat"), size).objects
    layers = objects_layers()
    assert (layers[0].featureCount() if layers else 0) == len(expected)


def test_sources_raster_rectangle_and_selected_feature(dock, qgis_iface, qgis_canvas):
    from qgis.core import QgsFeature, QgsGeometry, QgsVectorLayer

    from geovlm.core.client import image_size_of

    session = dock.ask
    with ScriptedEngine("geochat", ["a field {<10><20><40><60>|<90>}", "a road", "a roof"]) as engine:
        session.engine = engine.url
        session.dock.source.setCurrentIndex(session.dock.source.findData("raster"))
        session.dock.raster.setLayer(QgsProject.instance().mapLayersByName("cogeo")[0])
        ask(session, "Describe the image", wait=True)
        view = session.view.frame
        assert (view.width, view.height) == (1024, 1024)  # the raster at its own resolution
        assert image_size_of(engine.images[0]) == (504, 504)  # sent as GeoChat's input

        e = qgis_canvas.extent()
        session.rectangle = QgsRectangle(e.xMinimum(), e.yMinimum(), e.center().x(), e.center().y())
        session.dock.source.setCurrentIndex(session.dock.source.findData("rectangle"))
        ask(session, "Describe the image", wait=True)
        width, height = session.view.frame.width, session.view.frame.height
        assert width / height == pytest.approx(session.rectangle.width() / session.rectangle.height(), rel=0.01)
        assert image_size_of(engine.images[1]) == (504, 504)

        polygons = QgsVectorLayer("Polygon?crs=EPSG:3857", "parcels", "memory")
        feature = QgsFeature()
        c = qgis_canvas.center()
        feature.setGeometry(QgsGeometry.fromRect(QgsRectangle(c.x() - 20, c.y() - 20, c.x() + 20, c.y() + 20)))
        polygons.dataProvider().addFeatures([feature])
        QgsProject.instance().addMapLayer(polygons)
        polygons.selectAll()
        qgis_iface.setActiveLayer(polygons)
        session.dock.source.setCurrentIndex(session.dock.source.findData("selected"))
        ask(session, "", "identify", wait=True)
        asked = engine.posts[2]["messages"][0]["content"][1]["text"]
        assert asked.startswith("[identify] What is the object present at {<")
        assert engine.images[2] != engine.images[1]  # the visible map, rendered for this view


def test_task_picker_offers_only_the_engine_family_tasks(dock):
    session = dock.ask
    tasks = session.dock.task
    with ScriptedEngine("llava15", "x") as engine:
        session.engine = engine.url  # the dock asks the engine its family in a QgsTask
        assert wait_for(lambda: [tasks.itemText(i) for i in range(tasks.count())] == ["ask", "describe"], 10)
        assert engine.posts == []  # no question was sent for that
    with ScriptedEngine("skysensegpt", "x") as engine:
        session.engine = engine.url
        assert wait_for(lambda: "scene graph" in [tasks.itemText(i) for i in range(tasks.count())], 10)


@pytest.mark.parametrize("family", ["geochat", "skysensegpt", "earthdial", "minigptv2", "llava15", "qwen2vl",
                                    "qwen25vl", "florence2"])
def test_dock_places_each_family_answer_at_the_canvas_pixels(dock, qgis_canvas, family):
    from test_ask_map import FAMILY_ANSWERS, _recorded_earthdial

    answer = FAMILY_ANSWERS[family] or _recorded_earthdial()
    session = dock.ask
    with ScriptedEngine(family, answer) as engine:
        session.engine = engine.url
        ask(session, "What is here?", "ask", wait=True)
    settings = qgis_canvas.mapSettings()
    size = (settings.deviceOutputSize().width(), settings.deviceOutputSize().height())
    expected = parse_answer(answer, get_profile(family), size).objects
    [layer] = objects_layers()
    features = sorted(layer.getFeatures(), key=lambda f: f["object_id"])
    assert len(features) == len(expected) > 0, (size, answer, session.turns[-1].answer)
    m2p, dpr = settings.mapToPixel(), settings.devicePixelRatio()
    for feature, obj in zip(features, expected):
        assert feature["family"] == family
        for point, (col, row) in zip(feature.geometry().asPolygon()[0], obj.polygon):
            pixel = m2p.transform(QgsPointXY(point))
            assert abs(pixel.x() * dpr - col) < 1e-6 and abs(pixel.y() * dpr - row) < 1e-6


def test_an_unsaved_projects_answers_are_kept_in_the_profile_then_beside_the_saved_project(dock, tmp_path,
                                                                                          monkeypatch):
    """An unsaved project's answers go to a GeoPackage in GeoVLM's profile folder, not a temporary one: QGIS does
    not ask about them on quitting (`isTemporary`, what its "temporary layers" prompt checks), and they outlive
    the session: a project saved after them opens with them. Once the project is saved, new answers go beside
    it."""
    import gc
    import tempfile

    from geovlm.plugin import settings as engine_settings

    scratch = tmp_path / "tmp"  # the system's temporary folder for Qt and Python (the test's tmp_path lies in /tmp)
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    profile = tmp_path / "profile-geovlm"
    monkeypatch.setattr(engine_settings, "data_dir", lambda: profile)
    session = dock.ask
    QgsProject.instance().setFileName("")  # an unsaved project, the usual case
    with ScriptedEngine("geochat", ANSWER) as engine:
        session.engine = engine.url
        ask(session, "Describe the image", wait=True)
        [layer] = objects_layers()
        first = Path(layer.source().split("|")[0])
        assert layer.isValid() and layer.featureCount() == 3 and first.is_file()
        assert first.parent == profile / "answers" and first.name.startswith("answers-")
        assert not layer.isTemporary() and not any(lyr.isTemporary() for lyr in
                                                   QgsProject.instance().mapLayers().values())
        assert f"the project is not saved: features go to {first}" in session.dock.transcript.toPlainText()

        QgsProject.instance().write(str(tmp_path / "saved.qgz"))  # Ctrl+S
        session.new_view()
        ask(session, "Describe the image", wait=True)
    beside = tmp_path / "saved_geovlm.gpkg"
    assert beside.is_file() and first.is_file()
    layers = {Path(lyr.source().split("|")[0]): lyr for lyr in objects_layers()}
    assert layers[beside].featureCount() == 3 and layers[first].featureCount() == 3
    assert str(beside) in session.dock.transcript.toPlainText()
    assert "could not write" not in " ".join(str(m) for m in dock.iface.messageBar().get_messages(1))

    session.layers, session._retired_layers = None, []  # the session ends (QGIS quits)
    gc.collect()
    assert first.is_file()
    reopened = QgsProject()
    assert reopened.read(str(tmp_path / "saved.qgz"))
    [kept] = reopened.mapLayersByName("geovlm_objects")
    assert kept.isValid() and kept.featureCount() == 3  # the answers asked before the project was saved


def test_an_unsaved_projects_file_is_named_with_the_first_answer_that_has_features(dock, tmp_path, monkeypatch):
    """The GeoPackage of an unsaved project is written only with the first features: an answer without boxes
    does not name it; the first answer with boxes does, once."""
    from geovlm.plugin import settings as engine_settings

    monkeypatch.setattr(engine_settings, "data_dir", lambda: tmp_path / "profile-geovlm")
    QgsProject.instance().setFileName("")
    session = dock.ask
    with ScriptedEngine("geochat", ["Fields and a road.", ANSWER, ANSWER]) as engine:
        session.engine = engine.url
        ask(session, "Describe the image", wait=True)
        assert "features go to" not in session.dock.transcript.toPlainText() and not objects_layers()
        ask(session, "And the fields?", "ask", wait=True)
        [layer] = objects_layers()
        path = Path(layer.source().split("|")[0])
        assert path.is_file()
        assert session.turns[1].notes[0].startswith(f"the project is not saved: features go to {path}")
        assert not any("features go to" in note for note in session.turns[0].notes)
        ask(session, "And again?", "ask", wait=True)
    assert session.dock.transcript.toPlainText().count("features go to") == 1


def test_engine_header_follows_the_options_and_the_engine_used(dock):
    """Settings ▸ Options ▸ GeoVLM saved (OK): the header names the engine now configured, once, with one state word."""
    from geovlm.plugin import settings as engine_settings
    from geovlm.plugin.ask_map import worded
    from geovlm.plugin.engine_manager import state_text
    from geovlm.ui.options_page import GeoVlmOptionsPage

    session, header = dock.ask, dock.ask.dock.engine_state
    session.engine = ""  # the configured engine
    engine_settings.save(engine_settings.EngineSettings(mode="local"))
    try:
        with ScriptedEngine("geochat", ANSWER) as first, ScriptedEngine("llava15", "two fields") as second:
            page = GeoVlmOptionsPage()
            page.remote_radio.setChecked(True)
            page.endpoints.add(first.url)
            page.apply()
            assert header.text() == f"Engine (remote: {first.url}): not asked yet"
            ask(session, "Describe the image", wait=True)
            assert header.text() == f"Engine (remote: {first.url}): ready" and len(first.posts) == 1

            page.endpoints.item(0, 0).setText(second.url)
            page.apply()
            assert header.text() == f"Engine (remote: {second.url}): not asked yet"
            tasks = session.dock.task
            assert wait_for(lambda: [tasks.itemText(i) for i in range(tasks.count())] == ["ask", "describe"], 10)
            ask(session, "Describe the image", "describe", wait=True)
            assert header.text() == f"Engine (remote: {second.url}): ready" and len(second.posts) == 1
            assert [tasks.itemText(i) for i in range(tasks.count())] == ["ask", "describe"]

            page.endpoints.item(0, 0).setText(first.url)
            page.apply()
            ask(session, "Describe the image", "describe", wait=True)  # at once: the last engine's family is not forced
            sent = first.posts[-1]["messages"][0]["content"][1]["text"]
            assert sent == worded(get_profile("geochat"), "describe", "Describe the image")

            page.local_radio.setChecked(True)
            page.apply()
            text = header.text()
            words = state_text(session.manager.state, session.manager.detail)  # the Options page's words
            assert text == "Engine (local): " + words and "127.0.0.1" not in text
            assert not session.dock.restart.isVisible()
    finally:
        engine_settings.save(engine_settings.EngineSettings())


def test_the_family_probe_of_a_silent_engine_stops_within_a_second(qgis_app):
    """FamilyProbe shares AskTask's cancel (plugin.ask_task.EngineTask): cancel() aborts its /v1/models
    request to an engine that accepts the connection and never answers."""
    import socket

    from qgis.core import QgsTask

    from geovlm.plugin.ask_task import FamilyProbe

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        probe = FamilyProbe(f"http://127.0.0.1:{silent.getsockname()[1]}")
        token, ends, found = probe.cancel_token, [], []
        probe.found.connect(found.append)
        probe.taskCompleted.connect(lambda: ends.append("completed"))
        probe.taskTerminated.connect(lambda: ends.append("terminated"))
        QgsApplication.taskManager().addTask(probe)
        assert wait_for(lambda: probe.status() == QgsTask.TaskStatus.Running, 5)
        assert not wait_for(lambda: ends, 0.5)  # the request is waiting for an answer
        started = time.monotonic()
        probe.cancel()
        assert wait_for(lambda: ends, 5) and time.monotonic() - started < 1.0
    assert token.cancelled and ends == ["completed"] and found == []  # a silent failure: no "Task failed" either


def test_the_dock_fits_beside_qgis_panels_on_a_laptop_screen(qgis_app):
    from geovlm.ui.ask_dock import AskDock

    dock = AskDock()
    try:
        dock.resize(300, 800)
        dock.show()
        QgsApplication.processEvents()
        # QGIS's own panels are about 300 px wide: one wide row (five buttons, or the source picker's longest
        # title) made this dock 580 px at least, which pushed the window past a 1600 px screen
        assert dock.minimumSizeHint().width() <= 340
        assert dock.source.itemText(1) == "One raster layer, at its own resolution"  # the list keeps whole titles
    finally:
        dock.close()
        dock.deleteLater()


def test_a_map_showing_no_layer_is_not_asked_about(dock, qgis_iface, qgis_canvas):
    session = dock.ask
    qgis_canvas.setLayers([])  # every layer turned off: the view would be a blank image
    with ScriptedEngine("geochat", ANSWER) as engine:
        session.engine = engine.url
        session.dock.question.setPlainText("What is here?")
        session.send()
        assert session.task is None and engine.posts == []
    [message] = qgis_iface.messageBar().get_messages(1)
    assert message == "GeoVLM:the map shows no layer: add a layer, or turn one on, to ask about it"


def test_a_failed_first_question_does_not_pin_its_view(dock, qgis_canvas):
    """The engine is not there for the first question: the next Send, after the map was turned, asks about
    the map as it is then, not about the view rendered for the question that got no answer."""
    session = dock.ask
    session.engine = down_engine_url()
    ask(session, "What is on this map?", wait=True)
    assert session.turns[-1].answer == "" and session.view is None  # no answer: no image kept
    qgis_canvas.setRotation(60)
    assert wait_for(lambda: qgis_canvas.mapSettings().rotation() == 60, 5)
    with ScriptedEngine("geochat", ANSWER) as engine:
        session.engine = engine.url
        ask(session, "What is on this map?", wait=True)
        assert session.view.rotation == 60 and session.turns[-1].answer == ANSWER
        sent = QImage.fromData(engine.images[0], "PNG").convertToFormat(QImage.Format.Format_RGB32)
        assert sent == padded_input(session.view.image, 504, get_profile("geochat").pad_color)
    assert "earlier view" not in session.dock.transcript.toPlainText()


def test_a_follow_up_keeps_the_answered_view_and_says_so_when_the_map_moved(dock, qgis_canvas):
    session = dock.ask
    with ScriptedEngine("geochat", ANSWER) as engine:
        session.engine = engine.url
        ask(session, "Describe the image", wait=True)
        ask(session, "And the road?", "ask", wait=True)  # the map has not moved: nothing to say
        assert "earlier view" not in session.dock.transcript.toPlainText()
        qgis_canvas.setRotation(0)
        assert wait_for(lambda: qgis_canvas.mapSettings().rotation() == 0, 5)
        ask(session, "How many fields are there?", "ask", wait=True)
        assert engine.images[2] == engine.images[0] and session.view.rotation == 30  # the same image, on purpose
        text = session.dock.transcript.toPlainText()
        assert "about the earlier view (the map has changed since): New view asks about the map as it is now" in text
        session.new_view()
        ask(session, "Describe the image", wait=True)
        assert session.view.rotation == 0 and engine.images[3] != engine.images[0]


def test_a_view_with_no_layer_under_it_is_not_asked_about(dock, qgis_iface, qgis_canvas):
    session = dock.ask
    qgis_canvas.setExtent(QgsRectangle(0, 0, 1000, 1000))  # the Gulf of Guinea: cogeo.tif is in Korea
    assert wait_for(lambda: qgis_canvas.mapSettings().visibleExtent().xMaximum() < 1e5, 5)
    with ScriptedEngine("geochat", ANSWER) as engine:
        session.engine = engine.url
        session.dock.question.setPlainText("What is here?")
        session.send()
        assert session.task is None and not session.renderer.active() and engine.posts == []
    [message] = qgis_iface.messageBar().get_messages(1)
    assert message == ("GeoVLM:nothing of the layers ('cogeo') lies in the view: pan or zoom to a layer to ask "
                       "about it")


def test_a_layer_that_cannot_be_read_is_not_asked_about(dock, qgis_iface, qgis_canvas, data_dir, tmp_path):
    session = dock.ask
    missing = QgsRasterLayer(str(tmp_path / "moved.tif"), "moved")  # a project's layer whose file is gone
    assert not missing.isValid()
    QgsProject.instance().addMapLayer(missing)
    qgis_canvas.setLayers([missing, *qgis_canvas.layers()])
    corrupt = QgsRasterLayer(str(data_dir / "rasters" / "corrupt.tif"), "corrupt")
    assert corrupt.isValid()  # its header opens; its full-resolution tiles cannot be read
    QgsProject.instance().addMapLayer(corrupt)
    with ScriptedEngine("geochat", ANSWER) as engine:
        session.engine = engine.url
        session.dock.question.setPlainText("What is here?")
        session.send()
        assert session.task is None and not session.renderer.active()
        [message] = qgis_iface.messageBar().get_messages(1)
        assert message.startswith("GeoVLM:layer 'moved' cannot be read") and "\n" not in message
        assert message.endswith(": turn off that layer or fix its source")

        qgis_iface.messageBar().clear_messages()
        session.dock.source.setCurrentIndex(session.dock.source.findData("raster"))
        session.dock.raster.setLayer(corrupt)
        session.send()  # rendered (the render finds the damaged tiles), then refused
        assert wait_for(lambda: not session.busy(), 30)
        assert session.task is None and session.view is None and engine.posts == []
    [message] = qgis_iface.messageBar().get_messages(1)
    assert message.startswith("GeoVLM:layer 'corrupt' cannot be read: ") and "IReadBlock failed" in message
    assert "nothing was sent" in session.dock.transcript.toPlainText()


def test_a_view_in_which_no_layer_drew_is_not_asked_about(dock, qgis_iface, data_dir, tmp_path):
    """all-nodata.tif lies in the view but draws no pixel: the dock renders it (asynchronously), finds only the
    background, and refuses in one line, sending nothing. A raster drawn in exactly the background colour
    (white on white) is asked about."""
    from test_ask_map import _white_raster

    from geovlm.plugin.view_checks import only_background

    session = dock.ask
    nodata = QgsRasterLayer(str(data_dir / "rasters" / "all-nodata.tif"), "all-nodata")
    white = QgsRasterLayer(str(_white_raster(tmp_path / "white.tif", nodata.crs().toWkt(), (342000, 1600000))),
                           "white")
    assert nodata.isValid() and white.isValid()
    QgsProject.instance().addMapLayers([nodata, white])
    with ScriptedEngine("geochat", ANSWER) as engine:
        session.engine = engine.url
        session.dock.question.setPlainText("What is here?")
        session.dock.source.setCurrentIndex(session.dock.source.findData("raster"))
        session.dock.raster.setLayer(nodata)
        session.send()
        assert wait_for(lambda: not session.busy(), 30)
        assert session.task is None and session.view is None and engine.posts == []
        [message] = qgis_iface.messageBar().get_messages(1)
        assert message.startswith("GeoVLM:nothing of the layers was drawn in the view: every pixel is nodata or "
                                  "transparent") and "\n" not in message
        assert "nothing was sent" in session.dock.transcript.toPlainText()

        session.dock.raster.setLayer(white)
        ask(session, "What is here?", wait=True)
        assert len(engine.posts) == 1 and session.view is not None
        assert session.view.image.pixelColor(10, 10) == QColor(255, 255, 255)
        assert only_background(session.view_settings, session.view.image)  # drawn, in the background colour


def test_the_header_says_a_setup_is_running_and_what_it_left_once_it_ends(dock, tmp_path, monkeypatch):
    """While "Set up the local engine…" runs, the dock's header says so (the dialog's words), not the half-made
    venv's "unfinished set-up"; once it ends, the state it left."""
    from geovlm.plugin import engine_setup
    from geovlm.plugin import settings as engine_settings
    from geovlm.plugin.engine_manager import state_text

    venv = tmp_path / "engine-venv"
    monkeypatch.setattr(engine_settings, "venv_dir", lambda: venv)
    monkeypatch.setattr(engine_settings, "data_dir", lambda: tmp_path)
    slow = tmp_path / "python3"  # a Python whose "-m venv" makes the venv's folder, then takes its time
    slow.write_text(f'#!/bin/sh\nif [ "$1" = "-m" ]; then mkdir -p "$3/bin"; touch "$3/bin/python"; sleep 60; '
                    f'else exec {sys.executable} "$@"; fi\n')
    slow.chmod(0o755)
    session, header = dock.ask, dock.ask.dock.engine_state
    engine_settings.save(engine_settings.EngineSettings(mode="local"))
    try:
        session.engine = ""
        session.manager.refresh()
        assert wait_for(lambda: header.text() == "Engine (local): not set up", 5), header.text()
        task = engine_setup.EngineSetupTask(engine_setup.SetupPlan(action="install", python=str(slow), venv=venv,
                                                                   torch=""))
        ended = []
        task.done.connect(lambda ok, message: ended.append(message))
        QgsApplication.taskManager().addTask(task)
        assert wait_for(lambda: header.text() == "Engine (local): being set up…", 10), header.text()  # by itself
        assert wait_for(lambda: engine_settings.venv_python(venv).exists(), 30)  # the venv is half made
        session._engine_state()  # as any refresh of the header (a question, the Options saved) does
        assert header.text() == "Engine (local): being set up…"
        task.cancel()
        assert wait_for(lambda: ended, 30)
        words = engine_setup.SETUP_WORDS["incomplete"]  # what the cancelled set-up left
        assert wait_for(lambda: header.text() == f"Engine (local): {words}", 5), header.text()
        assert state_text(session.manager.state) == words
    finally:
        engine_settings.save(engine_settings.EngineSettings())


def _links(session):
    """The transcript's feature links, in order: their hrefs."""
    import re

    return re.findall(r'href="(geovlm:[^"]+)"', session.dock.transcript.toHtml())


def test_an_earlier_answers_link_pans_to_its_own_feature(dock, qgis_canvas, tmp_path, monkeypatch):
    """Once the project is saved, new answers go to another GeoPackage, whose feature ids start again at 1: a
    link of an answer asked before must still pan to that answer's feature, in the layer it was written to. A
    link whose layer was removed from the project says so in one line (no Python error)."""
    from geovlm.plugin import settings as engine_settings

    monkeypatch.setattr(engine_settings, "data_dir", lambda: tmp_path / "profile-geovlm")
    session = dock.ask
    QgsProject.instance().setFileName("")  # unsaved: the first answer goes to the profile's GeoPackage
    later = "a pond {<70><70><90><90>|<90>}"
    with ScriptedEngine("geochat", [ANSWER, later]) as engine:
        session.engine = engine.url
        ask(session, "Describe the image", wait=True)
        [first] = objects_layers()
        QgsProject.instance().write(str(tmp_path / "saved.qgz"))
        session.new_view()
        ask(session, "Describe the image", wait=True)
    assert len(objects_layers()) == 2
    links = _links(session)
    assert len(links) == 4  # three objects of the first answer, one of the second
    road = next(f for f in first.getFeatures() if f["object_id"] == 2)
    session.dock.transcript.anchorClicked.emit(QUrl(links[2]))
    assert road.geometry().boundingBox().contains(qgis_canvas.center())

    QgsProject.instance().removeMapLayer(first.id())
    qgis_iface = dock.iface
    qgis_iface.messageBar().clear_messages()
    centre = qgis_canvas.center()
    session._link(QUrl(links[0]))  # the slot itself: an exception would reach the test
    assert qgis_canvas.center() == centre
    said = " ".join(str(m) for m in qgis_iface.messageBar().get_messages(1))
    assert "no longer in the project" in said


def test_a_rectangle_drawn_before_the_maps_crs_changed_is_the_same_ground(dock, qgis_canvas):
    """A rectangle is drawn in the map's CRS of the time (metres of EPSG:3857 here); the project is then set to
    EPSG:4326. The view of that rectangle, and the region of an identify question about it, are the same ground,
    not its numbers read as degrees."""
    from qgis.core import QgsCoordinateReferenceSystem, QgsCoordinateTransform

    session = dock.ask
    qgis_canvas.setRotation(0)
    e = qgis_canvas.extent()
    drawn = QgsRectangle(e.xMinimum(), e.yMinimum(), e.center().x(), e.center().y())
    session.drawing.extent_drawn(drawn)  # as the Draw rectangle tool reports it, in the canvas's CRS (EPSG:3857)
    wgs84 = QgsCoordinateReferenceSystem("EPSG:4326")
    qgis_canvas.setDestinationCrs(wgs84)
    assert wait_for(lambda: qgis_canvas.mapSettings().destinationCrs() == wgs84, 5)
    qgis_canvas.zoomToFullExtent()
    expected = QgsCoordinateTransform(QgsCoordinateReferenceSystem("EPSG:3857"), wgs84,
                                      QgsProject.instance()).transformBoundingBox(drawn)
    with ScriptedEngine("geochat", ["a field {<10><20><40><60>|<90>}", "a roof"]) as engine:
        session.engine = engine.url
        session.dock.source.setCurrentIndex(session.dock.source.findData("rectangle"))
        ask(session, "Describe the image", wait=True)
        xmin, ymin, xmax, ymax = session.view.extent
        assert session.view.frame.crs == "EPSG:4326"
        for got, want in zip((xmin, ymin, xmax, ymax), (expected.xMinimum(), expected.yMinimum(),
                                                        expected.xMaximum(), expected.yMaximum())):
            assert got == pytest.approx(want, abs=expected.width() * 1e-6)

        # identify about the rectangle: the region is where it lies in the view (the map, now in EPSG:4326)
        session.new_view()
        session.dock.source.setCurrentIndex(session.dock.source.findData("rectangle"))
        ask(session, "", "identify", wait=True)
        asked = engine.posts[1]["messages"][0]["content"][1]["text"]
        from geovlm.core.parsing import parse_answer
        from geovlm.core.profiles import get_profile

        frame = session.view.frame
        [region] = parse_answer(asked, get_profile("geochat"), (frame.width, frame.height)).objects
        ring = frame.to_map(region.polygon)
        xs, ys = [x for x, _ in ring], [y for _, y in ring]
        tolerance = max(frame.width, frame.height) * frame.geotransform.pixel_size[0] / 100  # GeoChat's unit
        assert min(xs) == pytest.approx(expected.xMinimum(), abs=tolerance)
        assert max(xs) == pytest.approx(expected.xMaximum(), abs=tolerance)
        assert min(ys) == pytest.approx(expected.yMinimum(), abs=tolerance)
        assert max(ys) == pytest.approx(expected.yMaximum(), abs=tolerance)


def test_an_identify_region_outside_the_view_is_not_asked_about(dock, qgis_iface, qgis_canvas):
    """A selected feature that lies wholly outside the view (off the visible map, or off the earlier view a
    follow-up is about, after the map was panned to it) would be sent as a box squeezed onto the image's border:
    it is refused in one line that says what to do, and nothing is sent."""
    from qgis.core import QgsFeature, QgsGeometry, QgsVectorLayer

    session = dock.ask
    raster = QgsProject.instance().mapLayersByName("cogeo")[0].extent()
    parcels = QgsVectorLayer("Polygon?crs=EPSG:3857", "parcels", "memory")
    corner = QgsFeature()  # the raster's top-left corner: outside the view of its middle half
    corner.setGeometry(QgsGeometry.fromRect(QgsRectangle(raster.xMinimum() + 5, raster.yMaximum() - 45,
                                                         raster.xMinimum() + 45, raster.yMaximum() - 5)))
    parcels.dataProvider().addFeatures([corner])
    QgsProject.instance().addMapLayer(parcels)
    parcels.selectAll()
    qgis_iface.setActiveLayer(parcels)
    with ScriptedEngine("geochat", ["a field {<10><20><40><60>|<90>}", "a roof"]) as engine:
        session.engine = engine.url
        session.dock.source.setCurrentIndex(session.dock.source.findData("selected"))
        session.dock.task.setCurrentText("identify")
        session.send()
        assert not session.busy() and engine.posts == []
        [message] = qgis_iface.messageBar().get_messages(1)
        assert "the selected feature lies outside the view" in message and "pan" in message

        # a follow-up about the earlier view, after the map was panned to the feature: the region lies off that view
        session.dock.source.setCurrentIndex(session.dock.source.findData("map"))
        ask(session, "Describe the image", wait=True)
        qgis_canvas.setCenter(corner.geometry().centroid().asPoint())
        session.dock.source.setCurrentIndex(session.dock.source.findData("selected"))
        qgis_iface.messageBar().clear_messages()
        session.dock.task.setCurrentText("identify")
        session.send()
        assert not session.busy() and len(engine.posts) == 1
        [message] = qgis_iface.messageBar().get_messages(1)
        assert "outside the view this conversation is about" in message and "New view" in message
        session.new_view()
        ask(session, "", "identify", wait=True)  # the map as it is now: the feature is in it
        assert engine.posts[1]["messages"][0]["content"][1]["text"].startswith("[identify] What is the object")


def test_export_takes_the_chosen_format_when_the_name_has_no_suffix(dock, tmp_path, monkeypatch):
    """A name typed without a suffix in Export… (Qt's own dialog adds none) was written as Markdown under that bare
    name whatever format was chosen: it gets the chosen format and its suffix."""
    from qgis.PyQt.QtWidgets import QFileDialog

    session = dock.ask
    for name, chosen, written in (("talk", "HTML (*.html)", "talk.html"), ("notes", "Markdown (*.md)", "notes.md"),
                                  ("page.htm", "Markdown (*.md)", "page.htm")):
        monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *a, n=name, c=chosen, **k: (str(tmp_path / n), c))
        session._export_dialog()
        assert (tmp_path / written).is_file() and (name == written or not (tmp_path / name).exists())
        text = (tmp_path / written).read_text()
        assert text.lstrip().lower().startswith("<!doctype html") == written.endswith((".html", ".htm")), text[:80]


@pytest.mark.parametrize("ellipsoid", ["NONE", "EPSG:7030"])
def test_how_large_one_object_reads_as_one_and_its_area_is_the_grounds(dock, ellipsoid):
    """A "how large" question about one object: "1 object, <area> in all" (not "1 objects"), and that area is
    the ground's, as the transcript says (ellipsoidal): the Web Mercator area of the feature times cos² of its
    latitude (within 1 %), also in a project whose ellipsoid is "None / Planimetric" (its planar Web Mercator
    area would be 1/cos² = 1.6 times too large here)."""
    import math
    import re

    from qgis.core import QgsCoordinateReferenceSystem, QgsCoordinateTransform

    session = dock.ask
    QgsProject.instance().setEllipsoid(ellipsoid)
    with ScriptedEngine("geochat", "a roof {<30><30><60><50>|<90>}") as engine:
        session.engine = engine.url
        ask(session, "How large is the roof?", "ask", wait=True)
    text = session.dock.transcript.toPlainText()
    assert "1 objects" not in text
    said = re.search(r"1 object, ([\d,.]+) (m²|km²|ha) in all", text)
    assert said, text
    [feature] = objects_layers()[0].getFeatures()
    geometry = feature.geometry()
    centre = geometry.centroid().asPoint()
    latitude = QgsCoordinateTransform(QgsCoordinateReferenceSystem("EPSG:3857"),
                                      QgsCoordinateReferenceSystem("EPSG:4326"),
                                      QgsProject.instance()).transform(centre).y()
    ground = geometry.area() * math.cos(math.radians(latitude)) ** 2
    value = float(said.group(1).replace(",", "")) * {"m²": 1, "km²": 1e6, "ha": 1e4}[said.group(2)]
    assert value == pytest.approx(ground, rel=0.01)


def test_an_identify_region_without_area_is_not_asked_about(dock, qgis_iface, qgis_canvas):
    """A selected point (or a straight line) has no area: sent, it was a box of zero size ({<50><50><50><50>|<90>}),
    about which a model can only guess. It is refused in one line that says what to select instead, and
    nothing is sent."""
    from qgis.core import QgsFeature, QgsGeometry, QgsPointXY, QgsVectorLayer

    session = dock.ask
    c = qgis_canvas.center()
    trees = QgsVectorLayer("Point?crs=EPSG:3857", "trees", "memory")
    tree = QgsFeature()
    tree.setGeometry(QgsGeometry.fromPointXY(QgsPointXY(c)))
    fence = QgsFeature()
    fence.setGeometry(QgsGeometry.fromPolylineXY([QgsPointXY(c.x() - 30, c.y()), QgsPointXY(c.x() + 30, c.y())]))
    fences = QgsVectorLayer("LineString?crs=EPSG:3857", "fences", "memory")
    trees.dataProvider().addFeatures([tree])
    fences.dataProvider().addFeatures([fence])
    QgsProject.instance().addMapLayers([trees, fences])
    qgis_canvas.setRotation(0)
    with ScriptedEngine("geochat", "a tree") as engine:
        session.engine = engine.url
        session.dock.source.setCurrentIndex(session.dock.source.findData("selected"))
        for layer in (trees, fences):
            layer.selectAll()
            qgis_iface.setActiveLayer(layer)
            qgis_iface.messageBar().clear_messages()
            session.dock.task.setCurrentText("identify")
            session.send()
            assert not session.busy() and engine.posts == []
            [message] = qgis_iface.messageBar().get_messages(1)
            assert "the selected feature has no area" in message and "draw a rectangle" in message


def test_the_drawn_rectangle_stays_on_the_map_while_it_is_the_source(dock, qgis_canvas):
    """QGIS's extent tool clears its outline on release: the rectangle the next question is about stays drawn (a
    rubber band on the canvas, not in the view sent), on the same ground after the map's CRS changes, hidden while
    another source is chosen, and gone when the plugin unloads."""
    from qgis.core import QgsCoordinateReferenceSystem, QgsCoordinateTransform
    from qgis.gui import QgsRubberBand

    def bands():
        return [item for item in qgis_canvas.scene().items() if isinstance(item, QgsRubberBand)]

    session = dock.ask
    session.dock.source.setCurrentIndex(session.dock.source.findData("rectangle"))
    qgis_canvas.setRotation(0)
    e = qgis_canvas.extent()
    drawn = QgsRectangle(e.xMinimum(), e.yMinimum(), e.center().x(), e.center().y())
    assert bands() == []
    session.drawing.extent_drawn(drawn)
    [band] = bands()
    assert band.isVisible() and band.asGeometry().boundingBox().toString(3) == drawn.toString(3)

    wgs84 = QgsCoordinateReferenceSystem("EPSG:4326")
    qgis_canvas.setDestinationCrs(wgs84)
    expected = QgsCoordinateTransform(QgsCoordinateReferenceSystem("EPSG:3857"), wgs84,
                                      QgsProject.instance()).transformBoundingBox(drawn)
    got = band.asGeometry().boundingBox()
    assert got.xMinimum() == pytest.approx(expected.xMinimum(), abs=1e-9)
    assert got.yMaximum() == pytest.approx(expected.yMaximum(), abs=1e-9)

    session.dock.source.setCurrentIndex(session.dock.source.findData("map"))
    assert not band.isVisible()
    session.dock.source.setCurrentIndex(session.dock.source.findData("rectangle"))
    assert band.isVisible()
    dock.unload()  # the fixture's own unload after this finds nothing left to do
    assert bands() == []


def test_after_identify_about_a_rectangle_a_question_about_the_rectangle_sees_it(dock, qgis_canvas):
    """identify about a drawn rectangle asks about the map (the rectangle is the region); a "describe" about
    that rectangle next must render the rectangle, not follow up on the map's image; identify then follows up
    on the rectangle's image, until a new rectangle is drawn."""
    session = dock.ask
    qgis_canvas.setRotation(0)
    e = qgis_canvas.extent()
    drawn = QgsRectangle(e.xMinimum() + e.width() / 4, e.yMinimum() + e.height() / 4, e.center().x(),
                         e.center().y())
    session.drawing.extent_drawn(drawn)
    session.dock.source.setCurrentIndex(session.dock.source.findData("rectangle"))
    with ScriptedEngine("geochat", ["a roof", "a field {<10><20><40><60>|<90>}", "a shed", "a pond"]) as engine:
        session.engine = engine.url
        ask(session, "", "identify", wait=True)
        map_extent = session.view.extent
        ask(session, "Describe the image", "describe", wait=True)
        assert engine.images[1] != engine.images[0]
        xmin, ymin, xmax, ymax = session.view.extent
        assert (xmin, ymin, xmax, ymax) != map_extent
        assert xmin == pytest.approx(drawn.xMinimum()) and ymax == pytest.approx(drawn.yMaximum())
        ask(session, "", "identify", wait=True)  # the same rectangle: a follow-up on its own image
        assert engine.images[2] == engine.images[1]
        session.drawing.extent_drawn(QgsRectangle(drawn.xMinimum() + 10, drawn.yMinimum() + 10, drawn.xMinimum() + 60,
                                    drawn.yMinimum() + 60))
        # a new rectangle ends the conversation about the old one's image: the map
        ask(session, "", "identify", wait=True)
        assert engine.images[3] != engine.images[1] and session.view.extent == map_extent


def test_a_new_view_does_not_show_the_model_its_earlier_answers(dock):
    """The dock's answer layers join the map (outlines and labels): a new view of the same map is the same image,
    without them (a model shown its earlier boxes and their labels is led by them), also when only an answer layer
    would be left in the view."""
    session = dock.ask
    with ScriptedEngine("geochat", [ANSWER, "a road"]) as engine:
        session.engine = engine.url
        ask(session, "Describe the image", wait=True)
        [layer] = objects_layers()
        assert layer.featureCount() == 3 and layer in dock.iface.mapCanvas().layers()
        session.new_view()
        ask(session, "Describe the image", wait=True)
        assert engine.images[1] == engine.images[0]
        assert layer.id() not in [lyr.id() for lyr in session.view_settings.layers()]
        dock.iface.mapCanvas().setLayers([layer])  # only the answers are shown: nothing to ask about
        session.new_view()
        session.dock.question.setPlainText("Describe the image")
        session.send()
        assert not session.busy() and len(engine.posts) == 2


def test_a_new_project_starts_a_new_conversation_and_new_answer_layers(dock, qgis_canvas, tmp_path, monkeypatch,
                                                                      python_errors):
    """A new project (New in the Project menu), or opening another, clears the project: its layers are deleted.
    The next question is about the new project's map, and its answers go where the new project's go (an unsaved
    one's to the profile), never appended to the previous project's GeoPackage nor to a deleted layer (a Python
    error)."""
    from geovlm.plugin import settings as engine_settings

    monkeypatch.setattr(engine_settings, "data_dir", lambda: tmp_path / "profile-geovlm")
    session = dock.ask
    with ScriptedEngine("geochat", [ANSWER, "a road {<5><70><95><90>|<60>}"]) as engine:
        session.engine = engine.url
        ask(session, "Describe the image", wait=True)
        beside = tmp_path / "project_geovlm.gpkg"
        assert beside.is_file()

        assert not session.dock.preview.pixmap().isNull()
        QgsProject.instance().clear()  # New in the Project menu
        assert session.dock.preview.pixmap() is None or session.dock.preview.pixmap().isNull()  # not the old map
        raster = QgsRasterLayer(str(Path(__file__).resolve().parents[2] / "shared" / "data" / "rasters"
                                    / "cogeo.tif"), "cogeo")
        QgsProject.instance().addMapLayer(raster)
        qgis_canvas.setDestinationCrs(raster.crs())
        qgis_canvas.setLayers([raster])
        qgis_canvas.setExtent(raster.extent())
        session.dock.question.setPlainText("Describe the image")
        session.send()
        assert wait_for(lambda: not session.busy(), 30)
    assert python_errors == []
    assert len(engine.posts) == 2 and [m["role"] for m in engine.posts[1]["messages"]] == ["user"]  # a new talk
    [layer] = objects_layers()
    assert layer.featureCount() == 1
    assert Path(layer.source().split("|")[0]).parent == tmp_path / "profile-geovlm" / "answers"
    kept = QgsVectorLayer(f"{beside}|layername=geovlm_objects", "kept", "ogr")
    assert kept.featureCount() == 3


def test_drawing_a_rectangle_gives_the_map_tool_back(dock, qgis_canvas):
    """Draw rectangle borrows the map: once the rectangle is drawn (or Draw is turned off), the tool the user had
    (pan, here) is the map's tool again, not none (the map would no longer pan)."""
    from qgis.gui import QgsMapToolPan, QgsMapToolZoom

    session = dock.ask
    pan = QgsMapToolPan(qgis_canvas)
    qgis_canvas.setMapTool(pan)
    session.dock.source.setCurrentIndex(session.dock.source.findData("rectangle"))
    for finish in ("drawn", "off"):
        session.dock.draw.setChecked(True)
        assert qgis_canvas.mapTool() is not pan
        if finish == "drawn":
            size = qgis_canvas.mapSettings().outputSize()
            drag(qgis_canvas, (50, 50), (size.width() - 50, size.height() - 50))
        else:
            session.dock.draw.setChecked(False)
        assert qgis_canvas.mapTool() is pan
    session.dock.draw.setChecked(True)  # another tool picked while drawing: it stays, and Draw turns off
    zoom = QgsMapToolZoom(qgis_canvas, False)
    qgis_canvas.setMapTool(zoom)
    assert not session.dock.draw.isChecked() and qgis_canvas.mapTool() is zoom


def test_answers_after_their_layer_was_removed_go_to_it_again(dock, tmp_path, python_errors):
    """The user removes geovlm_objects from the project (which deletes that layer): the next answer adds it again,
    from the same GeoPackage, with the earlier features kept (no 'wrapped C/C++ object ... has been deleted')."""
    session = dock.ask
    with ScriptedEngine("geochat", [ANSWER, "a road {<5><70><95><90>|<60>}"]) as engine:
        session.engine = engine.url
        ask(session, "Describe the image", wait=True)
        [layer] = objects_layers()
        QgsProject.instance().removeMapLayer(layer.id())
        assert objects_layers() == []
        ask(session, "Where is the road?", "ask", wait=True)
    assert python_errors == []
    [layer] = objects_layers()
    assert layer.featureCount() == 4 and Path(layer.source().split("|")[0]) == tmp_path / "project_geovlm.gpkg"


@pytest.mark.parametrize("family, answer", [("earthdial", "[[10, 20, 40, 60, 0]]"),
                                            ("geochat", "{<10><20><40><60>|<90>}")])
def test_find_names_its_boxes_after_what_was_asked_for(dock, family, answer):
    """GeoChat and EarthDial answer a referring question with boxes only (shared/data/answers: EarthDial's
    refer answers hold no phrase): the features of "find" are named after the phrase asked for, as `geovlm
    parse` names them, not left without a label (the styled layer showed none, the transcript "0 rbox")."""
    session = dock.ask
    with ScriptedEngine(family, answer) as engine:
        session.engine = engine.url
        ask(session, "storage tanks", "find", wait=True)
    [feature] = objects_layers()[0].getFeatures()
    assert feature["label"] == "storage tanks"
    assert "0 storage tanks" in session.dock.transcript.toPlainText()


def test_another_source_or_closing_the_dock_while_drawing_gives_the_map_tool_back(dock, qgis_canvas):
    """Draw rectangle on, then another source chosen, or the dock closed: the map is not left with the extent tool
    (of a disabled button, or of a hidden dock)."""
    from qgis.gui import QgsMapToolPan

    session = dock.ask
    pan = QgsMapToolPan(qgis_canvas)
    qgis_canvas.setMapTool(pan)
    session.dock.source.setCurrentIndex(session.dock.source.findData("rectangle"))
    session.dock.draw.setChecked(True)
    assert qgis_canvas.mapTool() is not pan
    session.dock.source.setCurrentIndex(session.dock.source.findData("map"))
    assert not session.dock.draw.isChecked() and qgis_canvas.mapTool() is pan
    session.dock.source.setCurrentIndex(session.dock.source.findData("rectangle"))
    session.dock.draw.setChecked(True)
    assert qgis_canvas.mapTool() is not pan
    session.dock.close()
    assert not session.dock.draw.isChecked() and qgis_canvas.mapTool() is pan


def test_the_first_answer_of_an_unsaved_project_logs_no_ogr_warning(dock, tmp_path, monkeypatch):
    """The first answer makes the profile's new GeoPackage without OGR opening it before it exists: QGIS's log
    said "[OGR] Cannot open .../answers-....gpkg.()" on every first answer. Later answers append to it silently
    too (the relations table is made in the existing file)."""
    from geovlm.plugin import settings as engine_settings

    monkeypatch.setattr(engine_settings, "data_dir", lambda: tmp_path / "profile-geovlm")
    QgsProject.instance().setFileName("")
    logged = []
    log = QgsApplication.messageLog()
    record = lambda message, tag, level: logged.append(f"[{tag}] {message}")  # noqa: E731
    log.messageReceived.connect(record)
    try:
        graph = ("<ref>cars</ref><rbox>({<30><40><20><10>|<90>})</rbox> <rel>parked alongside with</rel> "
                 "<ref>car_parking</ref><rbox>({<50><50><60><60>|<90>})</rbox>.")
        with ScriptedEngine("skysensegpt", graph) as engine:
            dock.ask.engine = engine.url
            ask(dock.ask, "Describe the image", wait=True)
            ask(dock.ask, "And now?", wait=True)
    finally:
        log.messageReceived.disconnect(record)
    [layer] = objects_layers()
    [relations] = QgsProject.instance().mapLayersByName("geovlm_relations")
    assert layer.featureCount() == 4 and relations.featureCount() == 2, dock.ask.dock.transcript.toPlainText()
    assert Path(layer.source().split("|")[0]).parent == tmp_path / "profile-geovlm" / "answers"
    assert [line for line in logged if "OGR" in line or "Cannot open" in line] == []


def test_a_scene_graphs_relations_are_listed_and_linked_to_their_features(dock, qgis_canvas):
    """A scene-graph answer lists its relations beside its objects ("0 building — adjacent → 1 building"), each a
    link that pans the map to its relation feature, as the object links do to theirs."""
    graph = ("<ref>building</ref><rbox>({<20><20><10><10>|<90>})</rbox> <rel>adjacent</rel> "
             "<ref>building</ref><rbox>({<40><20><10><10>|<90>})</rbox>. "
             "<ref>car</ref><rbox>({<70><70><6><6>|<90>})</rbox> <rel>parked alongside with</rel> "
             "<ref>road</ref><rbox>({<80><80><8><30>|<90>})</rbox>.")
    session = dock.ask
    with ScriptedEngine("skysensegpt", graph) as engine:
        session.engine = engine.url
        ask(session, "Describe the image", wait=True)
    [relations] = QgsProject.instance().mapLayersByName("geovlm_relations")
    assert relations.featureCount() == 2
    text = session.dock.transcript.toPlainText()
    assert "0 building — adjacent → 1 building" in text, text
    assert "2 car — parked alongside with → 3 road" in text, text
    html_text = session.dock.transcript.toHtml()
    for feature in relations.getFeatures():
        href = f"geovlm:{relations.id()}/{feature.id()}"
        assert href in html_text
        qgis_canvas.setCenter(QgsPointXY(0, 0))
        session.dock.transcript.anchorClicked.emit(QUrl(href))
        assert feature.geometry().boundingBox().buffered(1e-6).contains(qgis_canvas.center())
    from qgis.gui import QgsRubberBand  # the flashes end (a later test counts the canvas's rubber bands)
    assert wait_for(lambda: not [i for i in qgis_canvas.scene().items()
                                 if isinstance(i, QgsRubberBand) and i.isVisible()], 10)


@pytest.mark.parametrize("failing", ["drop", "silent"])
def test_an_engine_that_does_not_answer_is_given_up_soon_and_nothing_is_lost(dock, qgis_iface, failing):
    """An engine whose HTTP front is up (/v1/models answers) but which drops every chat request, or never answers
    one: the dock says at once what is happening (the engine by its address, "retrying (2)…"), gives up soon
    (plugin.ask_patience: retries for 15 s, 10 s for a reply to begin; a bulk job's client retries for 120 s and
    waits the 300 s request timeout), keeps the question in the box and the conversation so far, and Send asks
    it again, as the same follow-up, once the engine answers."""
    from geovlm.plugin.ask_patience import INTERACTIVE_RETRY_S, REPLY_WAIT_S

    session = dock.ask
    with ScriptedEngine("geochat", [ANSWER, "a road"]) as engine:
        session.engine = engine.url
        ask(session, "Describe the image", wait=True)
        engine.failing = failing
        seen = []
        started = time.monotonic()
        with task_statuses() as statuses:
            ask(session, "And the road?", "ask")
            assert wait_for(lambda: seen.append(session.dock.transcript.toPlainText()) or not session.busy(), 60)
        # the dock's line is the only message: the task ends completed (QGIS says "Task failed" for a terminated one)
        assert QgsTask.TaskStatus.Complete in statuses and QgsTask.TaskStatus.Terminated not in statuses, statuses
        took = time.monotonic() - started
        bound = INTERACTIVE_RETRY_S if failing == "drop" else 2 * REPLY_WAIT_S
        assert took < bound + 3 and engine.dropped >= 2, (took, engine.dropped)
        reason = "no reply within 10 s" if failing == "silent" else ""
        assert any(f"engine {engine.url} not answering ({reason}" in text and "retrying (2)…" in text
                   for text in seen)
        text = session.dock.transcript.toPlainText()
        assert "gave up after" in text and "the question is still in the box: Send asks it again" in text
        assert "retrying (" not in text  # the note goes with the question in flight
        assert session.dock.question.toPlainText() == "And the road?" and session.dock.send.isEnabled()
        assert len(session.history) == 2 and session.view is not None  # the conversation so far is kept
        [message] = qgis_iface.messageBar().get_messages(1)
        assert "gave up after" in message

        engine.failing = None
        session.send()  # the question still in the box, as a user presses Send
        assert wait_for(lambda: not session.busy(), 30)
    assert session.turns[-1].answer == "a road" and len(engine.posts) == 2
    assert [m["role"] for m in engine.posts[1]["messages"]] == ["user", "assistant", "user"]
    assert engine.images[1] == engine.images[0]


def drag(canvas, start, end, steps=5):
    """A drag with the left button from `start` to `end` (logical pixels of the canvas), as a user makes it:
    mouse events on the canvas's viewport, whichever map tool is on."""
    from qgis.PyQt.QtCore import QEvent, QPointF, Qt
    from qgis.PyQt.QtGui import QMouseEvent
    from qgis.PyQt.QtWidgets import QApplication

    left, none, plain = Qt.MouseButton.LeftButton, Qt.MouseButton.NoButton, Qt.KeyboardModifier.NoModifier
    path = [(start[0] + (end[0] - start[0]) * i / steps, start[1] + (end[1] - start[1]) * i / steps)
            for i in range(1, steps + 1)]
    events = ([(QEvent.Type.MouseButtonPress, start, left, left)]
              + [(QEvent.Type.MouseMove, p, none, left) for p in path]
              + [(QEvent.Type.MouseButtonRelease, end, left, none)])
    for kind, (x, y), button, buttons in events:
        QApplication.sendEvent(canvas.viewport(), QMouseEvent(kind, QPointF(x, y), button, buttons, plain))
        QgsApplication.processEvents()


def _red_box_model(png: bytes) -> str:
    """A stand-in LLaVA-1.5 that answers the box of the red pixels of the image it receives, in LLaVA-1.5's
    [x0, y0, x1, y1] fractions of its input (the plugin sends the view padded to a square of 336 px)."""
    image = QImage.fromData(png, "PNG").convertToFormat(QImage.Format.Format_RGB32)
    red = [(x, y) for y in range(image.height()) for x in range(image.width())
           if (lambda c: c.red() > 200 and c.green() < 80 and c.blue() < 80)(image.pixelColor(x, y))]
    if not red:
        return "I see no roof."
    xs, ys = [p[0] for p in red], [p[1] for p in red]
    w, h = image.width(), image.height()
    return f"the roof [{min(xs) / w:.4f}, {min(ys) / h:.4f}, {(max(xs) + 1) / w:.4f}, {(max(ys) + 1) / h:.4f}]"


def test_a_rectangle_dragged_on_a_turned_map_is_what_the_model_sees_and_its_box_lands_right(dock, qgis_canvas):
    """On a canvas turned 30 degrees, Draw rectangle's region is the rectangle dragged on screen (turned on the
    ground), not a map-aligned rectangle through the drag's corners (QGIS's extent tool): its outline, the view
    rendered for it (turned as the canvas, its corners at the dragged corners) and so what the model sees. A
    stand-in model answers the box of the red roof it sees; that box, georeferenced, covers the roof as the canvas
    shows it, to a pixel of the model's input."""
    from qgis.core import QgsFeature, QgsFillSymbol, QgsGeometry
    from qgis.gui import QgsRubberBand

    session = dock.ask
    assert qgis_canvas.rotation() == 30
    m2p = qgis_canvas.mapSettings().mapToPixel()
    width, height = qgis_canvas.mapSettings().outputSize().width(), qgis_canvas.mapSettings().outputSize().height()
    centre = m2p.toMapCoordinates(width // 2 + 30, height // 2 - 20)  # the roof: 40 px wide on the screen
    half = 20 * m2p.mapUnitsPerPixel()
    roof = QgsVectorLayer("Polygon?crs=EPSG:3857", "roof", "memory")
    feature = QgsFeature()
    feature.setGeometry(QgsGeometry.fromRect(QgsRectangle(centre.x() - half, centre.y() - half,
                                                          centre.x() + half, centre.y() + half)))
    roof.dataProvider().addFeatures([feature])
    roof.renderer().setSymbol(QgsFillSymbol.createSimple({"color": "255,0,0,255", "outline_style": "no"}))
    QgsProject.instance().addMapLayer(roof)
    qgis_canvas.setLayers([roof])  # on white: the only red there is
    screen_roof = [m2p.transform(QgsPointXY(p)) for p in feature.geometry().asPolygon()[0][:4]]
    roof_box = (min(p.x() for p in screen_roof), min(p.y() for p in screen_roof),
                max(p.x() for p in screen_roof), max(p.y() for p in screen_roof))

    session.dock.source.setCurrentIndex(session.dock.source.findData("rectangle"))
    session.dock.draw.setChecked(True)
    start, end = (width // 2 - 150, height // 2 - 110), (width // 2 + 170, height // 2 + 80)
    drag(qgis_canvas, start, end)
    assert not session.dock.draw.isChecked() and session.rectangle is not None
    dragged = [m2p.toMapCoordinates(x, y) for x, y in ((start[0], start[1]), (end[0], start[1]),
                                                       (end[0], end[1]), (start[0], end[1]))]
    [band] = [i for i in qgis_canvas.scene().items() if isinstance(i, QgsRubberBand) and i.isVisible()]
    geometry = band.asGeometry()
    outline = [QgsPointXY(v) for v in geometry.vertices()]
    assert len(outline) == 5 and max(min(p.distance(q) for q in outline) for p in dragged) < 1e-6  # map units

    with ScriptedEngine("llava15", _red_box_model) as engine:
        session.engine = engine.url
        ask(session, "Where is the roof?", "ask", wait=True)
    view = session.view
    assert view.rotation == 30  # turned as the canvas was: the screen rectangle, not a north-up one around it
    gt, frame = view.frame.geotransform, view.frame
    pixel = gt.pixel_size[0]  # ground length of one pixel of the view
    corners = [gt.to_map(c, r) for c, r in ((0, 0), (frame.width, 0), (frame.width, frame.height), (0, frame.height))]
    assert max(math.dist(c, (p.x(), p.y())) for c, p in zip(corners, dragged)) < pixel  # the view is the drag

    [layer] = objects_layers()
    [found] = list(layer.getFeatures())
    placed = [m2p.transform(QgsPointXY(p)) for p in found.geometry().asPolygon()[0][:4]]
    box = (min(p.x() for p in placed), min(p.y() for p in placed), max(p.x() for p in placed),
           max(p.y() for p in placed))
    input_pixel = max(frame.width, frame.height) / 336 * (end[0] - start[0]) / frame.width  # in canvas pixels
    assert box == pytest.approx(roof_box, abs=1.5 * input_pixel), (box, roof_box, engine.posts and session.turns[-1])
    assert all(min(abs(p.y() - box[1]), abs(p.y() - box[3])) < 1e-4 for p in placed)  # upright on the screen


def test_identify_about_a_rectangle_dragged_on_a_turned_map_asks_about_the_dragged_pixels(dock, qgis_canvas):
    """identify with a rectangle dragged on a canvas turned 30 degrees: the view is the map as the canvas shows it,
    and the region sent is the dragged screen rectangle, upright in the view's pixels (the pixels the user dragged,
    scaled to the view's size), not the turned outline of a north-up rectangle."""
    session = dock.ask
    size = qgis_canvas.mapSettings().outputSize()
    start, end = (size.width() // 2 - 120, size.height() // 2 - 60), (size.width() // 2 + 90, size.height() // 2 + 70)
    session.dock.source.setCurrentIndex(session.dock.source.findData("rectangle"))
    session.dock.draw.setChecked(True)
    drag(qgis_canvas, start, end)
    with ScriptedEngine("geochat", "a roof") as engine:
        session.engine = engine.url
        ask(session, "", "identify", wait=True)
        sent = engine.posts[0]["messages"][0]["content"][1]["text"]
    frame = session.view.frame
    assert session.view.rotation == 30
    sx, sy = frame.width / size.width(), frame.height / size.height()
    [region] = parse_answer(sent, get_profile("geochat"), (frame.width, frame.height)).objects
    xs, ys = [p[0] for p in region.polygon], [p[1] for p in region.polygon]
    got = (min(xs), min(ys), max(xs), max(ys))
    expected = (start[0] * sx, start[1] * sy, end[0] * sx, end[1] * sy)
    assert got == pytest.approx(expected, abs=0.01 * max(frame.width, frame.height)), (sent, got, expected)
    assert "|<90>}" in sent or "|<0>}" in sent  # upright in the view


def test_a_rectangle_dragged_on_a_turned_map_stays_the_same_ground_after_the_crs_changes(dock, qgis_canvas):
    """A rectangle dragged on a canvas turned 30 degrees (EPSG:3857), then the map set to UTM zone 52N (EPSG:32652,
    conformal as Web Mercator is: the rectangle stays a rectangle on the ground): the view rendered for it is that
    ground, turned as its top edge runs in UTM (30 degrees and the meridians' convergence there), its corners at the
    dragged corners to a pixel; not the north-up box around it. Set to a CRS that cannot show that ground (an
    orthographic view of the other hemisphere), the question is refused in one line and nothing is sent."""
    from qgis.core import QgsCoordinateReferenceSystem, QgsCoordinateTransform

    session = dock.ask
    m2p = qgis_canvas.mapSettings().mapToPixel()
    size = qgis_canvas.mapSettings().outputSize()
    start, end = (size.width() // 2 - 150, size.height() // 2 - 90), (size.width() // 2 + 130, size.height() // 2 + 70)
    session.dock.source.setCurrentIndex(session.dock.source.findData("rectangle"))
    session.dock.draw.setChecked(True)
    drag(qgis_canvas, start, end)
    mercator = QgsCoordinateReferenceSystem("EPSG:3857")
    dragged = [m2p.toMapCoordinates(x, y) for x, y in ((start[0], start[1]), (end[0], start[1]),
                                                       (end[0], end[1]), (start[0], end[1]))]
    utm = QgsCoordinateReferenceSystem("EPSG:32652")
    qgis_canvas.setDestinationCrs(utm)
    assert wait_for(lambda: qgis_canvas.mapSettings().destinationCrs() == utm, 5)
    back = QgsCoordinateTransform(utm, mercator, QgsProject.instance())
    with ScriptedEngine("geochat", "a roof") as engine:
        session.engine = engine.url
        ask(session, "Describe the image", "describe", wait=True)
        view = session.view
        assert view.frame.crs == "EPSG:32652" and len(engine.posts) == 1
        # turned as dragged: 30 degrees, less the convergence of UTM's grid to the meridians there (0.21 degrees at
        # 128.66 E, 37.67 N) and Web Mercator's own departure from conformality on the ellipsoid
        assert 29.5 < view.rotation < 30
        gt, frame = view.frame.geotransform, view.frame
        corners = [back.transform(*gt.to_map(c, r))
                   for c, r in ((0, 0), (frame.width, 0), (frame.width, frame.height), (0, frame.height))]
        # Web Mercator is not conformal on the ellipsoid (its north-south scale is 0.4 % off its east-west one
        # here): the rectangle dragged is a slightly sheared one on the ground, which the view holds all of
        pixel = m2p.mapUnitsPerPixel()  # a pixel of the canvas it was dragged on, in EPSG:3857 metres
        assert max(p.distance(q) for p, q in zip(corners, dragged)) < pixel
        there = QgsCoordinateTransform(mercator, utm, QgsProject.instance())
        inside = [gt.to_pixel(*(lambda p: (p.x(), p.y()))(there.transform(q))) for q in dragged]
        assert all(-1e-6 <= c <= frame.width + 1e-6 and -1e-6 <= r <= frame.height + 1e-6 for c, r in inside)

        qgis_iface = dock.iface
        qgis_iface.messageBar().clear_messages()
        other_side = QgsCoordinateReferenceSystem.fromProj("+proj=ortho +lat_0=-40 +lon_0=-50 +datum=WGS84 +units=m")
        qgis_canvas.setDestinationCrs(other_side)
        assert wait_for(lambda: qgis_canvas.mapSettings().destinationCrs() == other_side, 5)
        session.new_view()
        session.dock.question.setPlainText("Describe the image")
        session.send()
        assert not session.busy() and len(engine.posts) == 1
        [said] = qgis_iface.messageBar().get_messages(1)
        assert said.startswith("GeoVLM:the drawn rectangle (EPSG:3857) has no place in the map's CRS (")
        assert said.endswith("): draw it again") and "\n" not in said


def test_a_reopened_projects_answer_layers_are_not_shown_to_the_model_nor_added_twice(dock, qgis_iface,
                                                                                      qgis_canvas, tmp_path):
    """A project saved with the dock's answer layers and opened again (or the plugin reloaded): those layers are
    the project's, not the new dock's. The model must not see their boxes and labels (the view is the same image
    as before them), and the next answers are appended to them, not to a second `geovlm_objects` layer."""
    session = dock.ask
    with ScriptedEngine("geochat", ANSWER) as engine:
        session.engine = engine.url
        ask(session, "Describe the image", wait=True)
        [layer] = objects_layers()
        assert QgsProject.instance().write()
        dock.unload()  # QGIS closed, or the plugin reloaded
        QgsProject.instance().clear()
        assert QgsProject.instance().read(str(tmp_path / "project.qgz"))
        [reopened] = objects_layers()
        [raster] = QgsProject.instance().mapLayersByName("cogeo")
        qgis_canvas.setLayers([reopened, raster])  # as the Layers panel shows them: the answers on top
        dock.initGui()
        dock.open_ask_dock()
        session = dock.ask
        session.engine = engine.url
        ask(session, "Describe the image", wait=True)
    assert len(engine.images) == 2 and engine.images[1] == engine.images[0]
    assert [lyr.id() for lyr in objects_layers()] == [reopened.id()] and reopened.featureCount() == 6


def test_the_selection_highlight_is_not_drawn_into_the_image_the_model_sees(dock, qgis_iface, qgis_canvas):
    """QGIS draws selected features filled with its selection colour (opaque yellow). An identify question about
    the selected feature then showed the model a yellow blob where the object to identify is: the image sent is the
    map without the highlight, the same image as before the feature was selected."""
    from qgis.core import QgsFeature, QgsFillSymbol, QgsGeometry, QgsSingleSymbolRenderer, QgsVectorLayer

    session = dock.ask
    outlines = QgsVectorLayer("Polygon?crs=EPSG:3857", "parcels", "memory")
    outlines.setRenderer(QgsSingleSymbolRenderer(QgsFillSymbol.createSimple({"style": "no", "outline_style": "no"})))
    feature = QgsFeature()
    c = qgis_canvas.center()
    feature.setGeometry(QgsGeometry.fromRect(QgsRectangle(c.x() - 40, c.y() - 40, c.x() + 40, c.y() + 40)))
    outlines.dataProvider().addFeatures([feature])
    QgsProject.instance().addMapLayer(outlines)
    qgis_canvas.setLayers([outlines, *qgis_canvas.layers()])
    qgis_iface.setActiveLayer(outlines)
    with ScriptedEngine("geochat", "a roof") as engine:
        session.engine = engine.url
        ask(session, "Describe the image", wait=True)
        outlines.selectAll()
        session.new_view()
        session.dock.source.setCurrentIndex(session.dock.source.findData("selected"))
        ask(session, "", "identify", wait=True)
    assert len(engine.images) == 2 and engine.images[1] == engine.images[0]


def test_what_streamed_before_a_stop_stays_in_the_transcript(dock):
    """Stop mid-answer: the text that had streamed (read by the user as it came) vanished, leaving "stopped". It
    stays, said to be cut short and not placed on the map; the question stays in the box."""
    session = dock.ask
    with ScriptedEngine("geochat", "a field beside a road " * 60, piece_delay=0.05) as engine:
        session.engine = engine.url
        pieces = []
        ask(session, "Describe the image").token.connect(pieces.append)
        assert wait_for(lambda: len(pieces) >= 6, 30)
        session.dock.stop.click()
        assert wait_for(lambda: not session.busy(), 5)
    shown = session.dock.transcript.toPlainText()
    streamed = "".join(pieces)
    assert f"Model (cut short, not placed on the map): {streamed}" in shown.replace("\n", " ")
    assert shown.rstrip().endswith("stopped") and session.dock.question.toPlainText() == "Describe the image"
    assert not objects_layers()


def test_ctrl_enter_in_the_question_box_sends_it(dock):
    """Enter makes a new line of the question; Ctrl+Enter sends it, as Send does (nothing while a question runs)."""
    from qgis.PyQt.QtCore import Qt
    from qgis.PyQt.QtTest import QTest

    session = dock.ask
    session.dock.show()
    with ScriptedEngine("geochat", "a field", piece_delay=0.2) as engine:
        session.engine = engine.url
        box = session.dock.question
        box.setFocus()
        QTest.keyClicks(box, "Describe")
        QTest.keyClick(box, Qt.Key.Key_Return)
        QTest.keyClicks(box, "the image")
        assert box.toPlainText() == "Describe\nthe image" and not session.busy()
        QTest.keyClick(box, Qt.Key.Key_Return, Qt.KeyboardModifier.ControlModifier)
        assert session.busy()
        QTest.keyClick(box, Qt.Key.Key_Enter, Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.KeypadModifier)
        assert wait_for(lambda: not session.busy(), 30)
    assert len(engine.posts) == 1 and "Describe\nthe image" in json.dumps(engine.posts[0]["messages"]).replace(
        "\\n", "\n")


def test_the_raster_source_in_a_project_without_a_raster_says_so(dock, qgis_iface):
    """Source "One raster layer" in a project of vector layers only: "choose a raster layer" named nothing the user
    could choose; the line says that the project has none and what to do."""
    session = dock.ask
    QgsProject.instance().removeMapLayers([lyr.id() for lyr in QgsProject.instance().mapLayersByName("cogeo")])
    session.dock.source.setCurrentIndex(session.dock.source.findData("raster"))
    session.dock.question.setPlainText("Describe the image")
    session.send()
    [message] = qgis_iface.messageBar().get_messages(1)
    assert message.endswith("the project has no raster layer: add one, or choose another source (Visible map)")
    assert not session.busy()


def test_a_long_fast_answer_redraws_the_transcript_a_bounded_number_of_times(dock, monkeypatch):
    """A 22,000-character answer streamed as fast as an engine can: the whole transcript was set again for each
    four-character piece (5,500 times, each longer than the last), which froze QGIS for 26 s in a real QGIS. It is
    redrawn at most every 50 ms, and ends whole."""
    session = dock.ask
    answer = "a field beside a road " * 1000
    sets = []
    set_html = session.dock.transcript.setHtml
    monkeypatch.setattr(session.dock.transcript, "setHtml", lambda text: (sets.append(len(text)), set_html(text)))
    with ScriptedEngine("geochat", answer) as engine:
        session.engine = engine.url
        started = time.monotonic()
        ask(session, "Describe the image")
        assert wait_for(lambda: not session.busy(), 60)
        took = time.monotonic() - started
    assert len(sets) <= took / 0.05 + 10, (len(sets), took)  # 5,500 pieces
    assert answer.strip() in session.dock.transcript.toPlainText()


def test_the_docks_tasks_leave_their_outcome_to_the_dock(dock):
    """QGIS notifies "Task complete" (in its message bar where the desktop shows no notifications) for every
    task that is not silent: after each answer of a few seconds (seen in a real QGIS under Xvfb), beside the
    answer in the transcript. The dock's question and the family probe are silent tasks."""
    session = dock.ask
    with ScriptedEngine("geochat", "a road") as engine:
        session.engine = engine.url
        task = ask(session, "Describe the image", wait=True)
    assert task.flags() & QgsTask.Flag.Silent and task.flags() & QgsTask.Flag.CanCancel
