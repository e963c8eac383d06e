"""The server's memory for request data: a budget of buffered bodies and decoded images, and giving the freed
memory back to the system after a burst.

`MemoryBudget` counts the bytes that requests hold (a body while it is read and parsed, then its decoded
image until the answer is sent); a request that would take it past the budget is refused (the server answers
429 with Retry-After), except when nothing else is held, so one request within the body limit always gets
through. When the count falls back to zero, `release_free_memory` asks glibc to hand its free heap pages back
(`malloc_trim(0)`, man 3 malloc_trim): CPython frees a burst's bodies to malloc, which keeps them otherwise.

Bodies are held as their bytes arrive, not as announced (a client that announces 32 MiB and trickles holds
only what it sent). So that bodies arriving together cannot refuse one another all the way, the body that
began to arrive first among those still arriving may always grow: at most one body beyond the budget.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys
import threading
import time
from typing import Dict, Optional

log = logging.getLogger("geovlm.engine")


class OverBudget(Exception):
    """Holding more request data would pass the server's memory budget."""


class MemoryBudget:
    """Bytes of request data held at once, at most `limit` (thread-safe). When the count returns to zero,
    `release_free_memory` runs `trim_delay_s` later, at most once every `trim_every_s`."""

    def __init__(self, limit: int, trim_every_s: float = 1.0, trim_delay_s: float = 0.5):
        if limit < 1:
            raise ValueError("the memory budget must be at least 1 byte")
        self.limit = int(limit)
        self.used = 0
        self.peak = 0
        self._lock = threading.Lock()
        self._trim_every_s = trim_every_s
        self.trim_delay_s = trim_delay_s
        self._trimmed_at = 0.0
        self._trimming = False
        self._reading: Dict[int, Reservation] = {}  # reservations whose body is arriving, oldest first

    def reservation(self) -> Reservation:
        """A new, empty hold on the budget; `close()` it when the request ends."""
        return Reservation(self)

    def _reads(self, reservation: Reservation, reading: bool) -> None:
        with self._lock:
            if reading:
                self._reading.setdefault(id(reservation), reservation)
            else:
                self._reading.pop(id(reservation), None)

    def _change(self, delta: int, reservation: Optional[Reservation] = None) -> None:
        with self._lock:
            oldest = next(iter(self._reading.values()), None)
            first = reservation is not None and oldest is reservation
            if delta > 0 and self.used and self.used + delta > self.limit and not first:
                raise OverBudget(
                    f"{self.used / 2**20:.0f} MiB of request bodies and images are held; "
                    f"the budget is {self.limit / 2**20:.0f} MiB"
                )
            self.used += delta
            self.peak = max(self.peak, self.used)
            idle = self.used == 0 and delta < 0
            trim = idle and not self._trimming and time.monotonic() - self._trimmed_at >= self._trim_every_s
            if trim:
                self._trimming = True
        if trim:
            threading.Thread(target=self._trim, name="geovlm-trim", daemon=True).start()

    def _trim(self) -> None:
        time.sleep(self.trim_delay_s)  # the last request's objects (its body, a traceback) are freed after it ends
        try:
            release_free_memory()
        finally:
            with self._lock:
                self._trimming = False
                self._trimmed_at = time.monotonic()


class Reservation:
    """One request's share of a `MemoryBudget`, in bytes."""

    def __init__(self, budget: MemoryBudget):
        self.budget = budget
        self.size = 0

    def reading(self, arriving: bool) -> None:
        """Mark that this request's body is arriving (True) or has arrived (False)."""
        self.budget._reads(self, arriving)

    def resize(self, nbytes: int) -> None:
        """Hold `nbytes` in all (more or fewer than now); `OverBudget` when more do not fit (nothing changes)."""
        nbytes = max(0, int(nbytes))
        if nbytes != self.size:
            self.budget._change(nbytes - self.size, self)
            self.size = nbytes

    def close(self) -> None:
        """Give the whole share back (the body no longer arriving, 0 bytes held)."""
        self.reading(False)
        self.resize(0)


_LIBC: Optional[ctypes.CDLL] = None


def release_free_memory() -> bool:
    """Have glibc return free heap memory to the system; False where there is no `malloc_trim`."""
    global _LIBC
    if not sys.platform.startswith("linux"):
        return False
    try:
        if _LIBC is None:
            _LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(_LIBC.malloc_trim(0))
    except (OSError, AttributeError):  # musl and others have no malloc_trim
        return False
