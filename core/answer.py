"""What a parsed answer holds: text, objects in image pixels, relations between them, what was skipped."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Tuple

from .georef import Point

# Control characters (Unicode category Cc) but tab, line feed and carriage return: C0, DEL and C1. A NUL cuts a
# GeoPackage text field short (GDAL's strings end at it) and the others move a terminal's cursor or colours.
_CONTROL_CHARACTERS = {code: "\ufffd" for code in (*range(0x00, 0x20), *range(0x7F, 0xA0)) if chr(code) not in "\t\n\r"}


def printable_text(text: str) -> str:
    """`text` with each control character (NUL and the rest of C0 but tab, line feed and carriage return; DEL;
    C1) replaced by U+FFFD, the replacement character: one character for one, so character offsets into the text
    (an object's span) stay valid. For model answers on their way to a terminal or a GeoPackage field."""
    return text.translate(_CONTROL_CHARACTERS)


# Flags an object can carry.
DEGENERATE = "degenerate"  # zero width or height as written; widened to the smallest valid box
CLIPPED = "clipped"  # a value lay outside the image and was clipped to it
REORDERED = "reordered"  # corners came as x2 < x1 or y2 < y1
REPEATED = "repeated"  # same label and box as an earlier object (a repetition loop)


@dataclass
class RawBox:
    """A box as written by the model, in the family's own numbers."""

    values: Tuple[float, float, float, float]
    angle: Optional[float]  # degrees as written, None where the syntax has no angle
    layout: str  # "xyxy" or "cxcywh"
    span: Tuple[int, int]  # character range of the box in the answer text
    label: str = ""


@dataclass
class GeoObject:
    """One box of an answer, as a polygon in pixels of the image that was sent."""

    id: int
    label: str
    kind: str  # "box" (axis-aligned) or "rbox" (rotated)
    polygon: List[Point]  # 4 corners, not closed
    angle: float  # counter-clockwise turn on screen, degrees (0 for axis-aligned)
    span: Tuple[int, int]
    source: str  # the text of the box as written
    flags: Tuple[str, ...] = ()


@dataclass
class Relation:
    """subject --predicate--> object; ids refer to GeoObject.id, None where the answer gave no box."""

    subject: Optional[int]
    predicate: str
    object: Optional[int]
    subject_label: str = ""
    object_label: str = ""
    span: Tuple[int, int] = (0, 0)


@dataclass
class Skipped:
    """A fragment that looked like a box or relation but could not be read."""

    fragment: str
    span: Tuple[int, int]
    reason: str


@dataclass
class Answer:
    """One model answer read into geometry (`core.parsing.parse_answer`): the objects and relations it names,
    in pixels of the image that was sent, the fragments that could not be read, and notes about the reading."""

    text: str
    plain_text: str  # the text with box syntax removed, for display
    objects: List[GeoObject] = field(default_factory=list)
    relations: List[Relation] = field(default_factory=list)
    skipped: List[Skipped] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line of counts, e.g. "3 objects, 1 relations, 0 skipped fragments"."""
        return (
            f"{len(self.objects)} objects, {len(self.relations)} relations, "
            f"{len(self.skipped)} skipped fragments"
        )
