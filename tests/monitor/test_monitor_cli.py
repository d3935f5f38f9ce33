"""``shipyard monitor drift`` and ``shipyard monitor accuracy`` as a user runs them: the
installed command in a subprocess, against a real package and a real prediction log."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

Trained = Any  # conftest.Trained


def shipyard(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SHIPYARD_SERVE_")},
        "SHIPYARD_HOME": str(home),
        "COLUMNS": "200",
    }
    return subprocess.run(
        [sys.executable, "-m", "shipyard", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )


def one_line_error(done: subprocess.CompletedProcess[str], expected: str) -> None:
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ")
    assert expected in lines[0], lines[0]
    assert done.stdout == ""


@pytest.mark.slow  # a fresh interpreter imports Evidently: 6-10 s on two cores
def test_drift_json_is_one_object_with_the_summary(
    wine: Trained, traffic: Callable[..., str]
) -> None:
    url = traffic(wine, "feature-shift", 27)
    started = time.perf_counter()
    done = shipyard(
        wine.home,
        "monitor", "drift", "--package", str(wine.package.path), "--name", "wine",
        "--window", "27", "--json", f"serve.prediction_log_url={url}", "monitor.min_rows=20",
    )  # fmt: skip
    print(f"`shipyard monitor drift --json` took {time.perf_counter() - started:.1f} s")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1
    summary = json.loads(lines[0])
    assert summary["dataset_drift"] is True
    assert summary["model"] == {"name": "wine", "version": None, "versions": ["1"]}
    assert summary["window"]["rows"] == 27
    assert {c["kind"] for c in summary["features"]} == {"feature", "output"}
    latest = wine.home / "monitoring" / "drift" / "latest.json"
    assert json.loads(latest.read_text()) == summary
    assert Path(summary["report_html"]).is_file()


def test_drift_table_and_json_in_process(wine: Trained, traffic: Callable[..., str]) -> None:
    """The same commands in this process (Evidently is imported once per test session)."""
    from typer.testing import CliRunner

    from shipyard.cli import app

    url = traffic(wine, "clean", 27)
    args = ["monitor", "drift", "--package", str(wine.package.path), "--name", "wine"]
    args += [f"serve.prediction_log_url={url}", "monitor.min_rows=20"]
    env = {"SHIPYARD_HOME": str(wine.home), "COLUMNS": "200"}
    as_json = CliRunner().invoke(app, [*args, "--json"], env=env)
    assert as_json.exit_code == 0, as_json.output
    summary = json.loads(as_json.stdout)
    assert summary["dataset_drift"] is False
    assert summary["window"]["rows"] == 27
    assert summary["report_html"].endswith(".html")
    result = CliRunner().invoke(app, args, env=env)
    assert result.exit_code == 0, result.output
    for text in ("alcohol", "feature", "confidence", "output", "K-S p_value", "chi-square"):
        assert text in result.output
    assert "Dataset: no drift" in result.output
    assert "Report: " in result.output


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--since", "yesterday"], "--since 'yesterday' is neither an ISO time"),
        (["--since", "2999-01-01T00:00:00Z"], "is in the future"),
        (["--since", "1h", "--window", "5"], "give --window N or --since TIME, not both"),
        (["--window", "0"], "--window must be at least 1"),
        (["--window", "5", "monitor.min_rows=20"], "needs at least 20 (monitor.min_rows)"),
        (["--model", "wine@champion", "--package", "x"], "not both"),
    ],
)
def test_drift_mistakes_exit_2_with_one_line(
    wine: Trained, traffic: Callable[..., str], args: list[str], expected: str
) -> None:
    url = traffic(wine, "clean", 27)
    package = [] if "--package" in args else ["--package", str(wine.package.path)]
    done = shipyard(
        wine.home, "monitor", "drift", *package, "--name", "wine", *args,
        f"serve.prediction_log_url={url}",
    )  # fmt: skip
    one_line_error(done, expected)


def test_without_a_model_or_a_log_it_says_what_to_do(wine: Trained, tmp_path: Path) -> None:
    one_line_error(shipyard(tmp_path, "monitor", "drift"), "which model? give --model")
    one_line_error(
        shipyard(tmp_path, "monitor", "accuracy", "--package", str(wine.package.path)),
        "no prediction log at",
    )


def test_accuracy_json_is_exact(
    wine: Trained, feedback_traffic: Callable[..., Any], tmp_path: Path
) -> None:
    logged = feedback_traffic(wine, f"sqlite:///{tmp_path / 'feedback.db'}")
    done = shipyard(
        wine.home, "monitor", "accuracy", "--package", str(wine.package.path), "--name", "wine",
        "--json", f"serve.prediction_log_url={logged.url}", "monitor.accuracy_min_samples=5",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    correct = sum(p == t for p, t in zip(logged.predicted, logged.truth, strict=True))
    test_accuracy = wine.package.manifest.graph("fp32").metrics["accuracy"]
    assert result == {
        "model": {"name": "wine", "version": None},
        "metric": "accuracy",
        "value": pytest.approx(correct / len(logged.truth)),
        "samples": len(logged.truth),
        "test_value": pytest.approx(test_accuracy),
        "drop": pytest.approx(test_accuracy - correct / len(logged.truth)),
        "alert": test_accuracy - correct / len(logged.truth) > 0.05,
        "window": 500,
        "margin": 0.05,
    }
    table = shipyard(
        wine.home, "monitor", "accuracy", "--package", str(wine.package.path), "--name", "wine",
        "--window", "10", f"serve.prediction_log_url={logged.url}",
    )  # fmt: skip
    assert table.returncode == 0, table.stderr
    assert "Live accuracy of wine" in table.stdout
    assert "10 (window 10)" in table.stdout


def test_a_registered_model_by_default(wine: Trained, feedback_traffic: Callable[..., Any]) -> None:
    """No --model: ``registry.model_name@champion``, its version's rows in the home's log."""
    logged = feedback_traffic(wine, f"sqlite:///{wine.home / 'predictions.db'}")
    done = shipyard(wine.home, "monitor", "accuracy", "--json", "registry.model_name=wine")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["model"] == {"name": "wine", "version": "1"}
    assert result["samples"] == len(logged.truth)
    wrong_version = shipyard(
        wine.home, "monitor", "accuracy", "--json", "--model", "wine@champion", "--version", "2"
    )
    assert json.loads(wrong_version.stdout)["samples"] == 0
