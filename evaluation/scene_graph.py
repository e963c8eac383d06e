"""Scene-graph metrics: recall of subject-predicate-object triplets with box matching, as SkySenseGPT evaluates
its region-level and image-level scene graph generation (Luo et al., "SkySenseGPT: A Fine-Grained Instruction
Tuning Dataset and Model for Remote Sensing Vision-Language Understanding", 2024, FIT-RS complex comprehension;
evaluated "as in scene graph generation", i.e. the triplet recall of Xu et al., CVPR 2017, and the mean recall
of Tang et al., CVPR 2019).

Definition used here:
- both the answer and the reference are read by GeoVLM's parser for the family (core.parsing.parse_answer):
  every relation with a box for its subject and its object is one triplet (a subject with several boxes gives
  one triplet per box, as SkySenseGPT's evaluator does);
- labels are compared lower-cased, with a leading count ("2 cars") and one plural "s" removed (SkySenseGPT's
  rule) and spaces written as "_" (the STAR vocabulary); predicates lower-cased with single spaces;
- region-level graphs: the target region ("it") is one node that matches itself in answer and reference; its box
  and category are not compared (SkySenseGPT's evaluator gives both sides the same placeholder box and an empty
  category);
- a reference triplet is recalled when some answer triplet has the same subject label, predicate and object
  label and both its subject and object boxes overlap the reference's at IoU >= the threshold (0.5, the SGG
  standard; polygons in pixels of a 100x100 image, IoU with shapely);
- `recall`: recalled / reference triplets per answer, averaged over answers whose reference has triplets (SGG's
  R@K with K = all answer triplets: a language model gives no ranked list); `mean_recall`: for each predicate,
  its recall averaged over the answers whose reference has it, then averaged over predicates (mR@K);
  `precision`: answer triplets that match some reference triplet / answer triplets, over the whole file.
"""
from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from ..core.answer import Answer
from ..core.parsing import parse_answer
from ..core.profiles import Profile
from .detection import polygon_iou

IOU_THRESHOLD = 0.5
TARGET = "<target>"
_TARGET_WORDS = {"it", "target"}
_LEADING_COUNT = re.compile(r"^\s*\d+\s+")

Polygon = Optional[List[Tuple[float, float]]]


@dataclass(frozen=True)
class Triplet:
    """subject --predicate--> object with the two boxes (pixel polygons; None for the target region)."""

    subject: str
    predicate: str
    object: str
    subject_box: Polygon
    object_box: Polygon


def normalise_label(label: str) -> str:
    """SkySenseGPT's label comparison: lower case, no leading count, one plural 's' dropped, '_' for spaces."""
    text = _LEADING_COUNT.sub("", " ".join((label or "").lower().split()))
    if text in _TARGET_WORDS:
        return TARGET
    if text.endswith("s"):
        text = text[:-1]
    return text.replace(" ", "_")


def triplets_of(answer: Answer) -> List[Triplet]:
    """The triplets of a parsed answer; a relation whose subject or object has no box and is not the target
    region is left out (it cannot be matched by box)."""
    boxes = {obj.id: obj.polygon for obj in answer.objects}
    out = []
    for rel in answer.relations:
        ends = []
        for node_id, label in ((rel.subject, rel.subject_label), (rel.object, rel.object_label)):
            name = normalise_label(label)
            if name == TARGET:
                ends.append((TARGET, None))
            elif node_id in boxes:
                ends.append((name, boxes[node_id]))
            else:
                break
        if len(ends) == 2:
            (s, sbox), (o, obox) = ends
            out.append(Triplet(s, " ".join(rel.predicate.lower().split()), o, sbox, obox))
    return out


def _same_box(a: Polygon, b: Polygon, threshold: float) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return polygon_iou(a, b) >= threshold


def matches(ref: Triplet, pred: Triplet, threshold: float = IOU_THRESHOLD) -> bool:
    """Same labels and predicate, and both boxes at IoU >= `threshold` (the target region matches itself)."""
    return ((ref.subject, ref.predicate, ref.object) == (pred.subject, pred.predicate, pred.object)
            and _same_box(ref.subject_box, pred.subject_box, threshold)
            and _same_box(ref.object_box, pred.object_box, threshold))


def triplet_recall(pairs: Iterable[Tuple[str, str]], profile: Profile,
                   threshold: float = IOU_THRESHOLD) -> Dict[str, float]:
    """Over (answer text, reference text) pairs in the family's syntax: `recall`, `mean_recall`, `precision`,
    and the counts `answers`, `reference_triplets`, `answer_triplets` (see the module docstring)."""
    recalls: List[float] = []
    per_predicate: Dict[str, List[float]] = defaultdict(list)
    answers = ref_total = pred_total = pred_correct = 0
    for answer_text, reference_text in pairs:
        answers += 1
        preds = triplets_of(parse_answer(answer_text, profile))
        refs = triplets_of(parse_answer(reference_text, profile))
        pred_total += len(preds)
        pred_correct += sum(1 for p in preds if any(matches(r, p, threshold) for r in refs))
        if not refs:
            continue
        ref_total += len(refs)
        hit = [any(matches(r, p, threshold) for p in preds) for r in refs]
        recalls.append(sum(hit) / len(refs))
        by_predicate: Dict[str, List[bool]] = defaultdict(list)
        for r, h in zip(refs, hit):
            by_predicate[r.predicate].append(h)
        for predicate, hits in by_predicate.items():
            per_predicate[predicate].append(sum(hits) / len(hits))
    predicate_recalls: Sequence[float] = [sum(v) / len(v) for v in per_predicate.values()]
    return {
        "recall": sum(recalls) / len(recalls) if recalls else 0.0,
        "mean_recall": sum(predicate_recalls) / len(predicate_recalls) if predicate_recalls else 0.0,
        "precision": pred_correct / pred_total if pred_total else 0.0,
        "answers": answers,
        "reference_triplets": ref_total,
        "answer_triplets": pred_total,
    }
