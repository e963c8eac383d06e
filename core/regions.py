"""Asking about a map: the user's tasks in each family's words, and regions written in each family's syntax.

The inverse of the parsing chain (`core.parsing.parse_answer`): a region given in pixels of the image that is
sent (the map side turns map coordinates into those pixels with `GeoTransform.to_pixel`) goes to pixels of
the model's input through the same `FitPlan` the engine uses, then to the family's numbers (percent, bins or
input pixels) and its box syntax. Families that write an angle get the smallest rotated rectangle around the
region (in input pixels, where the model turns its boxes); the others its axis-aligned bounds. Numbers are
rounded as each family writes them, so a region comes back from the parser within half a unit of them.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

from .georef import FitPlan, Point, fit_plan
from .profiles import Profile

# The user's tasks (the dock's and the algorithm's words) -> the profile's task keys, first one present wins.
ASK_TASKS: Dict[str, Tuple[str, ...]] = {
    "ask": ("vqa", "caption"),
    "describe": ("grounding", "caption"),
    "find": ("refer", "detection", "grounding"),
    "identify": ("identify",),
    "scene graph": ("scene_graph",),
}
# Tasks whose question is a region of the image rather than text.
REGION_TASKS = frozenset({"identify"})
# Box syntaxes whose boxes carry an angle.
_ANGLED = frozenset({"geochat", "earthdial", "skysense"})


def family_tasks(profile: Profile) -> List[str]:
    """The user's tasks this family can do, in ASK_TASKS order (e.g. geochat: ask, describe, find, identify)."""
    return [task for task, keys in ASK_TASKS.items() if any(k in profile.task_words for k in keys)]


def task_key(profile: Profile, task: str) -> str:
    """The profile's task key for a user task ("find" -> "refer" for GeoChat). Raises ValueError when the
    family has no such task, naming the ones it has."""
    for key in ASK_TASKS.get(task.strip().lower(), ()):
        if key in profile.task_words:
            return key
    raise ValueError(f"{profile.name} cannot {task!r}; it can: {', '.join(family_tasks(profile))}")


def _hull(points: Sequence[Point]) -> List[Point]:
    """Convex hull, counter-clockwise in (x, y) (Andrew's monotone chain)."""
    pts = sorted(set((float(x), float(y)) for x, y in points))
    if len(pts) < 3:
        return pts

    def cross(o, a, b):
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower: List[Point] = []
    upper: List[Point] = []
    for p in pts:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    for p in reversed(pts):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    return lower[:-1] + upper[:-1]


def min_area_rect(points: Sequence[Point]) -> Tuple[float, float, float, float, float]:
    """(cx, cy, w, h, turn): the smallest rectangle around the points, `turn` in (-45, 45] degrees
    counter-clockwise as displayed (rows grow downwards), as `georef.rotated_corners` turns it. One side of
    the smallest rectangle lies on a hull edge (Freeman & Shapira 1975), so every hull edge is tried."""
    hull = _hull(points)
    if len(hull) < 3:
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        return ((min(xs) + max(xs)) / 2, (min(ys) + max(ys)) / 2, max(xs) - min(xs), max(ys) - min(ys), 0.0)
    best = None
    for i in range(len(hull)):
        (x0, y0), (x1, y1) = hull[i], hull[(i + 1) % len(hull)]
        # Edge direction in display terms: a counter-clockwise turn t has direction (cos t, -sin t) in (x, y).
        turn = math.degrees(math.atan2(-(y1 - y0), x1 - x0))
        turn = (turn + 45.0) % 90.0 - 45.0  # the same rectangle, turned into (-45, 45]
        if turn == -45.0:
            turn = 45.0
        t = math.radians(turn)
        ux, uy = math.cos(t), -math.sin(t)  # the rectangle's width axis
        vx, vy = math.sin(t), math.cos(t)  # its height axis
        us = [px * ux + py * uy for px, py in hull]
        vs = [px * vx + py * vy for px, py in hull]
        w, h = max(us) - min(us), max(vs) - min(vs)
        if best is None or w * h < best[0] - 1e-12:
            cu, cv = (max(us) + min(us)) / 2, (max(vs) + min(vs)) / 2
            best = (w * h, (cu * ux + cv * vx, cu * uy + cv * vy, w, h, turn))
    return best[1]


def _to_model(profile: Profile, plan: FitPlan, ix: float, iy: float) -> Point:
    """Pixels of the model's input -> the family's numbers (the inverse of `georef.model_to_input`)."""
    if profile.coord_mode == "input_pixels":
        return ix, iy
    return (ix / plan.input_width * profile.coord_scale - profile.coord_offset,
            iy / plan.input_height * profile.coord_scale - profile.coord_offset)


def _written(profile: Profile, value: float, hi: float) -> float:
    """A number as the family writes it: clipped to its range and rounded (bins floored, as Florence-2's
    quantizer does)."""
    if profile.box_syntax == "florence2":
        return float(min(max(math.floor(value + profile.coord_offset), 0), int(profile.coord_scale) - 1))
    value = min(max(value, 0.0), hi)
    if profile.box_syntax == "skysense":
        return round(value, 2)
    if profile.box_syntax == "llava":
        return round(value, 3)
    return float(round(value))


def region_numbers(polygon: Sequence[Point], profile: Profile, image_size: Tuple[int, int]):
    """A region in pixels of the sent image (any polygon, >= 1 point) -> (values, angle) in the family's
    numbers: (x1, y1, x2, y2) or, for SkySenseGPT, (cx, cy, w, h); `angle` as the family writes it, None for
    families without angles. Raises ValueError for an empty polygon or image."""
    if not polygon:
        raise ValueError("a region needs at least one point")
    plan = fit_plan(profile, int(image_size[0]), int(image_size[1]))
    pts = [plan.image_to_input(x, y) for x, y in polygon]
    hi_x, hi_y = ((float(plan.input_width), float(plan.input_height)) if profile.coord_mode == "input_pixels"
                  else (profile.coord_scale, profile.coord_scale))
    angle = None
    if profile.box_syntax in _ANGLED:
        cx, cy, w, h, turn = min_area_rect(pts)
        lo = profile.upright_angle - 45.0 if profile.upright_angle else 0.0
        written = turn / profile.angle_sense + profile.upright_angle
        if profile.angle_mode == "nearest_axis":  # quarter turns read alike: shift into [lo, lo + 90), no swap
            written = lo + (round(written) - lo) % 90.0
        while written <= lo and profile.angle_mode != "nearest_axis":  # the same rectangle, w and h swapped
            written, w, h = written + 90.0, h, w
        while written > lo + 90.0:
            written, w, h = written - 90.0, h, w
        angle = float(round(written))
    else:
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        cx, cy, w, h = (min(xs) + max(xs)) / 2, (min(ys) + max(ys)) / 2, max(xs) - min(xs), max(ys) - min(ys)
    if profile.box_layout == "cxcywh":
        mcx, mcy = _to_model(profile, plan, cx, cy)
        mw, mh = _to_model(profile, plan, w, h)
        mw, mh = mw + profile.coord_offset, mh + profile.coord_offset  # sizes take no offset
        values = tuple(_written(profile, v, hi) for v, hi in ((mcx, hi_x), (mcy, hi_y), (mw, hi_x), (mh, hi_y)))
    else:
        x1, y1 = _to_model(profile, plan, cx - w / 2, cy - h / 2)
        x2, y2 = _to_model(profile, plan, cx + w / 2, cy + h / 2)
        values = tuple(_written(profile, v, hi) for v, hi in ((x1, hi_x), (y1, hi_y), (x2, hi_x), (y2, hi_y)))
    return values, angle


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:g}"


def region_text(values: Sequence[float], angle: Optional[float], profile: Profile) -> str:
    """Numbers in the family's box syntax, as its region questions and answers write them (sources: GeoChat's
    and MiniGPT-v2's `{<x1><y1><x2><y2>|<θ>}`, SkySenseGPT's `<rbox>`, EarthDial's `[[x1, y1, x2, y2, θ]]`,
    Qwen2-VL's box tokens, Qwen2.5-VL's `bbox_2d` JSON, Florence-2's `<loc_N>`; see
    shared/reference/answer-formats.md). `values` are x1, y1, x2, y2 in the family's numbers (`region_numbers`),
    `angle` degrees or None. ValueError for a family that writes no boxes."""
    a, b, c, d = (_num(v) for v in values)
    syntax = profile.box_syntax
    tail = f"|<{_num(angle)}>" if angle is not None else ""
    if syntax in ("geochat", "minigpt"):
        return f"{{<{a}><{b}><{c}><{d}>{tail}}}"
    if syntax == "skysense":
        return f"<rbox>({{<{a}><{b}><{c}><{d}>{tail}}})</rbox>"
    if syntax == "earthdial":
        return f"[[{a}, {b}, {c}, {d}" + (f", {_num(angle)}" if angle is not None else "") + "]]"
    if syntax == "llava":
        return f"[{a}, {b}, {c}, {d}]"
    if syntax == "qwen2":
        return f"<|box_start|>({a},{b}),({c},{d})<|box_end|>"
    if syntax == "qwen25":
        return f'{{"bbox_2d": [{a}, {b}, {c}, {d}]}}'
    if syntax == "florence2":
        return f"<loc_{a}><loc_{b}><loc_{c}><loc_{d}>"
    raise ValueError(f"{profile.name} writes no boxes, so it cannot be asked about a region")


def encode_region(polygon: Sequence[Point], profile: Profile, image_size: Tuple[int, int]) -> str:
    """A region in pixels of the sent image -> the text of the family's region syntax (the question of an
    identify task). `parse_answer(text, profile, image_size)` reads it back as the same box, within the
    rounding of the family's numbers."""
    values, angle = region_numbers(polygon, profile, image_size)
    return region_text(values, angle, profile)
