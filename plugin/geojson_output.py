"""Processing outputs written as GeoJSON (or GeoJSONSeq) keep their strings strings, on every GDAL.

GDAL's GeoJSON and GeoJSONSeq writers write a string attribute that parses as a JSON array or object (one
that starts with "[" and ends with "]", or "{" and "}", such as a box's source `[10, 20, 30, 60]` or an answer
`[1, 2]`) as that array or object, so it comes back as a list, and the field as a JSON field. From GDAL 3.8
the layer creation option `AUTODETECT_JSON_STRINGS=NO` keeps them strings (GDAL's GeoJSON and GeoJSONSeq
driver pages, "Layer creation options"); older GDALs (3.6 in Debian 12's QGIS 3.40) have no way to ask for
it. There the sink records the value of every such string it is given, and `close()` writes them back into
the file GDAL wrote, at the same feature and field, so nothing is lost. The CLI writes its GeoJSON through
pyogrio with the same option (`cli/layers_io.py`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from osgeo import gdal
from qgis.core import (
    Qgis,
    QgsCoordinateReferenceSystem,
    QgsFeatureSink,
    QgsProcessingException,
    QgsProcessingOutputLayerDefinition,
    QgsProperty,
)

GEOJSON_SUFFIXES = (".geojson", ".json")
SEQUENCE_SUFFIXES = (".geojsonl", ".geojsons")  # GeoJSONSeq: one feature a line (after an RS for .geojsons)
KEEP_STRINGS_OPTION = "AUTODETECT_JSON_STRINGS=NO"  # GeoJSON and GeoJSONSeq layer creation option, GDAL >= 3.8
KEEPS_STRINGS_FROM = 3080000  # gdal.VersionInfo() of GDAL 3.8.0


def gdal_keeps_strings(version: Optional[int] = None) -> bool:
    """Whether this GDAL (or `version`, as `gdal.VersionInfo()` numbers it: 3080000 is 3.8.0) has the GeoJSON
    option that keeps JSON-looking strings strings."""
    return (int(gdal.VersionInfo()) if version is None else version) >= KEEPS_STRINGS_FROM


def geojson_path(destination: str) -> str:
    """The file of a Processing output destination (a path, maybe "ogr:"-prefixed or followed by
    "|layername=..."), when it is a GeoJSON or GeoJSONSeq file; "" for any other output (GeoPackage, memory
    layer, database)."""
    path = destination.split("|", 1)[0].strip()
    if path.lower().startswith("ogr:"):
        path = path[4:]
    return path if path.lower().endswith(GEOJSON_SUFFIXES + SEQUENCE_SUFFIXES) else ""


def looks_like_json(value) -> bool:
    """Whether GDAL's GeoJSON writer (before 3.8, or without `KEEP_STRINGS_OPTION`) would try `value`, a
    string attribute, as JSON: it starts with "[" and ends with "]", or starts with "{" and ends with "}"."""
    return isinstance(value, str) and len(value) >= 2 and (value[0], value[-1]) in (("[", "]"), ("{", "}"))


class StringKeepingSink:
    """A Processing feature sink whose GeoJSON output keeps its strings. `add_sink()` makes one; the algorithm
    adds features through it (`addFeature`, `addFeatures`, as a `QgsFeatureSink`) and calls `close()` when it
    has added the last one (then the file is complete); with no sink (an optional output not asked for) the
    features are dropped. `path` is the GeoJSON file when its strings must be
    restored after GDAL wrote it (GDAL < 3.8), else ""; `kept` maps (feature index, field name) to the strings
    to restore."""

    def __init__(self, sink: Optional[QgsFeatureSink], path: str = ""):
        self._sink: Optional[QgsFeatureSink] = sink
        self.path = path
        self.kept: Dict[Tuple[int, str], str] = {}
        self._count = 0

    def addFeature(self, feature, flags=None) -> bool:  # noqa: N802 (QgsFeatureSink's name)
        return self.addFeatures([feature], flags)

    def addFeatures(self, features, flags=None) -> bool:  # noqa: N802
        """Add `features` (a list of QgsFeature) to the sink; False when it refused them (QgsFeatureSink)."""
        features = list(features)
        if self.path:
            for feature in features:
                for field, value in zip(feature.fields().names(), feature.attributes()):
                    if looks_like_json(value):  # a str: a string field's value
                        self.kept[(self._count, field)] = value
                self._count += 1
        if self._sink is None:
            return True
        return self._sink.addFeatures(features, QgsFeatureSink.Flags() if flags is None else flags)

    def close(self) -> None:
        """Close the sink (its file is then complete) and, for a GeoJSON file from a GDAL < 3.8, write the
        recorded strings back where GDAL wrote arrays or objects. Raises QgsProcessingException when that file
        is not the one written (another feature count, or not GeoJSON)."""
        if self._sink is None:
            return
        self._sink.flushBuffer()
        self._sink = None  # the last reference (keep no other): the writer closes its file
        if self.path and self.kept:
            restore_strings(Path(self.path), self.kept, self._count)


def add_sink(alg, parameters, name: str, context, fields, geometry_type, crs,
             feedback=None) -> Tuple[StringKeepingSink, Optional[str]]:
    """`alg.parameterAsSink(...)` for the output `name`, as a `StringKeepingSink`, and its destination id (None
    for an optional output that was not asked for: then the sink drops what it is given). A GeoJSON file is
    made with `KEEP_STRINGS_OPTION` on GDAL >= 3.8, and has its strings restored on `close()` on older GDALs;
    any other output is made as Processing makes it. A GeoJSON sequence (.geojsonl, .geojsons) of coordinates in
    an engineering CRS (image pixels, or map units of a raster without a CRS) is written without a CRS, with a
    warning to `feedback`: GDAL's GeoJSONSeq writer, whose output is WGS 84 by definition (RFC 8142), refused the
    layer ("Failed to create coordinate transformation ... WGS84")."""
    destination = _destination(parameters, name, context)
    if _is_sequence(destination) and crs.isValid() and crs.type() == Qgis.CrsType.Engineering:
        crs = QgsCoordinateReferenceSystem()
        if feedback is not None:
            feedback.pushWarning(f"{name}: a GeoJSON sequence is in WGS 84 by definition, which these coordinates "
                                 "(image pixels or map units) are not: written without a CRS; write a GeoPackage "
                                 "(.gpkg) to keep it")
    keeps = gdal_keeps_strings()
    options = [KEEP_STRINGS_OPTION] if keeps and geojson_path(destination) else []
    sink, dest_id = alg.parameterAsSink(parameters, name, context, fields, geometry_type, crs,
                                        QgsFeatureSink.SinkFlags(), {}, [], options)
    if sink is None:
        optional = alg.parameterDefinition(name).flags() & Qgis.ProcessingParameterFlag.Optional
        if optional and not _destination(parameters, name, context):
            return StringKeepingSink(None), None  # an optional output not asked for: its features are dropped
        raise QgsProcessingException(f"cannot write the output {name}")
    return StringKeepingSink(sink, "" if keeps else geojson_path(dest_id)), dest_id  # a file's id is its path


def _is_sequence(destination: str) -> bool:
    return geojson_path(destination).lower().endswith(SEQUENCE_SUFFIXES)


def _destination(parameters, name: str, context) -> str:
    """The destination the user gave for the output `name` (a path, "TEMPORARY_OUTPUT", ...), read without
    `parameterAsOutputLayer` (which would add a second layer to load on completion)."""
    value = parameters.get(name)
    if isinstance(value, QgsProcessingOutputLayerDefinition):
        value = value.sink
    if isinstance(value, QgsProperty):
        value, _ = value.valueAsString(context.expressionContext(), "")
    return value if isinstance(value, str) else ""


def restore_strings(path: Path, kept: Dict[Tuple[int, str], str], count: int) -> None:
    """Put each kept string (by (feature index, field name)) back into the GeoJSON FeatureCollection, or the
    GeoJSONSeq sequence (`SEQUENCE_SUFFIXES`), at `path`, which holds `count` features in the order they were
    added. The file is rewritten as GDAL lays it out (a collection: its members, then one feature a line; a
    sequence: one feature a line, each after the RS character when GDAL wrote one), as UTF-8. Raises
    QgsProcessingException in one line when the file is not such a collection or sequence."""
    sequence = path.suffix.lower() in SEQUENCE_SUFFIXES
    try:
        text = path.read_text(encoding="utf-8")
        if sequence:
            lines = [line for line in text.split("\n") if line.strip("\x1e \t\r")]  # splitlines() splits at RS
            features: List[dict] = [json.loads(line.lstrip("\x1e")) for line in lines]
        else:
            collection = json.loads(text)
            features = collection["features"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise QgsProcessingException(f"cannot read back {path} to keep its strings: {exc}") from None
    if len(features) != count:
        raise QgsProcessingException(f"{path} holds {len(features)} features, not the {count} written: its "
                                     "JSON-looking strings could not be restored (write a GeoPackage instead)")
    for (index, field), value in kept.items():
        features[index].setdefault("properties", {})[field] = value
    rows = [json.dumps(feature, ensure_ascii=False) for feature in features]
    if sequence:
        text = "".join(("\x1e" if line.startswith("\x1e") else "") + row + "\n" for line, row in zip(lines, rows))
    else:
        head = {key: value for key, value in collection.items() if key != "features"}
        members = "".join(f"{json.dumps(key)}: {json.dumps(value, ensure_ascii=False)},\n"
                          for key, value in head.items())
        text = "{\n" + members + '"features": [\n' + ",\n".join(rows) + "\n]\n}\n"
    path.write_text(text, encoding="utf-8")
