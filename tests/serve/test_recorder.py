"""The prediction log's writer process and the server's side of it, with real processes and
a real SQLite file: frames survive the pipe exactly, rows are built as the server means them,
close() writes everything, and a writer that dies is replaced without losing what follows."""

from __future__ import annotations

import io
import os
import signal
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from shipyard.errors import UserError
from shipyard.serve.logwriter import RowBuilder, read_frame
from shipyard.serve.predlog import decode_embedding, feedback_table, predictions_table
from shipyard.serve.recorder import Answered, Feedback, Recorder, WriterSettings, frames

LABELS = ["a", "b", "c"]


def answered(
    rows: int,
    *,
    version: str = "1",
    columns: tuple[str, ...] | None = None,
    raw: list | None = None,
) -> Answered:
    rng = np.random.default_rng(rows)
    width = len(columns) if columns else 0
    features = (
        rng.normal(size=(rows, width)).astype(np.float32)
        if columns
        else rng.integers(0, 255, (rows, 4, 4, 1)).astype(np.float32)
    )
    probabilities = rng.dirichlet(np.ones(3), rows).astype(np.float32)
    return Answered(
        ids=[uuid.uuid4().hex for _ in range(rows)],
        model_name="m",
        model_version=version,
        task="tabular" if columns else "image",
        labels=LABELS,
        columns=columns,
        features=features,
        raw=raw,
        outputs={
            "probabilities": probabilities,
            "embedding": rng.normal(size=(rows, 5)).astype(np.float32),
        },
        latency_ms=2.5,
        created_at=time.time(),
    )


def decoded(frame: bytes) -> tuple[dict, dict]:
    result = read_frame(io.BytesIO(frame))
    assert result is not None
    return result


def test_frames_round_trip_and_rows_follow_each_request() -> None:
    first, second = answered(2, version="1"), answered(3, version="2")
    feedback = Feedback("some-id", "b", time.time())
    out = frames([first, second, feedback, answered(1)])
    assert len(out) == 3  # the two requests share a frame; feedback splits the run
    header, arrays = decoded(out[0])
    assert header["ids"] == first.ids + second.ids
    assert np.array_equal(arrays["features"], np.concatenate([first.features, second.features]))
    rows = RowBuilder().rows(header, arrays)
    assert [r.model_version for r in rows] == ["1", "1", "2", "2", "2"]
    assert [r.output["label"] for r in rows[:2]] == [
        LABELS[i] for i in first.outputs["probabilities"].argmax(axis=1)
    ]
    assert decode_embedding(rows[0].embedding) == pytest.approx(
        first.outputs["embedding"][0].tolist()
    )
    assert len(rows[0].input["sha256"]) == 64  # images are logged as a digest
    assert set(rows[0].monitor_features or {}) >= {"brightness", "contrast"}
    header, arrays = decoded(out[1])
    assert header["type"] == "feedback"
    assert not arrays
    assert header["prediction_id"] == "some-id"
    assert header["label"] == "b"


def test_table_rows_keep_what_the_client_sent() -> None:
    columns = ("x", "y")
    item = answered(2, columns=columns, raw=[{"x": 1.0, "y": None}, [3.0, 4.0]])
    rows = RowBuilder().rows(*decoded(frames([item])[0]))
    assert rows[0].input == {"x": 1.0, "y": None}
    assert rows[1].input == {"x": 3.0, "y": 4.0}


def writer(tmp_path: Path) -> tuple[Recorder, str]:
    url = f"sqlite:///{tmp_path / 'log.db'}"
    settings = WriterSettings(url, str(tmp_path / "spool"), 1000, 64, 0.02, 0.1)
    recorder = Recorder(settings)
    recorder.start()
    return recorder, url


def count(url: str, table: sa.Table) -> int:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            return int(
                connection.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
            )
    finally:
        engine.dispose()


def test_close_writes_every_row_and_feedback(tmp_path: Path) -> None:
    recorder, url = writer(tmp_path)
    items = [answered(n) for n in (1, 4, 2)]
    for item in items:
        recorder.put(item)
    recorder.feedback(items[0].ids[0], "c")
    recorder.close()
    assert count(url, predictions_table) == 7
    assert count(url, feedback_table) == 1
    assert recorder.stats()["written"] == 8  # the writer's counter: 7 predictions + 1 feedback


def test_a_killed_writer_is_replaced_and_later_rows_are_written(tmp_path: Path) -> None:
    recorder, url = writer(tmp_path)
    recorder.put(answered(3))
    deadline = time.monotonic() + 20
    while count_or_zero(url) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    process = recorder._process
    assert process is not None
    os.kill(process.pid, signal.SIGKILL)
    process.wait(10)
    recorder.put(answered(5))
    recorder.close()
    assert recorder._process is not process  # a new writer took over
    assert count(url, predictions_table) == 8


def count_or_zero(url: str) -> int:
    try:
        return count(url, predictions_table)
    except sa.exc.OperationalError:  # the writer has not created the table yet
        return 0


def test_a_log_that_cannot_start_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")  # a folder path through a plain file: nothing can create it
    settings = WriterSettings(
        "postgresql+nosuchdriver://x/y", str(blocker / "spool"), 10, 1, 0.1, 0.1
    )
    with pytest.raises(UserError, match="could not start") as error:
        Recorder(settings).start()
    assert "\n" not in str(error.value)
