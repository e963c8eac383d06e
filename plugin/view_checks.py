"""Whether a view is worth asking about, shared by `geovlm:askmap` and the dock: a model shown a blank image
answers anyway (it describes a white field), so a view whose layers cannot be read, or of which none lies in
the view, is refused in one line before anything is sent, as `geovlm ask` refuses an unreadable raster or a
window outside it."""
from __future__ import annotations

from typing import Iterable, Optional, Tuple

from qgis.core import QgsGeometry, QgsMapSettings, QgsPointXY


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
