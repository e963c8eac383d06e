"""Whether a view is worth asking about, shared by `geovlm:askmap` and the dock: a model shown a blank image
answers anyway (it describes a white field), so a view whose layers cannot be read, or of which none lies in
the view, is refused in one line before anything is sent, as `geovlm ask` refuses an unreadable raster or a
window outside it."""
from __future__ import annotations

from typing import Iterable, Optional, Tuple

import numpy as np
from qgis.core import Qgis, QgsGeometry, QgsMapSettings, QgsPointXY, QgsRasterLayer
from qgis.PyQt.QtGui import QColor, QImage


def layers_problem(settings: QgsMapSettings, where: str) -> Optional[str]:
    """One line saying why the view of `settings` would be blank, or None when it is not: a layer that QGIS
    could not load ("layer 'x' cannot be read (its error)"), or no layer whose extent (transformed to the
    view's CRS by `QgsMapSettings.layerExtentToOutputExtent`) meets the view's visible polygon (rotation
    included). `where` names the view in that line ("EXTENT 0,10,0,10 [EPSG:4326]", "the view")."""
    layers = settings.layers()
    for layer in layers:
        if not layer.isValid():
            reason = layer.error().summary().strip().splitlines()
            return f"layer {layer.name()!r} cannot be read" + (f" ({reason[-1].strip()})" if reason else "")
    corners = [QgsPointXY(p.x(), p.y()) for p in settings.visiblePolygon()]
    view = QgsGeometry.fromPolygonXY([corners + corners[:1]])  # closed: an open ring would be a line
    for layer in layers:
        extent = layer.extent()
        if extent.isNull():
            continue
        extent = settings.layerExtentToOutputExtent(layer, extent)
        if extent.isNull():
            continue
        if extent.width() == 0 or extent.height() == 0:  # one point, or points on a line
            if QgsGeometry.fromRect(extent.buffered(1e-9)).intersects(view):
                return None
        elif QgsGeometry.fromRect(extent).intersects(view):
            return None
    names = ", ".join(repr(layer.name()) for layer in layers)
    return f"nothing of the layers ({names}) lies in {where}"


def render_problem(errors: Iterable[Tuple[str, str]]) -> Optional[str]:
    """One line for the layer errors of a render ((layer name, QGIS's message) pairs, as
    `plugin.ask_map.render` and `plugin.view_render.ViewRender` collect them from the render job), or None
    when there were none: "layer 'x' cannot be read: <the first message>"."""
    for name, message in errors:
        return f"layer {name!r} cannot be read: {message.strip()}"
    return None


def _pixels(image: QImage) -> np.ndarray:
    """The pixels of `image` as a (height, width) uint32 array of ARGB32_Premultiplied values (a copy)."""
    if image.format() != QImage.Format.Format_ARGB32_Premultiplied:
        image = image.convertToFormat(QImage.Format.Format_ARGB32_Premultiplied)
    bits = image.constBits()
    bits.setsize(image.sizeInBytes())
    rows = np.frombuffer(bits, np.uint8).reshape(image.height(), image.bytesPerLine())
    return rows[:, :image.width() * 4].copy().view(np.uint32)


def only_background(settings: QgsMapSettings, image: QImage) -> bool:
    """True when every pixel of `image` (a render of `settings`, `plugin.ask_map.render` or
    `plugin.view_render.ViewRender`) is the background colour the render filled it with
    (`settings.backgroundColor()`, compared as ARGB32_Premultiplied values, exactly). Such an image may
    still have been drawn (a layer of exactly that colour): `drawn_nothing` on a render of
    `transparent_settings(settings)` tells which."""
    fill = QImage(1, 1, QImage.Format.Format_ARGB32_Premultiplied)
    fill.fill(settings.backgroundColor())
    return bool(np.all(_pixels(image) == _pixels(fill)[0, 0]))


def transparent_settings(settings: QgsMapSettings) -> QgsMapSettings:
    """A copy of `settings` whose background is transparent (alpha 0), to tell whether a layer drew."""
    copy = QgsMapSettings(settings)
    copy.setBackgroundColor(QColor(0, 0, 0, 0))
    return copy


def drawn_nothing(image: QImage) -> bool:
    """True when every pixel of `image`, a render of `transparent_settings(...)`, is fully transparent
    (alpha 0): none of the layers drew a pixel (all nodata, transparent, or outside its data)."""
    return not np.any(_pixels(image) >> np.uint32(24))


def complex_rasters(layers) -> list:
    """The names of the raster layers among `layers` whose first band holds complex values (CInt16 ... CFloat64:
    SAR single-look complex data), which QGIS's raster renderers do not draw."""
    kinds = {Qgis.DataType.CInt16, Qgis.DataType.CInt32, Qgis.DataType.CFloat32, Qgis.DataType.CFloat64}
    return [layer.name() for layer in layers if isinstance(layer, QgsRasterLayer) and layer.dataProvider() is not None
            and layer.dataProvider().dataType(1) in kinds]


def blank_problem(where: str, layers=()) -> str:
    """The line refusing a view in which none of the layers drew anything (`where` as in `layers_problem`); when
    some of `layers` hold complex values (`complex_rasters`), the line says that QGIS does not draw them, which
    is why, and how to look at them (their amplitude: what `geovlm ask` and the bulk algorithms read).

    Why two steps: the image sent is the render on the map's background colour, unchanged (rendering it on
    a transparent background and filling the background in afterwards would change pixels: layers with a
    blend mode such as multiply blend with what is under them, and premultiplied compositing rounds
    differently). A view is blank only when `only_background` holds for that image, and that alone would
    wrongly refuse a layer drawn in exactly the background colour (a white, saturated raster on white). So
    only then is the view rendered again on a transparent background, and it is refused only when
    `drawn_nothing` holds for that render: no layer set the alpha of any pixel, which is exact. The second
    render costs nothing in the usual case (an image with any pixel off the background skips it)."""
    complex_names = complex_rasters(layers)
    if complex_names:
        names = ", ".join(repr(name) for name in complex_names)
        return (f"nothing of the layers was drawn in {where}: {names} holds complex values (SAR single-look "
                "complex), which QGIS does not draw; make an amplitude raster of it (Raster calculator: abs) or "
                "ask about it with geovlm:captiontiles or `geovlm ask`, which read its amplitude")
    return (f"nothing of the layers was drawn in {where}: every pixel is nodata or transparent, so the model "
            "would see only the background")
