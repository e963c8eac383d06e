"""The scripted SkySenseGPT stand-in (tests/scripted_engine.py) finds each colour blob's box, also when one colour
has separate patches (its pixels then miss the row or column through the middle of all of them)."""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from scripted_engine import blob_boxes, describe  # noqa: E402

from geovlm.core.parsing import parse_answer  # noqa: E402
from geovlm.core.profiles import get_profile  # noqa: E402


def _image():
    image = np.zeros((100, 120, 3), np.uint8)
    image[10:30, 10:30] = (255, 0, 0)  # two separate patches of one colour, diagonal to each other
    image[60:90, 50:80] = (255, 0, 0)
    image[40:80, 95:105] = (200, 0, 0)
    return image


def test_each_patch_of_a_colour_is_its_own_blob_with_its_exact_edges():
    boxes = blob_boxes(_image())
    assert [(colour, tuple(round(v, 6) for v in box)) for colour, *box in boxes] == [
        ((200, 0, 0), (95.0, 40.0, 105.0, 80.0)),
        ((255, 0, 0), (10.0, 10.0, 30.0, 30.0)),
        ((255, 0, 0), (50.0, 60.0, 80.0, 90.0)),
    ]


def test_the_answer_about_separate_patches_parses_to_one_object_each():
    text = describe(_image(), "skysensegpt")
    answer = parse_answer(text, get_profile("skysensegpt"))
    assert sorted(obj.label for obj in answer.objects) == ["car", "storage_tank", "storage_tank"], text
