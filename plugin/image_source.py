"""The rendered view as the client's `ImageSource`: Qt makes the pixels of the model's input, `fit_plan` says
their geometry, so the plugin sends exactly what the model will see (a server's own preprocessing is then
only a resize to the same size) while the answer is georeferenced in the frame of the rendered view."""
from __future__ import annotations

from typing import Sequence, Tuple

from qgis.PyQt.QtCore import QPoint, QRect, QSize, Qt
from qgis.PyQt.QtGui import QColor, QImage, QPainter

from ..core.georef import FitPlan
from .ask_map import png_bytes


class QImageSource:
    """A rendered view (a QImage of `size` = (width, height) device pixels) as a `core.client.ImageSource`.

    `fitted_image(plan, pad_color)` makes the model's input of `plan.input_width` x `plan.input_height`
    pixels exactly as `core.georef.fit_plan` defines its geometry (the engine's counterpart is
    `models.preprocess.fit_image`):
    - pad: the view drawn at (offset_x, offset_y) on a square of `pad_color` (LLaVA's expand2square), then
      resized to the input size;
    - stretch and dynamic (Qwen2-VL's `smart_resize` size, multiples of 28 within the pixel budget): the
      view resized to the input size;
    - crop: the view resized by (scale_x, scale_y), then the window at -offset * scale cut out (CLIP).
    Resizing is Qt's smooth transformation (bilinear, averaging when shrinking), not the engine's bicubic:
    the pixel values differ slightly, the geometry does not. A view that already has the input's size and
    no offset is sent as rendered. Reading the image is thread-safe (QImage is reentrant and implicitly
    shared), so a QgsTask may fit it in its worker thread.

    Raises ValueError when the plan is for another size or names an unknown mode.
    """

    def __init__(self, image: QImage):
        self.image = image.convertToFormat(QImage.Format.Format_RGB32)  # opaque: the PNG carries no alpha
        self.size = (int(self.image.width()), int(self.image.height()))

    def fitted_image(self, plan: FitPlan, pad_color: Sequence[int]) -> QImage:
        """The model's input (QImage, RGB32, plan.input_width x plan.input_height) the plan describes."""
        w, h = self.size
        if (w, h) != (plan.width, plan.height):
            raise ValueError(f"plan is for {plan.width}x{plan.height}, image is {w}x{h}")
        size = QSize(plan.input_width, plan.input_height)
        if (w, h) == (size.width(), size.height()) and plan.offset_x == 0 and plan.offset_y == 0:
            return QImage(self.image)
        if plan.mode == "pad":
            canvas = self.image
            if w != h:
                side = max(w, h)
                canvas = QImage(side, side, QImage.Format.Format_RGB32)
                canvas.fill(QColor(*(int(v) for v in pad_color)))
                painter = QPainter(canvas)
                painter.drawImage(QPoint(int(plan.offset_x), int(plan.offset_y)), self.image)
                painter.end()
            return _resized(canvas, size)
        if plan.mode in ("stretch", "dynamic"):
            return _resized(self.image, size)
        if plan.mode == "crop":
            resized = _resized(self.image, QSize(round(plan.scale_x * w), round(plan.scale_y * h)))
            left, top = round(-plan.offset_x * plan.scale_x), round(-plan.offset_y * plan.scale_y)
            return resized.copy(QRect(left, top, size.width(), size.height()))
        raise ValueError(f"unknown fit mode {plan.mode!r}")

    def fitted(self, plan: FitPlan, pad_color: Tuple[int, int, int]) -> bytes:
        """The model's input as PNG bytes (what the engine receives)."""
        return png_bytes(self.fitted_image(plan, pad_color))


def _resized(image: QImage, size: QSize) -> QImage:
    if image.size() == size:
        return QImage(image)
    return image.scaled(size, Qt.AspectRatioMode.IgnoreAspectRatio, Qt.TransformationMode.SmoothTransformation)
