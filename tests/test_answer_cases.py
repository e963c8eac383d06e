"""The failing inputs of issue 8 (part 1), each with its right value, and the other faults of the same kind."""
import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from shapely.geometry import Polygon

from geovlm.core.answer import CLIPPED, DEGENERATE
from geovlm.core.answer_files import read_answers
from geovlm.core.parsing import parse_answer
from geovlm.core.profiles import family_names, get_profile


def bounds(obj):
    return tuple(round(v, 9) for v in Polygon(obj.polygon).bounds)


# ------------------------------------------------------------ 1. angle conventions


@pytest.mark.parametrize("angle", [0, 90, 180, 270, -90])
def test_earthdial_unrotated_box_is_read_as_written_for_every_multiple_of_90(angle):
    # The SAR ship file writes 0 for an unrotated box, the optical one 90: both are 4 wide and 11 tall.
    (obj,) = parse_answer(f"[[7, 80, 11, 91, {angle}]]", get_profile("earthdial"), (100, 100)).objects
    assert bounds(obj) == (7, 80, 11, 91)
    assert obj.kind == "box" and obj.angle == 0


def test_geochat_reads_0_and_90_alike_and_turns_other_angles_from_the_nearest_axis():
    p = get_profile("geochat")
    zero, ninety = (parse_answer(f"{{<40><45><60><55>|<{a}>}}", p).objects[0] for a in (0, 90))
    assert bounds(zero) == bounds(ninety) == (40, 45, 60, 55)
    (obj,) = parse_answer("{<40><45><60><55>|<120>}", p).objects
    assert obj.kind == "rbox" and obj.angle == 30  # 30 degrees counter-clockwise from the nearest axis


def test_skysensegpt_keeps_its_clockwise_90_means_swapped_convention():
    # SkySenseGPT's upright boxes come as 90 with w and h swapped: a real quarter turn.
    text = "<rbox>({<50.00><50.00><20.00><10.00>|<90>})</rbox>"
    (obj,) = parse_answer(text, get_profile("skysensegpt"), (100, 100)).objects
    assert bounds(obj) == (45, 40, 55, 60)


def _hits(data_dir, name, profile):
    """Answer boxes, parsed by `profile`, that overlap a reference box at IoU >= 0.5 (the references of these
    axis-aligned data sets all write angle 0: they are read as written)."""
    as_written = get_profile("earthdial", angle_mode="offset", upright_angle=0)
    hits = total = 0
    for line in (data_dir / "answers" / name).read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        refs = [Polygon(o.polygon) for o in parse_answer(record["gt_bbox"], as_written, (100, 100)).objects]
        for obj in parse_answer(record["answer"], profile, (100, 100)).objects:
            total += 1
            poly = Polygon(obj.polygon)
            hits += any(poly.intersection(r).area / poly.union(r).area >= 0.5 for r in refs)
    return hits, total


def test_earthdial_profile_hits_as_many_references_as_the_best_reading(data_dir):
    # bench/bench_conventions.py: on the SAR ships, 94 of 462 boxes hit as written, 47 with "90 = upright".
    assert _hits(data_dir, "earthdial_refer_ship.jsonl", get_profile("earthdial")) == (94, 462)
    old = get_profile("earthdial", angle_mode="offset", upright_angle=90)
    # (47 in the issue and the bench, which do not clip; clipped to the image, three more touch a reference.)
    assert _hits(data_dir, "earthdial_refer_ship.jsonl", old) == (50, 462)
    # On NWPU VHR-10 (90 for upright), 425 of the 2,379 multiples of 90 hit as written; turning them by
    # their angle as EarthDial's evaluator does gives 373.
    hits, total = _hits(data_dir, "earthdial_refer_nwpu_vhr10.jsonl", get_profile("earthdial"))
    assert total == 2544 and hits >= 445


# ------------------------------------------------------------ 3. Qwen2-VL without special tokens; untaken numbers


def test_qwen2_answer_without_special_tokens_is_parsed():
    a = parse_answer("white truck(412,305),(498,377)", get_profile("qwen2vl"), (1000, 1000))
    (obj,) = a.objects
    assert obj.label == "white truck" and bounds(obj) == (412, 305, 498, 377)
    assert obj.source == "(412,305),(498,377)" and a.skipped == []


def test_qwen2_bare_boxes_take_each_phrase_and_stay_apart_from_tokened_ones():
    text = ("white truck(412,305),(498,377) and red car (10, 20), (30, 40) "
            "<|object_ref_start|>ship<|object_ref_end|><|box_start|>(100,200),(300,400)<|box_end|>")
    a = parse_answer(text, get_profile("qwen2vl"), (1000, 1000))
    assert [o.label for o in a.objects] == ["ship", "white truck", "red car"] or \
        sorted(o.label for o in a.objects) == ["red car", "ship", "white truck"]
    assert len(a.objects) == 3 and a.skipped == []


@pytest.mark.parametrize(
    "family, text",
    [
        ("earthdial", "a plane {<10><20><30><40>} here"),
        ("geochat", "a plane [[10, 20, 30, 40, 90]] here"),
        ("minigptv2", "a plane (10, 20), (30, 40) here"),
        ("skysensegpt", "a plane [0.1, 0.2, 0.3, 0.4]"),
        ("llava15", "a plane {<10><20><30><40>}"),
        ("qwen25vl", "a plane [10, 20, 30, 40]"),
        ("florence2", "a plane [10, 20, 30, 40]"),
        ("rsllava", "a plane [0.1, 0.2, 0.3, 0.4]"),
        ("qwen2vl", "a plane [10, 20, 30, 40]"),
    ],
)
def test_coordinates_no_grammar_took_are_reported_in_every_family(family, text):
    a = parse_answer(text, get_profile(family), (100, 100))
    assert a.objects == []
    assert len(a.skipped) == 1 and "no " in a.skipped[0].reason and any(c.isdigit() for c in a.skipped[0].fragment)


def test_prose_numbers_are_not_reported():
    a = parse_answer("In 2019 there were 3 planes, 4 ships and 12 cars.", get_profile("earthdial"))
    assert a.skipped == []


# ------------------------------------------------------------ 4. numbers that are not numbers

HUGE = ["1e999", "inf", "nan", "Infinity", "NaN", "9" * 309, "1" * 1000, "-" + "9" * 400, "1e308", "1" * 5000]


TEMPLATES = [  # each family's box syntax, "#" where a number goes
    ("geochat", "{<#><#><#><#>|<#>}"),
    ("minigptv2", "<p>x</p> {<#><#><#><#>}"),
    ("skyeyegpt", "<p>x</p> {<#><#><#><#>}"),
    ("skysensegpt", "<ref>x</ref><rbox>({<#><#><#><#>|<#>})</rbox>"),
    ("earthdial", "[[#, #, #, #, #]]"),
    ("llava15", "[#, #, #, #]"),
    ("qwen2vl", "<|box_start|>(#,#),(#,#)<|box_end|>"),
    ("qwen2vl", "truck(#,#),(#,#)"),
    ("qwen25vl", '[{"bbox_2d": [#, #, #, #], "label": "x"}]'),
    ("florence2", "x<loc_#><loc_#><loc_#><loc_#>"),
]


def _family_texts(v: str):
    """(family, text) with `v` in each number position (the angle included) in turn, the others ordinary."""
    for family, template in TEMPLATES:
        n = template.count("#")
        for i in range(n):
            numbers = ["10", "20", "30", "40", "90"][:n]
            numbers[i] = v
            text = template
            for number in numbers:
                text = text.replace("#", number, 1)
            yield family, text


@pytest.mark.parametrize("value", HUGE)
def test_huge_infinite_and_nan_numbers_never_raise_in_any_family(value):
    seen = set()
    for family, text in _family_texts(value):
        seen.add(family)
        for size in ((100, 100), (640, 320)):
            a = parse_answer(text, get_profile(family), size)
            for obj in a.objects:  # what is kept is a finite polygon on the image
                assert all(math.isfinite(c) for p in obj.polygon for c in p), text
                x0, y0, x1, y1 = Polygon(obj.polygon).bounds
                assert 0 <= x0 <= x1 <= size[0] and 0 <= y0 <= y1 <= size[1], text
            assert a.objects or a.skipped, text  # nothing is dropped silently
    assert seen >= {f for f in family_names() if get_profile(f).box_syntax != "none"}


NUMBERS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-(10**1200), 10**1200).map(str),
    st.decimals(allow_nan=True, allow_infinity=True).map(str),
    st.sampled_from(HUGE),
)


@settings(max_examples=600, deadline=None)
@given(st.sampled_from(TEMPLATES), st.lists(NUMBERS, min_size=5, max_size=5), st.integers(1, 4000),
       st.integers(1, 4000))
def test_fuzz_any_numbers_in_any_family_syntax_never_raise(template, numbers, width, height):
    family, text = template
    for number in numbers:
        text = text.replace("#", number, 1)
    if max(width, height) / min(width, height) > 200:
        width = height
    a = parse_answer(text, get_profile(family), (width, height))
    for obj in a.objects:
        x0, y0, x1, y1 = Polygon(obj.polygon).bounds
        assert 0 <= x0 <= x1 <= width and 0 <= y0 <= y1 <= height, text


def test_huge_numbers_in_geovlm_parse_give_a_summary_not_a_traceback(tmp_path, capsys):
    from geovlm.cli import main

    src = tmp_path / "a.txt"
    src.write_text("{<10><20><30><40>|<%s>}\n[[1e999]]\n" % ("9" * 400))
    assert main(["parse", str(src), "--family", "geochat", "--out", str(tmp_path / "o.gpkg")]) == 0
    assert "1 skipped" in capsys.readouterr().out


# ------------------------------------------------------------ 5. long Florence-2 runs


def test_florence2_run_each_box_source_is_its_own_span():
    text = "car<loc_10><loc_20><loc_30><loc_40><loc_50><loc_60><loc_70><loc_80><loc_1>"
    a = parse_answer(text, get_profile("florence2"), (1000, 1000))
    assert [o.source for o in a.objects] == ["<loc_10><loc_20><loc_30><loc_40>", "<loc_50><loc_60><loc_70><loc_80>"]
    assert [o.label for o in a.objects] == ["car", "car"]
    assert [k.fragment for k in a.skipped] == ["<loc_1>"]


def test_qwen2_group_of_many_boxes_each_source_is_its_own_span():
    text = "<|box_start|>(1,2),(3,4),(5,6),(7,8)<|box_end|>"
    a = parse_answer(text, get_profile("qwen2vl"), (1000, 1000))
    assert [o.source for o in a.objects] == ["(1,2),(3,4)", "(5,6),(7,8)"]


# ------------------------------------------------------------ 6. files as people save them


def test_json_lines_with_a_byte_order_mark_are_json_lines(tmp_path):
    path = tmp_path / "a.jsonl"
    rows = [{"question": "q1", "answer": "[[1, 2, 3, 4, 0]]", "gt_bbox": "[[9, 9, 9, 9, 0]]"},
            {"question": "q2", "answer": "b"}]
    path.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(json.dumps(r) for r in rows).encode("utf-8") + b"\r\n")
    assert list(read_answers(path)) == [(1, "[[1, 2, 3, 4, 0]]", "q1"), (2, "b", "q2")]


def test_json_strings_holding_line_separators_stay_one_line(tmp_path):
    path = tmp_path / "a.jsonl"
    answer = "a plane\u2028[[1, 2, 3, 4, 90]]\x85 done"
    path.write_text(json.dumps({"answer": answer}, ensure_ascii=False) + "\n", encoding="utf-8")
    assert list(read_answers(path)) == [(1, answer, "")]


def test_geojson_keeps_a_bracketed_source_a_string(tmp_path):
    from geovlm.cli import main

    src = tmp_path / "a.jsonl"
    src.write_text(json.dumps({"answer": "[10, 20, 30, 60, 90]"}) + "\n")
    out = tmp_path / "o.geojson"
    assert main(["parse", str(src), "--family", "earthdial", "--out", str(out)]) == 0
    (feature,) = json.loads(out.read_text())["features"]
    assert feature["properties"]["source"] == "[10, 20, 30, 60, 90]"


# ------------------------------------------------------------ 7. edges and padding


@pytest.mark.parametrize("text, expected", [
    ("[[100, 10, 100, 20, 0]]", (99, 10, 100, 20)),   # zero width on the right edge
    ("[[0, 10, 0, 20, 0]]", (0, 10, 1, 20)),           # on the left edge
    ("[[10, 100, 20, 100, 0]]", (10, 99, 20, 100)),    # zero height on the bottom edge
    ("[[100, 100, 100, 100, 0]]", (99, 99, 100, 100)),  # a point in the corner
])
def test_zero_size_box_on_the_edge_stays_inside_the_image(text, expected):
    (obj,) = parse_answer(text, get_profile("earthdial"), (100, 100)).objects
    assert DEGENERATE in obj.flags and bounds(obj) == expected


def test_box_in_the_padding_band_is_clipped_in_image_pixels():
    # GeoChat pads 200x100 to a 200-pixel square, the image in rows 50..150 of it. 0..100 % of the square's
    # height is rows -50..150 of the image: clipped to the image's rows 0..100 (not to model units).
    (obj,) = parse_answer("{<10><0><20><100>|<90>}", get_profile("geochat"), (200, 100)).objects
    assert bounds(obj) == (20, 0, 40, 100) and CLIPPED in obj.flags
    # Wholly in the padding band: no part of it is on the image; reported, not placed off the image.
    a = parse_answer("{<10><0><20><20>|<90>}", get_profile("geochat"), (200, 100))
    assert a.objects == [] and [k.reason for k in a.skipped] == ["box lies outside the image"]


def test_rotated_box_over_the_edge_is_clipped_to_the_image():
    (obj,) = parse_answer("[[90, 40, 110, 60, 30]]", get_profile("earthdial"), (100, 100)).objects
    poly = Polygon(obj.polygon)
    assert CLIPPED in obj.flags and poly.is_valid and poly.bounds[2] == pytest.approx(100)


# ------------------------------------------------------------ 2. what the server did to the image


class CroppingServer:
    """A stand-in for vLLM serving a llava-hf checkpoint (or Qwen2-VL): it records the image it was sent and
    what its own processor makes of it (CLIP's resize of the short side and centre crop, or Qwen2-VL's
    smart_resize), and answers with a fixed text."""

    def __init__(self, text, processor_profile):
        self.text = text
        self.processor = processor_profile
        self.received = []
        self.processed = []

    def request(self, method, url, headers, body=None, timeout=60.0, cancel=None):
        import base64
        import io

        import numpy as np
        from PIL import Image

        from geovlm.core.georef import fit_plan
        from geovlm.core.transport import HttpResponse
        from geovlm.models.preprocess import fit_image

        if url.endswith("/v1/models"):
            reply = {"data": [{"id": "served"}]}
        else:
            content = json.loads(body)["messages"][0]["content"][0]["image_url"]["url"]
            pixels = np.asarray(Image.open(io.BytesIO(base64.b64decode(content.split(",", 1)[1]))).convert("RGB"))
            self.received.append(pixels)
            plan = fit_plan(self.processor, pixels.shape[1], pixels.shape[0])
            self.processed.append(fit_image(pixels, plan, (0, 0, 0)))
            reply = {"choices": [{"message": {"content": self.text}}]}
        data = json.dumps(reply).encode()
        return HttpResponse(200, {}, iter([data]), lambda: None)


def _view(width, height):
    import numpy as np

    rng = np.random.default_rng(width * 7919 + height)
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_client_sends_the_padded_input_so_a_cropping_server_sees_what_the_profile_says():
    import numpy as np

    from geovlm.core.client import EngineClient
    from geovlm.models.preprocess import ArraySource

    # A 600x300 view, LLaVA-1.5 (pads to a square with the CLIP mean colour, 336 px), served by vLLM, whose
    # llava-hf processor centre-crops: sent as it is, the box [0.25, 0.25, 0.75, 0.75] of what the model saw
    # would be (225, 75)-(375, 225) of the view, while the profile places it at (150, 0)-(450, 300).
    profile = get_profile("llava15")
    server = CroppingServer("the field [0.25, 0.25, 0.75, 0.75]", profile.with_overrides(fit="crop"))
    client = EngineClient("http://127.0.0.1:9", transport=server, profile=profile)
    view = _view(600, 300)
    text, answer = client.ask(ArraySource(view), None, "Where is the field?")
    (sent,) = server.received
    assert sent.shape == (336, 336, 3)
    assert (sent[:80] == profile.pad_color).all() and (sent[-80:] == profile.pad_color).all()  # padded bands
    assert np.array_equal(server.processed[0], sent)  # the server's centre crop is the identity on it
    (obj,) = answer.objects
    assert bounds(obj) == (150, 0, 450, 300) and answer.warnings == []


def test_client_sends_qwen2vl_input_in_multiples_of_28_that_smart_resize_keeps():
    from geovlm.core.client import EngineClient
    from geovlm.core.georef import smart_resize
    from geovlm.models.preprocess import ArraySource

    profile = get_profile("qwen2vl")
    server = CroppingServer("<|box_start|>(250,250),(750,750)<|box_end|>", profile)
    client = EngineClient("http://127.0.0.1:9", transport=server, profile=profile)
    _, answer = client.ask(ArraySource(_view(1000, 700)), None, "Where?")
    (sent,) = server.received
    h, w = sent.shape[:2]
    assert h % 28 == 0 and w % 28 == 0 and (h, w) == smart_resize(700, 1000, 28, 4 * 784, 16384 * 784)
    assert smart_resize(h, w, 28, 4 * 784, 16384 * 784) == (h, w)  # the server's resize is the identity
    assert bounds(answer.objects[0]) == (250, 175, 750, 525)


def test_encoded_bytes_are_sent_fitted_or_as_the_view_with_a_warning():
    import io

    from PIL import Image

    from geovlm.core.client import prepare_image

    def png(w, h):
        buffer = io.BytesIO()
        Image.new("RGB", (w, h)).save(buffer, format="PNG")
        return buffer.getvalue()

    profile = get_profile("geochat")
    assert prepare_image(png(504, 504), (800, 400), profile)[1:] == ((800, 400), [])  # already fitted
    data, view, warnings = prepare_image(png(800, 400), (800, 400), profile)
    assert view == (800, 400) and "not fitted" in warnings[0]
    with pytest.raises(ValueError, match="800x400 view"):
        prepare_image(png(300, 300), (800, 400), profile)


def test_engine_preprocessing_is_the_identity_on_a_fitted_image():
    from geovlm.core.georef import fit_plan
    from geovlm.models.preprocess import fit_image

    for family in ("llava15", "geochat", "earthdial", "florence2", "qwen25vl"):
        profile = get_profile(family)
        plan = fit_plan(profile, 640, 480)
        fitted = fit_image(_view(640, 480), plan, profile.pad_color)
        assert fitted.shape[:2] == (plan.input_height, plan.input_width)
        again = fit_plan(profile, plan.input_width, plan.input_height)
        assert fit_image(fitted, again, profile.pad_color) is fitted, family


@pytest.mark.parametrize("shape", [(1, 1), (37, 53), (504, 504)])
def test_uncompressed_png_of_the_fitted_pixels_reads_back_exactly(shape):
    import io

    import numpy as np
    from PIL import Image

    from geovlm.core.client import image_size_of
    from geovlm.models.preprocess import encode_png

    pixels = _view(shape[1], shape[0])
    data = encode_png(pixels)
    assert image_size_of(data) == (shape[1], shape[0])
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")), pixels)


def test_evaluation_records_keep_line_separators_inside_json_strings(tmp_path):
    from geovlm.evaluation.records import read_records

    path = tmp_path / "a.jsonl"
    rows = [{"answer": "a\u2028b\x85c", "gt_bbox": "[[1, 2, 3, 4, 0]]"}, {"answer": "d"}]
    path.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(json.dumps(r, ensure_ascii=False) for r in rows).encode())
    assert [r for _, r in read_records(path)] == rows


@pytest.mark.parametrize("family", ["geochat", "minigptv2"])
def test_the_p_phrase_names_the_box_and_the_text_before_it_does_not(family):
    angle = "|<90>" if family == "geochat" else ""
    answer = parse_answer(f"a red car <p>car</p> {{<10><10><40><40>{angle}}}", get_profile(family), (100, 100))
    assert [o.label for o in answer.objects] == ["car"]
    two = parse_answer(f"<p>plane</p> {{<1><1><9><9>{angle}}} and a big <p>ship</p> {{<50><50><60><60>{angle}}}",
                       get_profile(family), (100, 100))
    assert [o.label for o in two.objects] == ["plane", "ship"]


def test_a_folder_given_as_saved_answers_is_said_to_be_one(tmp_path):
    with pytest.raises(ValueError, match=r"is a folder: give a file of saved answers") as raised:
        list(read_answers(tmp_path))
    assert "Errno" not in str(raised.value)
