"""The QML styles in styles/ draw what the README says: a relation is an arrow labelled with its predicate (the
dock's `geovlm_relations` and `geovlm:detecttiles`'s relations layer both load styles/relations.qml)."""
from pathlib import Path

from qgis.core import (
    Qgis,
    QgsFeature,
    QgsGeometry,
    QgsMapRendererSequentialJob,
    QgsMapSettings,
    QgsRectangle,
    QgsVectorLayer,
)
from qgis.PyQt.QtCore import QSize
from qgis.PyQt.QtGui import QColor

STYLES = Path(__file__).resolve().parents[1] / "styles"


def _relations_layer():
    layer = QgsVectorLayer("LineString?crs=EPSG:3857&field=predicate:string", "relations", "memory")
    features = []
    for y, predicate in ((20, "next to"), (60, "parallel to")):
        feature = QgsFeature(layer.fields())
        feature["predicate"] = predicate
        feature.setGeometry(QgsGeometry.fromWkt(f"LINESTRING(10 {y}, 90 {y})"))
        features.append(feature)
    assert layer.dataProvider().addFeatures(features)[0]
    message, ok = layer.loadNamedStyle(str(STYLES / "relations.qml"))
    assert ok, message
    return layer


def _render(layer):
    settings = QgsMapSettings()
    settings.setLayers([layer])
    settings.setDestinationCrs(layer.crs())
    settings.setExtent(QgsRectangle(0, 0, 100, 80))
    settings.setOutputSize(QSize(500, 400))
    settings.setOutputDpi(96)
    settings.setBackgroundColor(QColor(255, 255, 255))
    job = QgsMapRendererSequentialJob(settings)
    job.start()
    job.waitForFinished()
    return job.renderedImage()


def test_each_relation_arrow_is_labelled_with_its_predicate(qgis_app):
    layer = _relations_layer()
    assert layer.labelsEnabled()
    placement = layer.labeling().settings().placement
    assert placement in (Qgis.LabelPlacement.Line, Qgis.LabelPlacement.Curved)  # a line layer's placements
    labelled = _render(layer)
    layer.setLabelsEnabled(False)
    arrows = _render(layer)
    differ = [(x, y) for x in range(0, labelled.width()) for y in range(0, labelled.height())
              if labelled.pixel(x, y) != arrows.pixel(x, y)]
    assert len(differ) > 100, "no label drawn"
    # one label near each of the two arrows (at y = 20 and 60 map units: pixel rows 300 and 100)
    assert any(abs(y - 300) < 40 for _, y in differ) and any(abs(y - 100) < 40 for _, y in differ)


def test_the_label_fonts_are_the_systems_own(qgis_app):
    """The styles named the font "DejaVu LGC Sans", which few systems have (not Debian 12's QGIS, nor Windows or
    macOS): QGIS substituted it and, at every opening of a project with answer layers, warned in its message bar
    "Loading layer geovlm_objects: Font "DejaVu LGC Sans" not available on system" (seen in a real QGIS). They name
    no font: the labels use QGIS's own, which every system has."""
    for name, geometry in (("objects.qml", "Polygon"), ("relations.qml", "LineString")):
        assert "fontFamily=" not in (STYLES / name).read_text(encoding="utf-8"), name
        layer = QgsVectorLayer(f"{geometry}?crs=EPSG:3857&field=label:string&field=predicate:string", "l", "memory")
        message, ok = layer.loadNamedStyle(str(STYLES / name))
        assert ok, message
        text = layer.labeling().settings().format()
        assert text.fontFound(), (name, text.resolvedFontFamily())
