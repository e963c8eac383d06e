"""The GeoPackage that is both the output of a bulk run and its ledger (standard library only).

One definition, for the command line and the QGIS plugin alike, of:
- the schema: a `tiles` layer (one polygon per tile of the plan, its exact footprint, with `tile_id`, `row`,
  `col`, the window, `caption`, `answer`, `status` ok/failed/skipped, `error` and the provenance of the answer:
  `question`, `model`, `family`, `engine`, `time` (UTC, ISO 8601), `seconds`); for scene graphs also an
  `objects` layer (polygons) and a `relations` layer (subject centre -> object centre lines), each row with
  the provenance of the tile answer that gave it (`question`, `model`, `family`, `engine`, `time`, `seconds`,
  as its tile's row, joined on `tile_id`); and a
  `geovlm_plan` table holding the plan and its fingerprint;
- the plan fingerprint: a hash of what decides the answers (kind of run, raster size, geotransform, CRS and a
  digest of a sample of its pixels (core/raster_identity.py), tile plan, question, task, family, model, how
  pixels are obtained), not of how the run is spread (engines, concurrency), so a run started in QGIS can be
  finished by the command line on a server and back, while a new acquisition of the same grid, or the same
  pixels in another CRS, is another plan;
- the resume rule: a tile whose row says `ok` or `skipped` is done; a missing or `failed` tile is asked
  again. Each tile's row (with its objects and relations) is committed in one transaction as soon as its
  answer arrives, and `tile_id` is unique, so a killed run loses at most the tiles in flight and no tile is
  ever written twice.
"""
from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from dataclasses import dataclass, field
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Set, Tuple

from . import gpkg
from .dedupe import DEFAULT_THRESHOLD, Detection, edge_distance, find_duplicate
from .georef import GeoTransform, Point, centroid
from .tiling import Tile, TilePlan

SCHEMA_VERSION = 2  # 2: the plan names the raster's CRS and pixel digest
TILES, OBJECTS, RELATIONS, PLAN_TABLE = "tiles", "objects", "relations", "geovlm_plan"
FEATURES = "features"  # the captioned features geovlm:captionfeatures writes beside its ledger
OK, FAILED, SKIPPED = "ok", "failed", "skipped"
DONE_STATUSES = (OK, SKIPPED)

PROVENANCE_FIELDS = (("question", str), ("model", str), ("family", str), ("engine", str), ("time", str),
                     ("seconds", float))
TILE_FIELDS = (("tile_id", str), ("row", int), ("col", int), ("col_off", int), ("row_off", int), ("width", int),
               ("height", int), ("caption", str), ("answer", str), ("status", str), ("error", str),
               ("objects", int)) + PROVENANCE_FIELDS
OBJECT_FIELDS = (("object_id", str), ("tile_id", str), ("label", str), ("kind", str), ("angle", float),
                 ("flags", str), ("source", str), ("edge_distance", float), ("merged", int)) + PROVENANCE_FIELDS
RELATION_FIELDS = (("tile_id", str), ("subject_id", str), ("predicate", str), ("object_id", str),
                   ("subject_label", str), ("object_label", str)) + PROVENANCE_FIELDS
PLAN_FIELDS = (("fingerprint", str), ("plan", str), ("created", str), ("schema", int))


class LedgerError(Exception):
    """The output cannot serve as this run's ledger (another plan, not a GeoVLM output, unreadable)."""


@dataclass(frozen=True)
class RunPlan:
    """What decides the answers of a bulk run. `kind` is "caption" or "detect" (tiles of `tiles`), or
    "caption-features" (one window per feature, `windows`: ((tile id, col_off, row_off, width, height), ...)
    in the raster's pixels, a plan whose `tiles` is the raster itself); `source` "file" (the raster's own
    pixels) or "render" (a web layer rendered at the geotransform's resolution). `crs` is
    `raster_identity.crs_identity` of the raster's CRS, `pixels` its `raster_identity.pixel_digest` (of the
    whole file, whatever part the plan covers; "" for a rendered layer, whose pixels are the server's). `bands`
    are the 1-based bands read as red, green, blue (None: the reader's default, 1,2,3 or grey) and `keep_nodata`
    whether nodata-only tiles are asked rather than skipped."""

    kind: str
    tiles: TilePlan
    geotransform: GeoTransform
    question: str
    task: str
    family: str
    model: str
    source: str = "file"
    windows: Tuple[Tuple, ...] = ()
    crs: str = "none"
    pixels: str = ""
    bands: Optional[Tuple[int, int, int]] = None
    keep_nodata: bool = False

    def to_dict(self) -> Dict:
        """The plan as JSON-ready values (the ledger's plan table row; geotransform coefficients rounded in
        `_round`, the feature windows as a count and a digest), keys that keep their default left out."""
        gt = self.geotransform
        plan = {
            "schema": SCHEMA_VERSION, "kind": self.kind, "source": self.source,
            "width": self.tiles.width, "height": self.tiles.height,
            "geotransform": [_round(v) for v in (gt.a, gt.b, gt.c, gt.d, gt.e, gt.f)],
            "crs": self.crs, "pixels": self.pixels,
            "tile": self.tiles.tile, "overlap": self.tiles.overlap, "edge": self.tiles.edge,
            "question": self.question, "task": self.task, "family": self.family, "model": self.model,
        }
        # The bands read as red, green, blue and whether nodata-only tiles are asked change what is sent; recorded
        # only where they differ from the default, so a default run's plan reads as before.
        if self.bands is not None and tuple(self.bands) != (1, 2, 3):
            plan["bands"] = list(self.bands)
        if self.keep_nodata:
            plan["nodata_tiles"] = "asked"
        if self.windows:  # a digest: the plan table stays small however many features
            listed = json.dumps([list(w) for w in self.windows]).encode("utf-8")
            plan["windows"] = f"{len(self.windows)} windows, sha256 {hashlib.sha256(listed).hexdigest()[:16]}"
        return plan

    @property
    def fingerprint(self) -> str:
        """16 hex digits of the SHA-256 of `to_dict()` as sorted-key JSON: an output resumes only a run of the
        same fingerprint."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode("utf-8")
        return hashlib.sha256(blob).hexdigest()[:16]


_PLAN_NAMES = {"kind": "run", "width": "raster width", "height": "raster height", "geotransform": "geotransform",
               "crs": "CRS", "pixels": "pixels (sample digest)", "tile": "tile", "overlap": "overlap",
               "edge": "edge tiles", "question": "question", "task": "task", "family": "family", "model": "model",
               "source": "pixels from", "windows": "feature windows", "bands": "bands (red,green,blue)",
               "nodata_tiles": "nodata-only tiles"}
# How a plan without the key reads (keys recorded only where they differ from the default).
_PLAN_DEFAULTS = {"bands": "default", "nodata_tiles": "skipped"}


def plan_differences(theirs: Dict, ours: Dict) -> str:
    """What differs between a stored plan (`RunPlan.to_dict` of the run that made the output) and this run's,
    in one line: "tile 320 there, 256 now; CRS EPSG:3857 there, EPSG:32616 now". A plan of an earlier GeoVLM
    (another `schema`) is named as such, since its fields are not comparable."""
    if theirs.get("schema") != ours.get("schema"):
        return (f"made by another GeoVLM version (plan schema {theirs.get('schema')}, now {ours.get('schema')}), "
                "which did not record the raster's CRS and pixels")
    parts = []
    keys = [k for k in _PLAN_NAMES if k in theirs or k in ours] + sorted((set(theirs) | set(ours)) - set(_PLAN_NAMES))
    differing = {key for key in keys if theirs.get(key) != ours.get(key)}
    if differing & _AREA_KEYS and not differing & {"crs", "pixels"} and _same_grid(theirs, ours):
        # the same raster (its CRS and pixels), another part of it: an extent
        parts.append(f"extent {_plan_extent(theirs)} there, {_plan_extent(ours)} now")
        keys = [key for key in keys if key not in _AREA_KEYS]
    for key in keys:
        if theirs.get(key) != ours.get(key):
            there, now = (_shown(side.get(key, _PLAN_DEFAULTS.get(key))) for side in (theirs, ours))
            parts.append(f"{_PLAN_NAMES.get(key, key)} {there} there, {now} now")
    return "; ".join(parts)


_AREA_KEYS = {"width", "height", "geotransform"}  # what another part of the same raster (an extent) changes


def _same_grid(theirs: Dict, ours: Dict) -> bool:
    """Whether two plans' pixels are windows of one grid: geotransforms with the same pixel size and rotation
    whose corners lie a whole number of pixels apart (a sub-pixel shift is the raster georeferenced anew)."""
    try:
        a, b, c, d, e, f = theirs["geotransform"]
        if [a, b, d, e] != [ours["geotransform"][i] for i in (0, 1, 3, 4)]:
            return False
        col, row = GeoTransform(a, b, c, d, e, f).to_pixel(ours["geotransform"][2], ours["geotransform"][5])
    except (KeyError, IndexError, TypeError, ValueError):
        return False
    return abs(col - round(col)) < 1e-3 and abs(row - round(row)) < 1e-3  # the plan keeps 12 digits


def _plan_extent(plan: Dict) -> str:
    """The map rectangle a plan's pixels cover, as QGIS writes an extent: "xmin,xmax,ymin,ymax" (rotation
    included: the bounding rectangle of the four corners)."""
    a, b, c, d, e, f = plan["geotransform"]
    corners = [(a * col + b * row + c, d * col + e * row + f) for col in (0, plan["width"])
               for row in (0, plan["height"])]
    xs, ys = [x for x, _ in corners], [y for _, y in corners]
    return ",".join(f"{v:.12g}" for v in (min(xs), max(xs), min(ys), max(ys)))


def _shown(value) -> str:
    """A plan value as a person reads it: strings quoted when they are sentences, lists as a,b,c, none."""
    if value is None or value == "":
        return "none"
    if isinstance(value, list):
        return ",".join(f"{v:.12g}" if isinstance(v, float) else str(v) for v in value)
    if isinstance(value, str) and " " in value and not value.startswith("+"):
        return repr(value)
    return str(value)


def _round(value: float) -> float:
    """Geotransform coefficients to 12 significant digits: GDAL's and QGIS's readings of a file agree."""
    return float(f"{value:.12g}")


def tile_footprint(tile: Tile, gt: GeoTransform) -> List[Point]:
    """The tile's four corners on the map (top-left, top-right, bottom-right, bottom-left), rotation included."""
    c0, r0, c1, r1 = tile.col_off, tile.row_off, tile.col_off + tile.width, tile.row_off + tile.height
    return [gt.to_map(c0, r0), gt.to_map(c1, r0), gt.to_map(c1, r1), gt.to_map(c0, r1)]


@dataclass
class TileResult:
    """What one tile gave: its status, the answer's text (plain and raw), an error, provenance, and for
    scene graphs its objects [(local id, label, kind, angle, flags, source, map ring)] and relations
    [(subject local id, predicate, object local id, subject label, object label)]."""

    tile: Tile
    status: str
    caption: str = ""
    answer: str = ""
    error: str = ""
    engine: str = ""
    seconds: Optional[float] = None
    objects: List[Tuple] = field(default_factory=list)
    relations: List[Tuple] = field(default_factory=list)


def _read_only_rows(path: str, sql: str) -> Optional[List[Tuple]]:
    """The rows `sql` reads from the SQLite file at `path`, opened read-only; None for a file that is not a
    database or lacks the table."""
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            return con.execute(sql).fetchall()
        finally:
            con.close()
    except sqlite3.DatabaseError:
        return None


def _other_layers(path: str) -> List[str]:
    """The tables a GeoPackage at `path` lists in gpkg_contents besides a bulk run's own (empty for a file that is
    not a readable GeoPackage)."""
    names = [r[0] for r in _read_only_rows(path, "SELECT table_name FROM gpkg_contents") or []]
    return sorted(n for n in names if n not in (TILES, OBJECTS, RELATIONS, PLAN_TABLE, FEATURES))


SQLITE_HEADER = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite database (sqlite.org/fileformat.html)


def output_problem(path: str) -> Optional[str]:
    """One line saying why `path` can never be a bulk run's output, `--overwrite` or not, or None: a folder, an
    existing file that is not an SQLite database at all (a text file named .gpkg: `--overwrite` would delete
    it; a damaged earlier output still has SQLite's header and may be replaced), or a GeoPackage holding layers
    other than a bulk run's (the user's own: never written over). Checked before any engine is asked or started
    (`geovlm caption`/`detect`, the QGIS algorithms' parameter check) and by `Ledger`."""
    if os.path.isdir(path):
        return f"{path} is a folder: give a .gpkg file as the output"
    if os.path.isfile(path) and os.path.getsize(path) > 0:
        try:
            with open(path, "rb") as f:
                header = f.read(len(SQLITE_HEADER))
        except OSError as exc:
            return f"{path} exists and cannot be read ({exc.strerror}): choose another output"
        if header != SQLITE_HEADER:
            return f"{path} exists and is not a GeoPackage: choose another output (it is left as it is)"
        others = _other_layers(path)
        if others:
            return (f"{path} holds other layers ({', '.join(others)}), not only a GeoVLM bulk run's; choose another "
                    "output")
    return None


class Ledger:
    """A bulk run's output GeoPackage at `path`, opened for `plan`.

    A new file is created with the plan. An existing file made by the same plan is resumed; one made by
    another plan, or that is not a GeoVLM output, raises `LedgerError` in one line naming what differs and
    `overwrite_flag` (how the caller's user overwrites: "--overwrite" on the command line), unless
    `overwrite` (then it is deleted first). A GeoPackage holding layers other than a bulk run's is never
    deleted: LedgerError naming them, overwrite or not; nor is a folder or a file that is not a database
    (`output_problem`). A missing parent folder is made, as `geovlm parse --out` makes it. `crs_wkt`/`epsg` give
    the layers' CRS. Use from one thread.
    """

    def __init__(self, path: str, plan: RunPlan, crs_wkt: Optional[str] = None, epsg: Optional[int] = None,
                 overwrite: bool = False, merge_threshold: float = DEFAULT_THRESHOLD,
                 overwrite_flag: str = "--overwrite"):
        self.path = str(path)
        self.plan = plan
        self.overwrite_flag = overwrite_flag
        self.merge_threshold = merge_threshold
        problem = output_problem(self.path)  # a user's own layers among them: never written over, `overwrite` or not
        if problem:
            raise LedgerError(problem)
        if overwrite and os.path.exists(self.path):
            os.remove(self.path)
        existed = os.path.exists(self.path) and os.path.getsize(self.path) > 0
        if existed:
            self._check_existing()
        try:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        except OSError as exc:
            raise LedgerError(f"cannot make the folder of {self.path}: {exc.strerror}") from None
        present = os.path.exists(self.path)
        try:
            self.con = gpkg.connect(self.path)
        except sqlite3.DatabaseError as exc:
            if not present:  # nothing there: the place cannot hold a file (read-only, /proc...)
                raise LedgerError(f"cannot create {self.path}: {exc}; choose another output") from None
            raise LedgerError(f"{self.path} is not a GeoPackage ({exc}); choose another output") from None
        # Write-ahead log, synced at checkpoints: a commit costs no fsync and survives a killed process
        # (SQLite's WAL with synchronous=NORMAL is durable against application crashes); close() checkpoints
        # and returns the file to the rollback journal, so it is a plain single-file GeoPackage again.
        self.con.execute("PRAGMA journal_mode = WAL")
        self.con.execute("PRAGMA synchronous = NORMAL")
        with self.con:
            srs = gpkg.add_srs(self.con, crs_wkt, epsg)
            gpkg.create_table(self.con, TILES, TILE_FIELDS, "POLYGON", srs, unique=("tile_id",))
            if plan.kind == "detect":
                gpkg.create_table(self.con, OBJECTS, OBJECT_FIELDS, "POLYGON", srs, unique=("object_id",))
                gpkg.create_table(self.con, RELATIONS, RELATION_FIELDS, "LINESTRING", srs)
                _add_relation_provenance(self.con)
            gpkg.create_table(self.con, PLAN_TABLE, PLAN_FIELDS, None)
            if not existed:
                self.con.execute("INSERT INTO geovlm_plan (fingerprint, plan, created, schema) VALUES (?,?,?,?)",
                                 (plan.fingerprint, json.dumps(plan.to_dict(), sort_keys=True), _now(),
                                  SCHEMA_VERSION))
        self.srs_id = self.con.execute("SELECT srs_id FROM gpkg_geometry_columns WHERE table_name = ?",
                                       (TILES,)).fetchone()[0]
        self.resumed = existed

    def _check_existing(self) -> None:
        row = (_read_only_rows(self.path, "SELECT fingerprint, plan FROM geovlm_plan LIMIT 1") or [None])[0]
        if row is None:
            raise LedgerError(f"{self.path} exists and is not the output of a GeoVLM bulk run; choose another "
                              f"output, or replace it ({self.overwrite_flag})")
        if row[0] != self.plan.fingerprint:
            diff = plan_differences(json.loads(row[1]), self.plan.to_dict())
            raise LedgerError(f"{self.path} holds a run of another plan ({diff}); "
                              "resume it with the same settings and raster, choose another output, or replace it "
                              f"({self.overwrite_flag})")

    # ------------------------------------------------------------ reading

    def done_ids(self) -> Set[str]:
        """Ids of tiles whose answer (or skip) is committed."""
        rows = self.con.execute("SELECT tile_id FROM tiles WHERE status IN ('ok', 'skipped')")
        return {r[0] for r in rows}

    def pending(self, tiles: Iterable[Tile]) -> Iterator[Tile]:
        """The tiles of `tiles` still to ask (missing or failed), in their order, as they are reached: `tiles` is
        walked lazily (a plan's millions of tiles are never listed); the ids done are read once, here."""
        done = self.done_ids()
        return (t for t in tiles if t.id not in done)

    def results(self) -> Dict[str, Tuple[str, str, str]]:
        """{tile_id: (status, caption, model)} of every committed tile."""
        rows = self.con.execute("SELECT tile_id, status, caption, model FROM tiles")
        return {r[0]: (r[1], r[2], r[3]) for r in rows}

    def counts(self) -> Dict[str, int]:
        """{status: number of tiles}."""
        return dict(self.con.execute("SELECT status, COUNT(*) FROM tiles GROUP BY status").fetchall())

    # ------------------------------------------------------------ writing

    def record(self, result: TileResult, question: str, model: str, family: str) -> bool:
        """Commit one tile's row (inserted, or replacing its failed row) with its objects and relations; False
        (and nothing written) when the tile is already done (another run on the same output was faster)."""
        tile, gt = result.tile, self.plan.geotransform
        ring = tile_footprint(tile, gt)
        stamp = _now()
        values = [tile.id, tile.row, tile.col, tile.col_off, tile.row_off, tile.width, tile.height,
                  result.caption, result.answer, result.status, result.error, len(result.objects),
                  question, model, family, result.engine, stamp, result.seconds]
        with self.con:
            self.con.execute("BEGIN IMMEDIATE")  # the write lock first: no other run's commit slips in between
            previous = self.con.execute("SELECT status FROM tiles WHERE tile_id = ?", (tile.id,)).fetchone()
            if previous is not None and previous[0] in DONE_STATUSES:
                return False  # another run on the same output committed it meanwhile: keep that one
            if previous is not None:
                self.con.execute("DELETE FROM tiles WHERE tile_id = ?", (tile.id,))
            self.con.execute(_insert(TILES, TILE_FIELDS), [gpkg.geometry_blob("POLYGON", ring, self.srs_id)] + values)
            gpkg.update_extent(self.con, TILES, ring)
            if self.plan.kind == "detect" and result.status == OK:
                self._add_graph(result, ring, [question, model, family, result.engine, stamp, result.seconds])
        return True

    def _neighbour_detections(self, tile: Tile) -> List[Detection]:
        """Kept objects of the done tiles whose windows overlap this tile's."""
        rows = self.con.execute(
            "SELECT o.object_id, o.label, o.geom, o.edge_distance FROM objects o JOIN tiles t "
            "ON o.tile_id = t.tile_id WHERE t.col_off < ? AND t.col_off + t.width > ? AND t.row_off < ? "
            "AND t.row_off + t.height > ? AND t.tile_id != ?",
            (tile.col_off + tile.width, tile.col_off, tile.row_off + tile.height, tile.row_off, tile.id))
        return [Detection(oid, label, gpkg.blob_points(blob)[:-1], dist) for oid, label, blob, dist in rows]

    def _add_graph(self, result: TileResult, tile_ring: Sequence[Point], provenance: list) -> None:
        """Insert a tile's objects, merging each with a duplicate from an overlapping tile, then its
        relations with their ends pointing at the kept objects."""
        tile = result.tile
        neighbours = self._neighbour_detections(tile)
        local_to_global: Dict[int, str] = {}
        for local_id, label, kind, angle, flags, source, ring in result.objects:
            det = Detection(f"{tile.id}/{local_id}", label, list(ring), edge_distance(ring, tile_ring))
            other = find_duplicate(det, neighbours, self.merge_threshold)
            if other is not None and det.edge_distance <= other.edge_distance:
                local_to_global[local_id] = other.object_id  # the neighbour's copy stays
                self.con.execute("UPDATE objects SET merged = merged + 1 WHERE object_id = ?",
                                 (other.object_id,))
                continue
            merged = 0
            if other is not None:  # this copy is farther from its tile's edge: it replaces the neighbour's
                merged = 1 + self.con.execute("SELECT merged FROM objects WHERE object_id = ?",
                                              (other.object_id,)).fetchone()[0]
                self.con.execute("DELETE FROM objects WHERE object_id = ?", (other.object_id,))
                neighbours.remove(other)
                self._repoint(other.object_id, det.object_id, centroid(det.polygon))
            self.con.execute(_insert(OBJECTS, OBJECT_FIELDS),
                             [gpkg.geometry_blob("POLYGON", ring, self.srs_id), det.object_id, tile.id, label,
                              kind, angle, flags, source, det.edge_distance, merged] + provenance)
            gpkg.update_extent(self.con, OBJECTS, ring)
            local_to_global[local_id] = det.object_id
            neighbours.append(det)
        for subject, predicate, obj, subject_label, object_label in result.relations:
            if subject not in local_to_global or obj not in local_to_global:
                continue
            a, b = self._centre(local_to_global[subject]), self._centre(local_to_global[obj])
            self.con.execute(_insert(RELATIONS, RELATION_FIELDS),
                             [gpkg.geometry_blob("LINESTRING", [a, b], self.srs_id), tile.id,
                              local_to_global[subject], predicate, local_to_global[obj], subject_label,
                              object_label] + provenance)
            gpkg.update_extent(self.con, RELATIONS, [a, b])

    def _centre(self, object_id: str) -> Point:
        blob = self.con.execute("SELECT geom FROM objects WHERE object_id = ?", (object_id,)).fetchone()[0]
        return centroid(gpkg.blob_points(blob)[:-1])

    def _repoint(self, old: str, new: str, new_centre: Point) -> None:
        """Relations that pointed at a merged-away object now point at the kept one (lines redrawn)."""
        rows = self.con.execute("SELECT fid, subject_id, object_id FROM relations "
                                "WHERE subject_id = ? OR object_id = ?", (old, old)).fetchall()
        for fid, subject, obj in rows:
            subject, obj = (new if subject == old else subject), (new if obj == old else obj)
            a = new_centre if subject == new else self._centre(subject)
            b = new_centre if obj == new else self._centre(obj)
            self.con.execute("UPDATE relations SET subject_id = ?, object_id = ?, geom = ? WHERE fid = ?",
                             (subject, obj, gpkg.geometry_blob("LINESTRING", [a, b], self.srs_id), fid))

    def close(self) -> None:
        """Leave WAL mode (so the GeoPackage is one file again, unless a reader still holds it) and close."""
        try:
            self.con.execute("PRAGMA journal_mode = DELETE")
        except sqlite3.OperationalError:  # another connection (a reader) still has the file open
            pass
        self.con.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _add_relation_provenance(con: sqlite3.Connection) -> None:
    """Give the `relations` of an output written before relations carried provenance (they had `family`
    only) the PROVENANCE_FIELDS columns, filled from their tile's row (a relation is stated by its tile's
    answer), so a resumed run writes rows alike and every relation says where it came from."""
    added = gpkg.add_columns(con, RELATIONS, RELATION_FIELDS)
    if added:
        names = ", ".join(f'"{name}"' for name in added)  # names from PROVENANCE_FIELDS only
        con.execute(f"UPDATE relations SET ({names}) = (SELECT {names} FROM tiles "  # nosec B608  # constant names
                    "WHERE tiles.tile_id = relations.tile_id)")


def _insert(table: str, fields) -> str:
    """INSERT of a geometry and `fields` into `table`: identifiers from this module's constants only."""
    names = ", ".join(f'"{name}"' for name in ["geom"] + [name for name, _ in fields])
    return f"INSERT INTO {table} ({names}) VALUES ({','.join('?' * (len(fields) + 1))})"  # nosec B608  # constant names


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
