"""Property tests: pixel -> map -> pixel round trips, fit plans, polygons always valid."""
import math

from hypothesis import assume, given, settings
from hypothesis import strategies as st
from shapely.geometry import Polygon

from geovlm.core.georef import GeoTransform, fit_plan
from geovlm.core.parsing import parse_answer
from geovlm.core.profiles import family_names, get_profile

coef = st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False)
origin = st.floats(-2e7, 2e7, allow_nan=False, allow_infinity=False)
pixel = st.floats(-1e5, 1e5, allow_nan=False, allow_infinity=False)


@st.composite
def geotransforms(draw):
    a, b, d, e = draw(coef), draw(coef), draw(coef), draw(coef)
    # Well-conditioned: pixels with area that is not vanishing against their side lengths.
    assume(abs(a * e - b * d) > 1e-3 * max(a * a + d * d, b * b + e * e, 1e-12))
    assume(math.hypot(a, d) > 1e-6 and math.hypot(b, e) > 1e-6)
    return GeoTransform(a, b, draw(origin), d, e, draw(origin))


@st.composite
def rotated_geotransforms(draw):
    """North-up pixels turned by any angle and sheared: what a rotated canvas or a warped scene gives."""
    size = draw(st.floats(0.01, 1000))
    theta = math.radians(draw(st.floats(-180, 180)))
    shear = draw(st.floats(-0.5, 0.5))
    a, b = size * math.cos(theta), size * (math.sin(theta) + shear)
    d, e = size * math.sin(theta), -size * math.cos(theta)
    assume(abs(a * e - b * d) > 1e-6 * size * size)
    return GeoTransform(a, b, draw(origin), d, e, draw(origin))


def _close(x, y, scale):
    return abs(x - y) <= 1e-9 * max(scale, 1.0)


@settings(max_examples=400, deadline=None)
@given(st.one_of(geotransforms(), rotated_geotransforms()), pixel, pixel)
def test_pixel_map_pixel_round_trip(gt, col, row):
    x, y = gt.to_map(col, row)
    col2, row2 = gt.to_pixel(x, y)
    # Relative to the magnitudes involved (the map coordinate's size in pixel units).
    scale = max(abs(col), abs(row), abs(gt.c) / min(gt.pixel_size), abs(gt.f) / min(gt.pixel_size))
    assert _close(col, col2, scale) and _close(row, row2, scale)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(family_names()),
    st.integers(1, 5000),
    st.integers(1, 5000),
    st.floats(-1e4, 1e4),
    st.floats(-1e4, 1e4),
)
def test_fit_plan_round_trip(family, width, height, x, y):
    assume(max(width, height) / min(width, height) <= 200)  # dynamic resolution refuses more
    plan = fit_plan(get_profile(family), width, height)
    x2, y2 = plan.input_to_image(*plan.image_to_input(x, y))
    assert _close(x, x2, max(abs(x), width)) and _close(y, y2, max(abs(y), height))


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from(["geochat", "skysensegpt", "earthdial", "florence2", "qwen2vl", "qwen25vl", "llava15"]),
    st.lists(st.floats(-50, 1500, allow_nan=False), min_size=4, max_size=4),
    st.floats(-720, 720, allow_nan=False),
    st.integers(1, 3000),
    st.integers(1, 3000),
)
def test_polygons_are_always_valid(family, values, angle, width, height):
    assume(max(width, height) / min(width, height) <= 200)
    profile = get_profile(family)
    v = [round(x, 2) for x in values]
    text = {
        "geochat": f"{{<{v[0]}><{v[1]}><{v[2]}><{v[3]}>|<{angle:.0f}>}}",
        "skysensegpt": f"<rbox>({{<{v[0]}><{v[1]}><{v[2]}><{v[3]}>|<{angle:.0f}>}})</rbox>",
        "earthdial": f"[[{v[0]:.0f}, {v[1]:.0f}, {v[2]:.0f}, {v[3]:.0f}, {angle:.0f}]]",
        "florence2": "x" + "".join(f"<loc_{abs(int(x))}>" for x in v),
        "qwen2vl": f"<|box_start|>({v[0]},{v[1]}),({v[2]},{v[3]})<|box_end|>",
        "qwen25vl": f'[{{"bbox_2d": [{v[0]}, {v[1]}, {v[2]}, {v[3]}], "label": "a"}}]',
        "llava15": f"[{v[0] / 1500:.3f}, {v[1] / 1500:.3f}, {v[2] / 1500:.3f}, {v[3] / 1500:.3f}]",
    }[family]
    answer = parse_answer(text, profile, (width, height))
    if not answer.objects:  # wholly in the padding band or beyond the edge: reported, not lost
        assert [k.reason for k in answer.skipped] == ["box lies outside the image"], text
        return
    assert len(answer.objects) == 1, text
    poly = Polygon(answer.objects[0].polygon)
    assert poly.is_valid and poly.area > 0
    # Clipped in image pixels: nothing of it lies outside the image.
    xmin, ymin, xmax, ymax = poly.bounds
    assert xmin >= 0 and ymin >= 0 and xmax <= width and ymax <= height, text
