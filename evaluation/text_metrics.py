"""Caption metrics: ROUGE-1/ROUGE-L and METEOR as EarthDial computes them, BLEU-1..4 and CIDEr as the remote
sensing captioning papers report them.

- ROUGE (rouge-score 0.1.2, `RougeScorer(['rouge1', 'rougeL'], use_stemmer=True)`, Porter stemmer; scored as
  `score(reference, answer)`) and METEOR (NLTK 3.10 `meteor_score` with WordNet 3.0, defaults alpha 0.9, beta 3,
  gamma 0.5): each answer gets its precision, recall and F1, averaged over its references when it has several
  (EarthDial's `rs_image_caption/eval.py` averages the F1 over the five references; precision and recall are
  averaged the same way here), and METEOR against all its references at once; the reported value is the mean over
  answers.
  * `region-caption` follows EarthDial's `src/earthdial/eval/rs_region_captioning/eval.py`: the raw texts go to
    ROUGE and METEOR tokens are the texts split on whitespace.
  * `caption` follows EarthDial's `src/earthdial/eval/rs_image_caption/eval.py`: texts are tokenized with NLTK's
    `word_tokenize` (ROUGE gets the tokens joined by spaces). `word_tokenize` first splits sentences with NLTK's
    downloadable Punkt model; here NLTK's Punkt splitter is used untrained (no download), which differs only for
    a period glued to an abbreviation in the middle of an answer.
- BLEU-1..4 and CIDEr(-D) are corpus-level scores of the COCO caption evaluation code (pycocoevalcap 1.2,
  `Bleu(4)` and `Cider()`, pure Python) that the RS captioning benchmarks (UCM-captions, Sydney-captions, RSICD;
  Lu et al., IEEE TGRS 2018, and the papers after it) report. COCO's Java PTBTokenizer is replaced by NLTK's
  Treebank tokenizer with the same lower-casing and the same punctuation tokens removed.
"""
from __future__ import annotations

from typing import Callable, Dict, Iterable, List, Sequence, Tuple

CAPTION_KEYS = ("rouge1_precision", "rouge1_recall", "rouge1_f1", "rougeL_precision", "rougeL_recall", "rougeL_f1",
                "meteor", "bleu1", "bleu2", "bleu3", "bleu4", "cider")

# The punctuation tokens COCO's PTBTokenizer drops (pycocoevalcap/tokenizer/ptbtokenizer.py), plus the bracket
# characters that Stanford's tokenizer writes as -LRB- etc. and COCO then drops.
COCO_PUNCTUATION = frozenset(["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":",
                              "-", "--", "...", ";", "(", ")", "[", "]", "{", "}"])


def whitespace_tokens(text: str) -> List[str]:
    """Tokens split on whitespace (EarthDial's region-caption METEOR)."""
    return text.split()


def word_tokens(text: str) -> List[str]:
    """NLTK `word_tokenize` without its downloadable Punkt model: sentences split by an untrained Punkt
    splitter, then NLTK's Treebank word tokenizer on each sentence (what `word_tokenize` does after Punkt)."""
    from nltk.tokenize import word_tokenize
    from nltk.tokenize.punkt import PunktSentenceTokenizer

    return [tok for sentence in PunktSentenceTokenizer().tokenize(text)
            for tok in word_tokenize(sentence, preserve_line=True)]


def coco_tokens(text: str) -> str:
    """COCO caption evaluation's tokenization: PTB tokens, lower-cased, punctuation tokens removed, joined by
    spaces."""
    from nltk.tokenize import TreebankWordTokenizer

    tokens = TreebankWordTokenizer().tokenize(text.lower().replace("\n", " "))
    return " ".join(t for t in tokens if t not in COCO_PUNCTUATION)


class EarthDialStyle:
    """How one EarthDial script prepares texts: `rouge_text` (what ROUGE is given) and `meteor_tokens`."""

    def __init__(self, name: str, meteor_tokens: Callable[[str], List[str]], rouge_joined: bool):
        self.name = name
        self.meteor_tokens = meteor_tokens
        self.rouge_joined = rouge_joined

    def rouge_text(self, text: str) -> str:
        return " ".join(self.meteor_tokens(text)) if self.rouge_joined else text


REGION_CAPTION = EarthDialStyle("region-caption", whitespace_tokens, rouge_joined=False)
IMAGE_CAPTION = EarthDialStyle("caption", word_tokens, rouge_joined=True)


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def caption_scores(pairs: Iterable[Tuple[str, Sequence[str]]], style: EarthDialStyle) -> Dict[str, float]:
    """Scores of (answer, references) pairs: the CAPTION_KEYS (ROUGE and METEOR means over answers; BLEU and
    CIDEr at corpus level) and `answers`, the number of pairs. Every answer needs at least one reference, and
    some reference a word (ValueError otherwise). Needs WordNet 3.0 (evaluation.wordnet; WordNetMissing when absent)."""
    from nltk.translate.meteor_score import meteor_score
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from rouge_score import rouge_scorer

    from .wordnet import load_wordnet

    wordnet = load_wordnet()
    scorer = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=True)
    per_answer: Dict[str, List[float]] = {k: [] for k in CAPTION_KEYS[:7]}
    gts: Dict[int, List[str]] = {}
    res: Dict[int, List[str]] = {}
    for i, (answer, references) in enumerate(pairs):
        references = list(references)
        if not references:
            raise ValueError(f"answer {i + 1} has no reference text")
        sums = dict.fromkeys(CAPTION_KEYS[:6], 0.0)
        for ref in references:
            s = scorer.score(style.rouge_text(ref), style.rouge_text(answer))
            for name, key in (("rouge1", "rouge1"), ("rougeL", "rougeL")):
                sums[f"{key}_precision"] += s[name].precision
                sums[f"{key}_recall"] += s[name].recall
                sums[f"{key}_f1"] += s[name].fmeasure
        for key, total in sums.items():
            per_answer[key].append(total / len(references))
        per_answer["meteor"].append(meteor_score([style.meteor_tokens(r) for r in references],
                                                 style.meteor_tokens(answer), wordnet=wordnet))
        gts[i] = [coco_tokens(r) for r in references]
        res[i] = [coco_tokens(answer)]
    if res and not any(ref.split() for refs in gts.values() for ref in refs):
        # pycocoevalcap's CIDEr then fails on max() of no document frequency
        raise ValueError("no reference text has a word (every one is empty or punctuation only): nothing to score "
                         "against; check which field holds the references")
    out = {key: _mean(values) for key, values in per_answer.items()}
    if res:
        bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
        cider, _ = Cider().compute_score(gts, res)
    else:
        bleu, cider = [0.0] * 4, 0.0
    out.update({f"bleu{n}": float(bleu[n - 1]) for n in range(1, 5)})
    out["cider"] = float(cider)
    out["answers"] = len(res)
    return out
