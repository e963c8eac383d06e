"""10,000 mutated answers (truncations, insertions, swapped brackets) never make the parser raise."""
import json
import random

from shapely.geometry import Polygon

from geovlm.core.parsing import parse_answer
from geovlm.core.profiles import family_names, get_profile

SEEDS = [
    "<p>1 white plane</p> {<49><48><57><56>|<90>}<delim>{<35><54><43><62>|<90>}",
    "1. plane {<88><3><92><9>|<90>}\n2. tennis-court {<5><60><21><76>|<90>}",
    "There is 1 ship in the image: <rbox>({<50.00><50.00><7.81><1.95>|<30>})</rbox>",
    "<ref>cars</ref><rbox>({<10><10><4><2>|<90>}, {<20><10><4><2>|<90>})</rbox> <rel>parked alongside with</rel> "
    "<ref>car_parking</ref><rbox>({<15><15><30><20>|<90>})</rbox>.",
    "tank <not co-storage with> tank, tank <co-storage with> tank",
    "it is <rel>approach</rel> <ref>boat</ref><rbox>({<60><60><4><2>|<90>})</rbox>",
    "<|object_ref_start|>ship<|object_ref_end|><|box_start|>(100,200),(300,400)<|box_end|>",
    '```json\n[{"bbox_2d": [0, 0, 504, 252], "label": "field"}, {"bbox_2d": [10, 20, 30, 40], "label": "x"}]\n```',
    '[{"bbox_2d": [5, 5, 250, 120], "label": "a {b} [c] \\"d\\""}, {"bbox_2d": [1, 2, 3, 4], "label": "}"}]',
    "car<loc_0><loc_0><loc_499><loc_999>tree<loc_100><loc_100><loc_200><loc_200>",
    "The airplane is at [0.25, 0.5, 0.75, 1.0].",
]
ALPHABET = list("{}[]()<>|,.:-0123456789 \n\"") + ["<delim>", "<p>", "</p>", "<ref>", "</rbox>", "<rbox>(",
                                                    "<rel>", "<loc_", "<|box_start|>", "|<", "}{", "]["]
SWAPS = {"{": "[", "[": "{", "}": "]", "]": "}", "(": "<", "<": "(", ")": ">", ">": ")"}


def _mutate(rng: random.Random, text: str) -> str:
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(5)
        i = rng.randint(0, len(text))
        if op == 0:
            text = text[:i]
        elif op == 1:
            text = text[:i] + rng.choice(ALPHABET) + text[i:]
        elif op == 2:
            text = "".join(SWAPS.get(c, c) if rng.random() < 0.2 else c for c in text)
        elif op == 3:
            j = rng.randint(i, len(text))
            text = text[:i] + text[j:]
        else:
            text = text[:i] + text[i:] * rng.randint(2, 3)  # a repetition loop
    return text


def test_ten_thousand_mutations_never_raise(data_dir):
    rng = random.Random(20261123)
    real = []
    with open(data_dir / "answers" / "earthdial_grounding_ucas_aod.jsonl", encoding="utf-8") as fh:
        real += [json.loads(line)["answer"][:600] for line in fh]
    seeds = SEEDS + real
    profiles = [get_profile(name) for name in family_names()]
    objects = 0
    for _ in range(10_000):
        text = _mutate(rng, rng.choice(seeds))
        profile = rng.choice(profiles)
        size = (rng.randint(1, 2000), rng.randint(1, 2000))
        if profile.fit == "dynamic" and max(size) / min(size) > 200:
            size = (size[0], size[0])
        answer = parse_answer(text, profile, size)
        for obj in answer.objects:
            assert Polygon(obj.polygon).is_valid
        objects += len(answer.objects)
    assert objects > 1000  # the mutations still leave plenty of readable boxes
