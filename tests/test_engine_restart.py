"""The client and the local engine ride out faults: a real `geovlm serve` (the demo model, loopback) killed
while it answers 120 jobs and restarted by its launcher; an engine killed mid-stream whose launcher gives up;
the temporary folders of launchers killed outright."""
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from geovlm.cli.serve_cmds import client_for_local
from geovlm.core.client import AskJob, EngineError
from geovlm.engine.launcher import OWNER_FILE, LocalEngine, remove_leftovers


def encoded(seed, size=(64, 48)):
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from geovlm.models.demo_model import write_demo_model
    from geovlm.models.pipeline import ensure_encoder

    path = tmp_path_factory.getbasetemp() / "demo-model"
    if not (path / "geovlm.json").is_file():
        write_demo_model(path, seed=0)
    ensure_encoder(path)
    return path


def test_120_jobs_over_a_killed_and_restarted_engine(model_dir):
    engine = LocalEngine(model=str(model_dir), max_restarts=1, extra_args=["--batch-window-ms", "20"])
    try:
        engine.start()
        client = client_for_local(engine, max_concurrent=8)  # the default retry window
        distinct = [(encoded(i), f"Describe area {i}") for i in range(24)]
        expected = [client.ask(image, None, question, max_tokens=6)[0] for image, question in distinct]
        jobs = [AskJob(*distinct[i % 24][:1], None, distinct[i % 24][1]) for i in range(120)]
        calls, lock, killed = {}, threading.Lock(), []
        first_pid = engine.pid

        def on_result(index, result):
            with lock:
                calls[index] = calls.get(index, 0) + 1
                if len(calls) >= 30 and not killed:
                    if httpx.get(engine.url + "/health", timeout=5).json()["in_flight"]:
                        killed.append(len(calls))
                        os.kill(first_pid, signal.SIGKILL)

        started = time.monotonic()
        results = client.ask_many(jobs, on_result=on_result, max_tokens=6)
        assert killed and killed[0] < 100 and engine.restarts == 1 and engine.pid != first_pid
        assert calls == {i: 1 for i in range(120)}  # every job answered, none twice
        errors = [r for r in results if not isinstance(r, tuple)]
        assert not errors, errors[:3]
        assert [r[0] for r in results] == [expected[i % 24] for i in range(120)]  # as without the fault
        assert time.monotonic() - started < 240
    finally:
        engine.stop()


def test_an_engine_killed_mid_stream_whose_launcher_gives_up_is_one_line_at_once(model_dir):
    engine = LocalEngine(model=str(model_dir), max_restarts=0)
    try:
        engine.start()
        client = client_for_local(engine)
        shown, outcome = [], {}

        def ask():
            try:
                client.ask(encoded(1), None, "Describe the image", on_token=shown.append, max_tokens=880)
            except EngineError as exc:
                outcome["error"], outcome["at"] = str(exc), time.monotonic()

        asker = threading.Thread(target=ask)
        asker.start()
        deadline = time.monotonic() + 60
        while not shown and time.monotonic() < deadline:
            time.sleep(0.02)
        assert shown, "no text streamed"
        killed_at = time.monotonic()
        os.kill(engine.pid, signal.SIGKILL)
        asker.join(30)
        message = outcome["error"]
        assert message.startswith("the engine is down: the local engine was killed by signal 9"), message
        assert "\n" not in message and outcome["at"] - killed_at < 5
    finally:
        engine.stop()


def test_folders_of_killed_launchers_are_removed_on_the_next_start(tmp_path):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])  # a process id that no longer runs
    gone.wait()
    folders = {}
    for name, owner in (("dead", gone.pid), ("living", os.getppid()), ("unowned", None)):
        folder = tmp_path / f"geovlm-engine-{name}"
        folder.mkdir()
        (folder / "engine.log").write_text("log")
        if owner is not None:
            (folder / OWNER_FILE).write_text(json.dumps({"pid": owner}))
        folders[name] = folder
    assert remove_leftovers(tmp_path) == [folders["dead"]]
    assert not folders["dead"].exists() and folders["living"].exists() and folders["unowned"].exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["engine-check", "--engine", "file:///etc/passwd"], "--engine: an engine URL is http://HOST:PORT"),
        (["engine-check", "--engine", "http://127.0.0.1:1", "--temperature", "-1"], "--temperature must be"),
        (["engine-check", "--engine", "http://127.0.0.1:1", "--temperature", "nan"], "--temperature must be"),
        (["engine-check", "--engine", "http://127.0.0.1:1", "--api-key-file", "/nonexistent/key"],
         "cannot read the API key file"),
    ],
)
def test_bad_engine_arguments_are_one_line(argv, message, capsys):
    from geovlm.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_an_api_key_flag_warns_that_ps_shows_it(capsys, tmp_path):
    from geovlm.cli.serve_cmds import api_key_from

    class Args:
        api_key, api_key_file = "secret", None

    assert api_key_from(Args()) == "secret"
    assert "process list" in capsys.readouterr().err
    key_file = tmp_path / "key"
    key_file.write_text("from-file\n")
    Args.api_key_file = str(key_file)
    assert api_key_from(Args()) == "from-file" and capsys.readouterr().err == ""


def test_an_api_key_that_is_not_utf8_or_not_ascii_is_one_line(capsys, tmp_path, monkeypatch):
    """A key file that is not UTF-8 ended in AttributeError ('UnicodeDecodeError' has no 'strerror'); a key
    with "é" would be sent by a client as one Latin-1 byte and compared by the server with two UTF-8 bytes."""
    from geovlm.cli import CliError
    from geovlm.cli.serve_cmds import api_key_from

    class Args:
        api_key, api_key_file = None, None

    key_file = tmp_path / "key"
    key_file.write_bytes(b"\xff\xfekey\n")
    Args.api_key_file = str(key_file)
    with pytest.raises(CliError, match=f"cannot read the API key file {key_file}: 'utf-8' codec can't decode"):
        api_key_from(Args())
    key_file.write_text("caf\u00e9\n", encoding="utf-8")
    with pytest.raises(CliError, match="holds a key that is not printable ASCII"):
        api_key_from(Args())
    Args.api_key_file = None
    monkeypatch.setenv("GEOVLM_API_KEY", "tab\there")
    with pytest.raises(CliError, match="GEOVLM_API_KEY holds a key that is not printable ASCII"):
        api_key_from(Args())


def test_ask_with_a_local_engine_killed_until_the_launcher_gives_up(data_dir):
    """`geovlm ask --engine local`, its engine SIGKILLed mid-answer, then each restarted one as soon as it
    listens (four kills: the launcher restarts it three times): each crash is one line, the end is one line
    saying the engine is down and why, the partial answer is printed once and no "[stream broke" line shows."""
    import glob

    cmd = [sys.executable, "-m", "geovlm", "ask", str(data_dir / "rasters" / "cogeo.tif"), "Describe the image",
           "--engine", "local", "--window", "0,0,128,96", "--max-new-tokens", "880"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    printed = []
    reader = threading.Thread(target=lambda: printed.extend(iter(lambda: proc.stdout.read(1), "")), daemon=True)
    reader.start()

    def serving_pid():
        for folder in glob.glob(os.path.join(tempfile.gettempdir(), "geovlm-engine-*")):
            try:
                if json.load(open(os.path.join(folder, OWNER_FILE)))["pid"] == proc.pid:
                    return json.load(open(os.path.join(folder, "ready.json")))["pid"]
            except (OSError, ValueError, KeyError):
                continue
        return None

    kills, last, deadline = 0, None, time.monotonic() + 180
    try:
        while proc.poll() is None and kills < 4 and time.monotonic() < deadline:
            pid = serving_pid()
            # The first kill once the answer streams, the others as soon as each restarted engine listens (the
            # demo model answers in well under a second: waiting for the answer to resume would miss it).
            if pid and pid != last and (kills or printed):
                os.kill(pid, signal.SIGKILL)
                kills, last = kills + 1, pid
            time.sleep(0.02)
        proc.wait(max(5, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    reader.join(5)
    err = proc.stderr.read().splitlines()
    assert kills == 4 and proc.returncode == 2
    assert err[-1].startswith("geovlm ask: the engine is down: the local engine was killed by signal 9 and was "
                              "given up after 3 restarts"), err[-3:]
    assert err.count("geovlm: the local engine crashed (status -9)") == 4
    assert not any("stream broke" in line for line in err)
    text = "".join(printed)  # the partial answer, ended by one line feed (the noise may hold line feeds too)
    assert text.endswith("\n") and not text.endswith("\n\n")
    head = text[: min(40, len(text) // 2)]
    assert text.count(head) == 1, text  # its beginning once: not printed again after a restart


def test_serve_on_a_port_in_use_or_out_of_range_is_one_line_before_the_model_loads(capsys, monkeypatch):
    import socket

    from geovlm.cli import main
    from geovlm.models import pipeline

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the port was checked")

    monkeypatch.setattr(pipeline.VlmPipeline, "load", no_load)
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        assert main(["serve", "--port", str(port), "--model", "/nonexistent"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"geovlm serve: cannot listen on 127.0.0.1:{port}: ") and "another --port" in err
    assert "\n" not in err
    # an address not of this machine (TEST-NET-1, RFC 5737: never assigned), with port 0 (any free port) too
    for port in ("0", "8123"):
        assert main(["serve", "--host", "192.0.2.1", "--port", port, "--model", "/nonexistent"]) == 2
        err = capsys.readouterr().err.strip()
        assert err == (f"geovlm serve: cannot listen on 192.0.2.1:{port}: Cannot assign requested address; is "
                       "192.0.2.1 an address of this machine?"), err
    # a --ready-file whose folder does not exist: said before the model loads, not as a traceback once listening
    assert main(["serve", "--port", "0", "--ready-file", "/nonexistent-folder/ready.json", "--model", "/x"]) == 2
    assert capsys.readouterr().err.strip() == (
        "geovlm serve: --ready-file: the folder of /nonexistent-folder/ready.json does not exist")
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--port", "99999"])
    assert exited.value.code == 2 and "a port is 0 to 65535, not 99999" in capsys.readouterr().err
