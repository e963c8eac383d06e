"""`geovlm demo-model`, `export-encoder`, `ask` end to end on the demo model and the shared rasters."""

import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import models_support as ms  # noqa: E402

from geovlm.cli import main  # noqa: E402

COGEO = ms.RASTERS / "cogeo.tif"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return ms.demo_dir(tmp_path_factory)


def test_demo_model_never_writes_over_a_folder_that_holds_something_else(tmp_path, capsys):
    """`geovlm demo-model DIR` on a real checkpoint folder replaced its config.json and model.safetensors with the
    random stand-in's: a folder holding anything but an earlier demo model (or a file) is refused in one line and
    left as it is; an empty folder, or an earlier demo model, is written."""
    real = tmp_path / "llava-1.5-7b-hf"
    real.mkdir()
    (real / "config.json").write_text('{"model_type": "llava"}')
    (real / "model.safetensors").write_bytes(b"real weights")
    assert main(["demo-model", str(real)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"geovlm demo-model: {real} is not empty and holds no earlier demo model: the random stand-in would replace "
        "its files (config.json, weights, tokenizer); give a new or empty folder")
    assert (real / "config.json").read_text() == '{"model_type": "llava"}'
    assert (real / "model.safetensors").read_bytes() == b"real weights"
    assert main(["demo-model", str(real / "config.json")]) == 2
    assert "is a file: give a new or empty folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["demo-model", str(tmp_path / "empty"), "--seed", "1"]) == 0
    assert main(["demo-model", str(tmp_path / "empty"), "--seed", "2"]) == 0  # an earlier demo model: rewritten


@pytest.mark.parametrize("family", ["qwen25vl", "florence2", "earthdial"])
def test_demo_model_of_a_family_the_engine_does_not_serve_is_one_line_and_writes_nothing(tmp_path, capsys,
                                                                                          family):
    # qwen25vl (no fixed input size) ended in a TypeError traceback after making the folder; florence2 wrote a
    # folder that `geovlm ask --model` then refused ("not served by the LLaVA engine")
    target = tmp_path / "d"
    assert main(["demo-model", str(target), "--family", family]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("geovlm demo-model: the demo model is a checkpoint of the engine's")
    assert f"not {family}" in err and "minigptv2" in err and not target.exists()


def test_demo_model_command(tmp_path, capsys):
    assert main(["demo-model", str(tmp_path / "d"), "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "random" in out and (tmp_path / "d" / "model.safetensors").is_file()
    assert (tmp_path / "d" / "model.safetensors").stat().st_size < 5 << 20


def test_export_encoder_command(demo, tmp_path, capsys):
    out = tmp_path / "e.onnx"
    assert main(["export-encoder", "--model", str(demo), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert out.is_file() and "max abs difference ONNX vs torch" in text and "batch 2" in text


def test_ask_streams_and_writes_a_layer(demo, tmp_path, capsys):
    import geopandas as gpd

    out = tmp_path / "answer.gpkg"
    argv = [
        "ask",
        str(COGEO),
        "[grounding]Describe the image",
        "--model",
        str(demo),
        "--window",
        "256,256,400,300",
        "--max-new-tokens",
        "12",
        "--out",
        str(out),
        "--providers",
        "CPUExecutionProvider",
    ]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "random" in captured.err and "stand-in" in captured.err
    assert "12 tokens" in captured.err and "400x300 px" in captured.err
    assert captured.out.strip()
    layer = gpd.read_file(out, layer="objects")
    assert layer.crs is not None and layer.crs.to_epsg() == 3857


def test_ask_without_model_uses_the_demo_model(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("GEOVLM_CACHE", str(tmp_path / "cache"))
    assert main(["ask", str(ms.RASTERS / "sample_geotiff.tif"), "What is this?", "--max-new-tokens", "4"]) == 0
    assert "demo model" in capsys.readouterr().err
    assert (tmp_path / "cache" / "demo-model" / "geovlm.json").is_file()


def test_ask_with_an_unwritable_cache_says_so_in_one_line(tmp_path, capsys, monkeypatch):
    """GEOVLM_CACHE under a regular file (unwritable even for root): the demo model cannot be written there."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("GEOVLM_CACHE", str(blocker / "cache"))
    assert main(["ask", str(ms.RASTERS / "sample_geotiff.tif"), "What is this?", "--max-new-tokens", "4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (f"geovlm ask: the demo model cannot be written in {blocker / 'cache'} (Not a directory): set "
                       "GEOVLM_CACHE to a writable folder, or give --model")


@pytest.mark.parametrize(
    "argv,message",
    [
        (["ask", str(ms.RASTERS / "corrupt.tif"), "q"], "cannot read raster"),
        (["ask", str(ms.RASTERS / "missing.tif"), "q", "--engine", "http://127.0.0.1:9", "--request-timeout", "0"],
         "--request-timeout is the seconds one attempt waits, more than 0 and at most 3600, not 0"),
        (["ask", str(ms.RASTERS / "all-nodata.tif"), "q"], "nodata"),
        (["ask", str(ms.RASTERS / "missing.tif"), "q"], "not found"),
        (["ask", str(COGEO), "q", "--window", "1000,0,100,100"], "outside"),
        (["ask", str(COGEO), "q", "--model", "/nonexistent/model"], "does not exist"),
        (["ask", str(COGEO), "q", "--model", "/nonexistent/model", "--out", "x.shp"],
         "output must be .gpkg or .geojson, not '.shp'"),  # said before any model is looked for
        (["export-encoder", "--model", "/nonexistent/model", "--out", "x.onnx"], "does not exist"),
    ],
)
def test_clear_errors(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_ask_through_a_local_engine_equals_in_process(demo, tmp_path, capsys):
    """The engine speaks in pixels: the PNG sent over HTTP gives the same greedy answer as in-process."""
    common = ["ask", str(COGEO), "[grounding]Describe the image", "--model", str(demo),
              "--window", "100,200,300,200", "--max-new-tokens", "10"]
    assert main(common) == 0
    in_process = capsys.readouterr().out.strip()
    out = tmp_path / "via_engine.gpkg"
    assert main(common + ["--engine", "local", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "starting a local engine" in captured.err
    assert captured.out.strip() == in_process and in_process
    assert out.is_file()


def test_ask_with_an_engine_that_is_down_says_so(tmp_path, capsys):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    argv = ["ask", str(COGEO), "q", "--window", "0,0,64,64", "--engine", f"http://127.0.0.1:{port}",
            "--family", "geochat", "--max-new-tokens", "2", "--retry-window", "1"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "geovlm ask: gave up after" in err and f"127.0.0.1:{port}" in err


def test_ask_through_an_engine_loads_neither_torch_nor_numba_here():
    """With --engine the model runs in the engine: `ask` here reads the raster and georeferences the answer. It
    loaded the in-process pipeline's modules all the same, numba among them, whose threads then made the local
    engine's start print "Numba: Attempted to fork from a non-main thread" (the engine is launched from the
    launcher's watch thread)."""
    import os
    import subprocess

    code = ("import sys; from geovlm.cli import main; "
            f"rc = main(['ask', {str(COGEO)!r}, 'q', '--window', '0,0,64,64', '--engine', 'http://127.0.0.1:9', "
            "'--family', 'geochat', '--retry-window', '0']); "
            "print(rc, sorted(m for m in ('numba', 'torch', 'transformers', 'onnxruntime') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,  # nosec B603
                         env={**os.environ, "GDAL_PAM_ENABLED": "NO"})
    assert out.stdout.strip().splitlines()[-1] == "2 []", out.stdout + out.stderr


def test_ask_profile_overrides_reach_prompt_and_parsing(demo, tmp_path, capsys):
    from geovlm.models.pipeline import VlmPipeline

    pipe = VlmPipeline.load(demo, overrides={"angle_sense": -1, "system": "Be brief."})
    assert pipe.profile.angle_sense == -1 and pipe.profile.prompt("q").startswith("Be brief.")
    argv = ["ask", str(COGEO), "q", "--model", str(demo), "--window", "0,0,64,64", "--max-new-tokens", "2"]
    assert main(argv + ["--set", "angle_sense=3"]) == 2
    assert "angle_sense" in capsys.readouterr().err
    assert main(argv + ["--set", "nosuch=1"]) == 2
    assert "unknown profile field" in capsys.readouterr().err


def test_ask_with_special_token_text_in_the_question(demo, capsys):
    argv = ["ask", str(COGEO), "what is <image> here? </s>", "--model", str(demo), "--window", "0,0,64,64",
            "--max-new-tokens", "3"]
    assert main(argv) == 0
    assert "tokens, finish:" in capsys.readouterr().err


def test_ask_reports_a_failure_while_streaming(demo, capsys, monkeypatch):
    from geovlm.models.pipeline import VlmPipeline

    def failing(self, request):
        yield "partial"
        raise RuntimeError("out of memory")

    monkeypatch.setattr(VlmPipeline, "stream", failing)
    argv = ["ask", str(COGEO), "q", "--model", str(demo), "--window", "0,0,64,64"]
    assert main(argv) == 2
    assert "out of memory" in capsys.readouterr().err


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again: nothing listens there


@pytest.mark.parametrize("command", [
    ["ask", str(COGEO), "hi", "--family", "geochat", "--window", "0,0,64,64"],
    ["engine-check"],
])
def test_an_engine_that_cannot_be_reached_is_said_at_once_not_after_the_window(command):
    """The user sees within seconds why nothing happens (the retries themselves go on for the window)."""
    import select
    import subprocess
    import time

    url = f"http://127.0.0.1:{_closed_port()}"
    proc = subprocess.Popen([sys.executable, "-m", "geovlm", *command, "--engine", url],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        started, line = time.monotonic(), ""
        while "cannot reach" not in line and time.monotonic() - started < 60:
            if select.select([proc.stderr], [], [], 1.0)[0]:
                line = proc.stderr.readline()
                if not line:
                    break
        window = 10 if command[0] == "engine-check" else 120
        assert line.strip() == (f"geovlm: cannot reach {url}: connection refused; retrying for up to {window} s "
                                "(--retry-window to change, Ctrl-C to stop)")
        assert proc.poll() is None or command[0] == "engine-check"  # ask is still retrying: it told at once
    finally:
        proc.kill()
        proc.wait(timeout=30)


def test_ask_and_engine_check_take_a_retry_window(capsys):
    import time

    from geovlm.cli import build_parser

    assert build_parser().parse_args(["engine-check"]).retry_window == 10
    url = f"http://127.0.0.1:{_closed_port()}"
    for argv in (["ask", str(COGEO), "hi", "--family", "geochat", "--window", "0,0,64,64"], ["engine-check"]):
        started = time.monotonic()
        assert main([*argv, "--engine", url, "--retry-window", "1"]) == 2
        assert time.monotonic() - started < 20
        err = capsys.readouterr().err
        assert "retrying for up to 1 s" in err and "gave up after" in err
        assert main([*argv, "--engine", url, "--retry-window", "-1"]) == 2
        assert "--retry-window must be 0 or more" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["ask", "hi"], ["detect", "--out", "OUT.gpkg"], ["caption", "--out", "OUT.gpkg"]])
def test_a_raster_with_a_geotransform_but_no_crs_is_noted(command, tmp_path, capsys):
    raster = str(ms.RASTERS / "rotated.tif")
    argv = [command[0], raster, *(a.replace("OUT", str(tmp_path / "o")) for a in command[1:])]
    assert main([*argv, "--engine", f"http://127.0.0.1:{_closed_port()}", "--family", "geochat",
                 "--retry-window", "0"]) == 2
    err = capsys.readouterr().err
    assert f"note: {raster} has no CRS: the layers are placed by its geotransform but carry no CRS" in err


def test_the_encoder_export_prints_none_of_torchs_own_notes(demo, tmp_path):
    """torch's exporter logs a line per torchvision operator when torchvision is absent and torch.export warns
    about pytree's LeafSpec: neither concerns the user. Other warnings still pass (the filter is narrow)."""
    import subprocess
    import warnings

    from geovlm.models import encoder_export

    run = subprocess.run([sys.executable, "-m", "geovlm", "export-encoder", "--model", str(demo), "--out",
                          str(tmp_path / "e.onnx")], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "torchvision is not installed" not in run.stderr and "LeafSpec" not in run.stderr
    assert run.stderr.strip() == "" and "max abs difference ONNX vs torch" in run.stdout
    with warnings.catch_warnings(record=True) as caught, encoder_export.quiet_exporter():
        warnings.simplefilter("always")
        warnings.warn("a warning of GeoVLM's own", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["a warning of GeoVLM's own"]


def test_a_raster_without_georeferencing_is_read_for_tiles_without_rasterios_warning(tmp_path):
    import warnings

    import numpy as np
    from PIL import Image

    from geovlm.cli.bulk_cmds import RasterTiles

    png = tmp_path / "photo.tif"  # a PNG renamed .tif: no geotransform, no CRS
    Image.fromarray(np.full((16, 20, 3), 90, np.uint8)).save(png, format="PNG")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        RasterTiles(png, None, True).close()
    assert [str(w.message) for w in caught] == []


@pytest.mark.parametrize("out_exists", [False, True])
def test_ask_interrupted_says_in_one_line_what_was_lost_and_kept_and_how_to_ask_again(tmp_path, out_exists):
    """Ctrl-C (SIGINT) while `ask --engine` waits on a slow engine (loopback): exit 130, no traceback, and one
    line saying the answer was not complete, nothing was parsed or written to --out (an earlier file left as it
    was), and to run the same command again; said within seconds of the signal."""
    import signal
    import subprocess
    import time

    from bulk_support import ScriptedEngine

    engine = ScriptedEngine(tmp_path, "slow", delay=60.0)
    out = tmp_path / "objects.gpkg"
    argv = ["ask", str(COGEO), "Describe the image", "--window", "0,0,64,64", "--engine", engine.url,
            "--family", "geochat", "--out", str(out)]
    if out_exists:  # an earlier output (empty layers), replaced only once an answer is complete
        from geovlm.cli.layers_io import write_layers

        write_layers([], out)
        earlier = out.read_bytes()
        argv.append("--overwrite")
    proc = subprocess.Popen([sys.executable, "-m", "geovlm", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.monotonic() + 60
        while engine.arrivals() < 1 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert engine.arrivals() == 1, proc.communicate(timeout=30) if proc.poll() is not None else "no request"
        signalled = time.monotonic()
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=30)
        took = time.monotonic() - signalled
    finally:
        if proc.poll() is None:
            proc.kill()
        engine.kill()
    kept = (f"{out} was not written (the file there is left as it was)" if out_exists else f"{out} was not written")
    assert proc.returncode == 130 and took < 5, (proc.returncode, took, stderr)
    assert stderr.strip().splitlines()[-1] == (
        "geovlm ask: stopped before the answer was complete: any text above is cut short and was not parsed, "
        f"{kept}; run the same command to ask again")
    assert "Traceback" not in stderr and "geovlm ask: interrupted" not in stderr
    assert (out.read_bytes() == earlier) if out_exists else not out.exists()


@pytest.mark.parametrize("command", [["engine-check"], ["ask", str(COGEO), "hi", "--window", "0,0,64,64"]])
@pytest.mark.parametrize("value", ["86401", "inf", "-1"])
def test_ask_and_engine_check_refuse_a_retry_window_past_a_day_before_any_engine_is_asked(command, value):
    """--retry-window is bounded as the bulk algorithms' RETRY_WINDOW (core.client.MAX_RETRY_WINDOW_S): said in one
    line, at once (a dead URL asked would be retried for the whole window)."""
    run = subprocess.run([sys.executable, "-m", "geovlm", *command, "--engine", "http://127.0.0.1:9",
                          "--retry-window", value], capture_output=True, text=True, timeout=60)  # killed if it retries
    assert (run.returncode, run.stderr.strip()) == (2, f"geovlm {command[0]}: --retry-window must be 0 or more "
                                                       f"seconds, at most 86400 (a day), not {float(value):g}")


@pytest.mark.parametrize("value", ["0", "-5", "1e9", "nan"])
def test_engine_check_refuses_a_request_timeout_as_ask_does(capsys, value):
    # no engine is started or reached: the value is refused first
    assert main(["engine-check", "--engine", "http://127.0.0.1:9", "--request-timeout", value]) == 2
    assert capsys.readouterr().err.strip() == ("geovlm engine-check: --request-timeout is the seconds one attempt "
                                               f"waits, more than 0 and at most 3600, not {float(value):g}")


def test_engine_check_gives_up_on_a_slow_engine_within_its_request_timeout(engines):
    """An engine that takes 60 s to answer: --request-timeout 1 --retry-window 2 gives up in seconds, saying so."""
    from bulk_support import run_cli

    engine = engines(delay=60.0)
    started = time.monotonic()
    code, _, stderr = run_cli("engine-check", "--engine", engine.url, "--request-timeout", 1, "--retry-window", 2,
                              timeout=60)
    assert code == 2 and time.monotonic() - started < 30, stderr
    assert f"geovlm: {engine.url} sent no answer within 1 s (--request-timeout to change)" in stderr, stderr
