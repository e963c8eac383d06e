"""Reading answers with their references: JSON lines, one object a line, as the models' evaluation scripts write
them (EarthDial's `src/earthdial/eval/*/results/*.jsonl`, GeoChat's and SkySenseGPT's answer files)."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

from ..core.answer_files import one_json_value, read_text, records_of, split_lines, wrapped_records_line


class RecordError(ValueError):
    """A file or line that cannot be read as answers with references; the message names the file and line."""


def read_records(path, field: str = "answer") -> Iterator[Tuple[int, dict]]:
    """(line number from 1, the JSON object) for every non-empty line of a JSON-lines file; for a file that is
    one JSON array of objects written over several lines (a pretty-printed results file, `json.dump(results, f,
    indent=...)`), or one object around the records ({"results": [...]}: `core.answer_files.records_of`, which
    tells them by the answer `field`), (the element's number from 1, the object), as `geovlm parse` reads it.

    A UTF-8 byte-order mark is accepted. Raises RecordError for an unreadable file or a line (element) that is
    not a JSON object."""
    path = Path(path)
    try:
        text = read_text(path)
    except ValueError as exc:  # a folder, an unreadable file, or one that is not text (an image given by mistake)
        raise RecordError(str(exc)) from None
    lines = split_lines(text)  # "\n" only: JSON strings may hold U+2028
    whole = one_json_value(text, lines)
    if whole is None:
        whole = wrapped_records_line(lines, field)
    if whole is not None:
        for number, record in enumerate(records_of(whole, field)[0], start=1):
            if not isinstance(record, dict):
                raise RecordError(f"{path}: element {number}: not a JSON object (expected an array of objects)")
            yield number, record
        return
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            raise RecordError(f"{path}:{number}: not a JSON object (expected JSON lines)") from None
        if not isinstance(record, dict):
            raise RecordError(f"{path}:{number}: not a JSON object (expected JSON lines)")
        yield number, record


def text_of(value) -> str:
    """A field's value as text ('' for a missing or null value, a NaN of a layer's table included); a JSON array
    or object as JSON (a Qwen2.5-VL answer saved parsed, `[{"bbox_2d": [...], "label": ...}]`, reads in the
    family's JSON syntax, as a reference saved so is read; Python's repr of it, with single quotes, read as no
    box)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False)
    return value if isinstance(value, str) else str(value)


_CAPTION_N = re.compile(r"^caption(\d+)$")


def reference_texts(record: dict, fields: Optional[Sequence[str]], defaults: Sequence[str]) -> Optional[List[str]]:
    """Reference texts of one record, None when it has none.

    With `fields` (what the user named), the values of those fields, in that order. Without, the fields
    `caption0`, `caption1`, ... in number order when the record has them (EarthDial's and the RS captioning data
    sets' layout), else the first of `defaults` it holds. A field may hold one text or a list of texts."""
    if fields:
        names = [name for name in fields if name in record]
    else:
        numbered = sorted((int(m.group(1)), key) for key in record for m in [_CAPTION_N.match(key)] if m)
        names = [key for _, key in numbered] or [name for name in defaults if name in record][:1]
    if not names:
        return None
    texts: List[str] = []
    for name in names:
        value = record[name]
        texts += [text_of(v) for v in value] if isinstance(value, list) else [text_of(value)]
    return texts


def short_text(value, where: str, what: str) -> str:
    """A short answer or reference (VQA, classification) as text: a JSON string as written, an integer as its
    digits (a count, as RSVQA's answers are). Raises RecordError "`where`: `what` is ..." for anything else
    (null, a list, an object, a fraction, true/false): EarthDial's scorer reads only strings, and scoring a
    value's Python form ("['yes', 'no']", "None") would give a number that means nothing."""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    kind = {type(None): "null", list: "a list", dict: "an object", bool: "true/false", float: "a number"}
    raise RecordError(f"{where}: {what} is {kind.get(type(value), type(value).__name__)}, not a text")


def short_references(record: dict, fields: Optional[Sequence[str]], defaults: Sequence[str],
                     where: str) -> Optional[List[str]]:
    """The reference answers of one VQA/classification record, None when it has none: the values of `fields`
    (what the user named) it holds, else of the first of `defaults` it holds. A field holds one text, or a list
    of texts when it is the only one (several annotators' answers: VQAv2's layout). Raises RecordError (naming
    `where`, "file:line") for a value that is not a text (see `short_text`) or an empty list."""
    names = [name for name in fields if name in record] if fields else [n for n in defaults if n in record][:1]
    if not names:
        return None
    if len(names) == 1 and isinstance(record[names[0]], list):
        values = record[names[0]]
        if not values:
            raise RecordError(f"{where}: reference field {names[0]!r} is an empty list")
        return [short_text(v, where, f"an answer in reference field {names[0]!r}") for v in values]
    return [short_text(record[name], where, f"reference field {name!r}") for name in names]
