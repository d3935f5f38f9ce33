"""``shipyard loadtest`` and the Locust file against real servers: bounded headless runs,
the HTML report, the per-endpoint table, failures counted, and the refusals."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from shipyard.loadtest.run import LOCUSTFILE
from shipyard.loadtest.sustained import plateau, throughput

CLI = Callable[..., subprocess.CompletedProcess[str]]
ENDPOINTS = ("/predict", "/predict/upload", "/v2/models/{name}/infer", "/feedback")


@pytest.fixture(scope="module")
def digits(serve: Callable[..., Any]) -> Any:
    return serve("digits")


def test_a_remote_url_needs_allow_remote(bare_cli: CLI, refusal: Callable[..., str]) -> None:
    line = refusal(bare_cli("loadtest", "--url", "http://192.0.2.10:8000", "--duration", "5"))
    assert "not a loopback address" in line
    assert "--allow-remote" in line


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("--users", "0"), "--users must be"),
        (("--users", "100000"), "--users must be"),
        (("--duration", "999999"), "--duration must be"),
        (("--spawn-rate", "0"), "--spawn-rate must be"),
        (("--rate", "-1"), "--rate must be"),
    ],
)
def test_runs_outside_the_bounds_are_refused(
    bare_cli: CLI, refusal: Callable[..., str], args: tuple[str, ...], expected: str
) -> None:
    assert expected in refusal(bare_cli("loadtest", *args))


def test_an_unreachable_server_is_refused_before_locust_starts(
    bare_cli: CLI, refusal: Callable[..., str], unused_url: str
) -> None:
    assert "cannot reach a Shipyard server" in refusal(bare_cli("loadtest", "--url", unused_url))


def test_saturation_is_the_best_windowed_rate() -> None:
    timeline = [
        {"t": float(t), "users": min(t + 1, 4), "requests": r, "failures": 0}
        for t, r in enumerate([0, 100, 300, 600, 900, 1200, 1500, 1700])
    ]
    rate, users = throughput(timeline, window_s=3)
    assert rate == pytest.approx(300.0)  # 300 -> 1200 or 600 -> 1500 over 3 s
    assert users == 4


@pytest.mark.slow
def test_a_short_headless_run_writes_the_report_and_the_table(
    cli: CLI, digits: Any, tmp_path: Path
) -> None:
    report = tmp_path / "reports" / "run.html"
    result = cli(
        "loadtest", "--url", digits.url, "--users", "5", "--spawn-rate", "5",
        "--duration", "5", "--html", str(report), "--server-pid", str(digits.pid),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert report.exists()
    assert "<html" in report.read_text(encoding="utf-8").lower()
    for endpoint in (*ENDPOINTS, "total"):
        assert endpoint in result.stdout
    assert "Failure rate 0.0000%" in result.stdout
    assert f"Server RSS, pid {digits.pid}" in result.stdout
    figures = json.loads((tmp_path / "reports" / "run_summary.json").read_text())
    assert figures["total"]["requests"] > 50
    assert figures["total"]["failures"] == 0
    assert {e["name"] for e in figures["endpoints"]} == set(ENDPOINTS)
    assert (tmp_path / "reports" / "run_stats.csv").exists()


@pytest.mark.slow
def test_failed_requests_fail_the_run_unless_allowed(
    cli: CLI, serve: Callable[..., Any], tmp_path: Path
) -> None:
    # without a prediction log the server refuses feedback (409): a real failing endpoint
    wine = serve("wine", "serve.prediction_log=false")
    common = ("loadtest", "--url", wine.url, "--users", "3", "--spawn-rate", "3", "--duration", "4")
    failing = cli(*common, "--html", str(tmp_path / "a.html"))
    assert failing.returncode == 1, failing.stdout + failing.stderr
    assert "failure POST /feedback" in failing.stdout
    assert "HTTP 409" in failing.stdout
    allowed = cli(
        *common, "--html", str(tmp_path / "b.html"), "--max-failure-rate", "0.6", "--json"
    )
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr
    summary = json.loads(allowed.stdout)
    assert 0 < summary["failure_rate"] <= 0.6
    assert {f["name"] for f in summary["failures"]} == {"/feedback"}
    by_name = {e["name"]: e for e in summary["endpoints"]}
    assert by_name["/predict"]["failures"] == 0
    assert "/predict/upload" not in by_name  # a table model: uploads become predictions


def test_the_locustfile_runs_under_plain_locust(digits: Any, built: Any, tmp_path: Path) -> None:
    summary = tmp_path / "summary.json"
    env = {
        **os.environ,
        "SHIPYARD_HOME": str(built.home),
        "SHIPYARD_LOAD_SUMMARY": str(summary),
        "SHIPYARD_LOAD_SCENARIO": "brightness",
    }
    result = subprocess.run(
        [
            sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
            "--host", digits.url, "-u", "2", "-r", "2", "-t", "3s", "--only-summary",
        ],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    figures = json.loads(summary.read_text())
    assert figures["total"]["requests"] > 10
    assert figures["total"]["failures"] == 0
    assert len(figures["timeline"]) >= 2


def test_the_plateau_is_the_median_rate_with_every_user_running() -> None:
    requests = [0, 50, 150, 350, 550, 700, 900, 1100]
    users = [1, 2, 3, 4, 4, 4, 4, 4]
    timeline = [
        {"t": float(t), "users": u, "requests": r, "failures": 0}
        for t, (u, r) in enumerate(zip(users, requests, strict=True))
    ]
    assert plateau(timeline) == pytest.approx(200.0)  # 200, 200, 150, 200, 200
    assert plateau([]) == 0.0
