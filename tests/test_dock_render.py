"""The dock renders its view without blocking QGIS: the same pixels and frame as the synchronous render, the
Qt event loop runs while a slow layer (a COG read over HTTP from a deliberately slow loopback server) is drawn,
and Stop, closing the dock, New view or unloading during the render stop it with nothing sent to the engine."""
import sys
import time
from pathlib import Path

import pytest
from qgis.core import QgsApplication, QgsProject, QgsRasterLayer, QgsRectangle
from qgis.PyQt.QtCore import QTimer

sys.path.insert(0, str(Path(__file__).parent))
from ask_engines import ScriptedEngine  # noqa: E402
from qt_support import wait_for  # noqa: E402
from slow_http import SlowFileServer  # noqa: E402
from test_ask_dock import ANSWER, dock  # noqa: E402, F401 (the dock fixture)

from geovlm.plugin.ask_map import View, render, view_settings  # noqa: E402
from geovlm.plugin.view_render import ViewRender  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _render_async(settings, seconds=60):
    renderer, out = ViewRender(), []
    renderer.rendered.connect(lambda s, image, errors, drawn: out.append((s, image, errors)))
    renderer.start(settings)
    assert renderer.active()
    assert wait_for(lambda: out, seconds)
    assert not renderer.active()
    return out[0]


@pytest.mark.parametrize("path", ["shared:rasters/cogeo.tif", "repo:sample/aerial.tif"])
def test_the_asynchronous_render_is_the_synchronous_one(qgis_app, data_dir, path):
    where, name = path.split(":")
    layer = QgsRasterLayer(str((data_dir if where == "shared" else ROOT) / name), "r")
    assert layer.isValid()
    e = layer.extent()
    extent = QgsRectangle(e.xMinimum() + e.width() / 5, e.yMinimum() + e.height() / 4, e.xMaximum(),
                          e.yMaximum() - e.height() / 10)
    settings = view_settings([layer], layer.crs(), extent, 30.0, 700, 500, 2.0)
    expected = render(settings)
    rendered_settings, image, errors = _render_async(settings)
    assert errors == []
    assert (image.width(), image.height()) == (1400, 1000) and image.devicePixelRatio() == 1.0
    assert image == expected  # every pixel, and the format
    assert View.of(rendered_settings, image).frame == View.of(settings, expected).frame
    assert len({image.pixel(x, 500) for x in range(0, 1400, 7)}) > 20  # the raster was drawn, not a blank


def _far_raster(server, name="far COG"):
    layer = QgsRasterLayer(f"/vsicurl/{server.url}", name, "gdal")
    assert layer.isValid(), layer.error().summary()
    QgsProject.instance().addMapLayer(layer)
    return layer


def _ask_about(session, layer, question="Describe the image"):
    session.dock.source.setCurrentIndex(session.dock.source.findData("raster"))
    session.dock.raster.setLayer(layer)
    session.dock.question.setPlainText(question)
    session.dock.task.setCurrentText("describe")
    session.send()


def test_the_map_keeps_running_while_the_view_renders_and_stop_sends_nothing(dock, data_dir):  # noqa: F811
    session = dock.ask
    ticks = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(time.monotonic()))
    with SlowFileServer(data_dir / "rasters" / "cogeo.tif") as server, ScriptedEngine("geochat", ANSWER) as engine:
        session.engine = engine.url
        layer = _far_raster(server)
        server.delay = 2.0  # from now on every read of the raster waits two seconds
        reads = server.requests
        timer.start(10)
        started = time.monotonic()
        _ask_about(session, layer)
        assert time.monotonic() - started < 0.5  # send() returned while the raster is still being read
        assert session.renderer.active() and session.busy() and session.task is None
        assert "Rendering the view…" in session.dock.transcript.toPlainText()
        assert session.dock.stop.isEnabled() and not session.dock.send.isEnabled()
        ticks.clear()
        assert wait_for(lambda: len(ticks) >= 20, 1.5)  # a QTimer of the main thread fires meanwhile...
        assert session.renderer.active() and server.requests > reads  # ...while the render waits for its data

        session.dock.stop.click()
        assert not session.busy() and session.dock.send.isEnabled()
        assert "nothing was sent" in session.dock.transcript.toPlainText()
        wait_for(lambda: False, 2.5)  # the held read comes back and the cancelled job ends: still nothing sent
        assert engine.posts == [] and session.task is None and session.view is None

        server.delay = 0.5
        _ask_about(session, layer)  # asked again: rendered (slowly), then sent
        assert session.renderer.active()
        assert wait_for(lambda: not session.busy(), 30)
        assert len(engine.posts) == 1 and session.view.frame.width == 1024
    timer.stop()


def test_closing_the_dock_new_view_and_unload_cancel_the_render(dock, data_dir):  # noqa: F811
    session = dock.ask
    with ScriptedEngine("geochat", ANSWER) as engine:
        session.engine = engine.url
        for action in ("close", "new view", "unload"):
            with SlowFileServer(data_dir / "rasters" / "cogeo.tif") as server:  # a new URL: nothing cached
                layer = _far_raster(server, f"far COG ({action})")
                server.delay = 1.5
                _ask_about(session, layer)
                assert session.renderer.active()
                if action == "close":
                    session.dock.close()
                elif action == "new view":
                    session.new_view()
                else:
                    started = time.monotonic()
                    dock.unload()  # waits for the render job: nothing keeps drawing after the plugin is gone
                    assert time.monotonic() - started < 5
                    assert wait_for(lambda: QgsApplication.taskManager().countActiveTasks() == 0, 5)
                    wait_for(lambda: False, 2.0)
                    assert engine.posts == []
                    dock.initGui()  # the fixture unloads once more
                    break
                assert not session.busy() and not session.renderer.active()
                wait_for(lambda: False, 2.0)
                assert engine.posts == [] and session.task is None, action
                dock.open_ask_dock()
