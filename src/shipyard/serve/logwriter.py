"""The prediction-log writer process: builds rows from answered requests and writes them.

Why a process of its own: in the serving process, building rows (monitor features with
pandas, image digests, JSON for the embedding and probabilities) and SQLAlchemy's inserts
ran under the same GIL as the event loop, and halved throughput (digits, one worker: 3,500
requests/s with the log on against 6,700 with it off). Here that work runs on another core;
the server only copies the batch's arrays into one frame and writes it to this process's
stdin (:mod:`shipyard.serve.recorder`).

Protocol, both ways over pipes, no pickle:

* stdin, frames: ``u32 header length | header (JSON) | the arrays' bytes``, the header listing
  the arrays (name, dtype, shape) in order. ``type`` is ``predictions`` or ``feedback``. EOF
  means the server is done: the log is flushed and the process exits 0.
* stdout, JSON lines: ``{"ready": true}`` once the log is open (or ``{"error": "..."}``),
  then ``{"stats": {...}}`` every second and once at the end, for the server's gauges.

SIGINT and SIGTERM are ignored: a Ctrl-C in the terminal or an orchestrator's SIGTERM to
the process group must not kill the writer before the server has handed over its last rows.
"""

from __future__ import annotations

import logging
import math
import signal
import struct
import sys
import threading
from datetime import UTC, datetime
from typing import IO, Any

import numpy as np
import orjson

from shipyard.serve.inputs import image_digests
from shipyard.serve.predlog import FeedbackRow, PredictionLog, PredictionRow, encode_embedding

log = logging.getLogger("shipyard.serve.logwriter")

FRAME_HEADER = struct.Struct("<I")
#: a text-generating model's output array (numpy ``str``, one text per row), as
#: :data:`shipyard.serve.http.TEXT_OUTPUT` names it (not imported: this process needs no
#: FastAPI)
TEXT_OUTPUT = "summary"
STATS_INTERVAL_S = 1.0


def encode_frame(header: dict[str, Any], arrays: dict[str, np.ndarray]) -> bytes:
    """One frame: the header with the arrays' specs, then their bytes in that order."""
    contiguous = {name: np.ascontiguousarray(a) for name, a in arrays.items()}
    header = {
        **header,
        "arrays": [[name, a.dtype.str, list(a.shape)] for name, a in contiguous.items()],
    }
    head = orjson.dumps(header, option=orjson.OPT_SERIALIZE_NUMPY)
    return b"".join(
        [FRAME_HEADER.pack(len(head)), head, *(a.tobytes() for a in contiguous.values())]
    )


def read_frame(stream: IO[bytes]) -> tuple[dict[str, Any], dict[str, np.ndarray]] | None:
    """The next frame, or None at the end of the stream."""
    prefix = stream.read(FRAME_HEADER.size)
    if len(prefix) < FRAME_HEADER.size:
        return None
    (length,) = FRAME_HEADER.unpack(prefix)
    header = orjson.loads(stream.read(length))
    arrays: dict[str, np.ndarray] = {}
    for name, dtype, shape in header.pop("arrays"):
        kind = np.dtype(dtype)
        size = kind.itemsize * math.prod(shape)
        arrays[name] = np.frombuffer(stream.read(size), dtype=kind).reshape(shape)
    return header, arrays


class RowBuilder:
    """Prediction rows from one frame: the work that used to run in the serving process."""

    def __init__(self) -> None:
        self._tasks: dict[str, Any] = {}
        self._warned = False

    def rows(self, header: dict[str, Any], arrays: dict[str, np.ndarray]) -> list[PredictionRow]:
        features = arrays["features"]
        columns: list[str] | None = header.get("columns")
        texts = header.get("raw") if columns is None else None
        # Texts are described by their own statistics (the task's monitor features), not by
        # the token ids the graph ran on.
        monitor = self._monitor_features(
            header["task"], texts if texts is not None else features, columns
        )
        inputs = self._inputs(features, columns, header.get("raw"))
        n = len(features)
        labels: list[str] = header.get("labels") or []
        probabilities = arrays.get("probabilities")
        outputs: list[dict[str, Any]]
        probs: list[Any]
        texts_out = arrays.get(TEXT_OUTPUT)
        if probabilities is not None and labels:
            probs = probabilities.tolist()
            outputs = [{"label": labels[b]} for b in probabilities.argmax(axis=1).tolist()]
        elif texts_out is not None:  # a model that generates text: the text it generated
            probs = [None] * n
            outputs = [{TEXT_OUTPUT: str(text)} for text in texts_out.tolist()]
        else:
            probs = [None] * n
            values = arrays.get("value")
            outputs = (
                [{"value": v} for v in values.reshape(n, -1)[:, 0].astype(float).tolist()]
                if values is not None
                else [{"value": None}] * n
            )
        embedding = arrays.get("embedding")
        embeddings = (
            [encode_embedding(row) for row in embedding] if embedding is not None else [None] * n
        )
        rows: list[PredictionRow] = []
        row = 0
        for count, created, version, latency in zip(
            header["counts"],
            header["created_at"],
            header["versions"],
            header["latency_ms"],
            strict=True,
        ):
            created_at = datetime.fromtimestamp(created, UTC)
            for _ in range(count):
                rows.append(
                    PredictionRow(
                        id=header["ids"][row],
                        created_at=created_at,
                        model_name=header["model_name"],
                        model_version=version,
                        input=inputs[row],
                        monitor_features=monitor[row] if monitor else None,
                        embedding=embeddings[row],
                        output=outputs[row],
                        probabilities=probs[row],
                        latency_ms=latency,
                    )
                )
                row += 1
        return rows

    @staticmethod
    def _inputs(
        features: np.ndarray, columns: list[str] | None, raw: list[Any] | None
    ) -> list[Any]:
        """Tables raw (``{column: value}``, as sent); texts as sent; images as a digest
        {sha256, shape}."""
        if columns is None:
            return list(raw) if raw is not None else image_digests(features)
        raw = raw if raw is not None and len(raw) == len(features) else [None] * len(features)
        rows: list[Any] = []
        for value, numbers in zip(raw, features.astype(np.float64).tolist(), strict=True):
            if isinstance(value, list):
                rows.append(dict(zip(columns, value, strict=True)))
            elif value is not None:
                rows.append(value)
            else:
                rows.append(
                    {
                        c: (None if math.isnan(v) else v)
                        for c, v in zip(columns, numbers, strict=True)
                    }
                )
        return rows

    def _monitor_features(
        self, task_name: str, features: Any, columns: list[str] | None
    ) -> list[dict[str, float]] | None:
        """One ``Task.monitor_features`` call over the frame: the same torch-free function
        that built the snapshot's drift reference, so live traffic and reference are
        described alike."""
        try:
            task = self._tasks.get(task_name)
            if task is None:
                from shipyard.tasks import get_task

                task = self._tasks[task_name] = get_task(task_name)
            if columns is not None:
                import pandas as pd

                frame = task.monitor_features(pd.DataFrame(features, columns=columns))
            else:
                frame = task.monitor_features(features)
            names = [str(c) for c in frame.columns]
            rows = frame.to_numpy(dtype=np.float64).tolist()
            return [dict(zip(names, row, strict=True)) for row in rows]
        except Exception as exc:  # pandas missing in a slim install, say: log the rest anyway
            if not self._warned:
                log.warning("prediction log: no monitor features (%s: %s)", type(exc).__name__, exc)
                self._warned = True
            return None


def _say(out: IO[bytes], lock: threading.Lock, message: dict[str, Any]) -> None:
    with lock:
        out.write(orjson.dumps(message) + b"\n")
        out.flush()


def main(argv: list[str] | None = None) -> int:
    """Run the writer: ``python -m shipyard.serve.logwriter '<settings JSON>'``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    settings = orjson.loads((argv or sys.argv[1:])[0])
    out, lock = sys.stdout.buffer, threading.Lock()
    try:
        predlog = PredictionLog(
            settings["url"],
            settings["spool"],
            queue_size=settings["queue_size"],
            batch_size=settings["batch_size"],
            flush_interval_s=settings["flush_interval_s"],
            retry_interval_s=settings["retry_interval_s"],
        )
        predlog.start()
    except Exception as exc:
        _say(out, lock, {"error": f"{type(exc).__name__}: {exc}"})
        return 1
    _say(out, lock, {"ready": True, "stats": predlog.stats()})
    done = threading.Event()

    def report() -> None:
        while not done.wait(STATS_INTERVAL_S):
            _say(out, lock, {"stats": predlog.stats()})

    threading.Thread(target=report, name="shipyard-log-stats", daemon=True).start()
    builder = RowBuilder()
    stream = sys.stdin.buffer
    while (frame := read_frame(stream)) is not None:
        header, arrays = frame
        try:
            if header["type"] == "feedback":
                predlog.feedback(
                    FeedbackRow(
                        prediction_id=header["prediction_id"],
                        label=header["label"],
                        created_at=datetime.fromtimestamp(header["created_at"], UTC),
                        id=header["id"],
                    )
                )
            else:
                predlog.record_many(builder.rows(header, arrays))
        except Exception:  # a bug here must not stop recording the next requests
            log.exception("prediction log: could not record a frame (%s)", header.get("type"))
    done.set()
    predlog.close()
    _say(out, lock, {"stats": predlog.stats(), "closed": True})
    return 0


if __name__ == "__main__":
    sys.exit(main())
