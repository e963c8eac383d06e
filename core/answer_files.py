"""Saved answers on disk: JSON lines (the answer in one field) or plain text, one answer a line.

Files are read as people save them: UTF-8 with or without a byte-order mark, LF or CRLF line ends. Lines end
at "\n" only (JSON lines' definition, jsonlines.org): `str.splitlines` would also split at U+2028, U+0085
and other separators, which JSON strings may hold unescaped.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

MAX_BAD_LINES = 10  # bad lines named one by one (`geovlm parse`, Parse saved answers); the rest are counted


def read_answers(path, field: str = "answer", question_field: str = "question",
                 bad: Optional[List[str]] = None) -> Iterator[Tuple[int, str, str]]:
    """(line number from 1, answer text, question text or ''); JSON lines when any line parses as a JSON object
    (a broken first line does not turn a JSON-lines file into plain text; a UTF-8 byte-order mark is ignored).
    A file that is one JSON array of records written over several lines (pretty-printed) gives its records, the
    number being the element's from 1 ("FILE: element N: no field 'answer'"); one pretty-printed object, one
    record (each of their lines is not an answer); one object around the records, on one line or several
    ({"results": [...]}, {"0": {...}, ...}: `records_of`), those records.

    A line that is not readable as such ("FILE:N: not a JSON object ...", "FILE:N: no field 'answer'", "FILE:N:
    field 'answer' is null, not an answer text": a number, true/false, a list or an object neither) raises
    ValueError with the file and line, or, when a list `bad` is given, is appended to it as that one-line
    message and skipped, so that every bad line can be reported at once and the good ones used. A file that is
    not text (NUL bytes, or bytes that are not UTF-8: an image or other binary file given by mistake) raises
    ValueError in one line either way.
    """
    text = read_text(path)
    lines = split_lines(text)
    whole = one_json_value(text, lines)
    if whole is None:
        whole = wrapped_records_line(lines, field)
    if whole is not None:  # one JSON document: an array of records, one record, or an object around records
        records, where = records_of(whole, field)
        entries = list(enumerate(records, start=1))
        expected = "a JSON array" if where == "element" else "one JSON object"
    else:  # each line: its text, read below as JSON or taken as a plain-text answer
        entries = [(number, line) for number, line in enumerate(lines, start=1) if line.strip()]
        where, expected = "", "JSON lines"
    is_jsonl = whole is not None or any(_is_json_object(ln) for ln in lines if ln.lstrip().startswith("{"))
    for number, entry in entries:
        if not is_jsonl:
            yield number, entry, ""
            continue
        try:
            record = entry if whole is not None else json.loads(entry)
            problem = None if isinstance(record, dict) else f"not a JSON object (the file looks like {expected})"
        except ValueError:
            problem = f"not a JSON object (the file looks like {expected})"
        if problem is None and field not in record:
            problem = f"no field {field!r}"
        if problem is None and not isinstance(record[field], str):
            problem = f"field {field!r} is {_kind_of(record[field])}, not an answer text"
        if problem is not None:
            message = f"{path}: {where} {number}: {problem}" if where else f"{path}:{number}: {problem}"
            if bad is None:
                raise ValueError(message)
            bad.append(message)
            continue
        question = record.get(question_field)
        yield number, record[field], "" if question is None else str(question)


def _kind_of(value) -> str:
    """What a JSON value that is not a string is, in a message ("null", "a number", ...)."""
    kinds = {type(None): "null", bool: "true/false", int: "a number", float: "a number", list: "a list",
             dict: "an object"}
    return kinds.get(type(value), type(value).__name__)


def read_text(path) -> str:
    """The text of a saved file (UTF-8, a byte-order mark dropped; UTF-16 with its byte-order mark). Raises
    ValueError in one line for a folder, a file that cannot be read, and a file that is not text (NUL bytes, or
    bytes that are not UTF-8)."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder: give a file of saved answers (JSON lines or plain text)")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    return _text_of(path, data)


def _text_of(path: Path, data: bytes) -> str:
    """`data` decoded as UTF-8 (a byte-order mark dropped), or as UTF-16 where it begins with UTF-16's byte-order
    mark (what Windows PowerShell 5's `>` and Notepad's "Unicode" write); ValueError in one line when it is not
    text."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError as exc:
            raise ValueError(f"{path} is not text in UTF-16, which its first bytes announce (byte {exc.start}): "
                             "give saved answers as JSON lines or plain text in UTF-8, one answer a line") from None
    nul = data.find(b"\x00")
    if nul >= 0:
        raise ValueError(f"{path} is not text (it contains NUL bytes, first at byte {nul}): give saved answers "
                         "as JSON lines or plain text, one answer a line")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path} is not text in UTF-8 (byte {exc.start} is 0x{data[exc.start]:02x}): give saved "
                         "answers as JSON lines or plain text in UTF-8, one answer a line") from None


def one_json_value(text: str, lines: List[str]):
    """The file's one JSON value when the whole file is a single JSON array or object written over several lines
    (a pretty-printed results file, as `json.dump(results, f, indent=...)` writes it), else None (JSON lines,
    plain text, or a one-line value, which the line-by-line reading takes)."""
    if sum(1 for line in lines if line.strip()) < 2 or text.lstrip()[:1] not in "[{":
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, (list, dict)) else None


def records_of(value, field: str) -> Tuple[list, str]:
    """(records, what each is called in messages) of a file that is one JSON value (`one_json_value`): an array
    as it is ("element"); an object holding `field`, one record ("record"); an object around the records, as
    scripts save results, each record an "element": {"results": [records]} (its one array of objects, some of
    which hold `field`) or {"0": record, "1": record, ...} (every value an object holding `field`: pandas'
    `to_json(orient="index")`). Any other object is one record, which then lacks `field`."""
    if isinstance(value, list):
        return value, "element"
    if field in value:
        return [value], "record"
    arrays = [v for v in value.values() if isinstance(v, list) and v and all(isinstance(r, dict) for r in v)]
    if len(arrays) == 1 and any(field in r for r in arrays[0]):
        return arrays[0], "element"
    if value and all(isinstance(v, dict) and field in v for v in value.values()):
        return list(value.values()), "element"
    return [value], "record"


def wrapped_records_line(lines: List[str], field: str):
    """The object of a file of one line that is one JSON object around records (`records_of`: it lacks `field`
    and holds records that have it), which JSON lines would read as one record without the field; else None."""
    filled = [line for line in lines if line.strip()]
    if len(filled) != 1 or not filled[0].lstrip().startswith("{"):
        return None
    try:
        value = json.loads(filled[0])
    except ValueError:
        return None
    return value if isinstance(value, dict) and records_of(value, field)[1] == "element" else None


def _is_json_object(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def split_lines(text: str) -> List[str]:
    """The lines of a saved file: split at "\n" only, a "\r" before it dropped (CRLF files). Not
    `str.splitlines`, which also splits at U+2028, U+2029, U+0085 and other separators that a JSON string may
    hold unescaped (JSON lines: jsonlines.org; RFC 8259 section 7 escapes only controls below U+0020)."""
    return [line[:-1] if line.endswith("\r") else line for line in text.split("\n")]
