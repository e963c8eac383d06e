"""The inverse chain: a region in pixels of the sent image -> the family's numbers and syntax -> the parser
gives the same box back, for every family that has a region task."""
import math
import random

import pytest

from geovlm.core.georef import fit_plan, rotated_corners
from geovlm.core.parsing import parse_answer
from geovlm.core.profiles import family_names, get_profile
from geovlm.core.regions import (
    REGION_TASKS,
    encode_region,
    family_tasks,
    min_area_rect,
    region_numbers,
    task_key,
)

REGION_FAMILIES = [n for n in family_names() if REGION_TASKS & set(family_tasks(get_profile(n)))]
SIZES = [(512, 512), (800, 450), (333, 700), (1024, 256)]


def test_the_families_with_a_region_task():
    assert set(REGION_FAMILIES) >= {"geochat", "earthdial", "qwen2vl", "qwen25vl", "florence2", "skysensegpt"}


def _tolerance(profile, size, angled):
    """Half a written unit, in pixels of the sent image, plus what rounding the angle to a degree moves."""
    plan = fit_plan(profile, *size)
    if profile.coord_mode == "input_pixels":
        unit_x = unit_y = 1.0
    else:
        unit_x, unit_y = plan.input_width / profile.coord_scale, plan.input_height / profile.coord_scale
    if profile.box_syntax == "skysense":
        unit_x, unit_y = unit_x / 100, unit_y / 100
    if profile.box_syntax == "florence2":
        unit_x, unit_y = 2 * unit_x, 2 * unit_y  # a bin is floored: up to one bin off
    tol = max(unit_x / plan.scale_x, unit_y / plan.scale_y)
    if angled:
        diag = math.hypot(plan.input_width, plan.input_height)
        tol += math.radians(0.5) * diag / min(plan.scale_x, plan.scale_y) + tol
    return tol


def _random_region(rng, plan, rotated):
    """A rectangle turned in the model's input (where a family's rotated boxes are rectangles; a stretched
    fit makes them parallelograms in the sent image), in pixels of the sent image."""
    w, h = plan.input_width, plan.input_height
    bw, bh = rng.uniform(0.1, 0.4) * w, rng.uniform(0.1, 0.4) * h
    cx, cy = rng.uniform(0.3, 0.7) * w, rng.uniform(0.3, 0.7) * h
    corners = rotated_corners(cx, cy, bw, bh, rng.uniform(-40, 40) if rotated else 0.0)
    return [plan.input_to_image(x, y) for x, y in corners]


@pytest.mark.parametrize("family", REGION_FAMILIES)
@pytest.mark.parametrize("size", SIZES)
def test_region_round_trip_through_the_parser(family, size):
    profile = get_profile(family)
    rng = random.Random(f"{family}{size}")
    angled = profile.box_syntax in ("geochat", "earthdial", "skysense")
    tol = _tolerance(profile, size, angled)
    for _ in range(25):
        region = _random_region(rng, fit_plan(profile, *size), angled)
        # A region on the image, by more than the rounding of the family's numbers (the parser clips boxes to
        # the image, in image pixels).
        while not all(tol <= x <= size[0] - tol and tol <= y <= size[1] - tol for x, y in region):
            region = _random_region(rng, fit_plan(profile, *size), angled)
        text = encode_region(region, profile, size)
        answer = parse_answer(text, profile, size)
        assert len(answer.objects) == 1 and not answer.skipped, text
        got = answer.objects[0].polygon
        if angled:  # the same rectangle may start at another corner
            best = min(range(4), key=lambda k: sum(math.dist(got[(i + k) % 4], region[i]) for i in range(4)))
            got = got[best:] + got[:best]
        else:
            xs, ys = [p[0] for p in region], [p[1] for p in region]
            region = [(min(xs), min(ys)), (max(xs), min(ys)), (max(xs), max(ys)), (min(xs), max(ys))]
        for (gx, gy), (rx, ry) in zip(got, region):
            assert abs(gx - rx) <= tol and abs(gy - ry) <= tol, (text, got, region, tol)
        # What the parser read, written again, is the same text: the chain is exact up to the rounding.
        assert encode_region(got, profile, size) == text


@pytest.mark.parametrize("family", REGION_FAMILIES)
def test_written_numbers_come_back_exactly(family):
    """Numbers a family can write -> polygon -> the very same numbers."""
    profile = get_profile(family)
    size = (640, 480)
    hi = 480 if profile.coord_mode == "input_pixels" else profile.coord_scale
    if profile.box_syntax == "skysense":
        values, angle = (40.5, 30.25, 20.0, 10.0), 30.0
    elif profile.box_syntax in ("geochat", "earthdial"):
        values, angle = (20.0, 30.0, 60.0, 50.0), 60.0  # 60 reads as -30 from the nearest axis in both
    else:
        values, angle = (0.2 * hi, 0.3 * hi, 0.6 * hi, 0.5 * hi), None
        values = tuple(float(round(v)) for v in values)
    from geovlm.core.regions import region_text

    text = region_text(values, angle, profile)
    polygon = parse_answer(text, profile, size).objects[0].polygon
    assert region_numbers(polygon, profile, size) == (values, angle)


def test_geochat_identify_question_reads_as_its_paper_writes_it():
    profile = get_profile("geochat")
    region = [(0, 0), (252, 0), (252, 126), (0, 126)]  # top-left quarter-wide strip of a 504 square
    question = profile.question(task_key(profile, "identify"), encode_region(region, profile, (504, 504)))
    assert question == "[identify] What is the object present at {<0><0><50><25>|<90>}"


def test_min_area_rect_finds_a_turned_rectangle():
    corners = rotated_corners(50, 40, 30, 10, 25)
    cx, cy, w, h, turn = min_area_rect(corners)
    assert (cx, cy, w, h, turn) == pytest.approx((50, 40, 30, 10, 25))


def test_tasks_follow_the_family():
    assert family_tasks(get_profile("geochat")) == ["ask", "describe", "find", "identify"]
    assert "scene graph" in family_tasks(get_profile("skysensegpt"))
    assert family_tasks(get_profile("llava15")) == ["ask", "describe"]
    with pytest.raises(ValueError, match="llava15 cannot 'identify'; it can: ask, describe"):
        task_key(get_profile("llava15"), "identify")
    with pytest.raises(ValueError, match="writes no boxes"):
        encode_region([(1, 1), (2, 2)], get_profile("rsllava"), (10, 10))
