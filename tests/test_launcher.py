"""The embedded local engine: a clean environment, the demo model by default, a failed start reported with
the engine's own error, a restart after a crash, a graceful stop; and the command line around it."""
import argparse
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from geovlm.cli.serve_cmds import engine_for
from geovlm.core.client import EngineClient
from geovlm.engine import launcher
from geovlm.engine.launcher import EngineStartError, LocalEngine, clean_environment

QGIS_VARIABLES = {
    "PYTHONPATH": "/usr/share/qgis/python",
    "PYTHONHOME": "/usr",
    "PROJ_LIB": "/qgis/proj",
    "PROJ_DATA": "/qgis/proj",
    "GDAL_DATA": "/qgis/gdal",
    "GDAL_DRIVER_PATH": "/qgis/gdalplugins",
    "QGIS_PREFIX_PATH": "/usr",
    "QT_PLUGIN_PATH": "/qgis/qt",
    "LD_LIBRARY_PATH": "/qgis/lib",
    "DYLD_LIBRARY_PATH": "/Applications/QGIS.app/Contents/MacOS/lib",
    "DYLD_FRAMEWORK_PATH": "/Applications/QGIS.app/Contents/Frameworks",
}


def png(seed=0) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (96, 64), (seed * 40 % 256, 120, 60)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_clean_environment_drops_what_qgis_sets():
    env = clean_environment({"PATH": "/usr/bin", "HOME": "/home/u", "GEOVLM_CACHE": "/c", **QGIS_VARIABLES})
    assert env["PATH"] == "/usr/bin" and env["HOME"] == "/home/u" and env["GEOVLM_CACHE"] == "/c"
    assert not set(QGIS_VARIABLES) & set(env)
    assert env["HF_HUB_OFFLINE"] == "1"


def test_a_failed_start_reports_the_engines_own_error(tmp_path):
    engine = LocalEngine(model=str(tmp_path / "no-such-model"), start_timeout=120)
    with pytest.raises(EngineStartError, match=r"exited with status 2(.|\n)*no-such-model does not exist"):
        engine.start()
    assert not engine.running()
    engine.stop()


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("geovlm-cache")


def test_local_engine_lifecycle(cache, tmp_path):
    # A QGIS-like environment whose PYTHONPATH would stop any Python that used it.
    poisoned = tmp_path / "qgis-python"
    poisoned.mkdir()
    (poisoned / "sitecustomize.py").write_text("raise SystemExit('the QGIS PYTHONPATH reached the engine')\n")
    env = {**os.environ, "GEOVLM_CACHE": str(cache), **QGIS_VARIABLES, "PYTHONPATH": str(poisoned)}
    engine = LocalEngine(env=env, extra_args=["--batch-window-ms", "1500"], start_timeout=240)
    try:
        url = engine.start()
        assert url.startswith("http://127.0.0.1:") and engine.running()
        if Path(f"/proc/{engine.pid}/environ").exists():
            environ = Path(f"/proc/{engine.pid}/environ").read_bytes().split(b"\0")
            names = {item.split(b"=", 1)[0].decode() for item in environ if item}
            assert not set(QGIS_VARIABLES) & names and "GEOVLM_API_KEY" in names
            assert engine.api_key.encode() not in Path(f"/proc/{engine.pid}/cmdline").read_bytes()

        client = EngineClient(url, api_key=engine.api_key, attempts=10, backoff=0.5)
        [model] = client.models()["data"]
        assert model["geovlm"]["random_stand_in"] is True  # no --model: the demo model, and it says so
        assert (cache / "demo-model" / "geovlm.json").is_file()
        first = client.ask(png(1), None, "Describe the image", max_tokens=6)[0]

        crashed = engine.pid
        os.kill(crashed, signal.SIGKILL)
        again = client.ask(png(1), None, "Describe the image", max_tokens=6)[0]  # retried until it is back
        assert again == first
        assert engine.restarts == 1 and engine.pid != crashed and engine.url == url

        # A request in flight (waiting in the 1.5 s batching window) when the engine is stopped still finishes.
        result = {}
        asking = threading.Thread(
            target=lambda: result.update(text=client.ask(png(1), None, "Describe the image", max_tokens=6)[0])
        )
        asking.start()
        deadline = time.monotonic() + 10
        while httpx.get(url + "/health").json()["in_flight"] == 0:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        log_dir = engine.log_path.parent
        engine.stop()
        asking.join(30)
        assert result == {"text": first}
        assert not engine.running() and engine.pid is None and not log_dir.exists()
    finally:
        engine.stop()


def gone(pid: int) -> bool:
    """Whether process `pid` has ended (a zombie nobody reaps counts as ended)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"


def wait_gone(pid: int, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not gone(pid):
        assert time.monotonic() < deadline, f"process {pid} still runs"
        time.sleep(0.1)


def wait_ready(server, ready: Path, seconds: float = 30) -> None:
    """Wait until `server` (a process running `engine.server.run`) has written its ready file."""
    deadline = time.monotonic() + seconds
    while not ready.exists():
        assert server.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)


def test_a_server_stopped_by_sigterm_leaves_no_ready_file(tmp_path):
    """uvicorn raises a SIGTERM again once it has shut down, so the process ends without unwinding: the ready file
    must be gone before that (a launcher reading it would find a dead pid)."""
    if sys.platform == "win32":
        pytest.skip("no SIGTERM to a process on Windows (terminate() is TerminateProcess)")
    ready = tmp_path / "ready.json"
    code = "import sys; from fastapi import FastAPI; from geovlm.engine.server import run; " \
           "run(FastAPI(), port=0, ready_file=sys.argv[1])"
    server = subprocess.Popen([sys.executable, "-c", code, str(ready)])
    try:
        wait_ready(server, ready)
        server.terminate()
        assert server.wait(10) in (-signal.SIGTERM, 0)
        assert not ready.exists()
    finally:
        server.kill()
        server.wait(10)


def test_the_server_stops_when_the_process_that_started_it_is_gone(tmp_path):
    parent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    ready = tmp_path / "ready.json"
    code = (
        "import sys; from fastapi import FastAPI; from geovlm.engine.lifeline import watch_parent; "
        "from geovlm.engine.server import run; "
        "run(FastAPI(), port=0, ready_file=sys.argv[2], parent_alive=watch_parent(int(sys.argv[1])))"
    )
    server = subprocess.Popen([sys.executable, "-c", code, str(parent.pid), str(ready)])
    try:
        wait_ready(server, ready)
        parent.kill()
        parent.wait(10)
        assert server.wait(10) == 0  # a graceful stop within the one-second check and shutdown
        assert not ready.exists()  # a stopped engine leaves no ready file behind (with a dead pid in it)
    finally:
        for proc in (parent, server):
            proc.kill()
            proc.wait(10)


def test_the_engine_exits_when_its_owner_is_killed(cache):
    code = (
        "import time; from geovlm.engine.launcher import LocalEngine; "
        "engine = LocalEngine(start_timeout=120); engine.start(); print(engine.pid, flush=True); time.sleep(120)"
    )
    env = dict(os.environ, GEOVLM_CACHE=str(cache))
    owner = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
    engine_pid = None
    try:
        engine_pid = int(owner.stdout.readline())  # the owner's start_timeout bounds the wait
        assert not gone(engine_pid)
        owner.kill()  # SIGKILL: no atexit, no cleanup of its own
        owner.wait(10)
        wait_gone(engine_pid, 10)
    finally:
        owner.kill()
        owner.wait(10)
        if engine_pid is not None and not gone(engine_pid):
            os.kill(engine_pid, signal.SIGKILL)


def test_the_launcher_imports_only_the_standard_library():
    """QGIS imports the launcher: it must not pull in the engine's packages."""
    import ast

    tree = ast.parse(Path(launcher.__file__).read_text())
    names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    names += [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 0]
    assert names and all(name.split(".")[0] in sys.stdlib_module_names | {"__future__"} for name in names)


def test_engine_for_a_url_starts_nothing():
    args = argparse.Namespace(engine="http://127.0.0.1:9/v1, http://127.0.0.1:10", api_key="k", family="llava")
    client = engine_for(args)
    assert [e.url for e in client.endpoints] == ["http://127.0.0.1:9", "http://127.0.0.1:10"]
    assert client.local_engine is None and client.api_key == "k" and client.profile().name == "llava15"


def test_engine_check_with_a_local_engine(cache):
    env = dict(os.environ, GEOVLM_CACHE=str(cache))
    out = subprocess.run(
        [sys.executable, "-m", "geovlm", "engine-check", "--max-tokens", "5"],
        capture_output=True, text=True, env=env, timeout=240,
    )
    assert out.returncode == 0, out.stderr
    assert "starting a local engine" in out.stderr
    assert '"random_stand_in": true' in out.stdout and "objects" in out.stdout


FAKE_ENGINE = """
import http.server, json, os, sys
args = sys.argv[1:]
if args[0] == "-c":  # the launcher asks whether geovlm can be imported
    sys.exit(int(os.environ.get("FAKE_IMPORTABLE") != "1"))
ready, port = args[args.index("--ready-file") + 1], int(args[args.index("--port") + 1])
with open(os.environ["FAKE_ENV_FILE"], "w") as out:
    json.dump(dict(os.environ), out)

class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass

server = http.server.HTTPServer(("127.0.0.1", port), Health)
with open(ready + ".tmp", "w") as out:
    json.dump({"url": f"http://127.0.0.1:{server.server_address[1]}"}, out)
os.replace(ready + ".tmp", ready)
server.serve_forever()
"""


def _python_script(path, body: str) -> str:
    """Write `body` to `path` as an executable script run by this Python (a stand-in for the engine's); its path."""
    path.write_text(f"#!{sys.executable}\n{body}")
    path.chmod(0o755)
    return str(path)


@pytest.fixture
def fake_python(tmp_path):
    """A stand-in for the engine's Python: answers /health at once and records its environment."""
    return _python_script(tmp_path / "fake-python", FAKE_ENGINE), tmp_path / "environment.json"


def test_restarts_count_anew_after_a_healthy_while_and_giving_up_is_reported(fake_python):
    python, env_file = fake_python
    down, restarting, restarted = [], [], []
    engine = LocalEngine(
        python=python, env={**os.environ, "FAKE_ENV_FILE": str(env_file)}, max_restarts=1, healthy_s=1.0,
        on_down=down.append, on_restart=restarting.append,
        on_restarted=lambda: restarted.append(engine.running() and engine.pid),
    )

    def crash(restarted: bool) -> None:
        pid = engine.pid
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while not (engine.running() and engine.pid != pid if restarted else down):
            assert time.monotonic() < deadline
            time.sleep(0.05)

    try:
        engine.start()
        crash(restarted=True)
        assert engine.restarts == 1
        time.sleep(1.2)  # healthy for longer than healthy_s
        # the restart told as it began (how the engine ended), and once the restarted engine answered /health
        assert restarting == ["was killed by signal 9; restart 1 of 1"] and len(restarted) == 1 and restarted[0]
        crash(restarted=True)  # a new count: restarted again
        assert engine.restarts == 1 and not down
        crash(restarted=False)  # a second crash in a row: it gives up
        assert not engine.running() and "crashed" in down[0]
        assert restarting == ["was killed by signal 9; restart 1 of 1"] * 2
    finally:
        engine.stop()


@pytest.mark.parametrize("importable", [True, False])
def test_pythonpath_only_when_geovlm_is_not_importable_otherwise(fake_python, importable):
    python, env_file = fake_python
    env = {**os.environ, **QGIS_VARIABLES, "FAKE_ENV_FILE": str(env_file), "FAKE_IMPORTABLE": str(int(importable))}
    with LocalEngine(python=python, env=env):
        seen = json.loads(env_file.read_text())
    package_parent = str(Path(launcher.__file__).resolve().parents[2])  # the folder holding the package
    assert seen.get("PYTHONPATH") == (None if importable else package_parent)
    assert not set(QGIS_VARIABLES) - {"PYTHONPATH"} & set(seen)


SLOW_ENGINE = """
import os, sys, time
if sys.argv[1] == "-c":  # the launcher asks whether geovlm can be imported
    sys.exit(0)
with open(os.environ["SLOW_PID_FILE"], "w") as out:
    out.write(str(os.getpid()))
time.sleep(120)  # loading a model: no ready file, no /health
"""


@pytest.fixture
def slow_python(tmp_path):
    """A stand-in for the engine's Python that never gets ready; it writes its process id to the returned file."""
    return _python_script(tmp_path / "slow-python", SLOW_ENGINE), tmp_path / "engine.pid"


def _wait_for_file(path, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not (path.is_file() and path.read_text()):
        assert time.monotonic() < deadline, f"{path} was not written"
        time.sleep(0.05)
    return path.read_text()


def _gone(pid: int) -> bool:
    """Whether process `pid` has exited (a zombie not yet reaped by init counts as exited)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_ctrl_c_while_the_engine_starts_stops_it(slow_python):
    """KeyboardInterrupt in start() (Ctrl-C while the model loads) stops the engine being started and removes its
    folder before it goes on: it used to keep loading, unowned, until the process exited."""
    python, pid_file = slow_python
    engine = LocalEngine(python=python, env={**os.environ, "SLOW_PID_FILE": str(pid_file)}, start_timeout=60)
    began = time.monotonic()

    def interrupt():
        _wait_for_file(pid_file)
        os.kill(os.getpid(), signal.SIGINT)  # a real signal: it wakes the main thread's wait, as Ctrl-C does

    threading.Thread(target=interrupt, daemon=True).start()
    try:
        with pytest.raises(KeyboardInterrupt):
            engine.start()
        pid = int(pid_file.read_text())
        assert time.monotonic() - began < 30  # interrupted, not given up at start_timeout
        assert _gone(pid) and not engine.running() and engine.log_path is None
    finally:
        engine.stop()


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_ctrl_c_while_a_bulk_runs_local_engine_starts_says_how_to_resume(slow_python, data_dir, tmp_path):
    """`geovlm caption` interrupted (SIGINT) while its local engine loads says what a Ctrl-C mid-run says (resume
    with the same command, nothing lost), exits 130, and leaves no engine process or engine folder behind."""
    python, pid_file = slow_python
    temp = tmp_path / "tmp"
    temp.mkdir()
    out = tmp_path / "c.gpkg"
    proc = subprocess.Popen(
        [sys.executable, "-m", "geovlm", "caption", str(data_dir / "rasters" / "RGB.byte.tif"), "--out", str(out),
         "--family", "geochat", "--no-progress", "--engine-python", python],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "SLOW_PID_FILE": str(pid_file), "TMPDIR": str(temp)},
    )
    try:
        pid = int(_wait_for_file(pid_file, timeout=60))
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    assert ("geovlm caption: stopped before any tile was asked; nothing was written. Resume with the same "
            "command.") in stderr and "Traceback" not in stderr
    assert _gone(pid) and not list(temp.glob("geovlm-engine-*")) and not out.exists()


def test_give_up_by_is_the_launchers_bound_while_it_starts(slow_python):
    """`give_up_by` while the engine loads: no later than its start timeout (and the time to end it) after the
    spawn, no restarts counted on a first start (its failure is raised); None once stopped."""
    from geovlm.engine.launcher import LAUNCH_END_S, EngineStartError

    python, pid_file = slow_python
    engine = LocalEngine(python=python, env={**os.environ, "SLOW_PID_FILE": str(pid_file)}, start_timeout=60)
    assert engine.give_up_by() is None
    raised = []

    def start():
        try:
            engine.start()
        except EngineStartError as exc:
            raised.append(str(exc))

    starter = threading.Thread(target=start)
    starter.start()
    try:
        _wait_for_file(pid_file)
        left = engine.give_up_by() - time.monotonic()
        assert 55 < left <= 60 + LAUNCH_END_S and engine.restarts_left() == 0
    finally:
        engine.stop()
        starter.join(30)
    assert raised == ["the engine was stopped while starting"] and engine.give_up_by() is None
