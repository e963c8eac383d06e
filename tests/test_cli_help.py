"""`geovlm --help` and each command's help: every example they show runs as shown, pasted in a clone's root."""
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from geovlm.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]


def helps():
    """{command: its --help text}, "" for `geovlm --help` itself, for every command and `convert` kind."""
    parser = build_parser()
    out = {"": parser.format_help()}
    sub = next(a for a in parser._actions if a.dest == "command")  # argparse has no public way to them
    for name, command in sub.choices.items():
        out[name] = command.format_help()
    return out


def examples(text):
    """The example command lines of a help text: lines beginning `  geovlm `, with their `\\` continuations."""
    lines, out = text.splitlines(), []
    for i, line in enumerate(lines):
        if line.startswith("  geovlm "):
            command = line.strip()
            while command.endswith("\\"):
                i += 1
                command = command[:-1].rstrip() + " " + lines[i].strip()
            out.append(command)
    return out


ALL = [(name, command) for name, text in helps().items() for command in examples(text)]


def test_the_main_help_and_the_commands_a_new_user_starts_with_show_examples():
    shown = {name for name, _ in ALL}
    assert {"", "parse", "eval", "ask"} <= shown
    assert "geovlm COMMAND --help" in helps()[""]


@pytest.mark.parametrize("name, command", ALL, ids=[f"{n or 'geovlm'}-{i}" for i, (n, _) in enumerate(ALL)])
def test_every_example_in_the_help_runs_as_shown(tmp_path, name, command):
    (tmp_path / "sample").symlink_to(ROOT / "sample", target_is_directory=True)
    words = shlex.split(command)
    assert words[0] == "geovlm"
    run = subprocess.run([sys.executable, "-m", "geovlm", *words[1:]], cwd=tmp_path, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    out = re.search(r"--out (\S+)", command)
    if out:
        assert (tmp_path / out.group(1)).is_file()


@pytest.mark.parametrize("argv", [["eval", "detection", "sample/earthdial_refer.jsonl", "--family", "earthdial"],
                                  ["parse", "sample/earthdial_refer.jsonl", "--family", "earthdial", "--out",
                                   "x.gpkg"]])
def test_output_into_a_pipe_closed_early_ends_quietly(tmp_path, argv):
    # `geovlm eval ... | head -1` printed a BrokenPipeError traceback, and another at exit
    (tmp_path / "sample").symlink_to(ROOT / "sample", target_is_directory=True)
    proc = subprocess.Popen([sys.executable, "-m", "geovlm", *argv], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # the reader is gone before the first line
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 141 and "Traceback" not in err and "Exception ignored" not in err, err


def test_the_set_example_in_the_help_does_what_it_says_for_its_family(tmp_path):
    # the example was `--set angle_sense=-1 --set upright_angle=0`, and upright_angle moves nothing for the
    # families that read angles by the nearest axis (geochat, earthdial)
    text = " ".join(helps()["parse"].split())
    example = re.search(r"e\.g\. --family (\w+)((?: --set \S+)+): only a written angle of 90 is upright, 0 a "
                        r"quarter turn \(by default both are upright", text)
    assert example, text
    family, sets = example.group(1), example.group(2).rstrip(":").split()
    src = tmp_path / "a.jsonl"
    src.write_text(json.dumps({"answer": "[[10, 10, 50, 30, 0]][[10, 10, 50, 30, 90]]"}) + "\n")

    def angles(*extra):
        out = tmp_path / f"o{len(extra)}.geojson"
        run = subprocess.run([sys.executable, "-m", "geovlm", "parse", str(src), "--family", family, *extra,
                              "--out", str(out)], capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr
        return [f["properties"]["angle"] for f in json.loads(out.read_text())["features"]]

    assert angles() == [0, 0]  # both upright by default
    assert [abs(a) for a in angles(*sets)] == [90, 0]  # with the example: 90 upright, 0 a quarter turn
