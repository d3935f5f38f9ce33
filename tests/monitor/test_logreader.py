"""Reading windows of a real prediction log, and parsing --since."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from shipyard.errors import UserError
from shipyard.monitor.logreader import parse_since, read_window
from shipyard.serve.predlog import PredictionLog, PredictionRow

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30m", NOW - timedelta(minutes=30)),
        ("1h", NOW - timedelta(hours=1)),
        ("1.5 h", NOW - timedelta(hours=1.5)),
        ("2d", NOW - timedelta(days=2)),
        ("45s", NOW - timedelta(seconds=45)),
        ("1W", NOW - timedelta(weeks=1)),
        ("2025-05-31T08:00:00Z", datetime(2025, 5, 31, 8, tzinfo=UTC)),
        ("2025-05-31T10:00:00+02:00", datetime(2025, 5, 31, 8, tzinfo=UTC)),
        ("2025-05-31 08:00", datetime(2025, 5, 31, 8, tzinfo=UTC)),  # no zone: UTC
        ("2025-05-31", datetime(2025, 5, 31, tzinfo=UTC)),
    ],
)
def test_since_takes_iso_times_and_spans(text: str, expected: datetime) -> None:
    assert parse_since(text, now=NOW) == expected


@pytest.mark.parametrize("text", ["yesterday", "1 hour", "-1h", "", "2025-13-01"])
def test_since_refuses_anything_else_in_one_line(text: str) -> None:
    with pytest.raises(UserError, match=r"--since .* is neither an ISO time") as error:
        parse_since(text, now=NOW)
    assert "\n" not in str(error.value)


def test_since_refuses_the_future() -> None:
    with pytest.raises(UserError, match="in the future"):
        parse_since("2025-06-02T00:00:00Z", now=NOW)


def rows(count: int, *, version: str = "1", start: datetime = NOW) -> list[PredictionRow]:
    return [
        PredictionRow(
            id=f"{version}-{i:04d}",
            created_at=start + timedelta(seconds=i),
            model_name="digits",
            model_version=version,
            input=None,
            monitor_features={"brightness": float(i), "contrast": 1.0},
            embedding=[float(i), 0.0, 1.0],
            output={"label": str(i % 3)},
            probabilities=[0.2, 0.3, 0.5],
            latency_ms=1.0,
        )
        for i in range(count)
    ]


@pytest.fixture
def log_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'log.db'}"
    log = PredictionLog(url, tmp_path / "spool")
    log.start()
    log.record_many(rows(50) + rows(5, version="2", start=NOW + timedelta(hours=1)))
    log.close(timeout_s=60)
    return url


def test_newest_rows_oldest_first(log_url: str) -> None:
    window = read_window(log_url, "digits", "1", window=10)
    assert window.rows == 10
    assert window.features["brightness"].tolist() == [float(i) for i in range(40, 50)]
    assert window.outputs.columns.tolist() == ["label", "confidence"]
    assert window.outputs["label"].tolist() == [str(i % 3) for i in range(40, 50)]
    assert window.outputs["confidence"].tolist() == [0.5] * 10
    assert window.embeddings is not None
    assert window.embeddings.shape == (10, 3)
    assert window.start == NOW + timedelta(seconds=40)
    assert window.end == NOW + timedelta(seconds=49)
    assert window.versions == ["1"]


def test_every_version_and_since(log_url: str) -> None:
    assert read_window(log_url, "digits", None, window=100).versions == ["1", "2"]
    recent = read_window(log_url, "digits", None, since=NOW + timedelta(seconds=45))
    assert recent.rows == 10  # 45..49 of v1, and v2's five
    capped = read_window(log_url, "digits", None, since=NOW, max_rows=7)
    assert capped.rows == 7
    assert capped.versions == ["1", "2"]  # the newest 7: v1's last two, v2's five
    assert read_window(log_url, "wine", None, window=10).rows == 0


def test_bad_windows_and_missing_logs_are_user_errors(tmp_path: Path, log_url: str) -> None:
    with pytest.raises(UserError, match="not both"):
        read_window(log_url, "digits", window=5, since=NOW)
    with pytest.raises(UserError, match="at least 1"):
        read_window(log_url, "digits", window=0)
    with pytest.raises(UserError, match="no prediction log at"):
        read_window(f"sqlite:///{tmp_path / 'nothing.db'}", "digits", window=5)
