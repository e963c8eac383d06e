"""A minimal GeoPackage 1.3 writer on sqlite3 (standard library only): feature tables, CRSs, geometry blobs.

A GeoPackage is an SQLite database with a few required tables (OGC 12-128r18, "OGC GeoPackage Encoding
Standard" 1.3): `gpkg_spatial_ref_sys`, `gpkg_contents`, `gpkg_geometry_columns`, and in each feature table
a geometry column holding "GeoPackageBinary" blobs (a `GP` header with the SRS id and the envelope, then
ISO WKB). Writing it directly lets the command line and the QGIS plugin share one writer that commits each
row in its own transaction; GDAL/OGR, pyogrio and QGIS read the result as any other GeoPackage.
"""
from __future__ import annotations

import sqlite3
import struct
from typing import Iterable, List, Optional, Sequence, Tuple

Point = Tuple[float, float]

APPLICATION_ID = 0x47504B47  # "GPKG" (spec 1.1.1.1.1)
USER_VERSION = 10300  # GeoPackage 1.3.0
CUSTOM_SRS_BASE = 100000  # srs_id of a CRS without an EPSG code
_SQL_TYPES = {int: "INTEGER", float: "DOUBLE", str: "TEXT"}
_WKB_TYPES = {"POLYGON": 3, "LINESTRING": 2}

_CORE_TABLES = """
CREATE TABLE IF NOT EXISTS gpkg_spatial_ref_sys (
  srs_name TEXT NOT NULL, srs_id INTEGER PRIMARY KEY, organization TEXT NOT NULL,
  organization_coordsys_id INTEGER NOT NULL, definition TEXT NOT NULL, description TEXT);
CREATE TABLE IF NOT EXISTS gpkg_contents (
  table_name TEXT NOT NULL PRIMARY KEY, data_type TEXT NOT NULL, identifier TEXT UNIQUE,
  description TEXT DEFAULT '', last_change DATETIME NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')),
  min_x DOUBLE, min_y DOUBLE, max_x DOUBLE, max_y DOUBLE, srs_id INTEGER,
  CONSTRAINT fk_gc_r_srs_id FOREIGN KEY (srs_id) REFERENCES gpkg_spatial_ref_sys(srs_id));
CREATE TABLE IF NOT EXISTS gpkg_geometry_columns (
  table_name TEXT NOT NULL, column_name TEXT NOT NULL, geometry_type_name TEXT NOT NULL,
  srs_id INTEGER NOT NULL, z TINYINT NOT NULL, m TINYINT NOT NULL,
  CONSTRAINT pk_geom_cols PRIMARY KEY (table_name, column_name),
  CONSTRAINT fk_gc_tn FOREIGN KEY (table_name) REFERENCES gpkg_contents(table_name),
  CONSTRAINT fk_gc_srs FOREIGN KEY (srs_id) REFERENCES gpkg_spatial_ref_sys (srs_id));
INSERT OR IGNORE INTO gpkg_spatial_ref_sys VALUES
  ('Undefined cartesian SRS', -1, 'NONE', -1, 'undefined', 'undefined cartesian coordinate reference system'),
  ('Undefined geographic SRS', 0, 'NONE', 0, 'undefined', 'undefined geographic coordinate reference system'),
  ('WGS 84 geodetic', 4326, 'EPSG', 4326, 'GEOGCS["WGS 84",DATUM["WGS_1984",SPHEROID["WGS 84",6378137,'
   || '298.257223563,AUTHORITY["EPSG","7030"]],AUTHORITY["EPSG","6326"]],PRIMEM["Greenwich",0,'
   || 'AUTHORITY["EPSG","8901"]],UNIT["degree",0.0174532925199433,AUTHORITY["EPSG","9122"]],'
   || 'AXIS["Latitude",NORTH],AXIS["Longitude",EAST],AUTHORITY["EPSG","4326"]]', 'longitude/latitude');
"""


def connect(path: str) -> sqlite3.Connection:
    """An open GeoPackage (created when missing) with the required tables; autocommit off (use `with con`)."""
    con = sqlite3.connect(str(path), timeout=30.0)
    con.execute("PRAGMA foreign_keys = ON")
    if con.execute("PRAGMA application_id").fetchone()[0] != APPLICATION_ID:
        con.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        con.execute(f"PRAGMA user_version = {USER_VERSION}")
    con.executescript(_CORE_TABLES)
    con.commit()
    return con


def add_srs(con: sqlite3.Connection, wkt: Optional[str], epsg: Optional[int] = None) -> int:
    """The srs_id for a CRS given as WKT (and its EPSG code when it has one), inserted when new; -1 for none."""
    if not wkt and not epsg:
        return -1
    if epsg:
        row = con.execute("SELECT srs_id FROM gpkg_spatial_ref_sys WHERE organization = 'EPSG' AND "
                          "organization_coordsys_id = ?", (int(epsg),)).fetchone()
        if row:
            return int(row[0])
        srs_id, org, code, name = int(epsg), "EPSG", int(epsg), f"EPSG:{epsg}"
    else:
        row = con.execute("SELECT srs_id FROM gpkg_spatial_ref_sys WHERE definition = ?", (wkt,)).fetchone()
        if row:
            return int(row[0])
        top = con.execute("SELECT MAX(srs_id) FROM gpkg_spatial_ref_sys").fetchone()[0] or 0
        srs_id = max(CUSTOM_SRS_BASE, int(top) + 1)
        org, code, name = "NONE", srs_id, "custom"
    con.execute("INSERT INTO gpkg_spatial_ref_sys VALUES (?, ?, ?, ?, ?, ?)",
                (name, srs_id, org, code, wkt or "undefined", ""))
    return srs_id


def create_table(con: sqlite3.Connection, name: str, fields: Sequence[Tuple[str, type]],
                 geometry: Optional[str], srs_id: int = -1, unique: Sequence[str] = ()) -> None:
    """A feature table (`geometry` "POLYGON" or "LINESTRING", column `geom`) or, with `geometry` None, an
    attributes table; registered in gpkg_contents. Existing tables are kept."""
    if con.execute("SELECT 1 FROM gpkg_contents WHERE table_name = ?", (name,)).fetchone():
        return
    columns = ["fid INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL"]
    if geometry:
        columns.append(f"geom {geometry}")
    columns += [f'"{field}" {_SQL_TYPES[kind]}' + (" UNIQUE" if field in unique else "") for field, kind in fields]
    con.execute(f'CREATE TABLE "{name}" ({", ".join(columns)})')
    kind = "features" if geometry else "attributes"
    con.execute("INSERT INTO gpkg_contents (table_name, data_type, identifier, srs_id) VALUES (?, ?, ?, ?)",
                (name, kind, name, srs_id if geometry else None))
    if geometry:
        con.execute("INSERT INTO gpkg_geometry_columns VALUES (?, 'geom', ?, ?, 0, 0)", (name, geometry, srs_id))


def add_columns(con: sqlite3.Connection, name: str, fields: Sequence[Tuple[str, type]]) -> List[str]:
    """Add to table `name` those of `fields` it lacks (an output written by an earlier version), each empty
    (NULL) in the rows already there; the names added, in `fields` order."""
    have = {row[1] for row in con.execute(f'PRAGMA table_info("{name}")')}
    added = [(field, kind) for field, kind in fields if field not in have]
    for field, kind in added:
        con.execute(f'ALTER TABLE "{name}" ADD COLUMN "{field}" {_SQL_TYPES[kind]}')
    return [field for field, _ in added]


def geometry_blob(kind: str, points: Sequence[Point], srs_id: int) -> bytes:
    """GeoPackageBinary of a polygon (its ring closed here if open) or a line string, little-endian, with its
    xy envelope (spec 2.1.3: magic "GP", version 0, flags 0b011 = envelope [minx, maxx, miny, maxy] + LE)."""
    pts = [(float(x), float(y)) for x, y in points]
    if kind == "POLYGON" and pts and pts[0] != pts[-1]:
        pts.append(pts[0])
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    header = struct.pack("<2sBBi4d", b"GP", 0, 0b011, srs_id, min(xs), max(xs), min(ys), max(ys))
    coords = b"".join(struct.pack("<2d", x, y) for x, y in pts)
    if kind == "POLYGON":
        return header + struct.pack("<BIII", 1, 3, 1, len(pts)) + coords
    return header + struct.pack("<BII", 1, _WKB_TYPES[kind], len(pts)) + coords


def blob_points(blob: bytes) -> List[Point]:
    """The vertices of a blob written by `geometry_blob` (a polygon's outer ring, closed, or a line)."""
    flags = blob[3]
    envelope = {0: 0, 1: 32, 2: 48, 3: 48, 4: 64}[(flags >> 1) & 0b111]
    wkb = blob[8 + envelope:]
    order = "<" if wkb[0] == 1 else ">"
    (kind,) = struct.unpack(order + "I", wkb[1:5])
    offset = 5 + (4 if kind == 3 else 0)
    (count,) = struct.unpack(order + "I", wkb[offset:offset + 4])
    values = struct.unpack(order + f"{2 * count}d", wkb[offset + 4:offset + 4 + 16 * count])
    return list(zip(values[0::2], values[1::2]))


def update_extent(con: sqlite3.Connection, table: str, points: Iterable[Point]) -> None:
    """Grow the table's extent in gpkg_contents to cover `points` (QGIS reads it as the layer extent)."""
    pts = list(points)
    if not pts:
        return
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    con.execute(
        "UPDATE gpkg_contents SET min_x = min(coalesce(min_x, ?1), ?1), min_y = min(coalesce(min_y, ?2), ?2), "
        "max_x = max(coalesce(max_x, ?3), ?3), max_y = max(coalesce(max_y, ?4), ?4), "
        "last_change = strftime('%Y-%m-%dT%H:%M:%fZ','now') WHERE table_name = ?5",
        (min(xs), min(ys), max(xs), max(ys), table))
