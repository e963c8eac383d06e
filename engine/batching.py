"""Request batching: requests that arrive within a short window share one `generate_batch` call.

One worker thread owns the pipeline. It takes the oldest waiting request, waits up to `window_s` for more
(up to `max_batch`), and runs them as one encoder batch and one batched generation. A streaming request
runs alone, in its turn, its text pieces handed over through a queue. A full queue refuses new work
(`Busy`, HTTP 429), and a request whose caller gave up before its turn is skipped.
"""
from __future__ import annotations

import collections
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Deque, Iterator, List, Optional

if TYPE_CHECKING:
    from ..models.pipeline import GenRequest, GenResult

_END = object()


class Busy(Exception):
    """The queue is full; the caller should come back later."""


@dataclass
class Job:
    request: GenRequest
    future: Optional[Future] = None  # batch jobs
    pieces: Optional[queue.Queue] = None  # streaming jobs: text pieces, then _END or an exception
    cancelled: threading.Event = field(default_factory=threading.Event)
    batch_size: int = 0  # how many requests shared its generate_batch call

    def cancel(self) -> None:
        """The caller is gone: skip the job if it has not started, stop its stream if it has."""
        self.cancelled.set()
        if self.future is not None:
            self.future.cancel()


@dataclass
class Stats:
    requests: int = 0
    batches: int = 0
    largest_batch: int = 0
    streams: int = 0


class Batcher:
    """Feeds a pipeline from many callers through one worker thread."""

    def __init__(self, pipeline, window_s: float = 0.01, max_batch: int = 8, max_queue: int = 256):
        if max_batch < 1 or max_queue < 1 or window_s < 0:
            raise ValueError("max_batch and max_queue must be at least 1, window_s not negative")
        self.pipeline = pipeline
        self.window_s = window_s
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.stats = Stats()
        self._jobs: Deque[Job] = collections.deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._work, name="geovlm-batcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the queued jobs, then end the worker."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def waiting(self) -> int:
        return len(self._jobs)

    def submit(self, request: GenRequest) -> Job:
        """Queue a request for batched generation; its `future` gets the `GenResult`."""
        return self._put(Job(request, future=Future()))

    def submit_stream(self, request: GenRequest) -> Job:
        """Queue a streaming request; read its text with `pieces(job, timeout)`."""
        return self._put(Job(request, pieces=queue.Queue()))

    def pieces(self, job: Job, timeout: float) -> Iterator[str]:
        """The text pieces of a streaming job as they come; `TimeoutError` after `timeout` s without one."""
        try:
            while True:
                try:
                    item = job.pieces.get(timeout=timeout)
                except queue.Empty:
                    raise TimeoutError(f"no output for {timeout:.0f} s") from None
                if item is _END:
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
            if job.pieces is not None:
                self._stream(job)
            else:
                self._batch(self._gather(job))

    def _gather(self, first: Job) -> List[Job]:
        """The first job and those that come within the window, stopping at a streaming job."""
        batch = [first]
        deadline = time.monotonic() + self.window_s
        with self._cond:
            while len(batch) < self.max_batch:
                if self._jobs:
                    if self._jobs[0].pieces is not None:
                        break
                    batch.append(self._jobs.popleft())
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._stopping:
                    break
                self._cond.wait(remaining)
        return [job for job in batch if job.future.set_running_or_notify_cancel()]

    def _batch(self, batch: List[Job]) -> None:
        if not batch:
            return
        self.stats.batches += 1
        self.stats.requests += len(batch)
        self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
        self._run(batch)

    def _run(self, batch: List[Job]) -> None:
        try:
            results: List[GenResult] = self.pipeline.generate_batch([job.request for job in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"pipeline gave {len(results)} results for {len(batch)} requests")
        except Exception as exc:
            if len(batch) == 1:
                batch[0].future.set_exception(exc)
                return
            for job in batch:  # each alone, so that only the request at fault fails
                self._run([job])
            return
        for job, result in zip(batch, results):
            job.batch_size = len(batch)
            job.future.set_result(result)

    def _stream(self, job: Job) -> None:
        if job.cancelled.is_set():
            return
        self.stats.streams += 1
        self.stats.requests += 1
        pieces = self.pipeline.stream(job.request)
        try:
            for piece in pieces:
                if job.cancelled.is_set():
                    break
                job.pieces.put(piece)
            job.pieces.put(_END)
        except Exception as exc:  # handed to the reader
            job.pieces.put(exc)
        finally:
            close = getattr(pieces, "close", None)
            if close is not None:
                close()
