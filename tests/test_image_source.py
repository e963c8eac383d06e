"""The plugin's Qt `ImageSource`: the fitted input has the model's input size, its padding the family's
colour, and every view pixel lands where `fit_plan` says (pad, stretch, Qwen2-VL's dynamic size, crop), so
the georeferencing that undoes the plan is exact."""
import pytest
from qgis.PyQt.QtCore import QRect
from qgis.PyQt.QtGui import QColor, QImage, QPainter

from geovlm.core.client import image_size_of, prepare_image
from geovlm.core.georef import fit_plan
from geovlm.core.profiles import get_profile

MARK = QRect(200, 40, 10, 10)  # a black square on a white 300 x 200 view, centred at (205, 45)


def marked_view():
    image = QImage(300, 200, QImage.Format.Format_ARGB32_Premultiplied)
    image.fill(QColor(255, 255, 255))
    painter = QPainter(image)
    painter.fillRect(MARK, QColor(0, 0, 0))
    painter.end()
    return image


def dark_centre(image):
    """The darkness-weighted centre of an image, in continuous pixel coordinates (pixel centres at +0.5);
    only pixels darker than any padding colour or white count."""
    total = sx = sy = 0.0
    for y in range(image.height()):
        for x in range(image.width()):
            weight = 100 - image.pixelColor(x, y).lightness()
            if weight > 0:
                total, sx, sy = total + weight, sx + weight * (x + 0.5), sy + weight * (y + 0.5)
    return sx / total, sy / total


@pytest.mark.parametrize("family,fit", [("llava15", None), ("geochat", None), ("skysensegpt", None),
                                        ("qwen2vl", None), ("llava15", "crop")])
def test_fitted_input_puts_each_pixel_where_fit_plan_says(qgis_app, family, fit):
    from geovlm.plugin.image_source import QImageSource

    profile = get_profile(family)
    profile = profile.with_overrides(fit=fit) if fit else profile
    source = QImageSource(marked_view())
    plan = fit_plan(profile, *source.size)
    fitted = source.fitted_image(plan, profile.pad_color)
    assert (fitted.width(), fitted.height()) == (plan.input_width, plan.input_height) != (300, 200)
    expected = plan.image_to_input(MARK.x() + MARK.width() / 2, MARK.y() + MARK.height() / 2)
    assert dark_centre(fitted) == pytest.approx(expected, abs=0.25)
    if plan.mode == "pad":  # the band above the view: the family's colour
        assert fitted.pixelColor(plan.input_width // 2, 2) == QColor(*profile.pad_color)
    data, view, warnings = prepare_image(source, None, profile)  # what the client sends
    assert image_size_of(data) == (plan.input_width, plan.input_height) and view == (300, 200) and not warnings
    assert QImage.fromData(data, "PNG").convertToFormat(QImage.Format.Format_RGB32) == fitted


def test_a_view_of_the_input_size_is_sent_as_rendered(qgis_app):
    from geovlm.plugin.image_source import QImageSource

    view = QImage(504, 504, QImage.Format.Format_RGB32)
    view.fill(QColor(10, 200, 30))
    source = QImageSource(view)
    assert source.fitted_image(fit_plan(get_profile("geochat"), 504, 504), (0, 0, 0)) == view
    with pytest.raises(ValueError, match="plan is for 300x200"):
        source.fitted_image(fit_plan(get_profile("geochat"), 300, 200), (0, 0, 0))
