"""The Ask dock with the plugin's own local engine (the real `geovlm serve` with the demo model, started by the
plugin's launcher) while it starts or restarts: a question waits for it instead of giving up after the dock's
15 s of retries (plugin.ask_engine_wait), is answered without Send pressed again once the engine is up, Stop
ends the wait with nothing sent, and a restart that fails gives the question back with one line."""
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from geovlm.core.transport import HttpClientTransport, HttpResponse, Transport

sys.path.insert(0, str(Path(__file__).parent))
import test_ask_dock  # noqa: E402
from qt_support import wait_for  # noqa: E402
from test_ask_dock import ask  # noqa: E402

dock = test_ask_dock.dock  # the dock fixture: a real canvas over cogeo.tif, the plugin loaded

RESTART_LOAD_S = 20.0  # a restart's model load: longer than the dock's 15 s of retries (ask_patience)


def engine_python(folder: Path, load_s: float, fails: bool = False, first_s: float = 0.0) -> str:
    """An engine Python (Settings ▸ Options ▸ GeoVLM) that runs this venv's `geovlm serve`: the first start after
    `first_s` seconds (at once by default), each later one (the launcher's restart after a crash) only after
    `load_s` seconds, as a model that takes that long to load; with `fails`, a later one then exits 1 with one
    error line instead."""
    marker = folder / "served-once"
    serve = 'sys.argv = ["geovlm"] + sys.argv[3:]; runpy.run_module("geovlm", run_name="__main__", alter_sys=True)'
    later = 'sys.exit("geovlm serve: cannot load the model: CUDA out of memory")' if fails else serve
    script = folder / "engine-python"
    script.write_text(
        "#!/bin/sh\n"
        'if [ "$3" = serve ]; then\n'
        f"  if [ -e {marker} ]; then\n"  # exec: the launcher's signals reach the Python that loads
        f"    exec {sys.executable} -c 'import runpy, sys, time; time.sleep({load_s}); {later}' \"$@\"\n"
        "  fi\n"
        f"  touch {marker}\n"
        f"  exec {sys.executable} -c 'import runpy, sys, time; time.sleep({first_s}); {serve}' \"$@\"\n"
        "fi\n"
        f'exec {sys.executable} "$@"\n')
    script.chmod(0o755)
    return str(script)


@pytest.fixture()
def local_settings(geovlm_settings):
    """`use(python)`: the dock's engine is the local one, run by `python`; the settings are cleared after."""
    from geovlm.plugin import settings as engine_settings

    def use(python: str) -> None:
        engine_settings.save(engine_settings.EngineSettings(mode="local", python=python))

    return use


def transcripts(session, seen):
    """A wait_for predicate's side effect: every header and transcript shown meanwhile, kept in `seen`."""
    seen.append(session.dock.engine_state.text() + "\n" + session.dock.transcript.toPlainText())


def send(session, question, task="ask"):
    """Type `question`, pick `task` and Send; returns once the view is rendered (the question is then asked,
    or held for the engine)."""
    session.dock.question.setPlainText(question)
    session.dock.task.setCurrentText(task)
    session.send()
    assert wait_for(lambda: not session.renderer.active(), 30)


def kill(manager) -> int:
    """SIGKILL the local engine (a crash: its launcher starts it again); its pid."""
    pid = manager.engine.pid
    os.kill(pid, signal.SIGKILL)
    return pid


class CrashingTransport(Transport):
    """The local engine's standard-library transport (`core.transport.HttpClientTransport`), which kills the
    engine (SIGKILL, `kill`) as the first streamed chat answer's first piece arrives: a crash while it answers,
    at a known point (the demo model answers in about a second). `killed`: the pid killed."""

    def __init__(self, manager):
        self.inner, self.manager, self.killed = HttpClientTransport(), manager, []

    def request(self, method, url, headers, body=None, timeout=60.0, cancel=None):
        response = self.inner.request(method, url, headers, body, timeout, cancel)
        if self.killed or not url.endswith("/chat/completions"):
            return response

        def chunks():
            for chunk in response.chunks():
                if not self.killed:
                    self.killed.append(kill(self.manager))
                yield chunk

        return HttpResponse(response.status, response.headers, chunks(), response.close)


def test_a_question_pending_while_the_local_engine_is_killed_and_restarted_is_answered(dock, local_settings,
                                                                                       tmp_path):
    """The engine killed while it streams its answer, its restart taking longer than the dock's 15 s of retries: the
    transcript says the engine restarts and loads its model, and the question is answered once it is up,
    Send not pressed again, as the same turn. Then a question sent while it restarts after another kill waits
    for it and is answered."""
    local_settings(engine_python(tmp_path, RESTART_LOAD_S))
    session = dock.ask
    session.engine, session.max_tokens = "local", 800
    manager = session.manager
    seen = []
    send(session, "Describe the image", "describe")  # the engine is stopped: this question starts it
    assert session.task is None and session.busy()  # it waits for the engine's start
    assert wait_for(lambda: transcripts(session, seen) or not session.busy(), 300)
    assert session.turns[-1].answer, seen[-1]
    assert any("local engine starting (loading the model: demo model)… the question is sent as soon as it is "
               "ready (at most 600 s, its start timeout)" in text for text in seen)

    session.new_view()  # a question without the conversation's long answer: within the demo model's context
    session.transport = crashing = CrashingTransport(manager)
    ask(session, "And the roads?", "ask")
    seen = []
    assert wait_for(lambda: transcripts(session, seen) or crashing.killed, 120), seen[-1]
    [first], killed_at = crashing.killed, time.monotonic()
    assert wait_for(lambda: transcripts(session, seen) or not session.busy(), RESTART_LOAD_S + 240)
    took = time.monotonic() - killed_at
    text = session.dock.transcript.toPlainText()
    assert session.turns[-1].answer and took > RESTART_LOAD_S, (took, text[-400:])
    assert manager.engine.restarts == 1 and manager.engine.pid != first and manager.state == "ready"
    assert any("local engine restarting: it was killed by signal 9; restart 1 of 3 (loading the model: demo "
               "model)… the question is sent as soon as it is ready (at most 600 s, its start timeout; 2 more "
               "restarts at most if this one fails)" in t for t in seen), seen[-1]
    assert any(t.startswith("Engine (local): restarting: it was killed by signal 9; restart 1 of 3 (loading the "
                            "model: demo model)…\n") for t in seen)  # the header says it too
    assert "Send asks it again" not in text and "gave up" not in text
    assert len(session.turns) == 2 and len(session.history) == 2  # one turn: asked again, not twice
    assert text.count("You (ask): And the roads?") == 1

    kill(manager)
    assert wait_for(lambda: manager.state == "starting", 10)
    seen = []
    session.new_view()
    send(session, "Any water?")
    assert session.task is None and session.busy()  # held, not sent to an engine loading its model
    assert wait_for(lambda: transcripts(session, seen) or not session.busy(), RESTART_LOAD_S + 240)
    assert session.turns[-1].question == "Any water?" and session.turns[-1].answer
    assert any("restart 2 of 3" in t and "the question is sent as soon as it is ready (at most 600 s, its start "
               "timeout; 1 more restart at most if this one fails)" in t for t in seen)
    assert len(session.turns) == 3 and "Send asks it again" not in session.dock.transcript.toPlainText()


def test_stop_ends_the_wait_and_a_restart_that_fails_gives_the_question_back(dock, local_settings, tmp_path,
                                                                             qgis_iface):
    """A question sent while the local engine restarts: Stop ends its wait (nothing sent, the question in the
    box); sent again, it waits until the launcher gives the engine up (each restart fails to load the model) and
    then the failure is one line, with the engine's own error, and the question stays in the box."""
    local_settings(engine_python(tmp_path, 3.0, fails=True))
    session = dock.ask
    session.engine, session.max_tokens = "local", 8
    manager = session.manager
    send(session, "Describe the image", "describe")  # starts the engine
    assert wait_for(lambda: not session.busy(), 300)
    assert session.turns[-1].answer
    kill(manager)
    assert wait_for(lambda: manager.state == "starting", 10)
    send(session, "And the roads?")
    assert session.busy() and session.task is None
    text = session.dock.transcript.toPlainText()
    assert "local engine restarting: it was killed by signal 9; restart 1 of 3" in text
    started = time.monotonic()
    session.dock.stop.click()
    assert not session.busy() and time.monotonic() - started < 1
    text = session.dock.transcript.toPlainText()
    assert text.endswith("stopped while waiting for the local engine to start: nothing was sent")
    assert session.dock.send.isEnabled() and session.dock.question.toPlainText() == "And the roads?"
    assert len(session.turns) == 1

    qgis_iface.messageBar().clear_messages()
    session.send()  # as a user presses Send again
    assert session.busy() and session.task is None
    assert wait_for(lambda: not session.busy(), 60)
    assert manager.state == "down"
    text = session.dock.transcript.toPlainText()
    line = ("the local engine did not start: geovlm serve: cannot load the model: CUDA out of memory — the "
            "question is still in the box: Send asks it again")
    assert text.endswith(line), text[-300:]
    assert session.dock.question.toPlainText() == "And the roads?" and session.dock.send.isEnabled()
    [message] = qgis_iface.messageBar().get_messages(1)
    assert message == "GeoVLM:the local engine did not start: geovlm serve: cannot load the model: CUDA out of memory"
    assert len(session.turns) == 1 and len(session.history) == 2  # nothing of the failed question kept


def test_stop_during_the_start_a_question_began_ends_the_question_and_the_engine_goes_on_starting(dock,
                                                                                                 local_settings,
                                                                                                 tmp_path):
    """The local engine does not run; the first question starts it (its model loads for a few seconds). Stop
    meanwhile ends the question (nothing sent, the question in the box) and only the question: the engine goes on
    starting, the header says so and then "ready", never "down" with Restart showing; Send then asks that engine."""
    local_settings(engine_python(tmp_path, 0.0, first_s=4.0))
    session = dock.ask
    session.engine, session.max_tokens = "local", 8
    manager = session.manager
    manager.settings_saved()  # as the Options' OK does
    assert manager.state == "stopped" and manager.engine is None
    send(session, "Describe the image", "describe")
    assert session.busy() and session.task is None and manager.state == "starting"
    assert session.dock.engine_state.text() == "Engine (local): starting (loading the model: demo model)…"
    assert ("local engine starting (loading the model: demo model)… the question is sent as soon as it is ready (at "
            "most 600 s, its start timeout)") in session.dock.transcript.toPlainText()
    assert wait_for(lambda: manager.engine is not None and manager.engine.pid, 30)  # its model loads now
    started = time.monotonic()
    session.dock.stop.click()
    assert not session.busy() and time.monotonic() - started < 1
    text = session.dock.transcript.toPlainText()
    assert text.endswith("stopped while waiting for the local engine to start: nothing was sent")
    assert session.dock.send.isEnabled() and session.dock.question.toPlainText() == "Describe the image"
    seen = []
    assert wait_for(lambda: transcripts(session, seen) or manager.state == "ready", 120), seen[-1]
    headers = {t.split("\n", 1)[0] for t in seen}
    assert {h for h in headers if not h.startswith("Engine (local): ready: ")} == {
        "Engine (local): starting (loading the model: demo model)…"}, headers
    assert not session.dock.restart.isVisible() and session.dock.engine_state.text().startswith("Engine (local): ready")
    assert not session.turns and "did not start" not in session.dock.transcript.toPlainText()

    pid = manager.engine.pid
    ask(session, "Describe the image", wait=True)  # Send again: the engine that was started answers
    assert session.turns[-1].answer and manager.engine.pid == pid and len(session.turns) == 1


def test_the_wait_lasts_while_the_launcher_restarts_and_ends_by_its_bound(qgis_app, tmp_path):
    """A crash loop: the engine killed, its first restart never answers /health (given up after the 3 s start
    timeout), its second comes up. A question's wait outlasts that start timeout, because the launcher goes on
    restarting, and ends ready; its bound is the launcher's (`LocalEngine.give_up_by`: this restart and the 2 left,
    each up to the start timeout), not one start timeout. An engine that never comes up and whose launcher says
    nothing is given up by that bound too (the launcher's last known one)."""
    from geovlm.plugin.ask_engine_wait import DESCRIBE_S, EngineWait
    from geovlm.plugin.engine_manager import EngineManager, LocalConfig

    launches = tmp_path / "launches"
    script = tmp_path / "engine-python"
    script.write_text(f"#!{sys.executable}\n" + FAKE_ENGINE.replace("LAUNCHES", repr(str(launches))))
    script.chmod(0o755)
    manager = EngineManager()
    try:
        manager.start(LocalConfig(str(script), "", "", 3.0))
        assert manager.state == "ready", manager.detail
        kill(manager)
        assert wait_for(lambda: manager.state == "starting", 10)
        bound = manager.give_up_by()
        assert bound is not None and 3 * 3.0 < bound - time.monotonic() < 3 * (3.0 + 15.0)  # 3 starts at most
        wait = EngineWait(manager, timeout_s=3.0)
        ready, failed = [], []
        wait.ready.connect(lambda: ready.append(time.monotonic()))
        wait.failed.connect(failed.append)
        started = time.monotonic()
        wait.start()
        assert wait_for(lambda: ready or failed, 60)
        assert ready and not failed, failed
        assert ready[0] - started > 3.0 and manager.engine.restarts == 2 and manager.state == "ready"
        assert launches.read_text() == "xxx"  # the first start, a restart that hung, one that came up
    finally:
        manager.stop()

    silent = EngineManager()  # said starting, its launcher's bound known, and then nothing more from it
    silent._set("starting", "was killed by signal 9; restart 1 of 3; loading the model: demo model")
    silent.give_up_by = lambda: started_at + 0.5
    started_at = time.monotonic()
    wait = EngineWait(silent, timeout_s=60.0)
    failed = []
    wait.failed.connect(failed.append)
    wait.start()
    assert wait_for(lambda: failed, DESCRIBE_S + 5)
    assert failed[0].startswith("the local engine was not ready within 10.5 s (as long as its launcher starts and "
                                "restarts it, up to its start timeout each time, 60 s, Settings ▸ Options ▸ GeoVLM)")


def test_a_start_cancelled_or_stopped_is_stopped_not_down(qgis_app, local_settings, tmp_path):
    """A start cancelled by its caller (a Processing run cancelled while the engine loads) or stopped (`stop`,
    unload) leaves the engine "stopped" (it starts on the next request), not "down" with the Restart button."""
    import threading

    from geovlm.core.transport import CancelToken
    from geovlm.engine.launcher import EngineStartError
    from geovlm.plugin.engine_manager import EngineManager, LocalConfig

    script = tmp_path / "engine-python"  # an engine whose model never finishes loading
    script.write_text(f"#!{sys.executable}\nimport sys, time\n"
                      "sys.exit(0) if sys.argv[1] == '-c' else time.sleep(600)\n")
    script.chmod(0o755)
    local_settings(str(script))
    manager = EngineManager()

    def start(token, outcome):
        try:
            manager.start(LocalConfig(str(script), "", "", 300.0), cancel=token)
        except EngineStartError as exc:
            outcome.append(str(exc))

    for how in ("cancel", "stop"):
        token, outcome = CancelToken(), []
        starter = threading.Thread(target=start, args=(token, outcome))
        starter.start()
        assert wait_for(lambda: manager.engine is not None and manager.engine.pid, 30)
        token.cancel() if how == "cancel" else manager.stop()
        starter.join(30)
        assert outcome == ["the engine was stopped while starting"]
        assert manager.state == "stopped" and manager.engine is None, (how, manager.state, manager.detail)


FAKE_ENGINE = """
import http.server, json, os, sys, time
args = sys.argv[1:]
if args[0] == "-c":  # the launcher asks whether geovlm can be imported
    sys.exit(0)
with open(LAUNCHES, "a") as out:
    out.write("x")
with open(LAUNCHES) as done:
    if len(done.read()) == 2:  # the first restart: a model that never finishes loading
        time.sleep(600)
ready, port = args[args.index("--ready-file") + 1], int(args[args.index("--port") + 1])
MODELS = json.dumps({"data": [{"id": "stand-in", "geovlm": {"device": "cpu"}}]}).encode()


class Engine(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = MODELS if self.path.endswith("/models") else b""
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


server = http.server.HTTPServer(("127.0.0.1", port), Engine)
with open(ready + ".tmp", "w") as out:
    json.dump({"url": f"http://127.0.0.1:{server.server_address[1]}"}, out)
os.replace(ready + ".tmp", ready)
server.serve_forever()
"""


def test_the_wait_is_bounded_by_the_engines_start_timeout(qgis_app):
    """An engine said starting that never comes up: the wait ends after its start timeout, in one line."""
    from geovlm.plugin.ask_engine_wait import EngineWait
    from geovlm.plugin.engine_manager import EngineManager

    manager = EngineManager()
    manager._set("starting", "loading the model: demo model")
    wait = EngineWait(manager, timeout_s=0.5)
    ready, failed = [], []
    wait.ready.connect(lambda: ready.append(True))
    wait.failed.connect(failed.append)
    started = time.monotonic()
    wait.start()
    assert wait_for(lambda: failed, 5) and not ready
    assert 0.45 <= time.monotonic() - started < 1.5  # a coarse Qt timer fires within 5 %
    assert failed == ["the local engine was not ready within 0.5 s (its start timeout, Settings ▸ Options ▸ GeoVLM)"]
    manager._set("ready", "demo")  # after the end: nothing more is said
    assert not wait_for(lambda: ready or len(failed) > 1, 0.2)


def test_a_question_waiting_for_the_local_engine_goes_to_the_engine_chosen_meanwhile(dock, local_settings):
    """While a question waits for the local engine (said starting), the dock's engine is set to a remote one
    (as the Options' OK does): the question goes there at once, not after the local engine's start."""
    from ask_engines import ScriptedEngine

    local_settings(sys.executable)
    session = dock.ask
    session.engine = "local"
    manager = session.manager
    manager._set("starting", "loading the model: demo model")  # as the launcher's restart says it
    try:
        send(session, "Describe the image", "describe")
        assert session.busy() and session.task is None
        assert "local engine starting (loading the model: demo model)…" in session.dock.transcript.toPlainText()
        with ScriptedEngine("geochat", "a road") as engine:
            session.engine = engine.url
            assert wait_for(lambda: not session.busy(), 30)
        assert session.turns[-1].answer == "a road" and len(engine.posts) == 1
    finally:
        manager.refresh()
