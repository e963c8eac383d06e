"""The answer's plain text (the transcript, bulk captions): box syntax removed with the space before it when
punctuation follows, words never glued together, the model's own spacing kept."""
import json
import re

import pytest

from geovlm.core.parsing import parse_answer
from geovlm.core.profiles import get_profile

# Real answer shapes (shared/reference/answer-formats.md: GeoChat's and SkySenseGPT's real outputs, each family's
# box syntax), followed by punctuation as in running text.
CASES = [
    ("geochat", "<p>1 large harbor</p> {<36><56><76><80>|<90>}.", "1 large harbor."),
    ("geochat", "<p>1 white plane</p> {<49><48><57><56>|<90>}<delim>{<35><54><43><62>|<90>}.", "1 white plane."),
    ("geochat", "There is a road {<1><2><30><40>|<90>} leading to a tunnel portal {<3><4><50><60>|<90>}, and forest "
                "{<5><5><9><9>|<90>}.", "There is a road leading to a tunnel portal, and forest."),
    ("geochat", "1. plane {<88><3><92><9>|<90>}\n2. tennis-court {<5><60><21><76>|<90>}",
     "1. plane\n2. tennis-court"),
    ("minigptv2", "<p>a car</p> {<1><2><30><40>}; <p>a van</p> {<5><5><9><9>}!", "a car; a van!"),
    ("skysensegpt", "There is 1 ship in the image: <rbox>({<50.00><50.00><7.81><1.95>|<30>})</rbox>.",
     "There is 1 ship in the image."),
    ("skysensegpt", "<ref>cars</ref><rbox>({<10><10><5><5>|<90>}, {<20><20><5><5>|<90>})</rbox> <rel>parked alongside "
                    "with</rel> <ref>car_parking</ref><rbox>({<50><50><30><30>|<90>})</rbox>.",
     "cars parked alongside with car_parking."),
    ("earthdial", "a white van [[14, 94, 18, 96, 87]], parked near the road [[1, 2, 3, 4, 0]].",
     "a white van, parked near the road."),
    ("qwen2vl", "<|object_ref_start|>car<|object_ref_end|><|box_start|>(10,20),(300,400)<|box_end|>, and more.",
     "car, and more."),
    ("qwen25vl", 'One car {"bbox_2d": [1, 2, 30, 40], "label": "car"}.', "One car."),
    ("florence2", "car<loc_1><loc_2><loc_3><loc_4>truck<loc_5><loc_6><loc_7><loc_8>", "car truck"),
    ("florence2", "a green car<loc_1><loc_2><loc_3><loc_4>.", "a green car."),
    ("llava15", "A car [0.1, 0.2, 0.3, 0.4], a bus [0.5, 0.5, 0.7, 0.7].", "A car, a bus."),
]


@pytest.mark.parametrize("family, text, expected", CASES)
def test_a_removed_box_takes_the_space_before_the_punctuation_after_it(family, text, expected):
    answer = parse_answer(text, get_profile(family), (100, 100))
    assert answer.objects  # the boxes were read, and removed from the text
    assert answer.plain_text == expected


def test_a_private_use_character_in_the_text_stays_text():
    text = "\ue000 car {<1><2><30><40>|<90>}, \ue001"
    assert parse_answer(text, get_profile("geochat"), (100, 100)).plain_text == "\ue000 car, \ue001"


_BOXES = re.compile(r"\[\[[^\]]*\](?:,\s*\[[^\]]*\])*\]")  # EarthDial's [[..]] and [[..], [..]]


def _words(text):
    return [w.strip(".,;:!?") for w in text.split() if w.strip(".,;:!?")]


@pytest.mark.parametrize("name", ["earthdial_grounding_ucas_aod", "earthdial_refer_nwpu_vhr10",
                                  "earthdial_refer_ship", "earthdial_caption_ucm"])
def test_real_answers_keep_every_word_and_their_own_spacing(data_dir, name):
    """The shared real EarthDial answers: the plain text has every word outside the boxes, in order and none glued
    to another; a space before punctuation is left only where the model wrote it (its captions end in ' .')."""
    own = checked = 0
    for line in (data_dir / "answers" / f"{name}.jsonl").read_text().splitlines():
        text = json.loads(line)["answer"]
        answer = parse_answer(text, get_profile("earthdial"), (100, 100))
        if answer.skipped:  # a truncated last box stays in the text, as skipped
            continue
        plain, checked = answer.plain_text, checked + 1
        assert "[[" not in plain
        assert _words(plain) == _words(_BOXES.sub(" ", text))
        assert len(re.findall(r" [.,;:!?]", plain)) == len(re.findall(r"[^\]\s] [.,;:!?]", text))
        own += len(re.findall(r" [.,;:!?]", plain))
    assert checked > 20 and (own > 0 or name != "earthdial_caption_ucm")
