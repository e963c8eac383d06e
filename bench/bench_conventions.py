"""Angle conventions decided from data: how many answer boxes hit a reference under each reading of the angle.

For every shared answer file with reference boxes, each answer box is read in several candidate ways and
counted as a hit when its polygon overlaps a reference polygon of the same answer at IoU >= 0.5 (shapely,
no clipping, as EarthDial's own evaluator `src/earthdial/eval/rs_detection/eval.py` compares boxes). The
references are turned by their own angle about their centre, as that evaluator does (all of them write 0
in the referring files, so they are read as written there). Counts are split into boxes whose angle is a
multiple of 90 and the others, since a model that writes both 0 and 90 for an unrotated box exists.

Readings of an answer box (x1, y1, x2, y2, a), turned about its centre, counter-clockwise on screen:
  as written          a ignored: the box as written
  turned by a         by a degrees (EarthDial's evaluator)
  turned by -a        by a degrees clockwise
  90 = upright        by a - 90 (GeoVLM's EarthDial and GeoChat profiles before this study)
  nearest axis        by a minus the nearest multiple of 90, in [-45, 45] (0 and 90 both as written)
  nearest axis, cw    the same, clockwise

The region-captioning file has no answer boxes; its question boxes show how the data set writes an
unrotated box. Run: python bench/bench_conventions.py
"""
from __future__ import annotations

import collections
import json
import math
import os
import re
from pathlib import Path

from shapely.geometry import Polygon

from geovlm.core.georef import rotated_corners

SHARED = Path(os.environ.get("GEOVLM_SHARED", Path(__file__).resolve().parents[2] / "shared"))
FILES = (  # (file, field of the reference boxes)
    ("earthdial_refer_nwpu_vhr10.jsonl", "gt_bbox"),
    ("earthdial_refer_ship.jsonl", "gt_bbox"),
    ("earthdial_grounding_ucas_aod.jsonl", "groundtruth"),
)
NUM = r"(-?\d+(?:\.\d+)?)"
BOX = re.compile(rf"\[\s*{NUM}\s*,\s*{NUM}\s*,\s*{NUM}\s*,\s*{NUM}\s*,\s*{NUM}\s*\]")
READINGS = {
    "as written": lambda a: 0.0,
    "turned by a": lambda a: a,
    "turned by -a": lambda a: -a,
    "90 = upright": lambda a: a - 90.0,
    "nearest axis": lambda a: math.remainder(a, 90.0),
    "nearest axis, cw": lambda a: -math.remainder(a, 90.0),
}


def boxes(text):
    """(x1, y1, x2, y2, angle) of every [x1, y1, x2, y2, angle] in the text."""
    return [tuple(float(v) for v in m.groups()) for m in BOX.finditer(text or "")]


def polygon(box, turn):
    x1, y1, x2, y2, _ = box
    return Polygon(rotated_corners((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1, turn))


def iou(a, b):
    if not (a.is_valid and b.is_valid) or a.area == 0 or b.area == 0:
        return 0.0
    inter = a.intersection(b).area
    return inter / (a.area + b.area - inter)


def study(path, ref_field):
    """{reading: Counter(class -> hits)}, Counter(class -> boxes); class is 'x90' or 'other'."""
    hits = {name: collections.Counter() for name in READINGS}
    totals = collections.Counter()
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            record = json.loads(line)
            refs = [polygon(b, b[4]) for b in boxes(record.get(ref_field))]
            for box in boxes(record.get("answer")):
                kind = "x90" if box[4] % 90 == 0 else "other"
                totals[kind] += 1
                for name, turn in READINGS.items():
                    answer = polygon(box, turn(box[4]))
                    hits[name][kind] += any(iou(answer, r) >= 0.5 for r in refs)
    return hits, totals


def question_angles(path):
    """Counter of the angles of the boxes in the questions (the region-captioning inputs)."""
    counts = collections.Counter()
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            counts.update(b[4] for b in boxes(json.loads(line).get("question")))
    return counts


def main():
    folder = SHARED / "data" / "answers"
    names = list(READINGS)
    print("| file | answer boxes (angle a multiple of 90 + other) | " + " | ".join(names) + " |")
    print("|---|---|" + "---|" * len(names))
    for name, field in FILES:
        hits, totals = study(folder / name, field)
        cells = [f"{hits[r]['x90'] + hits[r]['other']} ({hits[r]['x90']} + {hits[r]['other']})" for r in names]
        print(f"| {name} | {sum(totals.values())} ({totals['x90']} + {totals['other']}) | " + " | ".join(cells) + " |")
    counts = question_angles(folder / "earthdial_identify_nwpu_vhr10.jsonl")
    angles = ", ".join(f"{a:g}: {n}" for a, n in counts.most_common())
    print(f"\nearthdial_identify_nwpu_vhr10.jsonl question boxes (reference inputs) by angle: {angles}")


if __name__ == "__main__":
    main()
