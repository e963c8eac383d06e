"""A bulk run over the tiles of a plan: read each tile, ask the engines, commit each answer to the ledger.

Reading pixels and writing the ledger happen in the calling thread (QGIS forbids layer access elsewhere and
an sqlite connection belongs to one thread); only the requests run in worker threads, through
`EngineClient.ask`, which spreads them over the endpoints (least busy first, failover). At most
`2 x capacity` tiles are read ahead, and a `TilePlan` is walked lazily (its tiles made one at a time, never
listed), so memory stays flat and the first tile is asked at once however large the plan (3.8 million tiles of
a 10^6 x 10^6 px VRT included: bench/bench_huge_plan.py). Each tile is submitted
once; a tile whose request fails after the client's retries is recorded `failed` (asked again on resume). A
tile whose pixels cannot be read (the reader raises ValueError: a damaged file there) is recorded `failed` too,
and `RunStats.unreadable` keeps it apart from the engine's failures: a rerun reads it again, but will not help.
Cancelling stops submitting, aborts the requests in flight (their tiles stay missing) and returns within
about a second. When a tile fails because no engine answered for the client's whole retry window, the run
stops submitting too (`RunStats.halted` says why): the engines are gone, and asking every remaining tile
for another window each would take hours; a rerun resumes.
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

from .answer import Answer
from .client import EngineClient, EngineError, ImageSource, _Retryable
from .georef import GeoTransform, ImageFrame
from .ledger import FAILED, OK, SKIPPED, Ledger, TileResult
from .profiles import Profile
from .tiling import Tile, TilePlan
from .transport import Cancelled, CancelToken, Transport

# read(tile) -> an ImageSource of the tile's pixels (fitted to the model's input by the client before it is
# sent: core.client.prepare_image), or (encoded PNG/JPEG of the whole tile, (width, height)), or None when the
# tile holds only nodata (skipped)
TileReader = Callable[[Tile], Optional[Union[ImageSource, Tuple[bytes, Tuple[int, int]]]]]
# graph(tile, answer) -> (objects, relations) rows for the ledger (see TileResult)
GraphBuilder = Callable[[Tile, Answer], Tuple[List[tuple], List[tuple]]]


def counted(count: int, plural: str) -> str:
    """`count` and its noun in the number it takes: counted(1, "tiles") -> "1 tile", counted(0, "tiles") ->
    "0 tiles". `plural` is a regular English plural ending in "s" (the units here: "tiles", "features")."""
    return f"{count} {plural[:-1] if count == 1 and plural.endswith('s') else plural}"


@dataclass
class RunStats:
    """What a run did: tiles in the plan, done before it started (resumed), asked, answered, skipped,
    failed, left (not reached: cancelled), and seconds spent reading/encoding, waiting on engines, writing."""

    total: int = 0
    resumed: int = 0
    asked: int = 0
    ok: int = 0
    skipped: int = 0
    failed: int = 0
    cancelled: bool = False
    halted: str = ""  # why the run stopped before the end (no engine answered), "" otherwise
    read_s: float = 0.0
    ask_s: float = 0.0
    write_s: float = 0.0
    wall_s: float = 0.0
    errors: Dict[str, int] = field(default_factory=dict)
    unreadable: Dict[str, str] = field(default_factory=dict)  # {tile id: why its pixels cannot be read}

    @property
    def done(self) -> int:
        """Tiles that need no more asking: resumed, answered or skipped (nodata)."""
        return self.resumed + self.ok + self.skipped

    def summary(self) -> str:
        """`summary_of("tiles")`."""
        return self.summary_of("tiles")

    def summary_of(self, unit: str) -> str:
        """`summary()` counting `unit` ("tiles", "features"), e.g. "25 tiles: 16 asked, 16 answered, 0 skipped
        (nodata), 9 failed (9 unreadable), 0 resumed (done before)"."""
        unreadable = f" ({len(self.unreadable)} unreadable)" if self.unreadable else ""
        line = (f"{counted(self.total, unit)}: {self.asked} asked, {self.ok} answered, {self.skipped} skipped "
                f"(nodata), {self.failed} failed{unreadable}, {self.resumed} resumed (done before)")
        left = self.total - self.done - self.failed
        if left:
            line += f", {left} left"
        if self.halted:
            line += f"; stopped: {self.halted}"
        return line

    @property
    def engine_failed(self) -> int:
        """Failed tiles that were read and sent: the engine refused them or did not answer (a rerun asks
        them again)."""
        return self.failed - len(self.unreadable)

    def unreadable_note(self, unit: str = "tiles") -> str:
        """One line about the tiles whose pixels could not be read ("" when none): which (the first ten ids),
        the first reason, and that a rerun will not help them."""
        if not self.unreadable:
            return ""
        ids = list(self.unreadable)
        shown = ", ".join(ids[:10]) + (f" and {len(ids) - 10} more" if len(ids) > 10 else "")
        return (f"{counted(len(ids), unit)} could not be read ({shown}): the raster is damaged there "
                f"({next(iter(self.unreadable.values()))}); a rerun will not help those")


class EndpointRecorder(Transport):
    """A transport that remembers, per thread, the endpoint of its last request (the answer's provenance)."""

    def __init__(self, inner: Transport):
        self.inner = inner
        self._local = threading.local()

    def request(self, method, url, headers, body=None, timeout=60.0, cancel=None):
        """The inner transport's `request`, after noting the endpoint (`url` up to "/v1/") for this thread."""
        self._local.url = url.split("/v1/")[0]
        return self.inner.request(method, url, headers, body, timeout, cancel)

    @property
    def last_url(self) -> str:
        """The endpoint (base URL) of this thread's last request, "" before its first."""
        return getattr(self._local, "url", "")


def run_tiles(
    client: EngineClient,
    ledger: Ledger,
    tiles: Union[TilePlan, Sequence[Tile]],
    read: TileReader,
    question: str,
    task: Optional[str],
    profile: Profile,
    model: str,
    graph: Optional[GraphBuilder] = None,
    cancel: Optional[CancelToken] = None,
    on_progress: Optional[Callable[[RunStats], None]] = None,
    max_tokens: int = 256,
) -> RunStats:
    """Ask about every tile of `tiles` (a `TilePlan`, walked lazily in plan order, or a sequence of tiles) that the
    ledger does not hold yet and commit each answer at once.

    `question` goes with the family's `task` word (None: as is). `graph`, for scene graphs, turns an answer
    into object and relation rows in map coordinates. `on_progress(stats)` is called in this thread after
    each committed tile and about every 0.25 s. Returns the run's `RunStats`.
    """
    cancel = cancel or CancelToken()
    started = time.monotonic()
    stats = RunStats(total=len(tiles))
    if isinstance(tiles, TilePlan):  # every row of the ledger is one of the plan's tiles (its fingerprint says so)
        counts = ledger.counts()
        stats.resumed = sum(counts.get(status, 0) for status in (OK, SKIPPED))
        todo = ledger.pending(tiles.tiles())
    else:
        pending = list(ledger.pending(tiles))
        stats.resumed = stats.total - len(pending)
        todo = iter(pending)
    following = next(todo, None)  # the next tile to ask (None: none left)
    recorder = client.transport if isinstance(client.transport, EndpointRecorder) else None
    ahead = 2 * max(1, sum(e.max_concurrent for e in client.endpoints))

    def ask(image: Union[ImageSource, bytes], size: Optional[Tuple[int, int]]):
        t0 = time.monotonic()
        text, answer = client.ask(image, size, question, profile, task, cancel=cancel, max_tokens=max_tokens)
        return text, answer, time.monotonic() - t0, recorder.last_url if recorder else ""

    def commit(result: TileResult) -> bool:
        t0 = time.monotonic()
        written = ledger.record(result, question, model, profile.name)
        stats.write_s += time.monotonic() - t0
        if not written:  # another run on the same output had committed this tile
            stats.resumed += 1
        elif result.status == FAILED:
            stats.failed += 1
            stats.errors[result.error] = stats.errors.get(result.error, 0) + 1
        elif result.status == SKIPPED:
            stats.skipped += 1
        else:
            stats.ok += 1
        return written

    inflight: Dict = {}
    last_report = 0.0
    with ThreadPoolExecutor(max_workers=ahead // 2) as pool:
        try:
            while ((following is not None and not stats.halted) or inflight) and not cancel.cancelled:
                while following is not None and len(inflight) < ahead and not cancel.cancelled and not stats.halted:
                    tile, following = following, next(todo, None)
                    t0 = time.monotonic()
                    try:
                        image = read(tile)
                    except ValueError as exc:  # an unreadable window: that tile fails, the run goes on
                        stats.read_s += time.monotonic() - t0
                        reason = f"pixels cannot be read: {exc}"
                        if commit(TileResult(tile, FAILED, error=reason)):
                            stats.unreadable[tile.id] = str(exc)
                        continue
                    stats.read_s += time.monotonic() - t0
                    if image is None:
                        commit(TileResult(tile, SKIPPED))
                        continue
                    stats.asked += 1
                    source, size = image if isinstance(image, tuple) else (image, None)
                    inflight[pool.submit(ask, source, size)] = tile
                done, _ = wait(list(inflight), timeout=0.25, return_when=FIRST_COMPLETED) if inflight else ((), ())
                for future in done:
                    tile = inflight.pop(future)
                    try:
                        text, answer, seconds, engine = future.result()
                    except Cancelled:
                        continue  # not answered: stays missing, asked on resume
                    except Exception as exc:  # the engine refused or was unreachable after retries
                        commit(TileResult(tile, FAILED, error=str(exc) or type(exc).__name__))
                        if _engines_gone(exc):
                            stats.halted = f"no engine answered ({exc})"
                        continue
                    stats.ask_s += seconds
                    objects, relations = graph(tile, answer) if graph else ([], [])
                    commit(TileResult(tile, OK, caption=answer.plain_text.strip(), answer=text, engine=engine,
                                      seconds=round(seconds, 3), objects=objects, relations=relations))
                    if on_progress:
                        on_progress(stats)
                now = time.monotonic()
                if on_progress and now - last_report >= 0.25:
                    last_report = now
                    on_progress(stats)
        finally:
            stats.cancelled = cancel.cancelled
            if inflight:
                cancel.cancel()  # an exception or a cancel: abort the requests still out
                wait(list(inflight), timeout=5.0)
    stats.wall_s = time.monotonic() - started
    if on_progress:
        on_progress(stats)
    return stats


def _engines_gone(exc: Exception) -> bool:
    """True when a request failed because no engine answered for the whole retry window (connection errors,
    429, 502, 503, 504 to the end) or the local engine is down for good; False for a failure of that request
    (a 4xx, a 500 from a live engine)."""
    if not isinstance(exc, EngineError):
        return False
    if str(exc).startswith("the engine is down"):
        return True
    return isinstance(exc.__cause__, _Retryable) and exc.status != 500


def eta_seconds(stats: RunStats, elapsed: float) -> Optional[float]:
    """Seconds left at this run's pace (tiles finished in this run per second), None before the first."""
    finished = stats.ok + stats.skipped + stats.failed
    left = stats.total - stats.done - stats.failed
    if finished == 0 or elapsed <= 0:
        return None
    return left * elapsed / finished


def eta_text(stats: RunStats, elapsed: float) -> str:
    """The time left, for a progress line (the command line's and QGIS's alike), from `eta_seconds`: "under 1 s
    left" for an estimate below one second (which "about 0 s" would misstate), "about 12 s left" below a minute,
    "about 7 min left" below an hour and "about 3 h 38 min left" beyond (rounded to the unit shown: a long run's
    estimate in seconds, "about 13080 s", reads as noise); "" before the first tile is finished (no pace yet) or
    once every tile is."""
    eta = eta_seconds(stats, elapsed)
    if eta is None or stats.done + stats.failed >= stats.total:
        return ""
    if eta < 1:
        return "under 1 s left"
    if eta < 59.5:
        return f"about {eta:.0f} s left"
    minutes = round(eta / 60)
    if minutes < 60:
        return f"about {minutes} min left"
    hours, minutes = divmod(minutes, 60)
    return f"about {hours} h {minutes} min left" if minutes else f"about {hours} h left"


class ProgressLog:
    """When a progress line is worth logging: on the first tile finished, each time another `step` share of
    the plan (0.1: every 10 %) is finished, when `every_s` seconds have passed since the last line, and at the
    end; never twice for the same count. A log that keeps every line (QGIS's Processing log) then holds about
    ten lines however long the run, instead of one per progress callback (4 a second)."""

    def __init__(self, total: int, step: float = 0.1, every_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic):
        self.total = max(1, total)
        self.step = step
        self.every_s = every_s
        self.clock = clock
        self.last_count = 0
        self.last_time = clock()

    def due(self, finished: int) -> bool:
        """True when the line for `finished` tiles (of `total`) should be logged (and remember it)."""
        if finished <= self.last_count:
            return False
        now = self.clock()
        parts = max(1, round(1 / self.step))  # whole numbers: 60 of 200 is 3 tenths exactly
        crossed = finished * parts // self.total > self.last_count * parts // self.total
        if not (crossed or self.last_count == 0 or finished >= self.total or now - self.last_time >= self.every_s):
            return False
        self.last_count, self.last_time = finished, now
        return True


DEFAULT_CAPTION_QUESTION = "Describe the image in detail."
DEFAULT_GRAPH_QUESTION = "Generate the scene graph of the image: the objects with their boxes and their relations."


def default_task(profile: Profile, kind: str) -> str:
    """The family's task for a run: "caption" for captions; for detection its scene-graph task, else its
    grounding task (what places the objects it names). ValueError for a family with none of those (it writes no
    boxes)."""
    if kind == "caption":
        return "caption"
    for task in ("scene_graph", "grounding", "detection"):
        if task in profile.task_words:
            return task
    raise ValueError(f"{profile.name} has no grounding or scene-graph task: it cannot find objects")


def graph_rows(tile: Tile, answer: Answer, gt: GeoTransform) -> Tuple[List[tuple], List[tuple]]:
    """A tile's answer as ledger rows: objects (id, label, kind, angle, flags, source, map ring) placed with
    the window's geotransform, and relations (subject id, predicate, object id, labels) between boxed objects."""
    frame = ImageFrame(tile.width, tile.height, gt.window(tile.col_off, tile.row_off))
    objects = [(o.id, o.label, o.kind, o.angle, ",".join(o.flags), o.source, frame.to_map(o.polygon))
               for o in answer.objects]
    relations = [(r.subject, r.predicate, r.object, r.subject_label, r.object_label)
                 for r in answer.relations if r.subject is not None and r.object is not None]
    return objects, relations


__all__ = ["DEFAULT_CAPTION_QUESTION", "DEFAULT_GRAPH_QUESTION", "EndpointRecorder", "OK", "ProgressLog", "RunStats",
           "counted", "default_task", "eta_seconds", "eta_text", "graph_rows", "run_tiles"]
