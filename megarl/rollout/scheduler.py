"""The built-in server's scheduler: one worker thread that batches the waiting /generate jobs.

HTTP handlers `submit` a `Job` (one request's sequences) and await its future; the worker drains
the queue and runs the waiting sequences as one batch of at most `max_batch_sequences` through
`GenerationEngine.generate` (concurrent requests are batched together; a request with more
sequences is split over several batches). A batch starts `batch_window_s` after its first job
arrived, or when it is full, so the requests a client sends together run together.

One request cannot take the others down: a job cancelled or failed while it waited is dropped
(its unrun sequences end as aborted), and if a batch fails, its jobs are re-run one by one so only
the bad one fails. `pause(mode)` stops starting batches (mode "abort" also cuts the running one
short, SGLang's /pause_generation) and `resume()` lets them start again.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import queue
import threading
import time
from dataclasses import dataclass, field

from megarl.rollout.engine import CancelToken, GenerationEngine, SequenceRequest
from megarl.rollout.protocol import MAX_BATCH_SEQUENCES, RequestError

log = logging.getLogger("megarl.rollout.scheduler")

# A batch starts this long after its first request arrived (or when full): the requests a client sends
# together (one per prompt) run as one batch instead of the first alone and the rest after it, each
# batch decoding to its own longest row (static batching).
BATCH_WINDOW_S = 0.01
PAUSE_MODES = ("abort", "in_place", "retract")  # SGLang's /pause_generation modes


@dataclass
class Job:
    """One /generate request's sequences on their way through the worker (maybe over several batches)."""

    sequences: list[SequenceRequest]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    cancel: CancelToken = field(default_factory=CancelToken)
    results: list = field(default_factory=list)
    done: int = 0  # sequences generated so far
    failed: bool = False

    def __post_init__(self) -> None:
        self.results = [None] * len(self.sequences)
        for sequence in self.sequences:
            sequence.cancel = self.cancel

    def finish(self) -> None:
        self.loop.call_soon_threadsafe(_set_result, self.future, self.results)

    def fail(self, err: BaseException) -> None:
        self.failed = True
        self.loop.call_soon_threadsafe(_set_exception, self.future, err)


class Scheduler:
    """The generation worker thread and its queue of jobs."""

    def __init__(self, engine: GenerationEngine, *, max_batch_sequences: int = MAX_BATCH_SEQUENCES,
                 batch_window_s: float = BATCH_WINDOW_S):
        if max_batch_sequences < 1:
            raise ValueError(f"max_batch_sequences={max_batch_sequences} must be >= 1")
        self.engine = engine
        self.max_batch_sequences = max_batch_sequences
        self.batch_window_s = batch_window_s
        self.last_progress = time.monotonic()  # the worker's last decode step or batch start/end
        self.jobs: queue.Queue[Job | None] = queue.Queue()
        self.state = threading.Condition()
        self.paused = False
        self.abort_running = False
        self.running_batch = False
        self.batches_run = 0
        self.holding = 0  # dequeued jobs waiting for resume()
        self.batch_sizes: list[int] = []  # sequences per batch, most recent last (bounded)
        self.worker = threading.Thread(target=self._worker_loop, name="megarl-generation", daemon=True)
        self.stopping = False

    # ---- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        self.worker.start()

    def stop(self) -> None:
        self.stopping = True
        with self.state:
            self.paused = False
            self.state.notify_all()
        self.jobs.put(None)

    def submit(self, job: Job) -> None:
        self.jobs.put(job)

    @property
    def queued(self) -> int:
        """Jobs waiting: queued, or dequeued and held by a pause."""
        return self.jobs.qsize() + self.holding

    def stalled_for(self) -> float:
        """Seconds the running batch has gone without a decode step (0 when idle)."""
        return time.monotonic() - self.last_progress if self.running_batch else 0.0

    # ---- pause / resume ----------------------------------------------------------------
    def pause(self, mode: str) -> None:
        """Stop starting batches; with mode 'abort' also cut the running batch short. Blocks until idle."""
        if mode not in PAUSE_MODES:
            raise RequestError(f"pause_generation mode {mode!r} is unknown; use 'abort', 'in_place' or 'retract'")
        with self.state:
            self.paused = True
            self.abort_running = mode == "abort"
            while self.running_batch:
                self.state.wait()
            self.abort_running = False

    def resume(self) -> None:
        with self.state:
            self.paused = False
            self.state.notify_all()

    # ---- the worker --------------------------------------------------------------------
    def _pending(self, backlog: collections.deque) -> int:
        return sum(len(job.sequences) - start for job, start in backlog)

    def _worker_loop(self) -> None:
        backlog: collections.deque[tuple[Job, int]] = collections.deque()  # (job, its first sequence not yet run)
        while not self.stopping:
            if not backlog:
                first = self.jobs.get()
                if first is None:
                    return
                backlog.append((first, 0))
                self._collect(backlog)
            with self.state:
                self.holding = len(backlog)
                while self.paused and not self.stopping:
                    self.state.wait()
                self.holding = 0
                self.running_batch = True
                self.last_progress = time.monotonic()
            try:
                while self._pending(backlog) < self.max_batch_sequences:
                    try:
                        job = self.jobs.get_nowait()
                    except queue.Empty:
                        break
                    if job is None:
                        self.stopping = True
                        break
                    backlog.append((job, 0))
                parts = self._take_batch(backlog)
                if parts:
                    self._run_batch(parts)
            finally:
                with self.state:
                    self.running_batch = False
                    self.last_progress = time.monotonic()
                    self.state.notify_all()

    def _collect(self, backlog: collections.deque) -> None:
        """Wait up to batch_window_s for more requests to join a new batch (until it would be full)."""
        deadline = time.monotonic() + self.batch_window_s
        while self._pending(backlog) < self.max_batch_sequences:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                job = self.jobs.get(timeout=left)
            except queue.Empty:
                return
            if job is None:
                self.jobs.put(None)  # stop: seen by the loop
                return
            backlog.append((job, 0))

    def _take_batch(self, backlog: collections.deque) -> list[tuple[Job, int, int]]:
        """Up to max_batch_sequences sequences from the front of the backlog, as (job, start, end)
        slices; jobs cancelled or failed while they waited are dropped."""
        parts: list[tuple[Job, int, int]] = []
        count = 0
        while backlog and count < self.max_batch_sequences:
            job, start = backlog.popleft()
            if job.failed:
                continue
            reason = job.cancel.check()
            if reason is not None:  # cancelled while it waited: its unrun sequences end as aborted
                for index in range(start, len(job.sequences)):
                    job.results[index] = self.engine.aborted_result(job.sequences[index], reason)
                job.finish()
                continue
            end = min(len(job.sequences), start + self.max_batch_sequences - count)
            parts.append((job, start, end))
            count += end - start
            if end < len(job.sequences):
                backlog.appendleft((job, end))
        return parts

    def _run_batch(self, parts: list[tuple[Job, int, int]]) -> None:
        """Generate the sequences of `parts` as one batch; if the batch fails, run each part alone."""
        sequences = [s for job, start, end in parts for s in job.sequences[start:end]]
        try:
            results = self.engine.generate(sequences, should_abort=self._decode_step)
        except Exception as err:  # noqa: BLE001 - a failure belongs to the request(s) that caused it
            if len(parts) > 1:
                log.warning("a batch of %d requests failed (%s: %s); running them one by one", len(parts), type(err).__name__, err)
                for part in parts:
                    self._run_batch([part])
                return
            log.exception("generation failed for one request")
            parts[0][0].fail(err)
            return
        self.batches_run += 1
        self.batch_sizes = (self.batch_sizes + [len(sequences)])[-100:]
        offset = 0
        for job, start, end in parts:
            job.results[start:end] = results[offset:offset + end - start]
            offset += end - start
            job.done += end - start
            if job.done == len(job.sequences):
                job.finish()

    def _decode_step(self) -> bool:
        """Polled by the engine between decode steps: records progress, says whether to abort."""
        self.last_progress = time.monotonic()
        return self.abort_running


def _set_result(future: asyncio.Future, value) -> None:
    if not future.done():
        future.set_result(value)


def _set_exception(future: asyncio.Future, err: BaseException) -> None:
    if not future.done():
        future.set_exception(err)
