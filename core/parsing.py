"""Answer parsing: model text -> objects (polygons in pixels of the sent image) and relations.

One grammar per box syntax reads the numbers as written (`RawBox`); `parse_answer` then maps them through
the family's coordinate convention and the fit of the image into the model's input. Parsing never raises
on model text: what cannot be read is reported in `Answer.skipped`.
"""
from __future__ import annotations

import bisect
import json
import math
import re
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from .answer import (
    CLIPPED,
    DEGENERATE,
    REORDERED,
    REPEATED,
    Answer,
    GeoObject,
    RawBox,
    Relation,
    Skipped,
)
from .georef import FitPlan, Point, fit_plan, model_to_input, rotated_corners, signed_area
from .profiles import Profile
from .vocab import PREDICATES_LONGEST_FIRST

NUM = r"[-+]?\d+(?:\.\d+)?"
_TAGS = re.compile(
    r"</?(?:p|ref|rel|rbox|box|delim|s|ph_st|ph_ed|obj)>|<\|[a-z_]+\|>|<loc_\d+>", re.IGNORECASE
)


@dataclass
class RawRelation:
    """A relation as read: subject and object are lists of raw-box indices, or the target region ("it")."""

    subject: List[int]
    predicate: str
    object: List[int]
    subject_label: str
    object_label: str
    span: Tuple[int, int]


@dataclass
class Reading:
    """What a grammar read from the text, before any geometry."""

    boxes: List[RawBox] = field(default_factory=list)
    relations: List[RawRelation] = field(default_factory=list)
    skipped: List[Skipped] = field(default_factory=list)


# ---------------------------------------------------------------- labels

_FILLER_START = re.compile(
    r"^(?:(?:there\s+(?:is|are)|in\s+the\s+image|we\s+can\s+see|i\s+see|and|with|of|some|a|an|the|"
    r"located|at|is|are)\b[\s,]*)+",
    re.IGNORECASE,
)
_ENUM = re.compile(r"^\s*(?:\d+[.)]|[-*•])\s+")
_DELIMS_ONLY = re.compile(r"^(?:\s|,|;|\]|\[|\(|\)|\}|\{|<delim>|</?rbox>|\band\b)*$", re.IGNORECASE)
_BOUNDARY = re.compile(r"(?:[.!?;:](?:\s|$)|\n)")
_BRACKETS = re.compile(r"[\[\]{}()|]")
_IN_IMAGE = re.compile(r"\s+in\s+the\s+image\s*$", re.IGNORECASE)


_PHRASE = re.compile(r"<p>(.*?)</p>", re.IGNORECASE | re.DOTALL)


def clean_label(segment: str, max_words: int = 6) -> str:
    """A short label from the text before a box: tags, numbering and filler words removed. When the segment
    holds a `<p>phrase</p>`, the last such phrase is the label and the text around it is not: GeoChat and
    MiniGPT-v2 name a box by the phrase in `<p>..</p>` before it, `<p>phrase</p> {<x1><y1><x2><y2>}` (the
    answer formats in shared/reference/answer-formats.md)."""
    phrases = _PHRASE.findall(segment[-2000:])
    if phrases and phrases[-1].strip():
        segment = phrases[-1]
    text = _BRACKETS.sub(" ", _TAGS.sub(" ", segment[-2000:]))
    parts = _BOUNDARY.split(text)
    text = parts[-1] if parts[-1].strip() else (parts[-2] if len(parts) > 1 else "")
    text = _ENUM.sub("", text).strip(" ,:;-\t")
    text = _IN_IMAGE.sub("", text)
    text = _FILLER_START.sub("", text).strip(" ,:;-\t")
    words = text.split()
    return " ".join(words[-max_words:])


def _label_between(text: str, prev_end: int, start: int, prev_label: str) -> str:
    segment = text[prev_end:start]
    if _DELIMS_ONLY.match(segment) and prev_label:
        return prev_label
    return clean_label(segment)


# ---------------------------------------------------------------- helpers


# Numbers beyond this many times the family's full range are not coordinates (1e308, 1,000 digits...): such a
# box is reported as skipped, so that no later arithmetic meets an infinity.
_MAX_RANGE_MULTIPLE = 1e6


def _floats(values: Sequence[object]) -> Optional[Tuple[float, ...]]:
    """The values as finite floats, or None if any is not one (text, inf, nan, an int too big for a float)."""
    out = []
    for v in values:
        try:
            f = float(v)
        except (TypeError, ValueError, OverflowError):
            return None
        if not math.isfinite(f):
            return None
        out.append(f)
    return tuple(out)


def _box_numbers(values: Sequence[object], angle: Optional[object]) -> Tuple[Optional[Tuple[float, ...]], Optional[float]]:  # noqa: E501
    """(four finite floats or None, the angle as a float or None); an unreadable angle makes the whole box
    unreadable (values None), so it is reported rather than turned by a guess."""
    numbers = _floats(list(values) + ([] if angle is None else [angle]))
    if numbers is None:
        return None, None
    return numbers[:4], (numbers[4] if angle is not None else None)


def _skip_unmatched(text: str, starts: re.Pattern, covered: List[Tuple[int, int]], reason: str) -> List[Skipped]:
    """Box-like starts that no full match covers: truncated or malformed boxes."""
    merged: List[List[int]] = []
    for a, b in sorted(covered):
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    firsts = [a for a, _ in merged]
    out = []
    for m in starts.finditer(text):
        i = bisect.bisect_right(firsts, m.start()) - 1
        if i >= 0 and m.start() < merged[i][1]:
            continue
        end = min(len(text), m.start() + 48)
        out.append(Skipped(text[m.start() : end], (m.start(), end), reason))
    return out


# ---------------------------------------------------------------- grammars

_GEOCHAT_BOX = re.compile(
    rf"\{{\s*<\s*({NUM})\s*>\s*<\s*({NUM})\s*>\s*<\s*({NUM})\s*>\s*<\s*({NUM})\s*>\s*"
    rf"(?:\|\s*<\s*({NUM})\s*>\s*)?\}}"
)
_GEOCHAT_START = re.compile(r"\{\s*<")


def _read_inline_boxes(text: str, pattern: re.Pattern) -> Reading:
    """Boxes written inline as four numbers and an optional angle (groups 1-4 and 5), labelled by the text
    before them; a box right after another inherits its label."""
    reading = Reading()
    prev_end, prev_label = 0, ""
    for m in pattern.finditer(text):
        values, angle = _box_numbers(m.group(1, 2, 3, 4), m.group(5) if pattern.groups >= 5 else None)
        label = _label_between(text, prev_end, m.start(), prev_label)
        reading.boxes.append(RawBox(values, angle, "xyxy", m.span(), label))
        prev_end, prev_label = m.end(), label
    return reading


def read_geochat(text: str, profile: Profile) -> Reading:
    """GeoChat and MiniGPT-v2: {<x1><y1><x2><y2>|<angle>}, groups joined by }{, <delim> or ', '. Numbers are kept
    as written; the profile's coord_mode/coord_scale say what they mean (0..100 of the input for both)."""
    reading = _read_inline_boxes(text, _GEOCHAT_BOX)
    covered = [b.span for b in reading.boxes]
    reading.skipped += _skip_unmatched(text, _GEOCHAT_START, covered, "incomplete {<..>} box")
    return reading


_EARTHDIAL_BOX = re.compile(rf"\[\s*({NUM})\s*,\s*({NUM})\s*,\s*({NUM})\s*,\s*({NUM})\s*(?:,\s*({NUM})\s*)?\]")
_EARTHDIAL_START = re.compile(rf"\[\s*\[|\[\s*{NUM}\s*,")


def read_earthdial(text: str, profile: Profile) -> Reading:
    """EarthDial: [[x1, y1, x2, y2, angle]], several as [[..]][[..]] or [[..], [..]]. Numbers are kept as written
    (the profile's coord_mode/coord_scale say what they mean)."""
    reading = _read_inline_boxes(text, _EARTHDIAL_BOX)
    covered = [b.span for b in reading.boxes]
    # A group opener "[[" (or "[[[") is covered when the box right after it matched.
    covered += [(b.span[0] - k, b.span[1]) for b in reading.boxes for k in (2, 3)]
    reading.skipped += _skip_unmatched(text, _EARTHDIAL_START, covered, "incomplete [[..]] box")
    return reading


_LLAVA_BOX = re.compile(rf"\[\s*({NUM})\s*,\s*({NUM})\s*,\s*({NUM})\s*,\s*({NUM})\s*\]")


def read_llava(text: str, profile: Profile) -> Reading:
    """LLaVA-1.5: [x1, y1, x2, y2] as fractions of the (padded) input."""
    return _read_inline_boxes(text, _LLAVA_BOX)


_TAIL = 256  # how far a tag may stand from what it belongs to (whitespace, "is"/"are")


def tag_pairs(text: str, open_tag: str, close_tag: str) -> Tuple[List[Tuple[int, int, int, int]], List[int]]:
    """(start, inner start, inner end, end) of each open...close pair, and the starts of unclosed open tags.

    An open tag followed by another open before its close is unclosed. Linear in the text (a lazy `.*?`
    regex rescans the rest of the text for every unclosed tag, which model text must not be able to force).
    """
    opens = [m.start() for m in re.finditer(re.escape(open_tag), text)]
    closes = [m.start() for m in re.finditer(re.escape(close_tag), text)]
    pairs, unclosed = [], []
    for k, start in enumerate(opens):
        inner = start + len(open_tag)
        i = bisect.bisect_left(closes, inner)
        following = opens[k + 1] if k + 1 < len(opens) else len(text) + 1
        if i < len(closes) and closes[i] < following:
            pairs.append((start, inner, closes[i], closes[i] + len(close_tag)))
        else:
            unclosed.append(start)
    return pairs, unclosed


_RBOX_ITEM = re.compile(
    rf"\{{\s*<\s*({NUM})\s*>\s*<\s*({NUM})\s*>\s*<\s*({NUM})\s*>\s*<\s*({NUM})\s*>\s*"
    rf"(?:\|\s*<\s*({NUM})\s*>\s*)?\}}"
)


def read_skysense(text: str, profile: Profile) -> Reading:
    """SkySenseGPT: <ref>label</ref><rbox>({<cx><cy><w><h>|<a>}, ..)</rbox>, <rel>predicate</rel>."""
    reading = Reading()
    ref_pairs, _ = tag_pairs(text, "<ref>", "</ref>")
    refs_by_end = {end: (start, text[i:j].strip()) for start, i, j, end in ref_pairs}
    groups_by_start: Dict[int, Tuple[List[int], str]] = {}
    groups_by_end: Dict[int, Tuple[List[int], str]] = {}
    rbox_pairs, rbox_unclosed = tag_pairs(text, "<rbox>", "</rbox>")
    prev_end, prev_label = 0, ""
    for g_start, inner, inner_end, g_end in rbox_pairs:
        offset = max(0, g_start - _TAIL)
        ref = refs_by_end.get(offset + len(text[offset:g_start].rstrip()))
        label = ref[1] if ref else _label_between(text, prev_end, g_start, prev_label)
        indices = []
        for m in _RBOX_ITEM.finditer(text, inner, inner_end):
            values, angle = _box_numbers(m.group(1, 2, 3, 4), m.group(5))
            indices.append(len(reading.boxes))
            reading.boxes.append(RawBox(values, angle, "cxcywh", m.span(), label))
        groups_by_start[ref[0] if ref else g_start] = (indices, label)
        groups_by_end[g_end] = (indices, label)
        prev_end, prev_label = g_end, label
    covered = [b.span for b in reading.boxes]
    reading.skipped += _skip_unmatched(text, _GEOCHAT_START, covered, "incomplete {<..>} rotated box")
    for start in rbox_unclosed:
        reading.skipped.append(Skipped(text[start : start + 48], (start, start + 48), "unclosed <rbox>"))

    lone_refs = {start: ([], label) for end, (start, label) in refs_by_end.items() if start not in groups_by_start}
    lone_refs_by_end = {end: ([], label) for end, (start, label) in refs_by_end.items() if start in lone_refs}
    rel_pairs, _ = tag_pairs(text, "<rel>", "</rel>")
    for start, inner, inner_end, end in rel_pairs:
        subject = _entity_before(text, start, groups_by_end, lone_refs_by_end)
        obj = _entity_after(text, end, groups_by_start, lone_refs)
        predicate = " ".join(text[inner:inner_end].split())
        if subject is None or obj is None:
            reading.skipped.append(Skipped(text[start:end], (start, end), "relation without subject or object"))
            continue
        reading.relations.append(RawRelation(subject[0], predicate, obj[0], subject[1], obj[1], (start, end)))
    reading.relations += _category_relations(text)
    return reading


def _entity_before(text, pos, groups_by_end, refs_by_end):
    """The boxes (or the target "it") just before a <rel>, with the label."""
    offset = max(0, pos - _TAIL)
    window = re.sub(r"\b(?:is|are)$", "", text[offset:pos].rstrip()).rstrip()
    end = offset + len(window)
    found = groups_by_end.get(end) or refs_by_end.get(end)
    if found:
        return found
    if re.search(r"\bit$", window, re.IGNORECASE):
        return [-1], "it"
    return None


def _entity_after(text, pos, groups_by_start, refs_by_start):
    """The boxes (or the target "it") just after a </rel>, with the label."""
    rest = text[pos : pos + _TAIL]
    start = pos + (len(rest) - len(rest.lstrip()))
    found = groups_by_start.get(start) or refs_by_start.get(start)
    if found:
        return found
    if re.match(r"it\b", text[start : start + 3], re.IGNORECASE):
        return [-1], "it"
    return None


_CATEGORY_REL = re.compile(r"(?<![A-Za-z_])([A-Za-z_]+)\s*<([a-z][a-z -]{0,60}?)>\s*([A-Za-z_]+)")


def _category_relations(text: str) -> List[RawRelation]:
    """Category-level relations without boxes: `tank <not co-storage with> tank`."""
    out = []
    for m in _CATEGORY_REL.finditer(text):
        predicate = " ".join(m.group(2).split()).lower()
        if predicate in PREDICATES_LONGEST_FIRST:
            out.append(RawRelation([], predicate, [], m.group(1), m.group(3), m.span()))
    return out


_QWEN2_BOX = re.compile(
    rf"<\|box_start\|>\s*((?:\(\s*{NUM}\s*,\s*{NUM}\s*\)(?:\s*,)?\s*)+)<\|box_end\|>"
)
_QWEN2_PAIR = re.compile(rf"\(\s*({NUM})\s*,\s*({NUM})\s*\)")
# A box saved without the special tokens (the usual decoding drops them): `white truck(412,305),(498,377)`.
_QWEN2_BARE = re.compile(rf"\(\s*({NUM})\s*,\s*({NUM})\s*\)\s*,?\s*\(\s*({NUM})\s*,\s*({NUM})\s*\)")


def read_qwen2(text: str, profile: Profile) -> Reading:
    """Qwen2-VL: <|object_ref_start|>label<|object_ref_end|><|box_start|>(x1,y1),(x2,y2)<|box_end|>, in bins
    of 1/1000 (Qwen2-VL's model card and `qwen_vl_utils`). Answers decoded with `skip_special_tokens=True`
    lose the tokens and read `white truck(412,305),(498,377)`: two corner pairs after a phrase are
    unambiguous, so they are read too, labelled by the phrase before them. Each box's span (its `source`)
    is its own two corner pairs."""
    reading = Reading()
    ref_pairs, _ = tag_pairs(text, "<|object_ref_start|>", "<|object_ref_end|>")
    ref_ends = [end for _, _, _, end in ref_pairs]
    groups = list(_QWEN2_BOX.finditer(text))
    for m in groups:
        pairs = list(_QWEN2_PAIR.finditer(text, m.start(1), m.end(1)))
        k = bisect.bisect_right(ref_ends, m.start()) - 1
        label = text[ref_pairs[k][1] : ref_pairs[k][2]].strip() if k >= 0 else ""
        if len(pairs) % 2:
            reading.skipped.append(Skipped(m.group(0)[:200], m.span(), "odd number of corner points"))
            continue
        for first, second in zip(pairs[::2], pairs[1::2]):
            values = _floats(first.groups() + second.groups())
            reading.boxes.append(RawBox(values, None, "xyxy", (first.start(), second.end()), label))
    covered = [m.span() for m in groups]
    group_starts = [a for a, _ in covered]
    prev_end, prev_label = 0, ""
    for m in _QWEN2_BARE.finditer(text):
        i = bisect.bisect_right(group_starts, m.start()) - 1
        if i >= 0 and m.start() < covered[i][1]:
            continue
        k = bisect.bisect_right(ref_ends, m.start()) - 1
        if k >= 0 and not text[ref_ends[k] : m.start()].strip():
            label = text[ref_pairs[k][1] : ref_pairs[k][2]].strip()
        else:
            label = _label_between(text, prev_end, m.start(), prev_label)
        reading.boxes.append(RawBox(_floats(m.groups()), None, "xyxy", m.span(), label))
        prev_end, prev_label = m.end(), label
    reading.skipped += _skip_unmatched(text, re.compile(r"<\|box_start\|>"), covered, "incomplete box tokens")
    return reading


# RFC 8259: an object opens with "{" before a key or its "}" (section 4), so other braces outside an object
# are prose; a string runs to its unescaped closing quote, holds no raw line break (section 7) and is followed by
# ":" (a key) or by ",", "}" or "]" (a value), or by the end of the text (cut short).
_JSON_OPEN = re.compile(r"\{(?=\s*[\"}])")
_JSON_TOKEN = re.compile(r'"[^"\\\n]*(?:\\.[^"\\\n]*)*(")?|[{}]')
_JSON_AFTER_STRING = re.compile(r"\s*(?:[:,}\]]|\Z)")


def json_object_spans(text: str, key: str) -> List[Tuple[int, int]]:
    """(start, end) character spans of the JSON objects in `text` that hold the string `key` at their own
    level (not only in an object nested in them), in order of start; an object nested in another that holds
    `key` too gives its own span. The spans are candidates: `json.loads` decides whether each is valid JSON.

    Braces inside strings do not count, escaped quotes (`\\"`) included (RFC 8259 sections 4 and 7). Outside
    any object quotes are prose, and a brace opens an object only before a quote or "}". A string that cannot
    be JSON (still open at a line break, or followed by something other than ":", ",", "}", "]") ends every
    object around it unclosed, and the scan goes on at depth 0 just after its opening quote, so the objects
    after a broken one are still found: a repetition loop that cuts `"label": "sh` short before `{"bbox_2d"`.
    Objects never closed give no span. Linear in the text: a string's text is read at most twice, once as a
    string and, if it breaks, once as prose (a `[^{}]*` regex on each side of the key, as before, rescanned a
    brace-free stretch for every key in it: quadratic time, and it took a brace in a string for structure).
    """
    quoted = json.dumps(key)
    spans: List[Tuple[int, int]] = []
    stack: List[List] = []  # [start, holds key] of each open object, innermost last
    pos = 0
    while True:
        m = (_JSON_TOKEN if stack else _JSON_OPEN).search(text, pos)
        if m is None:
            break
        start, pos = m.span()
        char = text[start]
        if char == "{":
            stack.append([start, False])
        elif char == "}":
            opened, holds = stack.pop()
            if holds:
                spans.append((opened, pos))
        elif m.group(1) is None or not _JSON_AFTER_STRING.match(text, pos):
            stack.clear()  # not a JSON string: no object around it closes; its text is read again as prose
            pos = start + 1
        elif pos - start == len(quoted) and text.startswith(quoted, start):
            stack[-1][1] = True
    spans.sort()
    return spans


_QWEN25_KEY = re.compile(r"\"bbox_2d\"")


def read_qwen25(text: str, profile: Profile) -> Reading:
    """Qwen2.5-VL: a JSON list of {"bbox_2d": [x1, y1, x2, y2], "label": "..."} in input pixels; each object
    is found by `json_object_spans` (braces and brackets inside its strings are text) and read by `json.loads`.
    A `"bbox_2d"` that no closed object holds is reported as an incomplete JSON object, and an object with a
    `"point_2d"` (its pointing answers) as a point, not a box."""
    reading = Reading()
    covered = json_object_spans(text, "bbox_2d")
    for span in covered:
        fragment = text[span[0] : span[1]]
        try:
            item = json.loads(fragment)
        except ValueError:
            reading.skipped.append(Skipped(fragment, span, "object is not valid JSON"))
            continue
        bbox = item.get("bbox_2d") if isinstance(item, dict) else None
        values = _floats(bbox) if isinstance(bbox, list) and len(bbox) == 4 else None
        if values is None:
            reading.skipped.append(Skipped(fragment, span, "bbox_2d is not four numbers"))
            continue
        label = item.get("label", "")
        reading.boxes.append(RawBox(values, None, "xyxy", span, str(label)))
    reading.skipped += _skip_unmatched(text, _QWEN25_KEY, covered, "incomplete JSON object")
    # Qwen2.5-VL's pointing answers ({"point_2d": [x, y], "label": ...}, its grounding cookbook) place no box
    for span in json_object_spans(text, "point_2d"):
        if not any(a <= span[0] and span[1] <= b for a, b in covered):
            reading.skipped.append(Skipped(text[span[0] : span[1]], span, "point_2d is a point, not a box"))
    return reading


_FLORENCE_RUN = re.compile(r"(?:<loc_\d+>)+")
_LOC = re.compile(r"<loc_(\d+)>")


def read_florence2(text: str, profile: Profile) -> Reading:
    """Florence-2: label<loc_x1><loc_y1><loc_x2><loc_y2>, location bins of 1/1000 (its processor's
    `post_process_generation`). A run of several boxes shares the label before it; each box's span (its
    `source`) is its own four bins, so a long run costs linear time and memory."""
    reading = Reading()
    label, prev_end = "", 0
    for m in _FLORENCE_RUN.finditer(text):
        written = _TAGS.sub("", text[prev_end : m.start()]).strip()
        label, prev_end = written or label, m.end()
        locs = list(_LOC.finditer(text, m.start(), m.end()))
        whole = len(locs) - len(locs) % 4
        for i in range(0, whole, 4):
            values = _floats([loc.group(1) for loc in locs[i : i + 4]])
            reading.boxes.append(RawBox(values, None, "xyxy", (locs[i].start(), locs[i + 3].end()), label))
        if len(locs) % 4:
            span = (locs[whole].start(), m.end())
            reading.skipped.append(
                Skipped(text[span[0] : span[1]], span, f"{len(locs) % 4} location bins left over")
            )
    return reading


def read_none(text: str, profile: Profile) -> Reading:
    """The grammar of families whose answers carry no boxes: nothing to read."""
    return Reading()


GRAMMARS: Dict[str, Callable[[str, Profile], Reading]] = {
    "geochat": read_geochat,
    "minigpt": read_geochat,
    "skysense": read_skysense,
    "earthdial": read_earthdial,
    "llava": read_llava,
    "qwen2": read_qwen2,
    "qwen25": read_qwen25,
    "florence2": read_florence2,
    "none": read_none,
}


# ---------------------------------------------------------------- geometry


def _model_range(profile: Profile, plan: FitPlan) -> Tuple[float, float]:
    if profile.coord_mode == "input_pixels":
        return float(plan.input_width), float(plan.input_height)
    return profile.coord_scale, profile.coord_scale


def box_turn(angle: Optional[float], profile: Profile) -> float:
    """The counter-clockwise turn on screen, in degrees, of a box written with `angle` (None: no angle).

    "offset" mode: angle_sense * (angle - upright_angle), in (-360, 360). "nearest_axis" mode: angle_sense *
    (angle - the nearest multiple of 90), in [-45, 45], so 0, 90, 180 and 270 all leave the box as written.
    Finite for every finite angle (no overflow: `math.remainder` and `math.fmod` are exact).
    """
    if angle is None:
        return 0.0
    if profile.angle_mode == "nearest_axis":
        offset = math.remainder(angle, 90.0)
    else:
        offset = math.fmod(angle - profile.upright_angle, 360.0)
    return profile.angle_sense * offset + 0.0  # + 0.0: no negative zero


def clip_to_image(polygon: Sequence[Point], width: float, height: float) -> List[Point]:
    """The part of a convex polygon inside the image [0, width] x [0, height] (Sutherland-Hodgman), in
    image pixels; the polygon itself when it lies inside, [] when nothing of it does."""
    if all(0.0 <= x <= width and 0.0 <= y <= height for x, y in polygon):
        return list(polygon)
    out = list(polygon)
    for axis, bound, keep_below in ((0, 0.0, False), (0, width, True), (1, 0.0, False), (1, height, True)):
        if not out:
            break
        pts, out = out, []
        for i, cur in enumerate(pts):
            prev = pts[i - 1]
            cur_in = cur[axis] <= bound if keep_below else cur[axis] >= bound
            prev_in = prev[axis] <= bound if keep_below else prev[axis] >= bound
            if cur_in != prev_in:
                t = (bound - prev[axis]) / (cur[axis] - prev[axis])
                cross = [prev[0] + t * (cur[0] - prev[0]), prev[1] + t * (cur[1] - prev[1])]
                cross[axis] = bound
                out.append((cross[0], cross[1]))
            if cur_in:
                out.append(cur)
    dedup = [p for i, p in enumerate(out) if p != out[i - 1]] if len(out) > 1 else out
    return dedup if len(dedup) >= 3 and abs(signed_area(dedup)) > 0 else []


def _nano(point: Point) -> Point:
    return (round(point[0], 9) + 0.0, round(point[1], 9) + 0.0)


def box_to_object(raw: RawBox, profile: Profile, plan: FitPlan, obj_id: int) -> Optional[GeoObject]:
    """Map one written box to a polygon in pixels of the sent image (exact; rotation in input space).

    The box is turned in the model's input, mapped to image pixels through the fit plan, then clipped to
    the image there (so a box in the padding band of a padded image ends at the image's edge); a zero-size
    box is widened to one image pixel inside the image. None when no part of the box lies on the image or a
    number is beyond a million times the family's range (the caller reports the box as skipped).
    """
    flags = []
    v0, v1, v2, v3 = raw.values
    max_x, max_y = _model_range(profile, plan)
    limit = _MAX_RANGE_MULTIPLE * max(max_x, max_y)
    if any(abs(v) > limit for v in raw.values):
        return None
    if raw.layout == "cxcywh":
        cx, cy, w, h = v0, v1, abs(v2), abs(v3)
        x1, y1, x2, y2 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
    else:
        x1, y1, x2, y2 = v0, v1, v2, v3
        if x2 < x1 or y2 < y1:
            flags.append(REORDERED)
            x1, x2 = min(x1, x2), max(x1, x2)
            y1, y2 = min(y1, y2), max(y1, y2)
    # model numbers -> input pixels
    ix1, iy1 = model_to_input(profile, plan, x1, y1)
    ix2, iy2 = model_to_input(profile, plan, x2, y2)
    w_in, h_in = ix2 - ix1, iy2 - iy1
    cx_in, cy_in = (ix1 + ix2) / 2, (iy1 + iy2) / 2
    if w_in <= 0 or h_in <= 0:
        # The smallest valid box around a zero-size one: one pixel of the sent image, inside the image.
        flags.append(DEGENERATE)
        cx_img, cy_img = plan.input_to_image(cx_in, cy_in)
        if not (0 <= cx_img <= plan.width and 0 <= cy_img <= plan.height):
            flags.append(CLIPPED)
        if w_in <= 0:  # images are at least one pixel wide
            w_in, cx_img = plan.scale_x, min(max(cx_img, 0.5), plan.width - 0.5)
        if h_in <= 0:
            h_in, cy_img = plan.scale_y, min(max(cy_img, 0.5), plan.height - 0.5)
        cx_in, cy_in = plan.image_to_input(cx_img, cy_img)
    turn = box_turn(raw.angle, profile)
    corners_in = rotated_corners(cx_in, cy_in, w_in, h_in, turn)
    # Rounded to a nanopixel: 7 / 100 * 448 / 4.48 is 6.999999999999999 in floating point, and boxes that
    # touch a reference or the image's edge must stay exact.
    polygon = [_nano(plan.input_to_image(x, y)) for x, y in corners_in]
    clipped = clip_to_image(polygon, plan.width, plan.height)
    if not clipped:
        return None
    if clipped != polygon and CLIPPED not in flags:
        flags.append(CLIPPED)
    kind = "box" if math.isclose(math.fmod(abs(turn), 90.0), 0.0, abs_tol=1e-9) else "rbox"
    return GeoObject(
        id=obj_id,
        label=raw.label,
        kind=kind,
        polygon=clipped,
        angle=turn,
        span=raw.span,
        source="",
        flags=tuple(flags),
    )


# Text that looks like coordinates: four or more numbers joined by brackets, commas, bars or <loc_..>.
_COORD_SEP = r"(?:[\s,;|<>{}\[\]()]|loc_)+"
# A number as models and JSON write them, exponents, inf and nan included, not followed by a letter or a point.
_COORD_NUM = r"[-+]?(?:\d+(?:\.\d+)?(?:[eE][-+]?\d+)?|(?i:inf(?:inity)?|nan))(?![\w.])"
_COORD_LIKE = re.compile(rf"(?<![\w.]){_COORD_NUM}(?:{_COORD_SEP}{_COORD_NUM}){{3,}}")
_COORD_PUNCT = re.compile(r"[,<>{}\[\]()|]")


def untaken_coordinates(text: str, taken: Sequence[Tuple[int, int]], family: str) -> List[Skipped]:
    """Coordinate-looking runs of the text (four or more numbers joined by brackets or commas) that overlap
    nothing a grammar read or skipped: reported, never silently dropped. Linear in the text."""
    spans = sorted(taken)
    starts = [a for a, _ in spans]
    reach, ends = 0, []
    for _, b in spans:  # the furthest end among spans starting at or before each one
        reach = max(reach, b)
        ends.append(reach)
    out = []
    for m in _COORD_LIKE.finditer(text):
        if not _COORD_PUNCT.search(m.group(0)):
            continue  # numbers separated by spaces only are prose, not coordinates
        i = bisect.bisect_left(starts, m.end()) - 1
        if i >= 0 and ends[i] > m.start():
            continue
        end = min(m.end(), m.start() + 200)
        out.append(Skipped(text[m.start() : end], (m.start(), m.end()), f"numbers in no {family} box syntax"))
    return out


# ---------------------------------------------------------------- the whole answer

_SENTENCE_END = re.compile(r"[.!?\n]")


def repetition_warning(text: str, min_repeats: int = 3) -> Optional[str]:
    """A warning when one sentence comes back `min_repeats` times or more (a decoding loop)."""
    counts: Dict[str, int] = {}
    for sentence in _SENTENCE_END.split(text)[:-1]:  # the last piece has no end: not a sentence
        key = " ".join(sentence.split()).lower()
        if len(key) >= 20:
            counts[key] = counts.get(key, 0) + 1
    worst = max(counts.items(), key=lambda kv: kv[1], default=None)
    if worst and worst[1] >= min_repeats:
        return f"repetition loop: a sentence comes {worst[1]} times ({worst[0][:60]!r})"
    return None


_REMNANTS = r"\((?:[\s,]|{m})*\)|\[(?:[\s,]|{m})*\]|\{{(?:\s|{m})*\}}|\|\s*<\s*\d+\s*>"


def plain_text(text: str, boxes: Sequence[RawBox]) -> str:
    """The answer without box syntax, for display.

    Each removed piece (a box's span, a tag such as `<p>` or `<|box_start|>`, the empty brackets a removed box
    leaves, as `<rbox>()</rbox>`) is first replaced by a marker, then a run of markers and the spaces and tabs
    around it becomes: nothing before punctuation (`portal {<..>}, and` -> `portal, and`; `<p>x</p> {<..>}.` ->
    `x.`), after an opening bracket, at the start or end of a line or of the text, and after a colon that ends a
    sentence with it (`in the image: <rbox>(..)</rbox>.` -> `in the image.`); one space elsewhere, also between
    two words it glued together (Florence-2's `car<loc_1>..<loc_4>truck` -> `car truck`); nothing between two
    other characters. Spacing the model wrote itself (EarthDial's `farmland .`) is left as written, except that
    runs of spaces and tabs become one space."""
    # the marker: a private-use character the text does not hold; in a text that holds all 6400 of them, the
    # first, replaced in the text by U+FFFD (one character for one: the boxes' spans stay where they were)
    used = set(text)
    mark = next((chr(c) for c in range(0xE000, 0xF900) if chr(c) not in used), "\ue000")
    text = text.replace(mark, "\ufffd")
    pieces, pos = [], 0
    for a, b in sorted({box.span for box in boxes}):
        if a >= pos:
            pieces.append(text[pos:a])
            pieces.append(mark)
            pos = b
    pieces.append(text[pos:])
    out = _TAGS.sub(mark, "".join(pieces))
    out = re.sub(_REMNANTS.format(m=mark), mark, out)
    out = re.sub(r"[ \t]{2,}", " ", out)  # first, so that the run below is matched in linear time
    run = rf"[ \t]?{mark}(?:[ \t]?{mark})*[ \t]?"

    def join(m: re.Match[str]) -> str:
        before, after = out[m.start() - 1 : m.start()], out[m.end() : m.end() + 1]
        if m.group(1) and after in (".", "!", "?"):
            return ""  # "in the image: <box>." -> "in the image."
        if not before or not after or before in "\n([" or after in "\n.,;:!?)]":
            return m.group(1) or ""
        if before.isspace() or after.isspace():
            return ""
        if m.group(0).strip(mark):  # spaces or tabs stood around the removed piece
            return (m.group(1) or "") + " "
        return (m.group(1) or "") + (" " if (before.isalnum() and after.isalnum()) else "")

    return re.sub(rf"(:?){run}", join, out).strip()


def referred_phrase(question: str) -> str:
    """The referring expression of a [refer] question (`<ref>..</ref>` or `<p>..</p>`), else ''."""
    for open_tag, close_tag in (("<ref>", "</ref>"), ("<p>", "</p>")):
        pairs, _ = tag_pairs(question or "", open_tag, close_tag)
        if pairs:
            _, i, j, _ = pairs[0]
            return " ".join(question[i:j].split())
    return ""


def parse_answer(
    text: str,
    profile: Profile,
    image_size: Tuple[int, int] = (100, 100),
    region: Optional[Tuple[float, float, float, float]] = None,
    default_label: str = "",
) -> Answer:
    """Parse one answer. `image_size` is (width, height) of the image that was sent; `region` is the box the
    question asked about (region-level scene graphs), in the family's numbers, which becomes object 0;
    `default_label` names boxes the answer leaves unnamed (the phrase of a referring question)."""
    if not isinstance(text, str):
        text = "" if text is None else str(text)
    width, height = image_size
    plan = fit_plan(profile, int(width), int(height))
    reading = GRAMMARS[profile.box_syntax](text, profile)
    answer = Answer(text=text, plain_text=plain_text(text, reading.boxes), skipped=list(reading.skipped))
    taken = [b.span for b in reading.boxes] + [k.span for k in reading.skipped] + [r.span for r in reading.relations]
    answer.skipped += untaken_coordinates(text, taken, profile.name)

    target_id = None
    if region is not None:
        values = _floats(region)
        target = box_to_object(RawBox(values, None, profile.box_layout, (0, 0), "target"), profile, plan, 0) \
            if values is not None and len(values) == 4 else None
        if target is None:
            answer.warnings.append(f"the region asked about, {tuple(region)!r}, is not a box on the image")
        else:
            answer.objects.append(target)
            target_id = 0
    index_to_id: Dict[int, int] = {}
    seen = set()
    for i, raw in enumerate(reading.boxes):
        fragment = text[raw.span[0] : raw.span[1]]
        if raw.values is None:
            answer.skipped.append(Skipped(fragment[:200], raw.span, "unreadable number"))
            continue
        obj = box_to_object(raw, profile, plan, len(answer.objects))
        if obj is None:
            answer.skipped.append(Skipped(fragment[:200], raw.span, "box lies outside the image"))
            continue
        obj.source = fragment
        obj.label = obj.label or default_label
        key = (raw.label.lower(), raw.values, raw.angle)
        if key in seen:
            obj.flags += (REPEATED,)
        seen.add(key)
        index_to_id[i] = obj.id
        answer.objects.append(obj)

    for rel in reading.relations:
        subjects = [target_id if i == -1 else index_to_id.get(i) for i in rel.subject] or [None]
        objects = [target_id if i == -1 else index_to_id.get(i) for i in rel.object] or [None]
        for s in subjects:
            for o in objects:
                answer.relations.append(
                    Relation(s, rel.predicate, o, rel.subject_label, rel.object_label, rel.span)
                )

    warning = repetition_warning(text)
    if warning:
        answer.warnings.append(warning)
    if any(DEGENERATE in o.flags for o in answer.objects):
        answer.warnings.append("some boxes have zero width or height; they were widened to one pixel")
    return answer
