"""``shipyard simulate`` against real servers: every scenario's traffic is answered, its
feedback accepted, and the server's prediction log holds exactly what was sent."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from shipyard.loadtest.simulate import simulate
from shipyard.loadtest.traffic import draw_rows, find_snapshot, probe
from shipyard.monitor.scenarios import scenarios_for
from shipyard.tasks.base import DataKind

CLI = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="module")
def digits(serve: Callable[..., Any]) -> Any:
    return serve("digits")


@pytest.fixture(scope="module")
def wine(serve: Callable[..., Any]) -> Any:
    return serve("wine")


def test_simulate_sends_predictions_and_feedback_that_the_log_holds(
    cli: CLI, digits: Any, wait_for: Callable[..., None]
) -> None:
    logged, labelled = digits.logged(), digits.feedback()
    result = cli(
        "simulate", "--url", digits.url, "--scenario", "noise", "--requests", "24",
        "--batch", "2", "--feedback-share", "1.0", "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["sent"], summary["ok"], summary["errors"]) == (24, 24, {})
    assert summary["predictions"] == 48
    assert (summary["feedback_sent"], summary["feedback_ok"]) == (48, 48)
    assert sum(summary["predicted_labels"].values()) == 48
    assert summary["mean_latency_ms"] > 0
    # the server's SQLite log: exactly the 48 new predictions, each with its true label
    wait_for(
        lambda: (
            len(digits.logged() - logged) == 48 and len(digits.feedback()) == len(labelled) + 48
        ),
        "48 rows with feedback",
    )
    new = digits.logged() - logged
    feedback = {k: v for k, v in digits.feedback().items() if k not in labelled}
    assert set(feedback) == new
    assert set(feedback.values()) <= {str(d) for d in range(10)}


@pytest.mark.parametrize("task", ["digits", "wine"])
def test_every_applicable_scenario_is_answered_logged_and_labelled(
    task: str, request: pytest.FixtureRequest, built: Any
) -> None:
    served = request.getfixturevalue(task)
    model = probe(served.url)
    snapshot = find_snapshot(model, [f"paths.home={built.home}"])
    for scenario in scenarios_for(snapshot.kind):
        rows = draw_rows(snapshot, scenario, 16, seed=3)
        result = simulate(model, rows, requests=8, batch=2, feedback_share=0.5, seed=3)
        assert (result.sent, result.ok, dict(result.errors)) == (8, 8, {}), scenario
        ids = set(result.prediction_ids)
        assert len(ids) == 16
        assert 0 < result.feedback_sent == result.feedback_ok < 16, scenario
        served.wait_logged(ids, feedback=result.feedback_ok)
        labels = {k: v for k, v in served.feedback().items() if k in ids}
        assert len(labels) == result.feedback_ok
        assert set(labels.values()) <= set(model.labels)


def test_the_same_seed_sends_the_same_rows_and_a_shift_changes_them(
    digits: Any, built: Any
) -> None:
    model = probe(digits.url)
    snapshot = find_snapshot(model, [f"paths.home={built.home}"])
    test = snapshot.load("test")
    clean = draw_rows(snapshot, "clean", 40, seed=1)
    again = draw_rows(snapshot, "clean", 40, seed=1)
    noisy = draw_rows(snapshot, "noise", 40, seed=1)
    assert np.array_equal(clean.features, again.features)
    assert clean.labels == again.labels
    # clean rows are test rows, with their true labels
    first = np.flatnonzero((test.features == clean.features[0]).all(axis=(1, 2, 3)))
    assert snapshot.labels is not None
    assert clean.labels[0] in {snapshot.labels[int(test.target[i])] for i in first}
    assert not np.array_equal(clean.features, noisy.features)
    assert clean.labels == noisy.labels  # noise moves pixels, not labels
    assert snapshot.kind is DataKind.IMAGE


def test_an_unreachable_server_is_one_line_and_exit_2(
    bare_cli: CLI, refusal: Callable[..., str], unused_url: str
) -> None:
    line = refusal(bare_cli("simulate", "--url", unused_url))
    assert "cannot reach a Shipyard server" in line


def test_a_model_that_does_not_fit_the_data_is_one_line_and_exit_2(
    cli: CLI, wine: Any, refusal: Callable[..., str]
) -> None:
    before = wine.logged()
    line = refusal(cli("simulate", "--url", wine.url, "--requests", "5", "task=image"))
    assert "takes table rows with 13 columns" in line
    assert "holds images [8, 8, 1]" in line
    time.sleep(0.3)  # longer than the log's flush interval: a sent row would be there
    assert wine.logged() == before  # refused before any request


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("--url", "ftp://x"), "not an http(s) URL"),
        (("--requests", "0"), "--requests must be"),
        (("--feedback-share", "1.5"), "--feedback-share must be"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(
    bare_cli: CLI, refusal: Callable[..., str], args: tuple[str, ...], expected: str
) -> None:
    assert expected in refusal(bare_cli("simulate", *args))
