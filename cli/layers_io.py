"""Writing parsed answers as GIS layers (geopandas/pyogrio, engine side): `objects` and `relations`."""
from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List

from ..core.answer import Answer
from ..core.georef import ImageFrame
from ..core.layer_rows import OBJECT_FIELDS, RELATION_FIELDS, answer_rows
from . import CliError
from .reprojection import beyond_area_of_use, reprojected

GPKG_OPTIONS = {"VERSION": "1.3"}  # QGIS 3.22 opens GeoPackage 1.3 without warnings


@dataclass
class ParsedRecord:
    """One answer and the image it was about."""

    line: int
    family: str
    answer: Answer
    frame: ImageFrame


def _frames(records: List[ParsedRecord]):
    import geopandas as gpd
    from shapely.geometry import LineString, Polygon

    obj_cols = [name for name, _ in OBJECT_FIELDS]
    rel_cols = [name for name, _ in RELATION_FIELDS]
    objects, relations = [], []
    for rec in records:
        objs, rels = answer_rows(rec.answer, rec.frame, rec.line, rec.family)
        objects += [dict(zip(obj_cols, values), geometry=Polygon(ring)) for values, ring in objs]
        relations += [dict(zip(rel_cols, values), geometry=LineString(line)) for values, line in rels]
    crs = next((r.frame.crs for r in records if r.frame.crs), None)
    obj_df = gpd.GeoDataFrame(objects, columns=obj_cols + ["geometry"], geometry="geometry", crs=crs)
    rel_df = gpd.GeoDataFrame(relations, columns=rel_cols + ["geometry"], geometry="geometry", crs=crs)
    return obj_df, rel_df


def check_output(out_path, overwrite: bool = False) -> Path:
    """`out_path` as a Path when its suffix names a format `write_layers` writes (.gpkg, .geojson, .json) and
    writing it loses nothing unasked; CliError in one line otherwise: an earlier output (a GeoPackage holding
    only `objects` and `relations`, or a GeoJSON file or its `_relations` companion) is replaced only with
    `overwrite` (--overwrite, as `caption`/`detect` replace an output only when told), and a GeoPackage with
    other layers (a bulk run's ledger, a user's data) or a JSON file that is not such a GeoJSON output (the
    answers being parsed, a user's GeoJSON) is never written over."""
    out = Path(out_path)
    if out.suffix.lower() not in (".gpkg", ".geojson", ".json"):
        raise CliError(f"output must be .gpkg or .geojson, not {out.suffix or out.name!r}")
    if out.suffix.lower() == ".gpkg" and out.exists():
        counts = _refuse_foreign_geopackage(out)
        if not overwrite:
            held = ", ".join(f"{n} {name}" for name, n in counts.items())
            raise CliError(f"{out} exists (an earlier output: {held}): rerun with --overwrite to replace it, or "
                           "choose another output")
    elif out.suffix.lower() != ".gpkg":
        existing = [p for p in (out, _relations_path(out)) if p.exists()]
        for path in existing:
            _refuse_foreign_geojson(path)
        if existing and not overwrite:
            raise CliError(f"{' and '.join(map(str, existing))} exist{'s' if len(existing) == 1 else ''}: rerun "
                           "with --overwrite to replace, or choose another output")
    return out


def _refuse_foreign_geojson(path: Path) -> None:
    """Nothing when `path` is an earlier output of `write_layers` in GeoJSON (a FeatureCollection whose features
    carry only the `objects` or `relations` fields), which may be replaced; CliError otherwise: the file is
    rewritten whole, so the answers file being parsed (`parse results.json --out results.json`) or a user's own
    GeoJSON would be lost."""
    import json

    names = {name for name, _ in OBJECT_FIELDS} | {name for name, _ in RELATION_FIELDS}
    try:
        with open(path, "rb") as f:
            data = json.load(f)
        ours = (isinstance(data, dict) and data.get("type") == "FeatureCollection"
                and all(isinstance(f, dict) and set(f.get("properties") or {}) <= names
                        for f in data.get("features") or []))
    except (OSError, ValueError):
        ours = False
    if not ours:
        raise CliError(f"{path} exists and is not an earlier output of GeoVLM's layers, which writing it would "
                       "replace: choose another output (it is left as it is)")


def _relations_path(out: Path) -> Path:
    """The GeoJSON file that holds the relations beside OUT.geojson: OUT_relations.geojson."""
    return out.with_name(out.stem + "_relations" + out.suffix)


def _refuse_foreign_geopackage(out: Path) -> Dict[str, int]:
    """{layer: features} of `out` when it is a GeoPackage holding only what `write_layers` writes (`objects`,
    `relations`), which may be replaced; CliError otherwise: the file is rewritten whole, so a user's
    GeoPackage with other layers (a bulk run's ledger included) would be lost."""
    import sqlite3

    try:
        con = sqlite3.connect(f"file:{out}?mode=ro", uri=True)
    except sqlite3.Error:
        raise CliError(f"{out} exists and cannot be read: choose another output") from None
    try:
        names = {row[0] for row in con.execute("SELECT table_name FROM gpkg_contents")}
        other = sorted(names - {"objects", "relations"})
        if other:
            raise CliError(f"{out} exists and holds other layers ({', '.join(other)}), which writing it would "
                           "delete: choose another output (it is left as it is)")
        return {name: con.execute(f'SELECT COUNT(*) FROM "{name}"').fetchone()[0]  # nosec B608  # two fixed names
                for name in ("objects", "relations") if name in names}
    except sqlite3.DatabaseError:
        raise CliError(f"{out} exists and is not a GeoPackage: choose another output (it is left as it is)") from None
    finally:
        con.close()


def write_layers(records: Iterable[ParsedRecord], out_path, to_crs=None, overwrite: bool = False) -> dict:
    """Write `objects` and `relations`; a .gpkg holds both layers, .geojson writes OUT and OUT_relations.
    An existing output is replaced only with `overwrite` (see `check_output`).

    With `to_crs`, the layers are reprojected from the images' CRS (`reprojection.reprojected`: edges bent as
    the projection bends them, a box over the antimeridian kept whole)."""
    records = list(records)
    out = check_output(out_path, overwrite)
    crs_set = {r.frame.crs for r in records if r.frame.crs}
    if len(crs_set) > 1:
        raise CliError("answers refer to images in different CRSs; write them separately")
    obj_df, rel_df = _frames(records)
    if to_crs:
        if obj_df.crs is None:
            raise CliError("--to-crs needs answers about a georeferenced image with a CRS")
        try:
            beyond = beyond_area_of_use((obj_df, rel_df), to_crs)
            obj_df, rel_df = reprojected(obj_df, to_crs), reprojected(rel_df, to_crs)
        except Exception as exc:  # pyproj raises several types for a bad CRS
            raise CliError(f"cannot reproject to {to_crs!r}: {exc}") from None
        if beyond:
            print(f"geovlm parse: warning: {beyond}", file=sys.stderr)
    from pyogrio.errors import DataSourceError

    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            # Pixel-space output has no CRS on purpose; pyogrio warns about that.
            warnings.filterwarnings("ignore", message="'crs' was not provided")
            return _write(obj_df, rel_df, out)
    except (OSError, DataSourceError) as exc:  # a folder that cannot be made or written (read-only, /proc...)
        raise CliError(f"cannot write {out}: {getattr(exc, 'strerror', None) or exc}") from None


def _write(obj_df, rel_df, out: Path) -> dict:
    if out.suffix.lower() == ".gpkg":
        if out.exists():
            out.unlink()
        obj_df.to_file(out, layer="objects", driver="GPKG", engine="pyogrio", layer_options=None,
                       dataset_options=GPKG_OPTIONS, geometry_type="Polygon")
        rel_df.to_file(out, layer="relations", driver="GPKG", engine="pyogrio", append=False,
                       geometry_type="LineString")
        paths = {"objects": f"{out}|layername=objects", "relations": f"{out}|layername=relations"}
    else:
        rel_path = _relations_path(out)
        for path, df in ((out, obj_df), (rel_path, rel_df)):
            if path.exists():
                path.unlink()
            # GDAL would otherwise write a string such as "[10, 20, 30, 60, 90]" (a box's source) as a JSON
            # array: AUTODETECT_JSON_STRINGS=NO keeps every string a string (GDAL >= 3.8 option).
            df.to_file(path, driver="GeoJSON", engine="pyogrio", layer_options={"AUTODETECT_JSON_STRINGS": "NO"})
        paths = {"objects": str(out), "relations": str(rel_path)}
    return {"objects": len(obj_df), "relations": len(rel_df), "paths": paths}
