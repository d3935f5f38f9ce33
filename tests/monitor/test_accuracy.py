"""Live accuracy from real prediction-log rows and feedback, on SQLite and PostgreSQL."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from shipyard.errors import UserError
from shipyard.monitor.accuracy import LiveMetric, live_metric
from shipyard.serve.predlog import FeedbackRow, PredictionLog, PredictionRow

PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)


def prediction(i: int, output: dict[str, Any], *, version: str = "1") -> PredictionRow:
    return PredictionRow(
        id=f"p{i:03d}",
        created_at=T0 + timedelta(seconds=i),
        model_name="digits",
        model_version=version,
        input={"sha256": "0" * 64, "shape": [8, 8, 1]},
        monitor_features={"brightness": 0.3},
        embedding=None,
        output=output,
        probabilities=None,
        latency_ms=1.0,
    )


def feedback(i: int, label: Any, *, after_s: float = 60) -> FeedbackRow:
    return FeedbackRow(
        prediction_id=f"p{i:03d}", label=label, created_at=T0 + timedelta(seconds=i + after_s)
    )


def write(url: str, spool: Path, rows: list[Any]) -> None:
    log = PredictionLog(url, spool)
    log.start()
    try:
        for row in rows:
            (log.record if isinstance(row, PredictionRow) else log.feedback)(row)
    finally:
        log.close(timeout_s=60)
    assert log.stats()["written"] == len(rows)


def classes_log() -> list[Any]:
    """Predictions 0..11 (newest: 11). Feedback on 0..9: correct on 0-5 and 8, wrong on 6, 7
    and 9; prediction 5 was first marked wrong, then corrected (the newest label counts);
    10 and 11 have none; 12 (version 2) is wrong."""
    rows: list[Any] = [prediction(i, {"label": str(i % 10)}) for i in range(12)]
    rows.append(prediction(12, {"label": "4"}, version="2"))
    rows += [feedback(i, str(i % 10)) for i in (0, 1, 2, 3, 4, 8)]
    rows += [feedback(5, "9", after_s=10), feedback(5, 5.0, after_s=20)]  # 5.0 means "5"
    rows += [feedback(6, "0"), feedback(7, "1"), feedback(9, "3"), feedback(12, "7")]
    return rows


def check_classes(url: str) -> None:
    # version 1: 10 with feedback, 7 correct
    got = live_metric(
        url, "digits", "1", window=100, test_metric=0.9, metric="accuracy", margin=0.1
    )
    assert got == LiveMetric(
        metric="accuracy",
        value=pytest.approx(0.7),
        samples=10,
        test_value=0.9,
        drop=pytest.approx(0.2),
        alert=True,
        window=100,
        margin=0.1,
    )
    # all versions: 11 with feedback, 7 correct
    every = live_metric(
        url, "digits", None, window=100, test_metric=0.9, metric="accuracy", margin=0.3
    )
    assert (every.samples, every.value, every.alert) == (11, pytest.approx(7 / 11), False)
    # the newest 4 with feedback (12 is v2): 9 wrong, 8 right, 7 wrong, 6 wrong
    newest = live_metric(
        url, "digits", "1", window=4, test_metric=0.9, metric="accuracy", margin=0.1
    )
    assert (newest.samples, newest.value) == (4, pytest.approx(0.25))
    # the drop must exceed the margin, and enough samples must back it
    assert not live_metric(
        url, "digits", "1", window=100, test_metric=0.9, metric="accuracy", margin=0.2
    ).alert
    quiet = live_metric(
        url,
        "digits",
        "1",
        window=100,
        test_metric=0.9,
        metric="accuracy",
        margin=0.1,
        min_samples=11,
    )
    assert quiet.drop == pytest.approx(0.2)
    assert not quiet.alert
    other = live_metric(
        url, "wine", None, window=100, test_metric=0.9, metric="accuracy", margin=0.1
    )
    assert (other.value, other.samples, other.drop, other.alert) == (None, 0, None, False)


def numbers_log() -> list[Any]:
    rows: list[Any] = [
        prediction(i, {"value": v}) for i, v in enumerate([10.0, 12.0, 9.0, 20.0, 5.0])
    ]
    rows += [feedback(0, 11.0), feedback(1, 12.0), feedback(2, 6.0), feedback(3, 22.5)]
    rows += [feedback(4, "not a number")]
    return rows


def check_numbers(url: str) -> None:
    got = live_metric(url, "digits", "1", window=10, test_metric=1.0, metric="mae", margin=0.5)
    assert got.samples == 4  # the text label is skipped
    assert got.value == pytest.approx((1.0 + 0.0 + 3.0 + 2.5) / 4)
    assert got.drop == pytest.approx(1.625 - 1.0)
    assert got.alert
    assert not live_metric(
        url, "digits", "1", window=10, test_metric=1.0, metric="mae", margin=1.0
    ).alert


def test_sqlite_classes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'log.db'}"
    write(url, tmp_path / "spool", classes_log())
    check_classes(url)
    engine = sa.create_engine(url)  # an engine the caller owns works the same
    try:
        got = live_metric(
            engine, "digits", "1", window=100, test_metric=None, metric="accuracy", margin=0.1
        )
        assert (got.value, got.test_value, got.drop, got.alert) == (
            pytest.approx(0.7),
            None,
            None,
            False,
        )
    finally:
        engine.dispose()


def test_sqlite_numbers(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'log.db'}"
    write(url, tmp_path / "spool", numbers_log())
    check_numbers(url)


def test_a_log_without_tables_has_no_value_yet(tmp_path: Path) -> None:
    path = tmp_path / "empty.db"
    sa.create_engine(f"sqlite:///{path}").connect().close()  # the file exists, no tables
    got = live_metric(
        f"sqlite:///{path}",
        "digits",
        None,
        window=10,
        test_metric=0.9,
        metric="accuracy",
        margin=0.1,
    )
    assert (got.value, got.samples, got.alert) == (None, 0, False)


def test_bad_arguments_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no prediction log at"):
        live_metric(
            f"sqlite:///{tmp_path / 'missing.db'}",
            "d",
            None,
            window=5,
            test_metric=None,
            metric="accuracy",
            margin=0.1,
        )
    assert not (tmp_path / "missing.db").exists()  # a reader never creates the database
    with pytest.raises(UserError, match="choose one of accuracy, mae"):
        live_metric(
            "sqlite:///x.db", "d", None, window=5, test_metric=None, metric="rmse", margin=0.1
        )  # type: ignore[arg-type]
    with pytest.raises(UserError, match="at least 1"):
        live_metric(
            "sqlite:///x.db", "d", None, window=0, test_metric=None, metric="accuracy", margin=0.1
        )


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """The local PostgreSQL's ``test`` database, in a schema of our own (dropped after)."""
    schema = f"monitor_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(PG_URL, connect_args={"connect_timeout": 3})
    try:
        with admin.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    except sa.exc.SQLAlchemyError as error:
        admin.dispose()
        reason = f"no PostgreSQL at {PG_URL}: {str(error).strip().splitlines()[0]}"
        print(f"skipped: {reason}")
        pytest.skip(reason)
    try:
        yield f"{PG_URL}?options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def test_postgres_classes(postgres_url: str, tmp_path: Path) -> None:
    write(postgres_url, tmp_path / "spool", classes_log())
    check_classes(postgres_url)


def test_postgres_numbers(postgres_url: str, tmp_path: Path) -> None:
    write(postgres_url, tmp_path / "spool", numbers_log())
    check_numbers(postgres_url)


def test_importing_it_loads_no_numpy_pandas_or_evidently() -> None:
    """The server calls it on a timer: importing it must not pull in the data stack."""
    code = (
        "import sys; import shipyard.monitor.accuracy; "
        "heavy = [m for m in ('numpy', 'pandas', 'evidently', 'torch') if m in sys.modules]; "
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
