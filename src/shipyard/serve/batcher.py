"""The adaptive batcher: concurrent requests become one ONNX Runtime call.

How it works
------------
``submit`` puts a request's rows on a FIFO queue and awaits a future. One collector task
on the event loop forms batches: it takes whole requests from the head of the queue up
to ``max_batch_size`` rows, reads ``get_model()`` once, and hands the batch to ONE worker
thread (``run_in_executor``: one thread hop per batch, not per request; ORT releases the
GIL, so the event loop keeps accepting requests meanwhile). While a batch runs, new
requests gather in the queue; when it returns, the collector answers every caller with
its own slice of every output and sends what gathered as the next batch. So under load
batches grow by themselves and the queue drains at the model's speed; at low load a
request goes straight to an idle model. No busy loop, no per-request thread, no
``time.sleep``: the collector sleeps on an event that ``submit``, a finished batch or
``stop`` sets.

Two refinements, both measured:

* When a full batch (``max_batch_size`` rows) is queued while the worker is busy, it is
  sent at once to wait in the executor behind the running one (at most two batches are
  out), so the worker starts it the moment the first ends instead of after a round trip
  through an event loop that is busy answering the first batch's callers. That moved
  the CNN at 512 clients from ~90k to 110-150k rows/s (ORT busy 55 % -> 85 % of the
  time).
* ``max_wait_ms`` (default 0): with the model idle and less than a full batch queued,
  the collector may wait up to this long after the first request for more. It only pays
  with open-loop traffic on a model whose batches are much cheaper per row; with N
  clients that each wait for their answer (every load test, most real callers) and N
  below ``max_batch_size``, nobody else is coming and every request just waits it out:
  at 8 clients 2 ms cut throughput from ~35-60k to 3.4k rows/s.

Rules worth knowing:

* A request is never split: a request larger than ``max_batch_size`` runs alone in one
  call. Splitting it would let a hot reload land between its parts (one request, two
  models); the server bounds request size anyway.
* A batch holds requests whose rows have the same per-row shape; a request of another
  shape waits for the next batch, so a malformed request cannot fail its neighbours.
  Token ids (text models) are the exception: requests of different token lengths share
  one call, padded to the longest with the model's pad id, which the graph masks (padding
  to the batch's longest beat padding every text to ``max_length``: see
  docs/architecture.md, "Text").
* A model whose rows are not independent (``ServedModel.rows_independent`` is False:
  ORT's dynamic int8, which scales activations by the whole batch's range) gets one ORT
  call per request inside the batch's single thread hop. Otherwise one request with
  extreme values would change every neighbour's answer (measured on wine int8: all 16
  labels of a batch flipped by one row of 1e6).
* A batch never mixes models: ``get_model()`` is read once per batch, and every caller
  gets back the :class:`ServedModel` that computed its rows.
* An exception from ORT (or from ``get_model``) goes to every caller of that batch and
  to no one else; the collector carries on with the next batch.
* ``submit`` raises :class:`QueueFull` at once when the queued rows would exceed
  ``max_queue_rows`` (the server answers 503 with ``Retry-After``), rather than letting
  latency grow without bound. ``retry_after_s`` is the time to work through the queue
  at the recent batch time. A request is admitted into an empty queue whatever its size,
  or an oversized request would be refused forever.
* ``stop`` drains: new requests are refused (:class:`BatcherClosed`, a
  :class:`QueueFull`, so the server answers 503 too) and every queued request is
  answered before it returns.
* A caller that goes away (its task cancelled: the client disconnected) is skipped when
  its turn comes, so dead requests cost no model time.

Why hand-written
----------------
LitServe and BentoML batch across processes: requests travel from HTTP workers to a
model worker through queues and serialisation. On a box with a few cores, with graphs
that answer a batch in microseconds to a millisecond, that hop costs more than the model
call, and the issue asks for in-process batching with a bounded queue and a model that
hot-reloads atomically. Here the whole path is one event loop, a deque and one thread.

Measured (``benchmarks/bench_batcher.py``; 2-core AMD EPYC VM, ORT 1.32, one ORT
thread, asyncio clients sending one-row requests back to back, rows/s as a share of raw
ORT at its best batch size on the same rows): digits CNN 0.03 at 1 client (a lone
request pays ~0.1 ms for the two thread hand-offs), 0.17 at 8, 0.37 at 32, 0.50 at 128
and 0.81 at 512 clients (150k rows/s; one row per ORT call reaches 0.31). The wine MLP
computes 4.6M rows/s in batches of 512, far beyond what Python can hand out: with a
session that answers instantly the batcher peaks at ~200k one-row requests/s here
(~5 µs of event-loop work per request), and the MLP reaches 195k at 128 clients. An
HTTP request costs the event loop more than that, so for small models HTTP, not the
batcher, sets the served ceiling. Defaults from the sweep (``--tune``):
``max_batch_size=128`` (32/64 lose 10-25 % at 128+ clients; 256 gains nothing and
doubles the worst batch's time) and ``max_wait_ms=0`` (above).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from shipyard.serve.runtime import ServedModel

log = logging.getLogger(__name__)

Outputs = dict[str, np.ndarray]
Result = tuple[Outputs, ServedModel]

#: batch time assumed for Retry-After before the first batch has been timed
INITIAL_BATCH_S = 0.01
#: weight of the newest batch in the moving average of batch time
EWMA_WEIGHT = 0.2
#: batches handed to the worker at once: the running one and a full one waiting behind it,
#: so the worker starts the next batch without a round trip through a busy event loop
MAX_SENT = 2


class QueueFull(Exception):
    """The queue holds as many rows as it may: retry after ``retry_after_s`` seconds."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class BatcherClosed(QueueFull):
    """The batcher is stopping (or not started) and takes no new requests. A
    :class:`QueueFull`, so the server answers it the same way: 503, try again later
    (or elsewhere)."""


@dataclass(slots=True)
class _Pending:
    rows: np.ndarray
    future: asyncio.Future[Result]
    arrived: float  # loop.time() when it was queued


class Batcher:
    """Gathers concurrent requests into ONNX Runtime calls of up to ``max_batch_size``
    rows; see the module docstring for the rules.

    ``on_batch(rows, seconds)`` is called on the event loop after every ORT call (failed
    ones included) with the batch's rows and the call's wall time, for metrics.
    """

    def __init__(
        self,
        get_model: Callable[[], ServedModel],
        *,
        max_batch_size: int = 128,
        max_wait_ms: float = 0.0,
        max_queue_rows: int = 2048,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        if max_batch_size < 1 or max_queue_rows < 1 or max_wait_ms < 0:
            raise ValueError(
                "max_batch_size and max_queue_rows must be at least 1 and max_wait_ms at "
                f"least 0, got {max_batch_size}, {max_queue_rows}, {max_wait_ms}"
            )
        self.get_model = get_model
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000
        self.max_queue_rows = max_queue_rows
        self.on_batch = on_batch
        self._queue: deque[_Pending] = deque()
        self._queue_rows = 0
        self._in_flight = 0
        self._batch_s = INITIAL_BATCH_S
        self._wakeup = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        #: batches handed to the worker and not yet answered (running or next in line)
        self._sent = 0
        self._batch_tasks: set[asyncio.Task[None]] = set()
        self._executor: ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the collector on the running loop (idempotent)."""
        if self._task is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._closing = False
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shipyard-ort")
        self._task = asyncio.create_task(self._collect(), name="shipyard-batcher")

    async def stop(self) -> None:
        """Refuse new requests, answer every queued one, then stop the worker thread."""
        if self._task is None:
            return
        self._closing = True
        self._wakeup.set()
        try:
            await self._task
        finally:
            self._task = None
            if self._executor is not None:
                self._executor.shutdown(wait=False)
                self._executor = None

    # -- requests ---------------------------------------------------------------------------

    @property
    def queue_rows(self) -> int:
        """Rows waiting for a batch (not counting the batch that is running)."""
        return self._queue_rows

    @property
    def in_flight(self) -> int:
        """Requests accepted and not yet answered (queued or in the running batch)."""
        return self._in_flight

    async def submit(self, rows: np.ndarray) -> Result:
        """Predict one request's rows (shape ``(n, ...)``, n >= 1) together with whatever
        else is queued; returns this request's slice of every output and the model that
        computed it. Raises :class:`QueueFull` at once when the queue is full, and
        whatever ORT raised for the batch it was in."""
        if self._task is None or self._closing or self._loop is None:
            raise BatcherClosed("the model server is shutting down", self._retry_after())
        rows = np.asarray(rows)
        if rows.dtype.kind != "i":  # token ids stay int64; everything else is float32
            rows = rows.astype(np.float32, copy=False)
        if rows.ndim == 0 or len(rows) == 0:
            raise ValueError(f"a request needs at least one row, got shape {list(rows.shape)}")
        n = len(rows)
        if self._queue and self._queue_rows + n > self.max_queue_rows:
            raise QueueFull(
                f"the prediction queue is full ({self._queue_rows} rows waiting, at most "
                f"{self.max_queue_rows})",
                self._retry_after(),
            )
        future: asyncio.Future[Result] = self._loop.create_future()
        self._queue.append(_Pending(rows, future, self._loop.time()))
        self._queue_rows += n
        self._in_flight += 1
        # Wake the collector only when it has something new to decide: the first request
        # (start the wait) or a full batch (stop waiting).
        if len(self._queue) == 1 or self._queue_rows >= self.max_batch_size:
            self._wakeup.set()
        try:
            return await future
        finally:
            self._in_flight -= 1

    def _retry_after(self) -> float:
        """Time to work through the queue: the batches ahead of a new request plus the one
        running, at the recent batch time."""
        batches = math.ceil(self._queue_rows / self.max_batch_size) + 1
        return batches * self._batch_s

    # -- the collector ----------------------------------------------------------------------

    async def _collect(self) -> None:
        try:
            await self._batches(asyncio.get_running_loop())
        finally:
            # Empty after a drain; after a cancellation (the loop shutting down without
            # ``stop``) nobody may be left waiting forever.
            left = list(self._queue)
            self._queue.clear()
            self._queue_rows = 0
            _fail(left, BatcherClosed("the model server stopped", INITIAL_BATCH_S))

    async def _batches(self, loop: asyncio.AbstractEventLoop) -> None:
        """Decide, each time something changes, whether to send the queue's head batch."""
        while True:
            if not self._queue:
                if self._closing:
                    break
                await self._sleep(loop)
                continue
            full = self._queue_rows >= self.max_batch_size or self._closing
            if self._sent >= MAX_SENT or (self._sent and not full):
                # The worker is busy: rows keep gathering until it is free, or until a
                # full batch can wait in line behind the running one.
                await self._sleep(loop)
                continue
            if not full:
                deadline = self._queue[0].arrived + self.max_wait_s
                if deadline > loop.time():
                    await self._sleep(loop, deadline)
                    continue
            batch = self._take()
            if batch:
                self._sent += 1
                task = loop.create_task(self._process(batch, loop))
                self._batch_tasks.add(task)
                task.add_done_callback(self._batch_done)
        if self._batch_tasks:
            await asyncio.wait(set(self._batch_tasks))

    async def _sleep(self, loop: asyncio.AbstractEventLoop, until: float | None = None) -> None:
        """Until ``submit``, a finished batch or ``stop`` wakes the collector (or ``until``)."""
        self._wakeup.clear()
        timer = None if until is None else loop.call_at(until, self._wakeup.set)
        try:
            await self._wakeup.wait()
        finally:
            if timer is not None:
                timer.cancel()

    def _batch_done(self, task: asyncio.Task[None]) -> None:
        self._batch_tasks.discard(task)
        self._sent -= 1
        self._wakeup.set()

    def _take(self) -> list[_Pending]:
        """Whole requests from the head of the queue: up to ``max_batch_size`` rows of one
        per-row shape (a single larger request alone); cancelled callers are dropped.
        Token ids of any length share a batch: ``_predict`` pads them to the longest."""
        taken: list[_Pending] = []
        total = 0
        while self._queue:
            head = self._queue[0]
            n = len(head.rows)
            if head.future.done():  # the caller went away while queued
                self._queue.popleft()
                self._queue_rows -= n
                continue
            if taken and (
                total + n > self.max_batch_size or not _joinable(head.rows, taken[0].rows)
            ):
                break
            self._queue.popleft()
            self._queue_rows -= n
            taken.append(head)
            total += n
            if total >= self.max_batch_size:
                break
        return taken

    async def _process(self, batch: list[_Pending], loop: asyncio.AbstractEventLoop) -> None:
        """Run one batch in the worker thread and answer its callers."""
        rows = sum(len(p.rows) for p in batch)
        try:
            model = self.get_model()
        except Exception as exc:  # no model to run: the batch's callers learn why
            _fail(batch, exc)
            return
        started = time.perf_counter()
        try:
            outputs, seconds = await loop.run_in_executor(
                self._executor, _predict, model, [p.rows for p in batch]
            )
        except asyncio.CancelledError:
            for pending in batch:
                pending.future.cancel()
            raise
        except Exception as exc:
            self._record(rows, time.perf_counter() - started)
            _fail(batch, exc)
            return
        self._record(rows, seconds)
        for pending, answer in zip(batch, outputs, strict=True):
            if not pending.future.done():
                pending.future.set_result((answer, model))

    def _record(self, rows: int, seconds: float) -> None:
        self._batch_s += EWMA_WEIGHT * (seconds - self._batch_s)
        if self.on_batch is not None:
            try:
                self.on_batch(rows, seconds)
            except Exception:  # a metrics hook must not stop the serving loop
                log.exception("on_batch hook failed")


def _fail(batch: list[_Pending], exc: BaseException) -> None:
    for pending in batch:
        if not pending.future.done():
            pending.future.set_exception(exc)


def _joinable(a: np.ndarray, b: np.ndarray) -> bool:
    """Rows of one shape join; so do token ids (int64, rows x tokens) of any length."""
    if a.shape[1:] == b.shape[1:]:
        return a.dtype == b.dtype
    return a.dtype.kind == b.dtype.kind == "i" and a.ndim == b.ndim == 2


def _join(model: ServedModel, parts: list[np.ndarray]) -> np.ndarray:
    """The requests' rows as one batch; token ids padded to the longest with the model's
    pad id (the graph masks padding, so a text's answer does not depend on its batch)."""
    if len(parts) == 1:
        return parts[0]
    if model.pad_id is not None and len({p.shape[1] for p in parts}) > 1:
        from shipyard.tasks.text.tokenizer import pad_rows

        return pad_rows(parts, model.pad_id)
    return np.concatenate(parts)


def _predict(model: ServedModel, parts: list[np.ndarray]) -> tuple[list[Outputs], float]:
    """In the worker thread: one ORT call on the requests' rows joined, split back per
    request (views, no copy). A model whose rows are not independent (dynamic int8) gets
    one call per request instead, so no request changes another's answer."""
    started = time.perf_counter()
    if not model.rows_independent:
        answers = [model.run(part) for part in parts]
        return answers, time.perf_counter() - started
    outputs = model.run(_join(model, parts))
    seconds = time.perf_counter() - started
    answers = []
    offset = 0
    for part in parts:
        end = offset + len(part)
        answers.append({name: value[offset:end] for name, value in outputs.items()})
        offset = end
    return answers, seconds
