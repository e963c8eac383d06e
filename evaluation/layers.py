"""Scoring GeoVLM's own layers: answers (what `geovlm parse` / `ask` write) against a layer of reference boxes
or captions, matched by location. For a user's own labelled data, where no benchmark file exists.

Matching rules (both layers in one CRS: the references are reprojected to the answers' CRS when both have one,
by `cli.reprojection.reprojected`, as `geovlm parse --to-crs` reprojects):
- boxes (`detection`): every answer polygon is one prediction; it is correct when its IoU with at least one
  reference polygon is >= the threshold (0.5), the rule of `evaluation.detection` (EarthDial's precision@0.5)
  with the whole layer as one question. `recall` is the share of reference polygons that some answer polygon
  reaches at that IoU. Labels are not compared.
- texts (`region-caption`, `caption`, `vqa`, `classification`): the answers are a bulk run's `tiles` layer
  (`geovlm caption`; its `caption` field, tiles whose `status` is not "ok" left out) or any layer with a text
  field (`answer`); each reference feature is paired with the answer
  feature whose geometry overlaps it most (IoU), one answer per reference, greedily from the highest IoU down (as
  COCO matches detections), and only at IoU >= the threshold; the pairs are then scored by the task's metric.
  References left without an answer are counted (`unmatched_references`) and not scored. For `vqa` and
  `classification` the values are checked as in JSON lines (`cell_value`, then `records.short_text`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple


class LayerError(ValueError):
    """A layer that cannot be read or scored; the message says which and why."""


@dataclass
class Features:
    """The polygons of one layer and its attribute table (a pandas DataFrame indexed by the layer's feature ids,
    GDAL's FID: what QGIS shows as `fid` for a GeoPackage)."""

    geometries: list
    table: object
    crs: object
    path: str
    beyond: str = ""  # reprojected: `cli.reprojection.beyond_area_of_use`'s line, "" when within the CRS's area


def read_features(path, layer: Optional[str] = None, default_layer: Optional[str] = None,
                  to_crs=None) -> Features:
    """A layer's features (pyogrio): `layer`, else `default_layer` when the file has it, else its first layer;
    reprojected to `to_crs` when given and the layer has a CRS, as `geovlm parse --to-crs` reprojects
    (`cli.reprojection.reprojected`: edges bent as the projection bends them, a box over the antimeridian kept
    whole), and `beyond` then says (as `parse --to-crs` warns) when features reach latitudes outside `to_crs`'s
    area of use. Raises LayerError."""
    import geopandas as gpd
    import pyogrio

    try:
        names = [row[0] for row in pyogrio.list_layers(str(path))]
    except Exception as exc:  # pyogrio raises DataSourceError and others for unreadable files
        reason = str(exc).split("; It might help", 1)[0]  # GDAL's hint to name a driver ("CSV:path") misleads
        if not Path(path).exists():
            raise LayerError(f"cannot open {path}: no such file") from None
        raise LayerError(f"cannot open {path} as a layer ({reason}): --reference scores a layer of answers against a "
                         "layer of references (GeoPackage, GeoJSON, ...) matched by location; answers saved with "
                         "their references in JSON lines are scored without --reference") from None
    if layer is not None and layer not in names:
        raise LayerError(f"{path} has no layer {layer!r} (it has {', '.join(names)})")
    name = layer or (default_layer if default_layer in names else (names[0] if names else None))
    if name is None:
        raise LayerError(f"{path} has no layers")
    try:
        frame = gpd.read_file(str(path), layer=name, engine="pyogrio", fid_as_index=True)
    except Exception as exc:
        raise LayerError(f"cannot read {path} layer {name}: {exc}") from None
    # Features without a geometry (null or empty) have no place to be matched at: left out before reprojecting,
    # which took an empty one for a feature the CRS cannot show and refused the layer. Tested one by one:
    # GeoSeries.notna() warns (a multi-line UserWarning) on a series that holds empty geometries.
    frame = frame[[geometry is not None and not geometry.is_empty for geometry in frame.geometry]]
    beyond = ""
    if to_crs is not None and frame.crs is not None and frame.crs != to_crs:
        # what `parse --to-crs` does: bent edges, antimeridian whole, a warning past the CRS's area of use
        from ..cli.reprojection import beyond_area_of_use, reprojected

        try:
            beyond = beyond_area_of_use([frame], to_crs)
            frame = reprojected(frame, to_crs)
        except ValueError as exc:
            raise LayerError(f"cannot take {path} layer {name} to the answers' CRS: {exc}") from None
    return Features(list(frame.geometry), frame, frame.crs, f"{path}|layername={name}", beyond)


def answered(features: Features) -> Features:
    """Only the features that hold an answer: a bulk run's `tiles` layer (core/ledger.py) also lists failed and
    skipped tiles (`status` other than "ok"), which have none."""
    table = features.table
    if "status" not in table.columns:
        return features
    keep = (table["status"] == "ok").to_numpy()
    table = table[keep]
    return Features(list(table.geometry), table, features.crs, features.path)


def cell_value(value):
    """A value of a layer's attribute table as JSON lines would hold it, for the checks of
    `evaluation.records.short_text`: None for a null (pandas reads it as NaN), numpy scalars as Python ones, and a
    whole float as an int (pandas reads an integer field that has nulls as floats, so 3 would come back as 3.0)."""
    import numpy as np

    if isinstance(value, np.generic):
        value = value.item()  # numpy scalar -> int, float, bool
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if value.is_integer():
            return int(value)
    return value


def _iou(a, b) -> float:
    if not (a.is_valid and b.is_valid):
        return 0.0
    union = a.union(b).area
    return a.intersection(b).area / union if union > 0 else 0.0


def overlapping_pairs(answers: Sequence, references: Sequence) -> List[Tuple[float, int, int]]:
    """(IoU, answer index, reference index) for every answer/reference pair whose geometries intersect
    (shapely STRtree), IoU > 0."""
    from shapely import STRtree

    if not answers or not references:
        return []
    tree = STRtree(list(references))
    out = []
    for i, geom in enumerate(answers):
        for j in tree.query(geom, predicate="intersects"):
            iou = _iou(geom, references[int(j)])
            if iou > 0:
                out.append((iou, i, int(j)))
    return out


def box_scores(answers: Sequence, references: Sequence, threshold: float) -> Dict[str, float]:
    """{overall (precision@threshold), recall, predicted_boxes, reference_boxes} for two lists of polygons."""
    hits = [(i, j) for iou, i, j in overlapping_pairs(answers, references) if iou >= threshold]
    correct = len({i for i, _ in hits})
    found = len({j for _, j in hits})
    return {
        "overall": correct / len(answers) if answers else 0.0,
        "recall": found / len(references) if references else 0.0,
        "predicted_boxes": len(answers),
        "reference_boxes": len(references),
    }


def match_one_to_one(answers: Sequence, references: Sequence, threshold: float) -> List[Tuple[int, int]]:
    """(answer index, reference index) pairs: greedy by IoU, highest first, each feature used once, IoU >=
    `threshold`; sorted by reference index."""
    used_a, used_r, pairs = set(), set(), []
    for iou, i, j in sorted(overlapping_pairs(answers, references), key=lambda t: (-t[0], t[1], t[2])):
        if iou < threshold or i in used_a or j in used_r:
            continue
        used_a.add(i)
        used_r.add(j)
        pairs.append((i, j))
    return sorted(pairs, key=lambda p: p[1])
