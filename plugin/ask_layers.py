"""Where the dock's answers go: an objects and a relations layer in a GeoPackage beside the project, each made
and added to the project with the first answer that has features for it (an answer without boxes adds no empty
layer), and appended to after; styled with the QML files in `styles/`.

An unsaved project has no folder: its answers go to a new GeoPackage in GeoVLM's folder of the QGIS profile
(`<profile>/geovlm/answers/`, as Processing keeps its default outputs in the profile), which the dock names. Never
into a temporary folder: that file would be deleted when QGIS ends, even after the project was saved with its
layers in it, and QGIS asks on quitting about any layer in a temporary folder (`QgsMapLayer.isTemporary`)."""
from __future__ import annotations

import re
import time
from pathlib import Path
from typing import List, Optional, Set, Tuple

from qgis.core import (
    Qgis,
    QgsCoordinateTransform,
    QgsDistanceArea,
    QgsFeature,
    QgsFeatureRequest,
    QgsGeometry,
    QgsProject,
    QgsProviderRegistry,
    QgsUnitTypes,
    QgsVectorFileWriter,
    QgsVectorLayer,
)

from . import settings as engine_settings
from .ask_map import ask_fields

STYLES = Path(__file__).resolve().parents[1] / "styles"
TABLES = (("geovlm_objects", Qgis.WkbType.Polygon, "objects.qml"),
          ("geovlm_relations", Qgis.WkbType.LineString, "relations.qml"))
ANSWERS_FOLDER = "answers"  # under `settings.data_dir()`: the GeoPackages of unsaved projects' answers
_HOW_MUCH = re.compile(r"\b(how\s+(many|much|large|big)|count|number\s+of|area|size\s+of)\b", re.IGNORECASE)


def answer_table(layer) -> str:
    """The answer table a project layer shows (`geovlm_objects` or `geovlm_relations` of a GeoPackage, as the
    dock writes them: `AnswerLayers`), else "". Such a layer may come from the project file (saved with an
    earlier session's answers) or from the plugin before it was reloaded, not only from this dock."""
    try:
        if layer.providerType() != "ogr":
            return ""
        table = QgsProviderRegistry.instance().decodeUri("ogr", layer.source()).get("layerName") or ""
    except RuntimeError:  # its C++ object was deleted with the project's layer
        return ""
    return table if table in {name for name, _, _ in TABLES} else ""


def answer_layer_ids(project: QgsProject) -> Set[str]:
    """The ids of the project's layers that show answer tables (`answer_table`): never part of a view sent to
    a model, which would be led by its earlier boxes and their labels."""
    return {layer_id for layer_id, layer in project.mapLayers().items() if answer_table(layer)}


def asks_how_many(question: str) -> bool:
    """True for "how many / how large" questions, which get a count and a total area."""
    return bool(_HOW_MUCH.search(question or ""))


class AnswerLayers:
    """The two output layers of a project. `path` is the GeoPackage: `<project>_geovlm.gpkg` beside a saved
    project, else a new `answers-<date>-<time>.gpkg` in `settings.data_dir() / "answers"` (`unsaved` is then
    True). Each layer is made in the CRS of the view of its first features; features of views in other CRSs are
    transformed into it. Raises OSError when the profile's answers folder of an unsaved project cannot be made."""

    def __init__(self, project: Optional[QgsProject] = None):
        self.project = project or QgsProject.instance()
        self.layers: List[Optional[QgsVectorLayer]] = [None, None]
        self.path, self.unsaved = self._where()
        # (feature ids, relations layer) of the last `add`'s relations, in their order; ([], None) without any
        self.added_relations: Tuple[List[int], Optional[QgsVectorLayer]] = ([], None)

    def layer_ids(self) -> List[str]:
        """The ids of its layers that still exist (one removed from the project may be deleted already)."""
        ids = []
        for layer in self.layers:
            try:
                if layer is not None:
                    ids.append(layer.id())
            except RuntimeError:  # its C++ object was deleted with the project's layer
                pass
        return ids

    def project_saved(self) -> bool:
        """True when the project had no file when these layers were made and has one now (new answers then go
        beside it; these layers stay where they are, in the project)."""
        return self.unsaved and bool(self.project.absoluteFilePath())

    def _where(self) -> Tuple[Path, bool]:
        home = self.project.absoluteFilePath()
        if home:
            project = Path(home)
            return project.with_name(f"{project.stem}_geovlm.gpkg"), False
        folder = engine_settings.data_dir() / ANSWERS_FOLDER
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for n in range(1, 1000):  # a new file for each: several docks or sessions within one second
            path = folder / (f"answers-{stamp}.gpkg" if n == 1 else f"answers-{stamp}-{n}.gpkg")
            if not path.exists():
                break
        folder.mkdir(parents=True, exist_ok=True)  # OSError (said in the transcript) when it cannot be made
        return path, True

    def _layer(self, index: int, crs) -> QgsVectorLayer:
        layer = self.layers[index]
        try:
            if layer is not None and self.project.mapLayer(layer.id()) is not None:
                return layer
        except RuntimeError:  # removed from the project, which deleted it: added again from the same file below
            self.layers[index] = None
        table, geometry_type, style = TABLES[index]
        shown = self._shown(table)
        if shown is not None:  # the project's own (opened with it, or added before the plugin was reloaded)
            if not shown.dataProvider().enterUpdateMode():
                raise OSError(f"could not open {table} in {self.path} for writing")
            self.layers[index] = shown
            return shown
        uri = f"{self.path}|layername={table}"
        found = QgsVectorLayer(uri, table, "ogr") if table in self._tables() else None
        if found is None or not found.isValid():
            del found  # release its OGR connection to the file before writing it
            options = QgsVectorFileWriter.SaveVectorOptions()
            options.driverName = "GPKG"
            options.layerName = table
            # an empty file (left by a failed open) is no GeoPackage: write a new one instead of a layer into it
            keep_file = self.path.exists() and self.path.stat().st_size > 0
            options.actionOnExistingFile = (QgsVectorFileWriter.ActionOnExistingFile.CreateOrOverwriteLayer
                                            if keep_file
                                            else QgsVectorFileWriter.ActionOnExistingFile.CreateOrOverwriteFile)
            writer = QgsVectorFileWriter.create(str(self.path), ask_fields()[index], geometry_type, crs,
                                                self.project.transformContext(), options)
            error = writer.hasError()
            message = writer.errorMessage()
            del writer  # closes the file
            if error != QgsVectorFileWriter.WriterError.NoError:
                raise OSError(f"could not write {self.path}: {message}")
            found = QgsVectorLayer(uri, table, "ogr")
            if not found.isValid():  # never append to a layer OGR cannot open (its provider has no table)
                raise OSError(f"could not open {table} in {self.path} after writing it: "
                              f"{found.dataProvider().error().summary() if found.dataProvider() else 'no provider'}")
        # Before the layer joins the project (where the canvas draws it at once, in a worker thread): update mode
        # puts the GeoPackage in WAL mode, kept while the layer lives. QGIS opens read-only GeoPackage readers
        # with GDAL's NOLOCK=ON unless the file is in WAL mode (qgsogrproviderutils.cpp, GDALOpenWrapper): a
        # reader opened while the file was still in rollback-journal mode read pages as the first append wrote
        # them, and failed every query once that append had switched the file to WAL (0 features, or a crash).
        if not found.dataProvider().enterUpdateMode():
            raise OSError(f"could not open {table} in {self.path} for writing")
        found.loadNamedStyle(str(STYLES / style))
        self.project.addMapLayer(found)
        self.layers[index] = found
        return found

    def _shown(self, table: str) -> Optional[QgsVectorLayer]:
        """The project's layer of `table` in this GeoPackage, if it has one: appended to, not added twice."""
        for layer in self.project.mapLayers().values():
            if answer_table(layer) == table:
                path = QgsProviderRegistry.instance().decodeUri("ogr", layer.source()).get("path") or ""
                if path and Path(path).resolve() == self.path.resolve():
                    return layer
        return None

    def _tables(self) -> Set[str]:
        """The names of the GeoPackage's tables; none when the file does not exist yet or is empty. A layer is
        opened only on a table found here: OGR asked to open a missing file or table logs "Cannot open ..." in
        QGIS's log (on every first answer of an unsaved project, whose file is new)."""
        if not self.path.is_file() or self.path.stat().st_size == 0:
            return set()
        return {found.name() for found in QgsProviderRegistry.instance().querySublayers(str(self.path))}

    def add(self, objects: List[QgsFeature], relations: List[QgsFeature],
            crs) -> Tuple[List[int], Optional[QgsVectorLayer]]:
        """Append one answer's features (in `crs`, the view's); returns the new objects' feature ids and the
        objects layer (None when the answer has no objects); the relations' feature ids and layer are kept in
        `added_relations`. A layer is made, and added to the project, only for an answer that has features for
        it: an answer without boxes adds no empty layer. Raises OSError when the GeoPackage cannot be written."""
        ids: List[int] = []
        objects_layer = None
        self.added_relations = ([], None)
        for index, features in ((0, objects), (1, relations)):
            if not features:
                continue
            layer = self._layer(index, crs)
            transform = (QgsCoordinateTransform(crs, layer.crs(), self.project.transformContext())
                         if layer.crs() != crs else None)
            features = [self._as_row_of(layer, feature, transform) for feature in features]
            ok, added = layer.dataProvider().addFeatures(features)
            if not ok:
                raise OSError(f"could not append to {self.path}: {layer.dataProvider().lastError()}")
            if index == 0:
                ids, objects_layer = [f.id() for f in added], layer
            else:
                self.added_relations = ([f.id() for f in added], layer)
            layer.updateExtents()
            layer.triggerRepaint()
        return ids, objects_layer

    @staticmethod
    def _as_row_of(layer: QgsVectorLayer, feature: QgsFeature, transform) -> QgsFeature:
        """The feature with the layer's fields (a GeoPackage adds its fid first), attributes by name."""
        row = QgsFeature(layer.fields())
        for name in feature.fields().names():
            row[name] = feature[name]
        geometry = QgsGeometry(feature.geometry())
        if transform is not None:
            geometry.transform(transform)
        row.setGeometry(geometry)
        return row

    def total_area(self, layer: QgsVectorLayer, ids: List[int]) -> Tuple[int, str]:
        """(count, total ellipsoidal area formatted in the project's area units) of the given features
        (QgsDistanceArea with the project's ellipsoid; for a project set to "None / Planimetric", the ellipsoid
        of the layer's CRS, else WGS 84: a planar area of the layer's CRS is no ground area: square degrees, or
        Web Mercator's 1/cos² of the latitude, 1.6 times too large at 37°)."""
        ellipsoid = self.project.ellipsoid()
        if not ellipsoid or ellipsoid.upper() == "NONE":
            ellipsoid = layer.crs().ellipsoidAcronym() or "EPSG:7030"
        area = QgsDistanceArea()
        area.setSourceCrs(layer.crs(), self.project.transformContext())
        area.setEllipsoid(ellipsoid)
        total = 0.0
        for feature in layer.getFeatures(QgsFeatureRequest().setFilterFids(ids)):
            total += area.measureArea(feature.geometry())
        units = self.project.areaUnits()
        value = area.convertAreaMeasurement(total, units)
        return len(ids), QgsUnitTypes.formatArea(value, 2, units, True)
