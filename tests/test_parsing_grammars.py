"""Each family's box syntax, including the mess real models write."""
import pytest
from shapely.geometry import Polygon

from geovlm.core.answer import CLIPPED, REORDERED, REPEATED
from geovlm.core.parsing import parse_answer
from geovlm.core.profiles import get_profile


def bounds(obj):
    return Polygon(obj.polygon).bounds


def test_geochat_phrases_and_delimiters():
    p = get_profile("geochat")
    text = "<p>1 white plane</p> {<49><48><57><56>|<90>}<delim>{<35><54><43><62>|<90>}"
    a = parse_answer(text, p, (100, 100))
    assert [o.label for o in a.objects] == ["1 white plane", "1 white plane"]
    assert bounds(a.objects[0]) == pytest.approx((49, 48, 57, 56))
    assert a.objects[0].kind == "box" and a.objects[0].angle == 0
    assert a.plain_text == "1 white plane"


@pytest.mark.parametrize("joiner", ["}{", "}, {", "}<delim>{", "} {"])
def test_geochat_joiners(joiner):
    text = "{<1><2><11><12>|<90>" + joiner + "<20><30><40><50>|<90>}"
    a = parse_answer(text, get_profile("geochat"), (100, 100))
    assert [bounds(o) for o in a.objects] == [pytest.approx((1, 2, 11, 12)), pytest.approx((20, 30, 40, 50))]


def test_geochat_numbered_list_labels():
    text = "1. plane {<88><3><92><9>|<90>}\n2. tennis-court {<5><60><21><76>|<90>}"
    a = parse_answer(text, get_profile("geochat"), (100, 100))
    assert [o.label for o in a.objects] == ["plane", "tennis-court"]


def test_geochat_rotation_is_counter_clockwise_about_the_centre():
    # In "offset" mode, a 20 x 10 box turned 90 degrees from upright (|<180> with upright 90): 10 wide, 20 high.
    offset = get_profile("geochat", angle_mode="offset", upright_angle=90)
    a = parse_answer("{<40><45><60><55>|<180>}", offset, (100, 100))
    (obj,) = a.objects
    assert obj.angle == 90
    assert bounds(obj) == pytest.approx((45, 40, 55, 60))
    # 30 degrees counter-clockwise on screen: the right end of the long axis goes up (smaller row).
    a = parse_answer("{<40><45><60><55>|<120>}", get_profile("geochat"), (100, 100))
    (obj,) = a.objects
    assert obj.kind == "rbox"
    top_right = obj.polygon[1]
    assert top_right[0] > 50 and top_right[1] < 45


def test_negative_angles_and_clockwise_sense_are_mirror_images():
    ccw = parse_answer("{<40><45><60><55>|<60>}", get_profile("geochat"), (100, 100)).objects[0]
    cw = parse_answer("{<40><45><60><55>|<60>}", get_profile("geochat", angle_sense=-1), (100, 100)).objects[0]
    assert ccw.angle == -30 and cw.angle == 30
    # Mirrored across the box's horizontal axis (row 50), one is the other.
    mirrored = sorted((round(x, 9), round(100 - y, 9)) for x, y in ccw.polygon)
    assert mirrored == sorted((round(x, 9), round(y, 9)) for x, y in cw.polygon)


def test_out_of_range_and_reordered_values_are_clipped_and_flagged():
    a = parse_answer("{<90><10><130><30>|<90>} {<50><60><40><20>|<90>}", get_profile("geochat"), (200, 200))
    clipped, reordered = a.objects
    assert CLIPPED in clipped.flags and bounds(clipped) == pytest.approx((180, 20, 200, 60))
    assert REORDERED in reordered.flags and bounds(reordered) == pytest.approx((80, 40, 100, 120))


def test_truncated_last_box_is_skipped_and_reported():
    a = parse_answer("<p>ships</p> {<10><10><20><20>|<90>}{<30><30><4", get_profile("geochat"))
    assert len(a.objects) == 1
    assert len(a.skipped) == 1 and a.skipped[0].fragment.startswith("{<30>")


def test_pad_fit_is_undone_for_non_square_images():
    # GeoChat pads to a square: a 200 x 100 image sits in rows 50..150 of a 200 x 200 square.
    a = parse_answer("{<0><25><100><75>|<90>}", get_profile("geochat"), (200, 100))
    assert bounds(a.objects[0]) == pytest.approx((0, 0, 200, 100))


def test_skysense_detection_rotated_box_is_clockwise():
    text = "There is 1 ship in the image: <rbox>({<50.00><50.00><7.81><1.95>|<30>})</rbox>"
    a = parse_answer(text, get_profile("skysensegpt"), (512, 512))
    (ship,) = a.objects
    assert ship.label == "1 ship" and ship.kind == "rbox" and ship.angle == -30
    poly = Polygon(ship.polygon)
    assert poly.centroid.x == pytest.approx(256) and poly.centroid.y == pytest.approx(256)
    assert poly.area == pytest.approx(0.0781 * 512 * 0.0195 * 512)


def test_skysense_upright_box_comes_as_90_with_sides_swapped():
    a = parse_answer("<ref>car</ref><rbox>({<50><50><10><30>|<90>})</rbox>", get_profile("skysensegpt"))
    assert bounds(a.objects[0]) == pytest.approx((35, 45, 65, 55))


def test_skysense_scene_graph_relations():
    text = (
        "<ref>cars</ref><rbox>({<10><10><4><2>|<90>}, {<20><10><4><2>|<90>})</rbox> "
        "<rel>parked alongside with</rel> <ref>car_parking</ref><rbox>({<15><15><30><20>|<90>})</rbox>. "
        "<ref>truck</ref><rbox>({<70><70><8><3>|<45>})</rbox>."
    )
    a = parse_answer(text, get_profile("skysensegpt"), (504, 504))
    assert [o.label for o in a.objects] == ["cars", "cars", "car_parking", "truck"]
    assert [(r.subject, r.predicate, r.object) for r in a.relations] == [
        (0, "parked alongside with", 2),
        (1, "parked alongside with", 2),
    ]


def test_skysense_region_scene_graph_uses_the_target():
    text = (
        "large ship on the left part of the image. "
        "<ref>dock</ref><rbox>({<30><30><20><10>|<90>})</rbox> is <rel>approach</rel> it. "
        "it is <rel>docking at the same dock with</rel> <ref>boat</ref><rbox>({<60><60><4><2>|<90>})</rbox>."
    )
    a = parse_answer(text, get_profile("skysensegpt"), (100, 100), region=(20, 20, 10, 5))
    assert a.objects[0].label == "target"
    rels = [(r.subject, r.predicate, r.object) for r in a.relations]
    assert rels == [(1, "approach", 0), (0, "docking at the same dock with", 2)]


def test_skysense_category_relations_prefer_the_longest_predicate():
    text = (
        "There are 2 relationships between tank and tank: "
        "tank <not co-storage with> tank, tank <co-storage with> tank"
    )
    a = parse_answer(text, get_profile("skysensegpt"))
    assert [r.predicate for r in a.relations] == ["not co-storage with", "co-storage with"]
    assert all(r.subject is None and r.subject_label == "tank" for r in a.relations)


def test_skysense_no_object_answer():
    text = "I'm sorry, I cannot answer as the given image does not contain any given objects."
    a = parse_answer(text, get_profile("skysensegpt"))
    assert a.objects == [] and a.skipped == [] and a.plain_text == text


def test_qwen2_box_tokens_are_thousandths():
    text = "<|object_ref_start|>the ship<|object_ref_end|><|box_start|>(100,200),(300,400)<|box_end|>"
    a = parse_answer(text, get_profile("qwen2vl"), (280, 560))
    (obj,) = a.objects
    assert obj.label == "the ship"
    assert bounds(obj) == pytest.approx((28, 112, 84, 224))


def test_qwen25_json_in_resized_pixels_with_truncation():
    # 1000 x 500 image -> smart_resize to 1008 x 504 input pixels.
    text = '```json\n[{"bbox_2d": [0, 0, 504, 252], "label": "field"}, {"bbox_2d": [10, 20,'
    a = parse_answer(text, get_profile("qwen25vl"), (1000, 500))
    (obj,) = a.objects
    assert obj.label == "field"
    assert bounds(obj) == pytest.approx((0, 0, 500, 250))
    assert a.skipped and a.skipped[0].reason == "incomplete JSON object"


def test_florence2_location_bins_are_bin_centres():
    text = "car<loc_0><loc_0><loc_499><loc_999>tree<loc_100><loc_100><loc_200><loc_200><loc_5>"
    a = parse_answer(text, get_profile("florence2"), (1000, 1000))
    car, tree = a.objects
    assert car.label == "car" and bounds(car) == pytest.approx((0.5, 0.5, 499.5, 999.5))
    assert tree.label == "tree"
    assert a.skipped and "left over" in a.skipped[0].reason


def test_llava_normalised_boxes():
    a = parse_answer("The airplane is at [0.25, 0.5, 0.75, 1.0].", get_profile("llava15"), (336, 336))
    assert bounds(a.objects[0]) == pytest.approx((84, 168, 252, 336))


def test_repeated_object_is_flagged_not_dropped():
    text = "a tank [[10, 10, 20, 20, 90]] and a tank [[10, 10, 20, 20, 90]]"
    a = parse_answer(text, get_profile("earthdial"))
    assert [o.label for o in a.objects] == ["tank", "tank"]
    assert len(a.objects) == 2 and REPEATED in a.objects[1].flags and REPEATED not in a.objects[0].flags


@pytest.mark.parametrize("text", ["", None, "}{}{<<>>", "[[", "<rbox>(", "{<1><2>", "<|box_start|>(1,2)"])
def test_garbage_never_raises(text):
    for family in ("geochat", "skysensegpt", "earthdial", "qwen2vl", "qwen25vl", "florence2", "llava15"):
        parse_answer(text, get_profile(family), (64, 32))
