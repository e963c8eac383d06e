"""Request batching: requests that arrive within a short window share one batched generation.

One worker thread owns the pipeline. It takes the oldest waiting request, waits up to `window_s` for more
(up to `max_batch`), and runs them, streamed or not, as one encoder batch and one `stream_batch` decoding:
each streaming request gets its row's text pieces through a queue, each other one its result at the end.
When a batch fails, each of its requests is run again alone, so only the one at fault fails. A full queue
refuses new work (`Busy`, HTTP 429), and a request whose caller gave up is skipped or no longer fed.
"""
from __future__ import annotations

import collections
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Deque, Iterator, List, Optional

if TYPE_CHECKING:
    from ..models.pipeline import GenRequest, GenResult

END = object()  # the last item of a streaming job's pieces


class Busy(Exception):
    """The queue is full; the caller should come back later."""


@dataclass
class Job:
    """One queued request and the way its answer goes back: a `future` (batch jobs) or a queue of text
    `pieces` (streaming jobs)."""

    request: GenRequest
    future: Optional[Future] = None  # batch jobs
    pieces: Optional[queue.Queue] = None  # streaming jobs: text pieces, then END or an exception
    cancelled: threading.Event = field(default_factory=threading.Event)
    batch_size: int = 0  # how many requests shared its generation
    finished: bool = False
    streamed: bool = False  # some text of it went out already
    waker: Optional[Callable[[], None]] = None  # streaming jobs: called after each item put (any thread)

    @property
    def pixels(self) -> int:
        """The image's pixel count (height x width): what the job holds against `Batcher.max_pixels`."""
        return int(self.request.image.shape[0]) * int(self.request.image.shape[1])

    def cancel(self) -> None:
        """The caller is gone: skip the job if it has not started, stop feeding it if it has."""
        self.cancelled.set()
        if self.future is not None:
            self.future.cancel()

    def start(self) -> bool:
        """Whether the job is still wanted, now that it is taken into a batch."""
        if self.future is not None:
            return self.future.set_running_or_notify_cancel()
        return not self.cancelled.is_set()

    def feed(self, delta: str) -> None:
        """Pass on a streaming job's text piece (nothing for batch jobs, empty pieces, or a cancelled job)."""
        if self.pieces is not None and delta and not self.cancelled.is_set():
            self.streamed = True
            self._put(delta)

    def finish(self, result: GenResult, done: str) -> None:
        """Deliver the result: to the future, or as `done` (the StreamDone carrying it) then END."""
        self.finished = True
        if self.future is not None:
            self.future.set_result(result)
        else:
            self.pieces.put(done)
            self._put(END)

    def fail(self, exc: BaseException) -> None:
        """Deliver the error: set on the future, or put as the stream's last item."""
        self.finished = True
        if self.future is not None:
            self.future.set_exception(exc)
        else:
            self._put(exc)

    def _put(self, item) -> None:
        self.pieces.put(item)
        if self.waker is not None:
            self.waker()


@dataclass
class Stats:
    """Counts since start: requests run, batches run, and the most requests one batch held."""

    requests: int = 0
    batches: int = 0
    largest_batch: int = 0


class Batcher:
    """Feeds a pipeline from many callers through one worker thread. `max_pixels` bounds the pixels of the
    images queued or in generation (their memory); one image alone is always taken."""

    def __init__(
        self, pipeline, window_s: float = 0.01, max_batch: int = 8, max_queue: int = 256, max_pixels: int = 2**26
    ):
        if max_batch < 1 or max_queue < 1 or max_pixels < 1 or window_s < 0:
            raise ValueError("max_batch, max_queue and max_pixels must be at least 1, window_s not negative")
        self.pipeline = pipeline
        self.window_s = window_s
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.max_pixels = max_pixels
        self._pixels = 0
        self.stats = Stats()
        self._jobs: Deque[Job] = collections.deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._work, name="geovlm-batcher", daemon=True)

    def start(self) -> None:
        """Start the worker thread (once)."""
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the queued jobs, then end the worker."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        """Whether the worker runs (false before `start`, after `stop`, or when it died)."""
        return self._thread.is_alive()

    @property
    def waiting(self) -> int:
        """Jobs queued and not yet taken into a batch."""
        return len(self._jobs)

    def submit(self, request: GenRequest) -> Job:
        """Queue a request; its `future` gets the `GenResult`."""
        return self._put(Job(request, future=Future()))

    def submit_stream(self, request: GenRequest, waker: Optional[Callable[[], None]] = None) -> Job:
        """Queue a streaming request; read its text with `pieces(job, timeout)`, or from `job.pieces` each time
        `waker` is called (from the worker thread; an event loop passes a `call_soon_threadsafe`)."""
        return self._put(Job(request, pieces=queue.Queue(), waker=waker))

    def pieces(self, job: Job, timeout: float) -> Iterator[str]:
        """The text pieces of a streaming job as they come, the last a StreamDone; `TimeoutError` after
        `timeout` s without one."""
        try:
            while True:
                try:
                    item = job.pieces.get(timeout=timeout)
                except queue.Empty:
                    raise TimeoutError(f"no output for {timeout:.0f} s") from None
                if item is END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            job.cancel()

    def _put(self, job: Job) -> Job:
        with self._cond:
            if self._stopping:
                raise Busy("the server is shutting down")
            if len(self._jobs) >= self.max_queue:
                raise Busy(f"{len(self._jobs)} requests are waiting")
            if self._pixels and self._pixels + job.pixels > self.max_pixels:
                raise Busy(f"images of {self._pixels} pixels are queued; the budget is {self.max_pixels}")
            self._pixels += job.pixels
            self._jobs.append(job)
            self._cond.notify_all()
        return job

    # ------------------------------------------------------------ worker

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._jobs and not self._stopping:
                    self._cond.wait()
                if not self._jobs:
                    return
                job = self._jobs.popleft()
            gathered = self._gather(job)
            batch = [job for job in gathered if job.start()]
            if batch:
                self.stats.batches += 1
                self.stats.requests += len(batch)
                self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
                self._run(batch)
            with self._cond:
                self._pixels -= sum(job.pixels for job in gathered)

    def _gather(self, first: Job) -> List[Job]:
        """The first job and those that come within the window."""
        batch = [first]
        deadline = time.monotonic() + self.window_s
        with self._cond:
            while len(batch) < self.max_batch:
                if self._jobs:
                    batch.append(self._jobs.popleft())
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._stopping:
                    break
                self._cond.wait(remaining)
        return batch

    def _run(self, batch: List[Job]) -> None:
        """One decoding for `batch`; on failure, each job not yet streamed is run again alone."""
        try:
            self._decode(batch)
        except Exception as exc:
            for job in batch:
                if job.finished:
                    continue
                if len(batch) == 1 or job.streamed or job.cancelled.is_set():
                    job.fail(exc)
                else:
                    self._run([job])
            return
        for job in batch:
            if not job.finished:
                job.fail(RuntimeError("the generation ended without a result"))

    def _decode(self, batch: List[Job]) -> None:
        """Hand each step's text to the streaming jobs and each result to its job; stop early when every
        caller is gone."""
        steps = self.pipeline.stream_batch([job.request for job in batch])
        try:
            for deltas in steps:
                if all(job.cancelled.is_set() for job in batch):
                    break
                for job, delta in zip(batch, deltas):
                    if hasattr(delta, "result"):  # the StreamDone that ends each row
                        job.batch_size = len(batch)
                        job.finish(delta.result, delta)
                    else:
                        job.feed(delta)
        finally:
            close = getattr(steps, "close", None)
            if close is not None:
                close()
