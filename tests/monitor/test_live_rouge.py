"""Live ROUGE-L for a model that generates text: real prediction-log rows and feedback in
SQLite, scored by the same ``rouge`` as the package's test split."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from shipyard.errors import UserError
from shipyard.monitor.accuracy import live_margin, live_metric, score
from shipyard.serve.predlog import FeedbackRow, PredictionLog, PredictionRow
from shipyard.tasks.summarize.metrics import rouge

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
SUMMARIES = [
    "the model beats the lead baseline on papers",
    "a parser for long sentences",
    "results on three benchmarks",
    "no feedback for this one",
]
REFERENCES = [
    "the model beats the lead-3 baseline on scientific papers",
    "a fast parser for long sentences",
    "unrelated words entirely",
]


def prediction(i: int, summary: str) -> PredictionRow:
    return PredictionRow(
        id=f"s{i:03d}",
        created_at=T0 + timedelta(seconds=i),
        model_name="aclsum",
        model_version="1",
        input=f"document {i}",
        monitor_features={"characters": 10.0},
        embedding=None,
        output={"summary": summary},
        probabilities=None,
        latency_ms=5.0,
    )


def feedback(i: int, label: Any, after_s: float = 60) -> FeedbackRow:
    return FeedbackRow(
        prediction_id=f"s{i:03d}", label=label, created_at=T0 + timedelta(seconds=i + after_s)
    )


@pytest.fixture
def log_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'log.db'}"
    rows: list[Any] = [prediction(i, s) for i, s in enumerate(SUMMARIES)]
    rows += [feedback(i, r) for i, r in enumerate(REFERENCES)]
    rows.append(feedback(2, 7.0, after_s=10))  # older, and not a text: the newest counts
    log = PredictionLog(url, tmp_path / "spool")
    log.start()
    try:
        for row in rows:
            (log.record if isinstance(row, PredictionRow) else log.feedback)(row)
    finally:
        log.close(timeout_s=60)
    return url


def test_live_rouge_l_is_the_test_splits_rouge_over_the_fed_back_predictions(
    log_url: str,
) -> None:
    expected = rouge(SUMMARIES[:3], REFERENCES)["rougeL"]
    got = live_metric(
        log_url, "aclsum", "1", window=100, test_metric=0.6, metric="rougeL", margin=0.05
    )
    assert (got.metric, got.samples) == ("rougeL", 3)
    assert got.value == pytest.approx(expected)
    assert got.drop == pytest.approx(0.6 - expected)  # higher is better: test - live
    assert got.alert is (0.6 - expected > 0.05)
    newest_two = live_metric(
        log_url, "aclsum", "1", window=2, test_metric=None, metric="rougeL", margin=0.05
    )
    assert newest_two.samples == 2
    assert newest_two.value == pytest.approx(rouge(SUMMARIES[1:3], REFERENCES[1:])["rougeL"])


def test_rouge_skips_feedback_that_is_not_a_text_and_outputs_without_a_summary() -> None:
    rows = [
        ({"summary": "a b c"}, "a b c"),
        ({"summary": "a b c"}, 3.0),
        ({"summary": "a b c"}, "  "),
        ({"label": "x"}, "a b c"),
        (None, "a b c"),
    ]
    assert score(rows, "rougeL") == (pytest.approx(1.0), 1)
    assert score(rows[1:], "rougeL") == (None, 0)


def test_the_allowed_drop_of_rouge_l_is_the_accuracy_margin() -> None:
    """Both are shares in 0..1: monitor.accuracy_margin applies to ROUGE-L F1 points."""
    assert live_margin("rougeL", 0.3, 0.05, None) == 0.05
    assert live_margin("rougeL", 0.3, 0.02, 9.0) == 0.02


def test_an_unknown_metric_is_still_refused() -> None:
    with pytest.raises(UserError, match="rougeL"):
        live_metric("sqlite://", "m", None, window=1, test_metric=None, metric="bleu", margin=0)  # type: ignore[arg-type]
