"""The shared real EarthDial answers: every box a plain pattern finds becomes exactly one object."""
import json
import re

import pytest
from shapely.geometry import Polygon

from geovlm.core.answer import DEGENERATE
from geovlm.core.parsing import parse_answer
from geovlm.core.profiles import get_profile

PLAIN_BOX = re.compile(r"\[\s*-?\d+\s*,\s*-?\d+\s*,\s*-?\d+\s*,\s*-?\d+\s*(?:,\s*-?\d+\s*)?\]")
FILES = ["earthdial_refer_nwpu_vhr10.jsonl", "earthdial_grounding_ucas_aod.jsonl", "earthdial_caption_ucm.jsonl"]


def _answers(data_dir, name):
    with open(data_dir / "answers" / name, encoding="utf-8") as fh:
        return [json.loads(line)["answer"] for line in fh if line.strip()]


@pytest.mark.parametrize("name", FILES)
def test_every_plain_box_is_one_object(data_dir, name):
    profile = get_profile("earthdial")
    answers = _answers(data_dir, name)
    assert answers, "file has no answers"
    found = objects = 0
    for text in answers:
        answer = parse_answer(text, profile, (448, 448))
        expected = PLAIN_BOX.findall(text)
        assert len(answer.objects) == len(expected), text
        for obj, source in zip(answer.objects, expected):
            assert obj.source == source
            assert Polygon(obj.polygon).is_valid
            assert Polygon(obj.polygon).area > 0
        found += len(expected)
        objects += len(answer.objects)
    assert found == objects
    if name.startswith("earthdial_caption"):
        assert found == 0
    else:
        assert found > 0


def test_truncated_boxes_are_reported_not_lost(data_dir):
    profile = get_profile("earthdial")
    truncated = [t for t in _answers(data_dir, FILES[0]) if re.search(r"\[\[\d+(?:, \d+){0,3}$", t)]
    assert truncated, "the shared file has truncated answers"
    for text in truncated:
        answer = parse_answer(text, profile)
        assert any("incomplete" in s.reason for s in answer.skipped)
        assert len(answer.objects) == len(PLAIN_BOX.findall(text))


def test_repetition_loop_is_flagged(data_dir):
    profile = get_profile("earthdial")
    loops = [parse_answer(t, profile) for t in _answers(data_dir, FILES[1])]
    assert any(any("repetition loop" in w for w in a.warnings) for a in loops)


def test_degenerate_box_is_one_flagged_object_with_smallest_valid_polygon():
    profile = get_profile("earthdial")
    answer = parse_answer("a road [[10, 20, 10, 60, 90]] and a point [[5, 5, 5, 5, 90]]", profile, (200, 100))
    assert len(answer.objects) == 2
    line, point = answer.objects
    assert DEGENERATE in line.flags and DEGENERATE in point.flags
    xs = [p[0] for p in line.polygon]
    ys = [p[1] for p in line.polygon]
    # One pixel of the sent image wide, centred on the written line; height as written (20%..60% of 100 px).
    assert max(xs) - min(xs) == pytest.approx(1.0)
    assert (min(xs) + max(xs)) / 2 == pytest.approx(20.0)
    assert (min(ys), max(ys)) == (pytest.approx(20.0), pytest.approx(60.0))
    assert Polygon(point.polygon).area == pytest.approx(1.0)
    assert all(Polygon(o.polygon).is_valid for o in answer.objects)
