"""The alert rules and the Prometheus config: promtool accepts them, the rules' unit tests
pass, and every alert carries what an operator needs (severity, summary, description, a
runbook section in docs/alerts.md) and is unit-tested both firing and silent."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"
DOCS = ROOT / "docs" / "alerts.md"
SEVERITIES = {"critical", "warning", "info"}

Promtool = Callable[..., subprocess.CompletedProcess[str]]


def test_promtool_checks_the_rules(run_promtool: Promtool) -> None:
    result = run_promtool("check", "rules", PROMETHEUS / "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_the_rules_unit_tests_pass(run_promtool: Promtool) -> None:
    result = run_promtool("test", "rules", PROMETHEUS / "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_checks_the_config_and_the_rules_it_loads(run_promtool: Promtool) -> None:
    # rule_files are relative to the config file, so this works from any directory
    result = run_promtool("check", "config", PROMETHEUS / "prometheus.yml", cwd=Path("/"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout


def test_the_config_scrapes_the_compose_server_and_loads_the_rules() -> None:
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text(encoding="utf-8"))
    assert config["rule_files"] == ["alerts.yml"]
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == "shipyard"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert [t for c in job["static_configs"] for t in c["targets"]] == ["shipyard:8000"]


def test_every_alert_tells_an_operator_what_to_do(alert_rules: list[dict[str, Any]]) -> None:
    alerts = [rule for rule in alert_rules if "alert" in rule]
    assert len(alerts) >= 7
    docs = DOCS.read_text(encoding="utf-8")
    headings = set(re.findall(r"^#+\s+`?(\w+)`?\s*$", docs, flags=re.MULTILINE))
    problems = []
    for rule in alerts:
        name = rule["alert"]
        if not name.startswith("Shipyard"):
            problems.append(f"{name}: name it Shipyard* (the dashboard lists ALERTS by that)")
        if "for" not in rule:
            problems.append(f"{name}: no `for:` (say `for: 0m` for an event)")
        if rule.get("labels", {}).get("severity") not in SEVERITIES:
            problems.append(f"{name}: severity must be one of {sorted(SEVERITIES)}")
        notes = rule.get("annotations", {})
        for key in ("summary", "description"):
            if len(notes.get(key, "")) < 20:
                problems.append(f"{name}: no useful {key} annotation")
        if notes.get("runbook") != f"docs/alerts.md#{name.lower()}":
            problems.append(f"{name}: runbook annotation should be docs/alerts.md#{name.lower()}")
        if name not in headings:
            problems.append(f"{name}: docs/alerts.md has no heading `### {name}`")
    assert not problems, "\n".join(problems)


def test_the_required_alerts_exist(alert_rules: list[dict[str, Any]]) -> None:
    """Issue 5's list: error rate, p99 latency, queue saturation, drift, accuracy drop, model
    not ready — plus the prediction log's database and spool."""
    exprs = {rule["alert"]: rule["expr"] for rule in alert_rules if "alert" in rule}
    wanted = {
        "ShipyardHighErrorRate": 'status=~"5.."',
        "ShipyardHighLatencyP99": "histogram_quantile(0.99",
        "ShipyardQueueSaturated": "shipyard_queue_capacity_rows",
        "ShipyardDatasetDrift": "shipyard_dataset_drift",
        "ShipyardLiveMetricDrop": "shipyard_live_metric_alert",
        "ShipyardModelNotReady": "shipyard_model_ready",
        "ShipyardPredictionLogDatabaseDown": "shipyard_prediction_log_database_up",
        "ShipyardPredictionLogSpooling": 'state="spooled"',
    }
    for alert, needle in wanted.items():
        assert alert in exprs, f"no alert {alert}"
        assert needle in exprs[alert], f"{alert} does not use {needle}"


def test_every_alert_is_unit_tested_firing_and_silent(alert_rules: list[dict[str, Any]]) -> None:
    tests = yaml.safe_load((PROMETHEUS / "alerts_test.yml").read_text(encoding="utf-8"))
    assert tests["rule_files"] == ["alerts.yml"]
    fires: set[str] = set()
    silent: set[str] = set()
    for test in tests["tests"]:
        for case in test.get("alert_rule_test", []):
            (fires if case.get("exp_alerts") else silent).add(case["alertname"])
    alerts = {rule["alert"] for rule in alert_rules if "alert" in rule}
    assert not alerts - fires, f"no test where these fire: {sorted(alerts - fires)}"
    assert not alerts - silent, f"no test where these stay silent: {sorted(alerts - silent)}"
