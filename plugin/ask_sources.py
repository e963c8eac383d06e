"""What the dock asks about: the map settings of its image sources (the visible map, one raster layer at its
own resolution, a rectangle drawn on the map) and the region of an identify question (the drawn rectangle or
the selected feature of the active layer). Main thread: these read layers and the canvas's settings."""
from __future__ import annotations

from typing import Collection, List, Tuple

from qgis.core import (
    Qgis,
    QgsCoordinateTransform,
    QgsGeometry,
    QgsMapLayerType,
    QgsMapSettings,
    QgsPointXY,
    QgsProject,
    QgsRectangle,
)
from qgis.PyQt.QtCore import QSize

from .ask_map import ring_of, view_settings
from .drawn_rectangle import DrawnRectangle
from .view_checks import layers_problem

MAX_RASTER_PIXELS = 4096 * 4096


def source_settings(source: str, canvas_settings: QgsMapSettings, raster, rectangle, region_task: bool,
                    config, ignored: Collection[str] = ()) -> QgsMapSettings:
    """The map settings of the view of `source` ("map", "raster", "rectangle"): `canvas_settings` (the
    canvas's, copied) with the size of `config` (`plugin.settings.EngineSettings`: render_from_canvas,
    render_width, render_height, render_dpr) unless the canvas's own is asked for; `raster` (a map layer or
    None) at its own resolution, unrotated; `rectangle` (a `drawn_rectangle.DrawnRectangle`, a QgsRectangle in
    the canvas's CRS, a QgsReferencedRectangle in its own, or None) at the configured long side, turned as the
    canvas was when it was drawn, so the view is exactly the screen rectangle dragged (`DrawnRectangle.view`; for
    a region task the rectangle is the region, and the view is the map). Raises ValueError with one line saying
    what to do, also when the view would be blank (a layer that cannot be read, or none that lies in the view:
    `plugin.view_checks.layers_problem`). `ignored`: ids of layers left out of the view (the dock's own answer
    layers: a model shown its earlier boxes and their labels is led by them, and they hide the imagery). Selected
    features are drawn as unselected ones."""
    canvas_settings = QgsMapSettings(canvas_settings)
    canvas_settings.setLayers([layer for layer in canvas_settings.layers() if layer.id() not in ignored])
    settings = _source_settings(source, canvas_settings, raster, rectangle, region_task, config)
    # The selection is the map's state, not its content: QGIS fills selected features with its selection colour,
    # which would hide from the model the very feature an identify question asks about.
    settings.setFlag(Qgis.MapSettingsFlag.DrawSelection, False)
    problem = layers_problem(settings, "the view")
    if problem:
        raise ValueError(f"{problem}: turn off that layer or fix its source" if "cannot be read" in problem
                         else f"{problem}: pan or zoom to a layer to ask about it")
    return settings


def view_key(settings: QgsMapSettings, ignored: Collection[str] = ()) -> tuple:
    """What a view shows, to tell whether the map changed since the view was rendered: its CRS, visible
    extent, rotation, device output size and layers (ids, but those in `ignored`)."""
    e = settings.visibleExtent()
    size = settings.deviceOutputSize()
    return (settings.destinationCrs().authid() or settings.destinationCrs().toWkt(),
            (e.xMinimum(), e.yMinimum(), e.xMaximum(), e.yMaximum()), settings.rotation(),
            (size.width(), size.height()), tuple(lyr.id() for lyr in settings.layers() if lyr.id() not in ignored))


def _source_settings(source: str, canvas_settings: QgsMapSettings, raster, rectangle, region_task: bool,
                     config) -> QgsMapSettings:
    if source == "raster":
        if raster is None or raster.type() != QgsMapLayerType.RasterLayer:
            if not any(layer.type() == QgsMapLayerType.RasterLayer
                       for layer in QgsProject.instance().mapLayers().values()):
                raise ValueError("the project has no raster layer: add one, or choose another source (Visible map)")
            raise ValueError("choose a raster layer")
        if raster.width() * raster.height() > MAX_RASTER_PIXELS:
            raise ValueError(f"{raster.name()} has {raster.width()}x{raster.height()} pixels, more than one "
                             "request takes: use the visible map or a rectangle")
        return view_settings([raster], raster.crs(), raster.extent(), 0.0, raster.width(), raster.height(), 1.0)
    if not canvas_settings.layers():  # a blank image would be asked about, and a model answers anyway
        raise ValueError("the map shows no layer: add a layer, or turn one on, to ask about it")
    if source == "rectangle" and rectangle is not None and not region_task:
        long_side = max(config.render_width, config.render_height)
        crs = canvas_settings.destinationCrs()
        r, rotation = DrawnRectangle.of(rectangle, crs).view(crs)  # turned as the canvas was when it was drawn
        scale = long_side / max(r.width(), r.height())
        return view_settings(canvas_settings.layers(), crs, r, rotation,
                             max(16, round(r.width() * scale)), max(16, round(r.height() * scale)),
                             config.render_dpr)
    if source == "rectangle" and rectangle is None:
        raise ValueError("draw a rectangle on the map first (Draw rectangle)")
    if not config.render_from_canvas:
        canvas_settings.setOutputSize(QSize(config.render_width, config.render_height))
        canvas_settings.setDevicePixelRatio(config.render_dpr)
    return canvas_settings


def region_ring(source: str, rectangle, canvas_crs, active_layer, view_crs) -> List[Tuple[float, float]]:
    """The region of an identify question as vertices in `view_crs`: for `source` "rectangle" the corners of the
    drawn `rectangle` (a `DrawnRectangle`, turned as the canvas was; a QgsReferencedRectangle in its own CRS; a
    QgsRectangle in `canvas_crs`), for "selected" the
    first selected feature of `active_layer` (a vector layer). Raises ValueError when there is none."""
    if source == "rectangle" and rectangle is not None:
        return DrawnRectangle.of(rectangle, canvas_crs).ring(view_crs)
    if source == "selected" and active_layer is not None and active_layer.type() == QgsMapLayerType.VectorLayer:
        selected = active_layer.selectedFeatures()
        if selected:
            geometry = selected[0].geometry()
            geometry.transform(QgsCoordinateTransform(active_layer.crs(), view_crs, QgsProject.instance()))
            return ring_of(geometry)
    raise ValueError("identify needs a region: draw a rectangle or select a feature of the active layer")


def check_region_in_view(source: str, ring: List[Tuple[float, float]], frame, pinned: bool) -> None:
    """Raises ValueError with one line when the region of an identify question (`ring`, vertices in the CRS of
    `frame`, a `core.georef.ImageFrame`: the view's) lies wholly outside the view's image: its box would be
    squeezed onto the image's border. `pinned`: the view is the earlier one a follow-up is about (the line
    then names New view). `source`: "rectangle" or "selected", to name the region. A region without area in
    the image (under a millionth of a pixel: a point, points on a line) is refused too."""
    pixels = [QgsPointXY(*frame.geotransform.to_pixel(x, y)) for x, y in ring]
    hull = QgsGeometry.fromMultiPointXY(pixels).convexHull()
    what = "the drawn rectangle" if source == "rectangle" else "the selected feature"
    if hull.area() < 1e-6:  # a point, or points on a line: a box of zero size, about which a model can only guess
        raise ValueError(f"{what} has no area (a point or a straight line): select a polygon, or draw a rectangle "
                         "around what to identify")
    if hull.intersects(QgsGeometry.fromRect(QgsRectangle(0, 0, frame.width, frame.height))):
        return
    if pinned:
        raise ValueError(f"{what} lies outside the view this conversation is about: New view asks about the "
                         "map as it is now")
    raise ValueError(f"{what} lies outside the view: pan or zoom to it to ask about it")
