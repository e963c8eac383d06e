"""The rows of the `objects` and `relations` layers of parsed answers, in map coordinates.

One definition of the fields and of what goes in them, for the command line's writer (geopandas) and the
plugin (QGIS features): each backend only turns coordinates into its own geometries.
"""
from __future__ import annotations

from typing import List, Tuple

from .answer import Answer, printable_text
from .georef import ImageFrame, Point, centroid

OBJECT_FIELDS = (("line", int), ("object_id", int), ("label", str), ("family", str), ("kind", str),
                 ("angle", float), ("flags", str), ("source", str))
RELATION_FIELDS = (("line", int), ("subject_id", int), ("predicate", str), ("object_id", int),
                   ("subject_label", str), ("object_label", str), ("family", str))

Row = Tuple[list, List[Point]]  # attribute values in field order, coordinates


def answer_rows(answer: Answer, frame: ImageFrame, line: int, family: str) -> Tuple[List[Row], List[Row]]:
    """(objects, relations) of one answer: an object's coordinates are the open ring of its corners, a
    relation's the line from its subject's centre to its object's (relations missing a box are left out). The
    texts (labels, sources, predicates) are `printable_text`: whatever engine or file the answer came from, a
    layer gets no control character (a NUL would cut a GeoPackage field short)."""
    rings, objects, relations = {}, [], []
    for obj in answer.objects:
        ring = frame.to_map(obj.polygon)
        rings[obj.id] = ring
        objects.append(([line, obj.id, printable_text(obj.label), family, obj.kind, obj.angle, ",".join(obj.flags),
                         printable_text(obj.source)], ring))
    for rel in answer.relations:
        if rel.subject in rings and rel.object in rings:
            values = [line, rel.subject, printable_text(rel.predicate), rel.object, printable_text(rel.subject_label),
                      printable_text(rel.object_label), family]
            relations.append((values, [centroid(rings[rel.subject]), centroid(rings[rel.object])]))
    return objects, relations
