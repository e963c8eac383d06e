"""Precision@0.5 of referring / grounding boxes, as EarthDial and GeoChat report it.

Definition (EarthDial, `src/earthdial/eval/rs_detection/eval.py`, the script behind the EarthDial paper's
referring-detection tables, which it also applies to GeoChat's answers; GeoChat, Kuckreja et al., CVPR 2024,
Table 6 "acc@0.5"):

- every box of an answer is one prediction; a prediction is correct when its IoU with at least one reference box
  of the same question is >= 0.5 (each prediction counted once, whatever the number of references it overlaps);
- precision of a group = correct predictions / predictions, for the question's `size_group` (small, medium,
  large), for questions with one reference box (`single`) or several (`multiple`), and over all (`overall`, which
  EarthDial's script does not print: correct / predictions over the whole file);
- boxes are compared as EarthDial's evaluator compares them: (x1, y1, x2, y2) as written, turned by the written
  angle about the box centre (the corners as row vectors times [[cos a, -sin a], [sin a, cos a]], i.e. x' = x cos a
  + y sin a, y' = -x sin a + y cos a about the centre), IoU of the two polygons (shapely); a degenerate (invalid)
  polygon has IoU 0.

Boxes are read by GeoVLM's grammar for the family (core.parsing.GRAMMARS: the numbers as written), not by
`parse_answer`, whose georeferencing (upright angle, clipping to the image, widening zero-size boxes) the
published scores do not apply. For EarthDial's syntax the grammar's reading
is narrowed to what EarthDial's script reads (its `parse_bboxes` takes lists of unsigned integers only): a box
with a negative or decimal number is not a box at all (EarthDial's own GeoChat result file has a reference
`[[77, -2, 90, 10, 56]]`, which its script drops), and a box of four numbers counts but can match nothing
(the script's rotation needs five and its error is swallowed). Other syntaxes are read as the grammar reads them.

This is a scoring convention, not GeoVLM's georeferencing one: `geovlm parse` places a box with the family
profile's `upright_angle` and `angle_sense` (core/profiles.py); here every angle is applied as written, exactly
as the published numbers were computed.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from ..core.answer import RawBox
from ..core.parsing import GRAMMARS
from ..core.profiles import Profile

SIZE_GROUPS = ("small", "medium", "large")
KEYS = SIZE_GROUPS + ("single", "multiple", "overall")
IOU_THRESHOLD = 0.5

Corners = List[Tuple[float, float]]
# What EarthDial's `parse_bboxes` takes as a box: a bracketed list of unsigned integers.
_EARTHDIAL_WRITTEN = re.compile(r"\[\s*\d+(?:,\s*\d+)*\s*\]")


def xyxy_of(raw: RawBox) -> Tuple[float, float, float, float]:
    """(x1, y1, x2, y2) of a written box in the family's own numbers (cx, cy, w, h layouts converted)."""
    v0, v1, v2, v3 = raw.values
    if raw.layout == "cxcywh":
        return v0 - v2 / 2, v1 - v3 / 2, v0 + v2 / 2, v1 + v3 / 2
    return v0, v1, v2, v3


def turned_corners(x1: float, y1: float, x2: float, y2: float, angle: Optional[float]) -> Corners:
    """The four corners of (x1, y1, x2, y2) turned by `angle` degrees about its centre, as EarthDial's evaluator
    turns them (`get_rotated_box_vertices` in `src/earthdial/eval/rs_detection/eval.py`): x' = x cos a + y sin a,
    y' = -x sin a + y cos a relative to the centre. Same units as the input."""
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    a = math.radians(angle or 0.0)
    c, s = math.cos(a), math.sin(a)
    out = []
    for x, y in ((x1, y1), (x2, y1), (x2, y2), (x1, y2)):
        dx, dy = x - cx, y - cy
        out.append((dx * c + dy * s + cx, -dx * s + dy * c + cy))
    return out


def polygon_iou(a: Sequence[Tuple[float, float]], b: Sequence[Tuple[float, float]]) -> float:
    """Intersection over union of two simple polygons (shapely); 0 when either is invalid (zero area,
    self-crossing) or the union is empty, as in EarthDial's `calculate_iou`."""
    from shapely.geometry import Polygon

    pa, pb = Polygon(a), Polygon(b)
    if not (pa.is_valid and pb.is_valid):
        return 0.0
    union = pa.union(pb).area
    return pa.intersection(pb).area / union if union > 0 else 0.0


def box_polygons(text: str, profile: Profile) -> List[Optional[Corners]]:
    """The boxes of one answer (or reference string) in the family's syntax, read by GeoVLM's own grammar for
    the family (core.parsing.GRAMMARS) and narrowed to EarthDial's reading for EarthDial's syntax (see the module
    docstring), as EarthDial-turned corners in the family's numbers; None for a box that counts but cannot be
    compared (numbers that could not be read, or EarthDial's four-number box)."""
    reading = GRAMMARS[profile.box_syntax](text, profile)
    earthdial = profile.box_syntax == "earthdial"
    out: List[Optional[Corners]] = []
    for raw in reading.boxes:
        if earthdial and not _EARTHDIAL_WRITTEN.fullmatch(text[raw.span[0]:raw.span[1]]):
            continue
        if raw.values is None or not all(math.isfinite(v) for v in raw.values) or (earthdial and raw.angle is None):
            out.append(None)
            continue
        angle = raw.angle if raw.angle is not None and math.isfinite(raw.angle) else 0.0
        out.append(turned_corners(*xyxy_of(raw), angle))
    return out


def correct_predictions(predicted: Sequence[Optional[Corners]], references: Sequence[Optional[Corners]],
                        threshold: float = IOU_THRESHOLD) -> int:
    """How many predicted polygons reach IoU >= `threshold` with at least one reference polygon."""
    refs = [r for r in references if r is not None]
    return sum(1 for p in predicted if p is not None and any(polygon_iou(p, r) >= threshold for r in refs))


@dataclass
class PrecisionTally:
    """Correct and total predictions per group (KEYS)."""

    correct: Dict[str, int] = field(default_factory=lambda: dict.fromkeys(KEYS, 0))
    predicted: Dict[str, int] = field(default_factory=lambda: dict.fromkeys(KEYS, 0))
    questions: int = 0
    reference_boxes: int = 0

    def add(self, groups: Iterable[str], correct: int, predicted: int, references: int = 0) -> None:
        """Count one question's predictions in each of `groups` (unknown group names are ignored) and overall,
        and its `references` reference boxes."""
        self.questions += 1
        self.reference_boxes += references
        for group in set(groups) | {"overall"}:
            if group in self.correct:
                self.correct[group] += correct
                self.predicted[group] += predicted

    def scores(self) -> Dict[str, float]:
        """Precision per group (0 for a group without predictions, as EarthDial prints it), plus the counts
        `questions`, `predicted_boxes` and `reference_boxes` (none read at all: the family's syntax is not the
        file's)."""
        out = {k: (self.correct[k] / self.predicted[k] if self.predicted[k] else 0.0) for k in KEYS}
        out["questions"] = self.questions
        out["predicted_boxes"] = self.predicted["overall"]
        out["reference_boxes"] = self.reference_boxes
        return out


def reference_groups(size_group: object, reference_count: int) -> Tuple[str, ...]:
    """The groups a question counts in: its `size_group` (when small/medium/large) and single (exactly one
    reference box, as EarthDial's `len(gt_bboxes) == 1`) or multiple (any other count)."""
    groups = ("single",) if reference_count == 1 else ("multiple",)
    size = str(size_group or "").strip().lower()
    return groups + ((size,) if size in SIZE_GROUPS else ())


def precision_at_iou(records: Iterable[Tuple[str, str, Optional[str]]], profile: Profile,
                     threshold: float = IOU_THRESHOLD) -> Dict[str, float]:
    """Precision@`threshold` over (answer text, reference text, size group or None) triples, both texts in the
    family's box syntax and numbers. Returns {small, medium, large, single, multiple, overall, questions,
    predicted_boxes, reference_boxes}."""
    tally = PrecisionTally()
    for answer, reference, size_group in records:
        predicted = box_polygons(answer, profile)
        refs = box_polygons(reference, profile)
        tally.add(reference_groups(size_group, len(refs)), correct_predictions(predicted, refs, threshold),
                  len(predicted), len(refs))
    return tally.scores()
