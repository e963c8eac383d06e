"""The picture of what the model saw with its boxes (the dock's preview, Export's images, geovlm:askmap's IMAGE):
each box outlined and labelled where the label can be read."""
import numpy as np
from qgis.PyQt.QtGui import QColor, QImage

from geovlm.core.parsing import parse_answer
from geovlm.core.profiles import get_profile
from geovlm.plugin.ask_map import draw_boxes


def _outline_coloured(image: QImage) -> np.ndarray:
    """H x W booleans: the pixels drawn in (or blended towards) draw_boxes's colour, (255, 60, 0), on white."""
    image = image.convertToFormat(QImage.Format.Format_RGB32)
    pixels = np.frombuffer(image.constBits().asstring(image.sizeInBytes()), np.uint8)
    bgra = pixels.reshape(image.height(), image.bytesPerLine() // 4, 4)[:, :image.width()]
    blue, green, red = (bgra[..., i].astype(int) for i in range(3))
    return (red > 200) & (green < 200) & (blue < 200)


def test_a_box_at_the_images_top_edge_keeps_its_label_in_the_picture(qgis_app):
    """The label goes above a box's top corner: for a box that touches the image's top (a house in the picture's
    top-left corner) it was drawn above the image, where nobody sees it; it is drawn just inside the box instead."""
    image = QImage(400, 400, QImage.Format.Format_RGB32)
    image.fill(QColor(255, 255, 255))
    answer = parse_answer("a <p>house</p> {<0><0><50><25>|<90>}", get_profile("geochat"), (400, 400))
    [house] = answer.objects
    assert [min(v) for v in zip(*house.polygon)] == [0, 0]  # the box: columns 0-200, rows 0-100
    coloured = _outline_coloured(draw_boxes(image, answer))
    assert coloured[:, :3].sum() > 90 and coloured[:3, :].sum() > 190  # its outline, as before
    assert coloured[4:40, 5:195].sum() > 30  # the label, inside the box, clear of the outline
