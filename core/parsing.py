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
from .georef import FitPlan, fit_plan, model_to_input, rotated_corners
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


def clean_label(segment: str, max_words: int = 6) -> str:
    """A short label from the text before a box: tags, numbering and filler words removed."""
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


def _floats(values: Sequence[str]) -> Optional[Tuple[float, ...]]:
    out = []
    for v in values:
        try:
            f = float(v)
        except (TypeError, ValueError):
            return None
        if not math.isfinite(f):
            return None
        out.append(f)
    return tuple(out)


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
        values = _floats(m.group(1, 2, 3, 4))
        angle = _floats([m.group(5)])[0] if pattern.groups >= 5 and m.group(5) is not None else None
        label = _label_between(text, prev_end, m.start(), prev_label)
        reading.boxes.append(RawBox(values, angle, "xyxy", m.span(), label))
        prev_end, prev_label = m.end(), label
    return reading


def read_geochat(text: str, profile: Profile) -> Reading:
    """GeoChat and MiniGPT-v2: {<x1><y1><x2><y2>|<angle>}, groups joined by }{, <delim> or ', '."""
    reading = _read_inline_boxes(text, _GEOCHAT_BOX)
    covered = [b.span for b in reading.boxes]
    reading.skipped += _skip_unmatched(text, _GEOCHAT_START, covered, "incomplete {<..>} box")
    return reading


_EARTHDIAL_BOX = re.compile(rf"\[\s*({NUM})\s*,\s*({NUM})\s*,\s*({NUM})\s*,\s*({NUM})\s*(?:,\s*({NUM})\s*)?\]")
_EARTHDIAL_START = re.compile(rf"\[\s*\[|\[\s*{NUM}\s*,")


def read_earthdial(text: str, profile: Profile) -> Reading:
    """EarthDial: [[x1, y1, x2, y2, angle]], several as [[..]][[..]] or [[..], [..]]."""
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
            values = _floats(m.group(1, 2, 3, 4))
            angle = _floats([m.group(5)])[0] if m.group(5) is not None else None
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


def read_qwen2(text: str, profile: Profile) -> Reading:
    """Qwen2-VL: <|object_ref_start|>label<|object_ref_end|><|box_start|>(x1,y1),(x2,y2)<|box_end|>."""
    reading = Reading()
    ref_pairs, _ = tag_pairs(text, "<|object_ref_start|>", "<|object_ref_end|>")
    ref_ends = [end for _, _, _, end in ref_pairs]
    for m in _QWEN2_BOX.finditer(text):
        pairs = _QWEN2_PAIR.findall(m.group(1))
        k = bisect.bisect_right(ref_ends, m.start()) - 1
        label = text[ref_pairs[k][1] : ref_pairs[k][2]].strip() if k >= 0 else ""
        if len(pairs) % 2:
            reading.skipped.append(Skipped(m.group(0), m.span(), "odd number of corner points"))
            continue
        for i in range(0, len(pairs), 2):
            values = _floats(pairs[i] + pairs[i + 1])
            reading.boxes.append(RawBox(values, None, "xyxy", m.span(), label))
    covered = [m.span() for m in _QWEN2_BOX.finditer(text)]
    reading.skipped += _skip_unmatched(text, re.compile(r"<\|box_start\|>"), covered, "incomplete box tokens")
    return reading


_QWEN25_OBJECT = re.compile(r"\{[^{}]*\"bbox_2d\"[^{}]*\}")


def read_qwen25(text: str, profile: Profile) -> Reading:
    """Qwen2.5-VL: a JSON list of {"bbox_2d": [x1, y1, x2, y2], "label": "..."} in input pixels."""
    reading = Reading()
    covered = []
    for m in _QWEN25_OBJECT.finditer(text):
        covered.append(m.span())
        try:
            item = json.loads(m.group(0))
        except ValueError:
            reading.skipped.append(Skipped(m.group(0), m.span(), "object is not valid JSON"))
            continue
        bbox = item.get("bbox_2d") if isinstance(item, dict) else None
        values = _floats(bbox) if isinstance(bbox, list) and len(bbox) == 4 else None
        if values is None:
            reading.skipped.append(Skipped(m.group(0), m.span(), "bbox_2d is not four numbers"))
            continue
        label = item.get("label", "")
        reading.boxes.append(RawBox(values, None, "xyxy", m.span(), str(label)))
    reading.skipped += _skip_unmatched(text, re.compile(r"\"bbox_2d\""), covered, "incomplete JSON object")
    return reading


_FLORENCE_RUN = re.compile(r"(?:<loc_\d+>)+")
_LOC = re.compile(r"<loc_(\d+)>")


def read_florence2(text: str, profile: Profile) -> Reading:
    """Florence-2: label<loc_x1><loc_y1><loc_x2><loc_y2>, location bins of 1/1000."""
    reading = Reading()
    label, prev_end = "", 0
    for m in _FLORENCE_RUN.finditer(text):
        written = _TAGS.sub("", text[prev_end : m.start()]).strip()
        label, prev_end = written or label, m.end()
        locs = _LOC.findall(m.group(0))
        for i in range(0, len(locs) - len(locs) % 4, 4):
            values = _floats(locs[i : i + 4])
            reading.boxes.append(RawBox(values, None, "xyxy", m.span(), label))
        if len(locs) % 4:
            reading.skipped.append(Skipped(m.group(0), m.span(), f"{len(locs) % 4} location bins left over"))
    return reading


def read_none(text: str, profile: Profile) -> Reading:
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


def _clip(v: float, hi: float) -> float:
    return min(max(v, 0.0), hi)


def box_to_object(raw: RawBox, profile: Profile, plan: FitPlan, obj_id: int) -> GeoObject:
    """Map one written box to a polygon in pixels of the sent image (exact; rotation in input space)."""
    flags = []
    v0, v1, v2, v3 = raw.values
    max_x, max_y = _model_range(profile, plan)
    if raw.layout == "cxcywh":
        cx, cy, w, h = v0, v1, abs(v2), abs(v3)
        ccx, ccy = _clip(cx, max_x), _clip(cy, max_y)
        cw, ch = min(w, max_x), min(h, max_y)
        if (ccx, ccy, cw, ch) != (cx, cy, w, h):
            flags.append(CLIPPED)
        x1, y1, x2, y2 = ccx - cw / 2, ccy - ch / 2, ccx + cw / 2, ccy + ch / 2
    else:
        x1, y1, x2, y2 = v0, v1, v2, v3
        if x2 < x1 or y2 < y1:
            flags.append(REORDERED)
            x1, x2 = min(x1, x2), max(x1, x2)
            y1, y2 = min(y1, y2), max(y1, y2)
        clipped = (_clip(x1, max_x), _clip(y1, max_y), _clip(x2, max_x), _clip(y2, max_y))
        if clipped != (x1, y1, x2, y2):
            flags.append(CLIPPED)
        x1, y1, x2, y2 = clipped
    # model numbers -> input pixels
    ix1, iy1 = model_to_input(profile, plan, x1, y1)
    ix2, iy2 = model_to_input(profile, plan, x2, y2)
    w_in, h_in = ix2 - ix1, iy2 - iy1
    # The smallest valid box around a zero-size one: one pixel of the sent image.
    min_w, min_h = plan.scale_x, plan.scale_y
    if w_in <= 0 or h_in <= 0:
        flags.append(DEGENERATE)
        w_in, h_in = max(w_in, min_w), max(h_in, min_h)
    turn = 0.0
    if raw.angle is not None:
        turn = profile.angle_sense * (raw.angle - profile.upright_angle)
        turn = math.fmod(turn, 360.0)
    corners_in = rotated_corners((ix1 + ix2) / 2, (iy1 + iy2) / 2, w_in, h_in, turn)
    polygon = [plan.input_to_image(x, y) for x, y in corners_in]
    kind = "box" if math.isclose(math.fmod(abs(turn), 90.0), 0.0, abs_tol=1e-9) else "rbox"
    return GeoObject(
        id=obj_id,
        label=raw.label,
        kind=kind,
        polygon=polygon,
        angle=turn,
        span=raw.span,
        source="",
        flags=tuple(flags),
    )


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


def plain_text(text: str, boxes: Sequence[RawBox]) -> str:
    """The answer without box syntax, for display."""
    pieces, pos = [], 0
    for a, b in sorted({box.span for box in boxes}):
        if a >= pos:
            pieces.append(text[pos:a])
            pos = b
    pieces.append(text[pos:])
    out = _TAGS.sub("", "".join(pieces))
    out = re.sub(r"\(\s*(?:,\s*)*\)|\[\s*(?:,\s*)*\]|\{\s*\}|\|\s*<\s*\d+\s*>", "", out)
    return re.sub(r"[ \t]{2,}", " ", out).strip()


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

    target_id = None
    if region is not None:
        layout = profile.box_layout
        raw = RawBox(tuple(float(v) for v in region), None, layout, (0, 0), "target")
        answer.objects.append(box_to_object(raw, profile, plan, 0))
        target_id = 0
    index_to_id: Dict[int, int] = {}
    seen = set()
    for i, raw in enumerate(reading.boxes):
        if raw.values is None:
            answer.skipped.append(Skipped(text[raw.span[0] : raw.span[1]], raw.span, "unreadable number"))
            continue
        obj = box_to_object(raw, profile, plan, len(answer.objects))
        obj.source = text[raw.span[0] : raw.span[1]]
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
