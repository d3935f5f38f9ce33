"""The serving process's side of the prediction log: hand answered requests to the writer.

The request path puts each answered request on a queue (no I/O, no copies). One thread lets
requests gather for :data:`GATHER_S`, concatenates their arrays and writes them as one frame
to the writer process (:mod:`shipyard.serve.logwriter`), where rows are built and written.
A writer that dies is restarted and the frame re-sent; rows it held in memory and had not yet
written or spooled are the only ones that can be lost, as with a crash of the server itself.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from typing import IO, Any

import numpy as np
import orjson

from shipyard.errors import UserError
from shipyard.serve.logwriter import encode_frame

log = logging.getLogger("shipyard.serve")

#: how long answered requests gather before they leave as one frame (sleeping frees the GIL)
GATHER_S = 0.05
#: rows in one frame at most
FRAME_ROWS = 4096
#: seconds the writer has to open the database (or its spool) at start-up
START_TIMEOUT_S = 60.0


@dataclass(frozen=True, slots=True)
class Answered:
    """One answered request, waiting to become prediction-log rows."""

    ids: list[str]
    model_name: str
    model_version: str
    task: str
    labels: list[str] | None
    columns: tuple[str, ...] | None
    features: np.ndarray
    raw: list[Any] | None
    outputs: dict[str, np.ndarray]
    latency_ms: float
    created_at: float  # epoch seconds, UTC


@dataclass(frozen=True, slots=True)
class Feedback:
    prediction_id: str
    label: Any
    created_at: float


@dataclass(frozen=True)
class WriterSettings:
    url: str
    spool: str
    queue_size: int
    batch_size: int
    flush_interval_s: float
    retry_interval_s: float


class Recorder:
    """Owns the writer process and the thread that feeds it."""

    _STOP = object()

    def __init__(self, settings: WriterSettings) -> None:
        self.settings = settings
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._stats: dict[str, float] = {}
        self._process: subprocess.Popen[bytes] | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start the writer and wait until its log is open (blocking: call from a thread)."""
        self._spawn()
        self._thread = threading.Thread(target=self._run, name="shipyard-recorder", daemon=True)
        self._thread.start()

    def close(self, timeout_s: float = 60.0) -> None:
        """Hand over everything queued, let the writer flush, wait for it to exit."""
        self._queue.put(self._STOP)
        if self._thread is not None:
            self._thread.join(timeout_s)
        process = self._process
        if process is None:
            return
        if process.stdin is not None:
            with contextlib.suppress(OSError):
                process.stdin.close()
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            log.error("prediction log: the writer did not finish in %g s; killing it", timeout_s)
            process.kill()

    # -- the request path ----------------------------------------------------------------------

    def put(self, item: Answered) -> None:
        self._queue.put(item)

    def feedback(self, prediction_id: str, label: Any) -> None:
        self._queue.put(Feedback(prediction_id, label, time.time()))

    def stats(self) -> dict[str, float]:
        """The writer's latest counters (queued, written, spooled, database_up, ...)."""
        return dict(self._stats)

    # -- the writer process ----------------------------------------------------------------------

    def _spawn(self) -> None:
        settings = self.settings
        argument = orjson.dumps(settings.__dict__).decode()
        process = subprocess.Popen(
            [sys.executable, "-m", "shipyard.serve.logwriter", argument],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        assert process.stdout is not None
        first = _read_line(process.stdout, START_TIMEOUT_S)
        message: dict[str, Any] = (
            orjson.loads(first) if first else {"error": "it exited without a word"}
        )
        if not message.get("ready"):
            process.kill()
            raise UserError(
                f"the prediction log could not start at {settings.url}: {message.get('error')}"
            )
        self._process = process
        if isinstance(message.get("stats"), dict):
            self._stats = message["stats"]
        threading.Thread(
            target=self._listen, args=(process.stdout,), name="shipyard-log-stats", daemon=True
        ).start()

    def _listen(self, stdout: IO[bytes]) -> None:
        for line in stdout:
            try:
                message = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if "stats" in message:
                self._stats = message["stats"]

    def _send(self, frame: bytes) -> None:
        """Write one frame; a dead writer is restarted once and the frame sent again."""
        for attempt in (1, 2):
            process = self._process
            try:
                if process is None or process.stdin is None:
                    raise BrokenPipeError("no writer")
                process.stdin.write(frame)
                process.stdin.flush()
                return
            except OSError:
                if attempt == 2:
                    raise
                code = process.poll() if process is not None else None
                log.error("prediction log: the writer exited (%s); restarting it", code)
                self._spawn()

    # -- the feeding thread -------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is self._STOP:
                return
            time.sleep(GATHER_S)
            items, stop = [item], False
            rows = _rows(item)
            while rows < FRAME_ROWS:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is self._STOP:
                    stop = True
                    break
                items.append(more)
                rows += _rows(more)
            try:
                for frame in frames(items):
                    self._send(frame)
            except Exception:  # keep feeding: the next frames may go through
                log.exception(
                    "prediction log: could not hand %d requests to the writer", len(items)
                )
            if stop:
                return


def _rows(item: Any) -> int:
    return len(item.ids) if isinstance(item, Answered) else 1


def frames(items: list[Any]) -> list[bytes]:
    """Frames for ``items`` in order: runs of predictions of one model and task become one
    frame each (their arrays concatenated); each feedback is a frame of its own."""
    out: list[bytes] = []
    run: list[Answered] = []

    def flush() -> None:
        if run:
            out.append(_predictions_frame(run))
            run.clear()

    for item in items:
        if isinstance(item, Feedback):
            flush()
            out.append(
                encode_frame(
                    {
                        "type": "feedback",
                        "prediction_id": item.prediction_id,
                        "label": item.label,
                        "created_at": item.created_at,
                        "id": uuid.uuid4().hex,
                    },
                    {},
                )
            )
            continue
        if run and (
            item.model_name != run[0].model_name
            or item.task != run[0].task
            or item.outputs.keys() != run[0].outputs.keys()
            or item.features.shape[1:] != run[0].features.shape[1:]
        ):
            flush()
        run.append(item)
    flush()
    return out


def _predictions_frame(items: list[Answered]) -> bytes:
    first = items[0]
    arrays = {"features": np.concatenate([i.features for i in items])}
    for name in first.outputs:
        arrays[name] = np.concatenate([i.outputs[name] for i in items])
    raw: list[Any] | None = None
    if first.columns is not None or first.raw is not None:  # tables and texts keep the input
        raw = []
        for item in items:
            raw.extend(item.raw if item.raw is not None else [None] * len(item.ids))
    header = {
        "type": "predictions",
        "model_name": first.model_name,
        "task": first.task,
        "labels": first.labels,
        "columns": list(first.columns) if first.columns is not None else None,
        "ids": [i for item in items for i in item.ids],
        "counts": [len(item.ids) for item in items],
        "created_at": [item.created_at for item in items],
        "versions": [item.model_version for item in items],
        "latency_ms": [item.latency_ms for item in items],
        "raw": raw,
    }
    return encode_frame(header, arrays)


def _read_line(stream: IO[bytes], timeout_s: float) -> bytes:
    """The first line of ``stream`` within ``timeout_s`` (b"" at EOF or timeout)."""
    result: list[bytes] = [b""]

    def read() -> None:
        result[0] = stream.readline()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout_s)
    return result[0]
