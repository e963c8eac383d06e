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

    A line that is not readable as such ("FILE:N: not a JSON object ...", "FILE:N: no field 'answer'") raises
    ValueError with the file and line, or, when a list `bad` is given, is appended to it as that one-line
    message and skipped, so that every bad line can be reported at once and the good ones used. A file that is
    not text (NUL bytes, or bytes that are not UTF-8: an image or other binary file given by mistake) raises
    ValueError in one line either way.
    """
    lines = split_lines(read_text(path))
    is_jsonl = any(_is_json_object(ln) for ln in lines if ln.lstrip().startswith("{"))
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if not is_jsonl:
            yield number, line, ""
            continue
        try:
            record = json.loads(line)
            problem = None if isinstance(record, dict) else "not a JSON object (the file looks like JSON lines)"
        except ValueError:
            problem = "not a JSON object (the file looks like JSON lines)"
        if problem is None and field not in record:
            problem = f"no field {field!r}"
        if problem is not None:
            if bad is None:
                raise ValueError(f"{path}:{number}: {problem}")
            bad.append(f"{path}:{number}: {problem}")
            continue
        question = record.get(question_field)
        yield number, "" if record[field] is None else str(record[field]), "" if question is None else str(question)


def read_text(path) -> str:
    """The text of a saved file (UTF-8, a byte-order mark dropped). Raises ValueError in one line for a folder,
    a file that cannot be read, and a file that is not text (NUL bytes, or bytes that are not UTF-8)."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder: give a file of saved answers (JSON lines or plain text)")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    return _text_of(path, data)


def _text_of(path: Path, data: bytes) -> str:
    """`data` decoded as UTF-8 (a byte-order mark dropped); ValueError in one line when it is not text."""
    nul = data.find(b"\x00")
    if nul >= 0:
        raise ValueError(f"{path} is not text (it contains NUL bytes, first at byte {nul}): give saved answers "
                         "as JSON lines or plain text, one answer a line")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path} is not text in UTF-8 (byte {exc.start} is 0x{data[exc.start]:02x}): give saved "
                         "answers as JSON lines or plain text in UTF-8, one answer a line") from None


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
