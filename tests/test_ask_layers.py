"""The dock's answer GeoPackage: a left-over empty file is replaced, a file OGR cannot use is one OSError."""

import pytest
from qgis.core import QgsCoordinateReferenceSystem, QgsFeature, QgsGeometry, QgsProject, QgsRectangle

from geovlm.plugin.ask_layers import AnswerLayers
from geovlm.plugin.ask_map import ask_fields


def _objects(n):
    rows = []
    for i in range(n):
        row = QgsFeature(ask_fields()[0])
        row.setGeometry(QgsGeometry.fromRect(QgsRectangle(i, i, i + 1, i + 1)))
        rows.append(row)
    return rows


@pytest.fixture
def project(qgis_new_project, tmp_path):
    QgsProject.instance().setFileName(str(tmp_path / "p.qgz"))
    yield QgsProject.instance()
    QgsProject.instance().removeAllMapLayers()
    QgsProject.instance().setFileName("")


def test_an_empty_file_in_the_way_becomes_a_geopackage(project, tmp_path):
    (tmp_path / "p_geovlm.gpkg").write_bytes(b"")
    layers = AnswerLayers(project)
    ids, layer = layers.add(_objects(3), [], QgsCoordinateReferenceSystem("EPSG:3857"))
    assert len(ids) == 3 and layer.isValid() and layer.featureCount() == 3


def test_a_file_that_is_no_geopackage_is_one_oserror_not_a_write(project, tmp_path):
    (tmp_path / "p_geovlm.gpkg").write_bytes(b"not a geopackage at all " * 40)
    layers = AnswerLayers(project)
    with pytest.raises(OSError) as info:
        layers.add(_objects(1), [], QgsCoordinateReferenceSystem("EPSG:3857"))
    assert "p_geovlm.gpkg" in str(info.value) and "\n" not in str(info.value)
    assert (tmp_path / "p_geovlm.gpkg").read_bytes().startswith(b"not a geopackage")  # the file is left alone


def test_a_reader_opened_when_the_layer_joins_the_project_sees_every_feature(project, tmp_path):
    """Adding a layer to the project lets the map canvas draw it at once, in a worker thread, through a read-only
    OGR connection that QGIS opens with GDAL's NOLOCK=ON (qgsogrproviderutils.cpp, GDALOpenWrapper) unless the
    GeoPackage is in WAL mode. Such a connection, opened before the first write switched the file to WAL,
    failed every later query ('unable to open database file', 'gpkg_contents is missing': 0 features) and read
    pages while they were written (the crash in addFeatures), seen under CPU load with the dock. Here that
    reader is opened deterministically, as the canvas would, when each answer layer joins the project."""
    from osgeo import gdal

    readers = []

    def open_reader(layers):
        for layer in layers:
            path = layer.source().split("|")[0]
            readers.append((layer.name(), gdal.OpenEx(path, gdal.OF_VECTOR, open_options=["NOLOCK=ON"])))

    project.layersAdded.connect(open_reader)
    relation = QgsFeature(ask_fields()[1])
    relation.setGeometry(QgsGeometry.fromWkt("LINESTRING(0 0, 1 1)"))
    try:
        layers = AnswerLayers(project)
        layers.add(_objects(3), [relation], QgsCoordinateReferenceSystem("EPSG:3857"))
        layers.add(_objects(2), [], QgsCoordinateReferenceSystem("EPSG:3857"))
        counts = {name: sum(1 for _ in reader.GetLayerByName(name)) if reader.GetLayerByName(name) else None
                  for name, reader in readers}
    finally:
        project.layersAdded.disconnect(open_reader)
        readers.clear()
    assert counts == {"geovlm_objects": 5, "geovlm_relations": 1}


def test_a_layer_joins_the_project_only_with_features_for_it(project, tmp_path):
    """An answer without boxes adds no empty layer; the first answer with objects (then with relations) does."""
    crs = QgsCoordinateReferenceSystem("EPSG:3857")
    layers = AnswerLayers(project)
    assert layers.add([], [], crs) == ([], None)
    assert project.mapLayers() == {} and not (tmp_path / "p_geovlm.gpkg").exists()
    ids, layer = layers.add(_objects(2), [], crs)
    assert len(ids) == 2 and layer.featureCount() == 2
    assert sorted(found.name() for found in project.mapLayers().values()) == ["geovlm_objects"]
    assert layers.add([], [], crs) == ([], None)
    relation = QgsFeature(ask_fields()[1])
    relation.setGeometry(QgsGeometry.fromWkt("LINESTRING(0 0, 1 1)"))
    ids, same = layers.add(_objects(1), [relation], crs)
    assert len(ids) == 1 and same.id() == layer.id() and layer.featureCount() == 3
    assert sorted(found.name() for found in project.mapLayers().values()) == ["geovlm_objects", "geovlm_relations"]
    rel_ids, relations = layers.added_relations  # what the dock links its relations to
    assert relations.name() == "geovlm_relations" and [f.id() for f in relations.getFeatures()] == rel_ids
    layers.add(_objects(1), [], crs)
    assert layers.added_relations == ([], None)
