"""The "Ask the map" dock when a question is refused before it goes out (a problem found on Send, an authentication
configuration that does not exist) or by an engine that is up (its key refused): the transcript says so as well as
the message bar, the question stays in the box, and the engine header says what is wrong, not that it is down."""
import sys
from pathlib import Path

from geovlm.plugin import settings as engine_settings

sys.path.insert(0, str(Path(__file__).parent))
from ask_engines import ScriptedEngine  # noqa: E402
from engine_http import EngineHandler, serve, url_of  # noqa: E402
from test_ask_dock import ANSWER, ask, dock  # noqa: E402,F401 (dock: the fixture)


def test_a_problem_found_on_send_is_in_the_transcript_and_the_question_stays(dock, qgis_iface):  # noqa: F811
    session = dock.ask
    session.dock.question.setPlainText("")
    session.dock.task.setCurrentText("describe")
    session.send()
    [message] = qgis_iface.messageBar().get_messages(1)
    assert message.endswith("type a question")
    text = session.dock.transcript.toPlainText()
    assert "type a question: nothing was sent" in text and not session.busy()


def test_an_authcfg_that_does_not_exist_is_said_and_the_engine_is_not_called_down(dock, qgis_iface):  # noqa: F811
    session = dock.ask
    session.engine = ""  # the configured engine
    try:
        with ScriptedEngine("geochat", ANSWER) as engine:
            engine_settings.save(engine_settings.EngineSettings(
                mode="remote", endpoints=[engine_settings.Endpoint(engine.url, "nosuch1")]))
            session._settings_changed()
            session.dock.question.setPlainText("Describe the image")
            session.dock.task.setCurrentText("describe")
            session.send()
            assert not session.busy() and engine.posts == []
            header = session.dock.engine_state.text()
            assert header == f"Engine (remote: {engine.url}): authcfg 'nosuch1' not found", header
            assert "does not exist" in session.dock.transcript.toPlainText()
            assert session.dock.question.toPlainText() == "Describe the image"
            [message] = qgis_iface.messageBar().get_messages(1)
            assert "'nosuch1' does not exist" in message
    finally:
        engine_settings.save(engine_settings.EngineSettings())


class _KeyedHandler(EngineHandler):
    """An engine that is up but wants a key this client does not send: every request gets HTTP 401."""

    def do_GET(self):  # noqa: N802
        self.send_json(401, {"error": {"message": "invalid API key", "type": "authentication_error"}})

    do_POST = do_GET


def test_a_refused_key_reads_key_refused_not_down(dock):  # noqa: F811
    session = dock.ask
    server = serve(_KeyedHandler)
    try:
        session.engine = url_of(server)
        ask(session, "Describe the image", wait=True)
        header = session.dock.engine_state.text()
        assert header == f"Engine (remote: {url_of(server)}): key refused (HTTP 401)", header
        assert "refused the request (HTTP 401)" in session.dock.transcript.toPlainText()
    finally:
        server.shutdown()
        server.server_close()


def test_copy_answer_is_enabled_once_there_is_an_answer_and_copies_its_raw_text(dock):  # noqa: F811
    from qgis.PyQt.QtGui import QGuiApplication

    session = dock.ask
    copy = session.dock.copy
    assert not copy.isEnabled() and "geovlm parse" in copy.toolTip()
    with ScriptedEngine("geochat", ANSWER) as engine:
        session.engine = engine.url
        ask(session, "Describe the image", wait=True)
    assert copy.isEnabled()
    QGuiApplication.clipboard().clear()
    copy.click()
    assert QGuiApplication.clipboard().text() == ANSWER
