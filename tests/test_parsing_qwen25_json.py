"""Qwen2.5-VL's JSON objects: braces, brackets and escaped quotes inside strings are text, not structure;
what is truly cut short is still reported (core/parsing.py, `json_object_spans` and `read_qwen25`)."""
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geovlm.core.parsing import json_object_spans, parse_answer, read_qwen25
from geovlm.core.profiles import get_profile

QWEN25 = get_profile("qwen25vl")
INCOMPLETE = "incomplete JSON object"


@pytest.mark.parametrize("label_json, label", [
    ('"{x}"', "{x}"),
    ('"a } b"', "a } b"),
    (r'"say \"hi\" {"', 'say "hi" {'),
    (r'"ends in a backslash \\"', "ends in a backslash \\"),
    (r'"\\\"}\\"', '\\"}\\'),
    ('"[1, 2]}]{"', "[1, 2]}]{"),
    (r'"\u007b \u007d"', "{ }"),
])
def test_braces_and_escaped_quotes_inside_a_label_are_text(label_json, label):
    source = '{"bbox_2d": [10, 20, 110, 220], "label": ' + label_json + "}"
    a = parse_answer("```json\n[" + source + "]\n```", QWEN25, (1000, 1000))
    assert a.skipped == []
    (obj,) = a.objects
    assert obj.label == label and obj.source == source


def test_several_objects_pretty_printed_with_braces_in_labels():
    items = [{"bbox_2d": [10, 20, 110, 220], "label": "truck }"}, {"bbox_2d": [5, 6, 70, 80], "label": "{tree"},
             {"bbox_2d": [1, 2, 3, 4], "label": 'a "quoted" [car]'}]
    text = "Here they are:\n```json\n" + json.dumps(items, indent=2) + "\n```"
    a = parse_answer(text, QWEN25, (1000, 1000))
    assert a.skipped == []
    assert [o.label for o in a.objects] == ["truck }", "{tree", 'a "quoted" [car]']
    assert [json.loads(o.source) for o in a.objects] == items


def test_a_nested_object_with_a_brace_in_a_string_belongs_to_its_box():
    source = '{"bbox_2d": [10, 20, 110, 220], "label": "car", "attributes": {"colour": "red }", "n": {}}}'
    a = parse_answer(f"[{source}]", QWEN25, (1000, 1000))
    (obj,) = a.objects
    assert obj.label == "car" and obj.source == source and a.skipped == []


def test_prose_braces_and_quotes_around_the_json_do_not_hide_it():
    text = ('The set {a, b} and the "result" {"note": "see below"}:\n'
            '[{"bbox_2d": [1, 2, 30, 40], "label": "x }"}] and a closing } too')
    a = read_qwen25(text, QWEN25)
    assert [(b.values, b.label) for b in a.boxes] == [((1, 2, 30, 40), "x }")] and a.skipped == []


def test_a_truncated_object_is_still_reported_as_incomplete():
    text = '```json\n[{"bbox_2d": [1, 2, 30, 40], "label": "a {"}, {"bbox_2d": [10, 20,'
    a = parse_answer(text, QWEN25, (1000, 1000))
    assert [o.label for o in a.objects] == ["a {"]
    assert [(k.reason, k.span[0]) for k in a.skipped] == [(INCOMPLETE, text.rindex('"bbox_2d"'))]


@pytest.mark.parametrize("text", [
    '[{"bbox_2d": [1, 2, 30, 40], "label": "cut inside a label }',  # the closing brace is text: still open
    '[{"bbox_2d": [1, 2, 30, 40], "label": "a \\"}',  # an escaped quote does not close the string
    '[{"bbox_2d": [1, 2, 30, 40], "label": "a line\nbreak"}]',  # JSON strings hold no raw line break
])
def test_an_object_left_open_inside_a_string_gives_no_box(text):
    a = parse_answer(text, QWEN25, (1000, 1000))
    assert a.objects == []
    assert [k.reason for k in a.skipped] == [INCOMPLETE]


def test_objects_after_one_cut_short_mid_string_are_still_read():
    # A repetition loop that breaks a label off before the next object (the old brace-free regex read these).
    text = '[{"bbox_2d": [1, 2, 3, 4], "la {"bbox_2d": [5, 6, 70, 80], "label": "ship"}, {"bbox_2d": [1, 2,'
    a = read_qwen25(text, QWEN25)
    assert [(b.values, b.label) for b in a.boxes] == [((5, 6, 70, 80), "ship")]
    assert [k.reason for k in a.skipped] == [INCOMPLETE, INCOMPLETE]
    assert [k.span[0] for k in a.skipped] == [2, text.rindex('"bbox_2d"')]


def test_json_object_spans_nested_and_in_order():
    text = '{"a": {"k": 1, "s": "}"}, "k": 2} {"k": "\\"{"} {"x": 1}'
    assert [text[a:b] for a, b in json_object_spans(text, "k")] == [
        '{"a": {"k": 1, "s": "}"}, "k": 2}', '{"k": 1, "s": "}"}', '{"k": "\\"{"}']


labels = st.one_of(st.text(max_size=30), st.text(alphabet='{}[]"\\: ,', max_size=12))
prose = st.text(alphabet=st.characters(blacklist_characters="{"), max_size=40)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.lists(st.integers(-5, 5000), min_size=4, max_size=4), labels), max_size=6),
    st.sampled_from([None, 0, 2, "\t"]),
    st.booleans(),
    prose,
    prose,
)
def test_any_labels_read_back_exactly(items, indent, ensure_ascii, before, after):
    """Whatever a label holds (braces, brackets, quotes, backslashes, line breaks, any Unicode), a list of
    objects as `json.dumps` writes it reads back box for box, with prose (no "{") around it."""
    objects = [{"bbox_2d": values, "label": label} for values, label in items]
    text = before + "```json\n" + json.dumps(objects, indent=indent, ensure_ascii=ensure_ascii) + "\n```" + after
    reading = read_qwen25(text, QWEN25)
    assert reading.skipped == []
    assert [(b.values, b.label) for b in reading.boxes] == [(tuple(map(float, v)), label) for v, label in items]
    assert [json.loads(text[a:b]) for a, b in (box.span for box in reading.boxes)] == objects


def test_a_pointing_answer_is_reported_as_points_not_dropped_in_silence():
    # Qwen2.5-VL answers "point to ..." with point_2d objects: no box to place, so each is said in Answer.skipped
    # (it read as an answer with nothing in it); a point beside a box does not hide the box
    text = ('```json\n[{"point_2d": [120, 48], "label": "car"}, {"point_2d": [300, 310], "label": "bus"},\n'
            ' {"bbox_2d": [10, 20, 30, 40], "label": "ship", "point_2d": [20, 30]}]\n```')
    a = parse_answer(text, QWEN25, (1008, 1008))
    assert [o.label for o in a.objects] == ["ship"]
    assert [(k.reason, k.fragment) for k in a.skipped] == [
        ("point_2d is a point, not a box", '{"point_2d": [120, 48], "label": "car"}'),
        ("point_2d is a point, not a box", '{"point_2d": [300, 310], "label": "bus"}')]
