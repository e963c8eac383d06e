"""Option values that begin with '-' (a window or bands reaching left of the raster, a negative number, a key or a
question) are taken after a space as after '=', in every subcommand (`cli/arguments.py`)."""
import argparse
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import models_support as ms  # noqa: E402

from geovlm.cli import build_parser, main  # noqa: E402
from geovlm.cli.arguments import CommandParser  # noqa: E402

COGEO = ms.RASTERS / "cogeo.tif"
ANSWERS = ms.RASTERS.parent / "answers" / "earthdial_refer_ship.jsonl"
# Options whose values may begin with '-' besides the numbers (marked by their type): comma lists and free text.
DASH_TEXT_OPTIONS = {"--window", "--bands", "--geotransform", "--api-key", "--question", "--image-size"}


def subcommand_parsers(parser=None, path=()):
    """(command words, parser) of every subcommand, nested ones (`convert minigptv2`) included."""
    parser = parser or build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*path, name), sub
                yield from subcommand_parsers(sub, (*path, name))


def refused_before_loading(argv, capsys, monkeypatch):
    """main(argv) exits 2 with one line on stderr, no model made or loaded; that line."""
    from geovlm.cli import engine_cmds
    from geovlm.models import pipeline

    monkeypatch.setattr(engine_cmds, "ready_demo_model", lambda: pytest.fail("the demo model was prepared"))
    monkeypatch.setattr(pipeline.VlmPipeline, "load", lambda *a, **k: pytest.fail("the model was loaded"))
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("window", [["--window", "-5,10,200,200"], ["--window=-5,10,200,200"],
                                    ["--win", "-5,10,200,200"], ["--window", "10,-1,200,200"]])
def test_a_window_left_of_the_raster_is_said_to_reach_outside_it(window, capsys, monkeypatch):
    line = refused_before_loading(["ask", str(COGEO), "Describe the image", *window], capsys, monkeypatch)
    assert line.startswith("geovlm ask: window (") and "reaches outside the raster (1024x1024)" in line


def test_parse_takes_a_negative_window_after_a_space_too(tmp_path, capsys):
    out = tmp_path / "o.gpkg"
    argv = ["parse", str(ANSWERS), "--family", "earthdial", "--raster", str(COGEO), "--window", "-1,0,10,10",
            "--out", str(out)]
    assert main(argv) == 2 and not out.exists()
    assert "reaches outside the raster" in capsys.readouterr().err


def test_a_negative_image_size_is_refused_by_its_own_check_not_as_a_missing_value(tmp_path, capsys):
    out = tmp_path / "o.gpkg"
    assert main(["parse", str(ANSWERS), "--family", "earthdial", "--image-size", "-5x10", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "geovlm parse: --image-size: image size must be positive, got '-5x10'" and not out.exists()


def test_every_subcommand_reads_dash_values_after_a_space():
    parse = build_parser().parse_args
    args = parse(["ask", "r.tif", "q", "--window", "-5,10,200,200", "--bands", "-1,2,3", "--temperature", "-1e-3",
                  "--seed", "-1", "--max-new-tokens", "-2", "--api-key", "-k3y", "--retry-window", "-1e2"])
    assert (args.window, args.bands, args.temperature, args.seed) == ("-5,10,200,200", "-1,2,3", -1e-3, -1)
    assert (args.max_new_tokens, args.api_key, args.retry_window) == (-2, "-k3y", -100.0)
    args = parse(["parse", "a.jsonl", "--family", "geochat", "--out", "o.gpkg", "--window", "-1,-2,3,4",
                  "--geotransform", "-0.5,0,100,0,-0.5,200"])
    assert (args.window, args.geotransform) == ("-1,-2,3,4", "-0.5,0,100,0,-0.5,200")
    for command in ("caption", "detect"):
        args = parse([command, "r.tif", "--out", "o.gpkg", "--bands", "-3,2,1", "--question", "-what is it",
                      "--overlap", "-64", "--tile", "-512", "--max-concurrent", "-1"])
        assert (args.bands, args.question, args.overlap, args.tile, args.max_concurrent) == (
            "-3,2,1", "-what is it", -64, -512, -1)
    args = parse(["engine-check", "--question", "-x", "--max-tokens", "-1", "--temperature", "-2.5e-1"])
    assert (args.question, args.max_tokens, args.temperature) == ("-x", -1, -0.25)
    assert parse(["eval", "detection", "a.jsonl", "--iou", "-1e-1"]).iou == -0.1
    args = parse(["serve", "--max-body-mb", "-1e1", "--max-batch", "-8", "--batch-window-ms", "-.5"])
    assert (args.max_body_mb, args.max_batch, args.batch_window_ms) == (-10.0, -8, -0.5)


def test_a_negative_port_is_refused_by_its_own_check_not_as_a_missing_value(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--port", "-1"])
    assert "a port is 0 to 65535, not -1" in capsys.readouterr().err


def test_a_forgotten_value_is_still_reported_and_words_after_a_double_dash_are_left_alone(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["ask", "r.tif", "q", "--window", "--out", "x.gpkg"])
    assert "argument --window: expected one argument" in capsys.readouterr().err
    args = build_parser().parse_args(["ask", "r.tif", "--window", "1,2,3,4", "--", "-5 cars?"])
    assert (args.question, args.window) == ("-5 cars?", "1,2,3,4")
    parser = CommandParser(prog="t")
    parser.add_argument("--window", dash_value=True)
    parser.add_argument("--name")
    assert parser.joined(["--window", "-1", "--name", "-x", "--", "--window", "-2"]) == [
        "--window=-1", "--name", "-x", "--", "--window", "-2"]
    with pytest.raises(SystemExit):  # an option not marked keeps argparse's reading
        parser.parse_args(["--name", "-x"])


def test_the_options_that_take_comma_lists_numbers_or_free_text_are_marked_in_every_subcommand():
    """Found by walking every subcommand: each option of DASH_TEXT_OPTIONS, and each taking an int or a float
    (or a port), takes a value beginning with '-' after a space."""
    checked = 0
    for words, parser in subcommand_parsers():
        for action in parser._actions:
            if not action.option_strings or action.nargs is not None:
                continue
            numeric = action.type in (int, float) or getattr(action.type, "__name__", "") == "port_number"
            if numeric or set(action.option_strings) & DASH_TEXT_OPTIONS:
                option = action.option_strings[-1]
                assert parser.joined([option, "-1,2"]) == [f"{option}=-1,2"], (words, option)
                checked += 1
    assert checked > 40
