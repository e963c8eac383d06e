"""Streamed answer pieces (a few characters each) turned into whole lines for a log that adds a line break
after every message (the Processing log's `pushConsoleInfo`)."""
from __future__ import annotations

from typing import Callable


class LineStream:
    """`push(piece)` buffers text and calls `emit(line)` once per completed line (without its "\\n");
    `close()` emits what is left after the last newline, if anything."""

    def __init__(self, emit: Callable[[str], None]):
        self.emit, self._rest = emit, ""

    def push(self, piece: str) -> None:
        *lines, self._rest = (self._rest + piece).split("\n")
        for line in lines:
            self.emit(line)

    def close(self) -> None:
        rest, self._rest = self._rest, ""
        if rest:
            self.emit(rest)
