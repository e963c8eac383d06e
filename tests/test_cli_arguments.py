"""Bad --device, --providers, --set and questions are refused in one line (exit 2) before a raster is read or a
model loaded: `geovlm ask` and `geovlm serve`, and the library calls under them."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import models_support as ms  # noqa: E402

from geovlm.cli import main  # noqa: E402

COGEO = ms.RASTERS / "cogeo.tif"


def one_line_refusal(argv, capsys, monkeypatch, no_gpu=False):
    """main(argv) exits 2 with one line on stderr and no traceback; returns that line. No model may be made or
    loaded on the way (`ready_demo_model` and `VlmPipeline.load` fail the test)."""
    import torch

    from geovlm.cli import engine_cmds
    from geovlm.models import pipeline

    monkeypatch.setattr(engine_cmds, "ready_demo_model", lambda: pytest.fail("the demo model was prepared"))
    monkeypatch.setattr(pipeline.VlmPipeline, "load", lambda *a, **k: pytest.fail("the model was loaded"))
    if no_gpu:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("command", ["ask", "serve"])
@pytest.mark.parametrize("device, no_gpu, said", [
    ("cuda", True, "'cuda' was asked for but torch"),
    ("cuda:0", True, "'cuda:0' was asked for but torch"),
    ("tpu", False, "the device must be cpu, cuda or cuda:N, not 'tpu'"),
    ("cpu:1", False, "not 'cpu:1'"),
])
def test_a_device_torch_cannot_use_is_one_line(command, device, no_gpu, said, capsys, monkeypatch):
    argv = (["ask", str(COGEO), "Describe the image"] if command == "ask" else ["serve", "--port", "0"])
    line = one_line_refusal(argv + ["--device", device], capsys, monkeypatch, no_gpu)
    assert line.startswith(f"geovlm {command}: --device: ") and said in line
    assert "Expected one of" not in line  # torch's list of device types


def test_the_language_model_device_is_checked_by_the_library_too(monkeypatch):
    import torch

    from geovlm.models.language import pick_device

    assert pick_device("cpu") == ("cpu", torch.float32) and pick_device(" CPU ")[0] == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device(None) == ("cpu", torch.float32)
    for device in ("cuda", "tpu", "cuda:x", "mps"):
        with pytest.raises(ValueError):
            pick_device(device)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match="sees 1 GPU"):
        pick_device("cuda:1")


def test_an_unknown_onnxruntime_provider_is_refused_listing_the_available_ones(capsys, monkeypatch):
    import onnxruntime

    line = one_line_refusal(["ask", str(COGEO), "q", "--providers", "Bogus"], capsys, monkeypatch)
    available = onnxruntime.get_available_providers()
    assert line == (f"geovlm ask: --providers: unknown onnxruntime provider 'Bogus'; available here: "
                    f"{', '.join(available)}")
    # A real provider this onnxruntime lacks, given alone, cannot run the encoder either.
    missing = next(p for p in onnxruntime.get_all_providers() if p not in available)
    line = one_line_refusal(["ask", str(COGEO), "q", "--providers", missing], capsys, monkeypatch)
    assert f"none of {missing} is available" in line and "CPUExecutionProvider" in line


def test_providers_are_onnxruntimes_names_in_the_order_given():
    from geovlm.models.encoder_runtime import check_providers

    assert check_providers(["cuda", " CPUExecutionProvider"]) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    with pytest.raises(ValueError, match="unknown onnxruntime provider 'Bogus'"):
        check_providers(["CPU", "Bogus"])


@pytest.mark.parametrize("question", ["", "   ", "\n\t"])
def test_an_empty_question_is_refused(question, capsys, monkeypatch):
    line = one_line_refusal(["ask", str(COGEO), question], capsys, monkeypatch)
    assert line.startswith("geovlm ask: the question is empty")


@pytest.mark.parametrize("argv, said", [
    (["ask", str(COGEO), "ships \udcff here"], "geovlm ask: the question is not UTF-8 text (byte 0xff at character 7)"),
    (["engine-check", "--engine", "http://127.0.0.1:9", "--question", "\udce9t\u00e9"],
     "geovlm engine-check: --question is not UTF-8 text (byte 0xe9 at character 1)"),
])
def test_a_question_of_bytes_that_are_not_utf8_is_refused_before_the_model(argv, said, capsys, monkeypatch):
    # A Latin-1 terminal's "\xff" reaches sys.argv as U+DCFF (surrogateescape); the tokenizer raised a TypeError
    # traceback once the model had loaded.
    line = one_line_refusal(argv, capsys, monkeypatch)
    assert line.startswith(said), line


@pytest.mark.parametrize("override, said", [
    ("angle_sense=abc", "profile field 'angle_sense' takes 1 or -1, not 'abc'"),
    ("angle_sense=2", "profile field 'angle_sense' takes 1 or -1, not '2'"),
    ("input_size=big", "profile field 'input_size' takes a whole number or none, not 'big'"),
    ("dynamic_factor=2.5", "profile field 'dynamic_factor' takes a whole number, not '2.5'"),
    ("coord_scale=abc", "profile field 'coord_scale' takes a finite number, not 'abc'"),
    ("upright_angle=nan", "profile field 'upright_angle' takes a finite number"),
    ("pad_color=1,2", "profile field 'pad_color' takes 3 whole numbers separated by commas"),
    ("pad_color=a,b,c", "profile field 'pad_color' takes 3 whole numbers"),
    ("fit=squash", "profile field 'fit' takes one of pad, stretch, crop, dynamic, not 'squash'"),
    ("box_syntax=xml", "profile field 'box_syntax' takes one of geochat,"),
    ("task_words=vqa", "profile field 'task_words' takes a JSON object of task -> text"),
    ("nosuch=1", "unknown profile field 'nosuch'; the fields are: name, title,"),
])
def test_a_bad_set_names_the_field_and_what_it_takes(override, said, capsys, monkeypatch):
    line = one_line_refusal(["ask", str(COGEO), "q", "--set", override], capsys, monkeypatch)
    assert said in line, line


def test_every_profile_field_type_is_read_from_text():
    import dataclasses

    from geovlm.core.profiles import FIELD_CHOICES, Profile, parse_overrides

    good = {"system": "Be brief.", "input_size": "none", "pad_color": "0,0,0", "coord_scale": "1000",
            "angle_sense": "-1", "dynamic_factor": "14", "stop": "</s>,<|im_end|>", "answer_end": "</s>",
            "task_words": '{"vqa": "{question}"}', "fit": "stretch"}
    values = parse_overrides(f"{k}={v}" for k, v in good.items())
    assert values == {"system": "Be brief.", "input_size": None, "pad_color": (0, 0, 0), "coord_scale": 1000.0,
                      "angle_sense": -1, "dynamic_factor": 14, "stop": ("</s>", "<|im_end|>"), "answer_end": "</s>",
                      "task_words": {"vqa": "{question}"}, "fit": "stretch"}
    kinds = {str(f.type) for f in dataclasses.fields(Profile)}
    assert kinds <= {"str", "Optional[str]", "int", "Optional[int]", "float", "Tuple[int, int, int]",
                     "Tuple[str, ...]", "Dict[str, str]"}, "a field type that parse_overrides may not read"
    assert set(FIELD_CHOICES) <= {f.name for f in dataclasses.fields(Profile)}


@pytest.mark.parametrize("option, value, said", [
    ("--header-timeout", "nan", "--header-timeout must be a finite number, more than 0, not nan"),  # was served
    ("--request-timeout", "-1", "--request-timeout must be a finite number, more than 0, not -1.0"),  # was served
    ("--max-body-mb", "inf", "--max-body-mb must be a finite number, more than 0, not inf"),  # was OverflowError
    ("--memory-budget-mb", "inf", "--memory-budget-mb must be a finite number"),
    ("--batch-window-ms", "-5", "--batch-window-ms must be a finite number, 0 or more, not -5.0"),  # a traceback
    ("--batch-window-ms", "nan", "--batch-window-ms must be a finite number"),
    ("--max-queue", "0", "--max-queue must be a finite number, more than 0, not 0"),
])
def test_serve_refuses_a_limit_that_is_not_a_finite_positive_number_before_the_model(option, value, said, capsys,
                                                                                    monkeypatch):
    line = one_line_refusal(["serve", "--port", "0", option, value], capsys, monkeypatch)
    assert line == f"geovlm serve: {said}" or line.startswith(f"geovlm serve: {said}"), line


def test_serve_refuses_a_bad_set_before_the_model(capsys, monkeypatch):
    line = one_line_refusal(["serve", "--port", "0", "--set", "coord_offset=half"], capsys, monkeypatch)
    assert line == "geovlm serve: profile field 'coord_offset' takes a finite number, not 'half'"


@pytest.mark.parametrize("argv", [
    ["caption", str(COGEO), "--engine", "http://127.0.0.1:9", "--out", "x.gpkg", "--question", " "],
    ["detect", str(COGEO), "--engine", "http://127.0.0.1:9", "--out", "x.gpkg", "--question", ""],
    ["engine-check", "--engine", "http://127.0.0.1:9", "--question", "\t"],
])
def test_an_empty_question_is_refused_by_the_bulk_and_engine_commands(argv, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    line = one_line_refusal(argv, capsys, monkeypatch)
    assert f"geovlm {argv[0]}: --question is empty" in line
    assert not (tmp_path / "x.gpkg").exists()


@pytest.mark.parametrize("command", ["caption", "detect"])
def test_a_bulk_question_of_bytes_that_are_not_utf8_is_refused_before_the_raster(command, capsys, monkeypatch,
                                                                                 tmp_path):
    # $'caf\xe9' from a Latin-1 terminal: the ledger (core/ledger.py) raised a UnicodeEncodeError traceback.
    from geovlm.cli import rasters

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(rasters, "open_frame", lambda *a, **k: pytest.fail("the raster was read"))
    argv = [command, str(COGEO), "--tile", "64", "--engine", "http://127.0.0.1:9", "--family", "geochat",
            "--question", "caf\udce9", "--out", "c.gpkg"]
    line = one_line_refusal(argv, capsys, monkeypatch)
    assert line == (f"geovlm {command}: --question is not UTF-8 text (byte 0xe9 at character 4): set the terminal "
                    "to UTF-8, or write the text again")
    assert not (tmp_path / "c.gpkg").exists()


@pytest.mark.parametrize("extra, said", [
    (["--device", "tpu"], "--device choose"),
    (["--device", "cpu", "--providers", "CPU"], "--device and --providers choose"),
])
def test_local_device_options_with_a_remote_engine_are_refused(extra, said, capsys, monkeypatch):
    line = one_line_refusal(["ask", str(COGEO), "q", "--engine", "http://127.0.0.1:9", *extra], capsys, monkeypatch)
    assert line.startswith(f"geovlm ask: {said} where a model runs here; with --engine the engine chooses")


def test_geovlm_with_no_arguments_prints_the_help_not_a_usage_error(capsys):
    """Plain `geovlm` prints the full help (every command) on stdout and exits 2, with no "error:" line."""
    assert main([]) == 2
    out, err = capsys.readouterr()
    assert "error" not in out + err
    for command in ("parse", "ask", "serve", "caption", "detect", "eval"):
        assert f"\n    {command} " in out, out
    assert out.startswith("usage: geovlm")
