"""Accuracy of short answers (visual question answering, scene classification), as EarthDial and RSVQA report it.

The score of one answer is EarthDial's (`evaluate_f1` in `src/earthdial/eval/rs_vqa/eval.py` and
`src/earthdial/eval/rs_classification/eval.py`): reference and answer are stripped, lower-cased and their spaces
removed, then tokenized with NLTK's Treebank word tokenizer; the score is |answer tokens ∩ reference tokens| /
|reference tokens| over distinct tokens (so "Yes." scores 1 against "yes", "denseresidential" against "dense
residential" too). For one-word answers this is RSVQA's exact-match accuracy (Lobry et al., "RSVQA: Visual
Question Answering for Remote Sensing Data", IEEE TGRS 2020).

- classification: `accuracy`, the mean score over answers (EarthDial's "classification accuracy").
- vqa: the mean score per question type (the `vqa_type` field, EarthDial; `type` or `question_type` otherwise),
  RSVQA's average accuracy `average_accuracy` (mean over types) and overall accuracy `overall_accuracy` (mean
  over all questions). EarthDial's RSVQA-LR table reports the types comp, presence and rural_urban only; every
  type in the file is reported here, so AA over the same three types is the mean of those three keys.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Dict, Iterable, List, Optional, Tuple


def answer_score(reference: str, answer: str) -> float:
    """EarthDial's per-answer score in [0, 1] (see the module docstring). The Treebank tokenizer is what NLTK's
    `word_tokenize` runs once Punkt has split sentences; a text without spaces is one Punkt sentence, so no
    Punkt model is needed."""
    from nltk.tokenize import word_tokenize

    ref = word_tokenize(reference.strip().lower().replace(" ", ""), preserve_line=True)
    ans = word_tokenize(answer.strip().lower().replace(" ", ""), preserve_line=True)
    common = set(ref) & set(ans)
    return len(common) / len(ref) if common else 0.0


def classification_accuracy(pairs: Iterable[Tuple[str, str]]) -> Dict[str, float]:
    """{accuracy, answers} over (reference, answer) pairs; accuracy 0 for no pairs."""
    scores = [answer_score(ref, ans) for ref, ans in pairs]
    return {"accuracy": sum(scores) / len(scores) if scores else 0.0, "answers": len(scores)}


def vqa_accuracy(items: Iterable[Tuple[str, str, Optional[str]]]) -> Dict[str, float]:
    """Over (reference, answer, question type or None): `accuracy_<type>` per type (questions without a type
    count as type `all`), `average_accuracy` (mean over types), `overall_accuracy` (mean over questions) and
    `answers`."""
    by_type: Dict[str, List[float]] = defaultdict(list)
    for ref, ans, qtype in items:
        by_type[(qtype or "all").strip() or "all"].append(answer_score(ref, ans))
    out: Dict[str, float] = {f"accuracy_{t}": sum(v) / len(v) for t, v in sorted(by_type.items())}
    every = [s for v in by_type.values() for s in v]
    out["average_accuracy"] = sum(out.values()) / len(out) if out else 0.0
    out["overall_accuracy"] = sum(every) / len(every) if every else 0.0
    out["answers"] = len(every)
    return out
