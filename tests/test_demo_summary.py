"""The end of `make demo` (scripts/demo_summary.py): each layer with its count and CRS, and an empty objects layer
of the random demo model said to be expected, not a failure."""
import subprocess
import sys
from pathlib import Path

from geovlm.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_the_summary_lists_layers_and_says_an_empty_answer_is_expected(tmp_path, capsys):
    noise, boxes = tmp_path / "noise.txt", tmp_path / "boxes.txt"
    noise.write_text("6etboinghiteraneN detailr</p>gsiraneT\n")  # what the stand-in writes: no box
    boxes.write_text("[[10, 20, 30, 40, 0]]\n")
    for src, out in ((noise, "ask.gpkg"), (boxes, "real.gpkg")):
        assert main(["parse", str(src), "--family", "earthdial", "--out", str(tmp_path / out)]) == 0
    capsys.readouterr()
    shown = subprocess.run([sys.executable, str(ROOT / "scripts" / "demo_summary.py"), str(tmp_path / "ask.gpkg"),
                            str(tmp_path / "real.gpkg")], capture_output=True, text=True, check=True).stdout
    assert f"{tmp_path / 'ask.gpkg'}  layer 'objects': 0 features" in shown
    assert f"{tmp_path / 'real.gpkg'}  layer 'objects': 1 features" in shown
    assert "No box in ask.gpkg: expected" in shown and "real.gpkg:" not in shown.split("No box in")[1]
