"""VQAv2's answer normalisation: how the official VQA evaluation rewrites an answer before comparing it with the
annotators' answers.

Source: the VQA evaluation API, `PythonEvaluationTools/vqaEvaluation/vqaEval.py` in GT-Vision-Lab/VQA
(`processPunctuation`, `processDigitArticle`, `evaluate`; the current version, after the 2021 commit "Fixed
processing answers bug"), described on https://visualqa.org/evaluation.html, for the accuracy of Antol et al., "VQA:
Visual Question Answering", ICCV 2015 (and Goyal et al., "Making the V in VQA Matter", CVPR 2017, for VQAv2).
Written here from those descriptions with the standard library; each rule behaves as the official code does,
including the details that differ from the page's wording (noted below).

Steps, in order:
1. Whitespace (`clean_whitespace`): newlines and tabs become spaces, and the ends are stripped.
2. Punctuation (`process_punctuation`), for the marks ; / [ ] " { } ( ) = + \\ _ - > < @ ` , ? ! (not the apostrophe,
   which would turn "girl's" into "girls", nor the colon of "2:50"): a mark is deleted when the text holds it
   next to a space ("yes !", "red, white") or when the text holds a comma between two digits anywhere ("1,000");
   otherwise every occurrence of it becomes a space ("yes!" -> "yes ", "t-shirt" -> "t shirt"). Then every period
   not followed by a digit is deleted ("Two." -> "Two", "3.5" kept, "3." -> "3"): the official pattern meant to
   spare a period after a digit as well is written as a look-ahead, so it spares none, and it deletes at most 32
   periods (it passes re.UNICODE, 32, where `re.sub` takes its count).
3. Words (`process_digit_article`): lower-cased and split at whitespace; the number words none, zero ... ten
   become digits ("two" -> "2", "none" -> "0"); the articles a, an, the are dropped; a contraction written without
   its apostrophe gets it back ("dont" -> "don't", "couldnt've" -> "couldn't've"); the words are joined by one
   space.

The official table of contractions is reproduced by its rule: a contraction is recognised with any one of its
apostrophes missing ("dont" for "don't"; "hed've" and "he'dve" for "he'd've", but not "hedve"). Its entries that
cannot take effect are left out: those with capitals ("Im", "Ive", "Id've"; the words are lower-cased before the
look-up) and those mapping a word to itself ("let's"). One entry works backwards in the official table and is
kept, as it changes scores: "somebody'd" -> "somebodyd".
"""
from __future__ import annotations

import re
from typing import Dict, Tuple

PUNCTUATION = ';/[]"{}()=+\\_-><@`,?!'
_MARK = re.compile("[" + re.escape(PUNCTUATION) + "]")
_DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")
_PERIOD = re.compile(r"\.(?!\d)")
_MAX_PERIODS = 32  # see the module docstring, step 2

NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = frozenset(("a", "an", "the"))

# The contractions the official table restores, written in full (see the module docstring for the rule).
CONTRACTIONS: Tuple[str, ...] = (
    "ain't", "aren't", "can't", "could've", "couldn't", "couldn't've", "didn't", "doesn't", "don't", "hadn't",
    "hadn't've", "hasn't", "haven't", "he'd", "he'd've", "he's", "how'd", "how'll", "how's", "isn't", "it'd",
    "it'd've", "it'll", "ma'am", "mightn't", "mightn't've", "might've", "mustn't", "must've", "needn't", "not've",
    "o'clock", "oughtn't", "'ow's'at", "shan't", "she'd've", "should've", "shouldn't", "shouldn't've",
    "somebody'd've", "somebody'll", "somebody's", "someone'd", "someone'd've", "someone'll", "someone's",
    "something'd", "something'd've", "something'll", "that's", "there'd", "there'd've", "there're", "there's",
    "they'd", "they'd've", "they'll", "they're", "they've", "'twas", "wasn't", "we'd've", "we've", "weren't",
    "what'll", "what're", "what's", "what've", "when's", "where'd", "where's", "where've", "who'd", "who'd've",
    "who'll", "who's", "who've", "why'll", "why're", "why's", "won't", "would've", "wouldn't", "wouldn't've",
    "y'all", "y'all'll", "y'all'd've", "you'd", "you'd've", "you'll", "you're", "you've",
)


def _contraction_table() -> Dict[str, str]:
    """Word as written -> word with its apostrophes, per the rule in the module docstring."""
    table = {}
    for full in CONTRACTIONS:
        for i in (i for i, ch in enumerate(full) if ch == "'"):
            table[full[:i] + full[i + 1:]] = full
    table["somebody'd"] = "somebodyd"  # the official table's one backwards entry
    return table


_RESTORE = _contraction_table()


def clean_whitespace(text: str) -> str:
    """Step 1: newlines and tabs as spaces, ends stripped (what the official evaluation does to every answer, the
    annotators' included, before anything else)."""
    return text.replace("\n", " ").replace("\t", " ").strip()


def process_punctuation(text: str) -> str:
    """Step 2 (the official `processPunctuation`): marks of PUNCTUATION deleted or turned into spaces, and periods
    not followed by a digit deleted, as the module docstring says. Spaces are not collapsed here."""
    squeeze = _DIGIT_COMMA_DIGIT.search(text) is not None

    def replace(match: re.Match) -> str:
        mark = match.group()
        return "" if squeeze or mark + " " in text or " " + mark in text else " "

    return _PERIOD.sub("", _MARK.sub(replace, text), count=_MAX_PERIODS)


def process_digit_article(text: str) -> str:
    """Step 3 (the official `processDigitArticle`): lower-cased words, number words as digits, articles dropped,
    apostrophes restored in contractions, joined by single spaces."""
    words = [NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    return " ".join(_RESTORE.get(word, word) for word in words if word not in ARTICLES)


def normalise_answer(text: str) -> str:
    """The three steps: `process_digit_article(process_punctuation(clean_whitespace(text)))`.
    E.g. "Two." -> "2", "the tennis court" -> "tennis court", "yes!" -> "yes", "1,000" -> "1000", "3.5" -> "3.5",
    "dont know" -> "don't know"."""
    return process_digit_article(process_punctuation(clean_whitespace(text)))
