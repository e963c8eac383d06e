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

A VQA reference may be a list of answers given by several annotators (VQAv2 lists ten human answers per
question). A list of two or more is scored as the official VQA evaluation scores it (Antol et al., "VQA: Visual
Question Answering", ICCV 2015; `evaluate` in GT-Vision-Lab/VQA `PythonEvaluationTools/vqaEvaluation/vqaEval.py`):
for each annotator left out in turn, min(1, number of the other annotators whose answer equals the answer / 3),
averaged. Before comparing, every answer has its newlines and tabs turned into spaces and its ends stripped; then,
when the annotators' answers are not all the same text, the answer and the annotators' answers alike are
normalised by VQAv2's rules (`evaluation.vqa_normalisation`: punctuation, lower case, "two" -> "2", articles
dropped, "dont" -> "don't"). When all annotators wrote the same text the official code normalises nothing, so the
answer must equal that text as written ("Yes" scores 0 against ten "yes"); this is kept, as the official code does
it. A list of one answer is that answer (EarthDial's score).
"""
from __future__ import annotations

from collections import defaultdict
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

from .vqa_normalisation import clean_whitespace, normalise_answer


def answer_score(reference: str, answer: str) -> float:
    """EarthDial's per-answer score in [0, 1] (see the module docstring). The Treebank tokenizer is what NLTK's
    `word_tokenize` runs once Punkt has split sentences; a text without spaces is one Punkt sentence, so no
    Punkt model is needed."""
    from nltk.tokenize import word_tokenize

    ref = word_tokenize(reference.strip().lower().replace(" ", ""), preserve_line=True)
    ans = word_tokenize(answer.strip().lower().replace(" ", ""), preserve_line=True)
    common = set(ref) & set(ans)
    return len(common) / len(ref) if common else 0.0


def consensus_score(references: Sequence[str], answer: str) -> float:
    """VQAv2's accuracy in [0, 1] of one answer against the answers of several annotators, with the official
    evaluation's normalisation (see the module docstring): the mean over each annotator left out of
    min(1, answers equal to the answer among the others / 3). Raises ValueError for no references."""
    if not references:
        raise ValueError("no reference answers")
    refs = [clean_whitespace(ref) for ref in references]
    answer = clean_whitespace(answer)
    if len(set(refs)) > 1:  # the official evaluation normalises only when the annotators disagree
        refs = [normalise_answer(ref) for ref in refs]
        answer = normalise_answer(answer)
    matches = [ref == answer for ref in refs]
    total = sum(matches)
    return sum(min(1.0, (total - left_out) / 3) for left_out in matches) / len(matches)


def vqa_score(reference: Union[str, Sequence[str]], answer: str) -> float:
    """The score of one VQA answer: EarthDial's against one reference text, VQAv2's consensus accuracy (with its
    answer normalisation) against a list of two or more annotators' answers (a list of one is that answer)."""
    if isinstance(reference, str):
        return answer_score(reference, answer)
    return answer_score(reference[0], answer) if len(reference) == 1 else consensus_score(reference, answer)


def classification_accuracy(pairs: Iterable[Tuple[str, str]]) -> Dict[str, float]:
    """{accuracy, answers} over (reference, answer) pairs; accuracy 0 for no pairs."""
    scores = [answer_score(ref, ans) for ref, ans in pairs]
    return {"accuracy": sum(scores) / len(scores) if scores else 0.0, "answers": len(scores)}


def vqa_accuracy(items: Iterable[Tuple[Union[str, Sequence[str]], str, Optional[str]]]) -> Dict[str, float]:
    """Over (reference text or list of annotators' answers, answer, question type or None): `accuracy_<type>`
    per type (questions without a type count as type `all`), `average_accuracy` (mean over types),
    `overall_accuracy` (mean over questions) and `answers`. Each answer is scored by `vqa_score`."""
    by_type: Dict[str, List[float]] = defaultdict(list)
    for ref, ans, qtype in items:
        by_type[(qtype or "all").strip() or "all"].append(vqa_score(ref, ans))
    out: Dict[str, float] = {f"accuracy_{t}": sum(v) / len(v) for t, v in sorted(by_type.items())}
    every = [s for v in by_type.values() for s in v]
    out["average_accuracy"] = sum(out.values()) / len(out) if out else 0.0
    out["overall_accuracy"] = sum(every) / len(every) if every else 0.0
    out["answers"] = len(every)
    return out
