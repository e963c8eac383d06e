"""VQAv2's answer normalisation (evaluation.vqa_normalisation), rule by rule, as the official VQA evaluation
(GT-Vision-Lab/VQA vqaEval.py) rewrites answers, and its use in the consensus accuracy."""
import pytest

from geovlm.evaluation.accuracy import consensus_score, vqa_score
from geovlm.evaluation.vqa_normalisation import (
    clean_whitespace,
    normalise_answer,
    process_digit_article,
    process_punctuation,
)


@pytest.mark.parametrize("written, normalised", [
    # lower case, whitespace: newlines and tabs are spaces, ends stripped, words joined by one space
    ("  Yes\n", "yes"), ("red\tand  white", "red and white"), ("YES", "yes"),
    # periods: dropped unless a digit follows (decimals kept)
    ("Two.", "2"), ("3.5", "3.5"), ("3.", "3"), ("3.5.", "3.5"), ("st. louis", "st louis"),
    # marks next to a space are deleted, marks inside a word become a space
    ("yes!", "yes"), ("yes !", "yes"), ("t-shirt", "t shirt"), ("red, white", "red white"), ("red,white", "red white"),
    ("(left)", "left"), ("black/white", "black white"), ("what?", "what"),
    # a comma between digits anywhere: every mark is deleted, none becomes a space
    ("1,000", "1000"), ("1,000,000", "1000000"), ("1,000-2,000", "10002000"),
    # apostrophes and colons are kept
    ("girl's", "girl's"), ("2:50 pm", "2:50 pm"),
    # number words as digits, 'none' included; only single words
    ("two", "2"), ("Ten", "10"), ("none", "0"), ("twenty", "twenty"), ("one way", "1 way"),
    # articles dropped wherever they stand
    ("the tennis court", "tennis court"), ("A dog", "dog"), ("an apple and a pear", "apple and pear"),
    # contractions get their apostrophe back, with one apostrophe missing of several
    ("dont", "don't"), ("I dont know", "i don't know"), ("cant", "can't"), ("couldnt've", "couldn't've"),
    ("he'dve", "he'd've"), ("hedve", "hedve"), ("oclock", "o'clock"), ("twas", "'twas"),
    # the official table's entries with capitals never apply (words are lower-cased first); its backwards one does
    ("Im", "im"), ("somebody'd", "somebodyd"),
    # not contractions in the official table: left as they are
    ("its", "its"), ("were", "were"), ("shes", "shes"),
])
def test_each_rule_rewrites_answers_as_the_official_evaluation(written, normalised):
    assert normalise_answer(written) == normalised


def test_the_steps_are_the_official_functions_in_order():
    assert clean_whitespace("\tTwo.\n") == "Two."
    assert process_punctuation("Two.") == "Two" and process_punctuation("yes!") == "yes "
    assert process_digit_article("The Two  dogs") == "2 dogs"
    # at most 32 periods go (the official code passes re.UNICODE, 32, as re.sub's count)
    assert process_punctuation("." * 40 + "x") == "." * 8 + "x"


def test_consensus_normalises_answer_and_annotators_when_they_disagree():
    ten = ["two", "2", "3", "3", "3", "3", "3", "3", "3", "3"]
    # "2." is "2" and so are the first two annotators: each of them left out leaves 1 match, each "3" leaves 2
    assert consensus_score(ten, "2.") == pytest.approx((2 * 1 / 3 + 8 * 2 / 3) / 10)
    assert consensus_score(ten, "Three!") == 1.0 and consensus_score(ten, "four") == 0.0
    court = ["tennis court"] * 5 + ["the court"] * 5
    assert consensus_score(court, "The tennis court.") == 1.0 and consensus_score(court, "court") == 1.0
    assert consensus_score(["1000", "1,000", "many"], "1,000") == pytest.approx((1 / 3 + 1 / 3 + 2 / 3) / 3)
    decimals = ["3.5 m", "3.5 m", "35 m"]  # the decimal point is kept: "3.5 m" is not "35 m"
    assert consensus_score(decimals, "3.5 m") == pytest.approx(4 / 9)
    assert consensus_score(decimals, "35 m") == pytest.approx(2 / 9)
    assert consensus_score(["don't know", "dont know", "no"], "Dont know") == pytest.approx(4 / 9)


def test_unanimous_annotators_are_compared_as_written_like_the_official_code():
    # the official evaluation normalises only when the annotators' answers differ; whitespace is always cleaned
    assert consensus_score(["yes"] * 10, "yes\n") == 1.0
    assert consensus_score(["yes"] * 10, "Yes") == 0.0 and consensus_score(["2"] * 10, "two") == 0.0
    # a single reference text (RSVQA, EarthDial) keeps EarthDial's score: no VQAv2 normalisation
    assert vqa_score("yes", "Yes.") == 1.0 and vqa_score("2", "two") == 0.0
