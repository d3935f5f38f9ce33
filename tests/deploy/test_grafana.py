"""The Grafana dashboard and its provisioning: every query is PromQL that Prometheus accepts
(checked by promtool as recording rules), every variable it uses exists, the panels cover
what an operator watches, and the provisioned data source is the one the dashboard uses."""

from __future__ import annotations

import re
import subprocess
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "deploy" / "grafana"

# Grafana's interval macros, replaced by a duration so that Prometheus can parse the query.
INTERVALS = re.compile(
    r"\$__(?:rate_interval|interval|range)\b|\$\{__(?:rate_interval|interval|range)\}"
)
VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")

Promtool = Callable[..., subprocess.CompletedProcess[str]]


def as_promql(query: str) -> str:
    """A query as Prometheus receives it: interval macros become 5m; the other variables
    (used inside regex matchers only) become `.*`, the "All" value."""
    return VARIABLE.sub(".*", INTERVALS.sub("5m", query))


def variables_used(query: str) -> set[str]:
    return {a or b for a, b in VARIABLE.findall(INTERVALS.sub("", query))}


def test_every_query_is_valid_promql(
    run_promtool: Promtool, dashboard_queries: list[tuple[str, str]], tmp_path: Path
) -> None:
    assert len(dashboard_queries) >= 30
    rules = [
        {"record": f"dashboard:query_{i}", "expr": as_promql(query)}
        for i, (_, query) in enumerate(dashboard_queries)
    ]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run_promtool("check", "rules", path)
    index = "\n".join(
        f"dashboard:query_{i} = {where}: {query}"
        for i, (where, query) in enumerate(dashboard_queries)
    )
    assert result.returncode == 0, f"{result.stdout}{result.stderr}\n{index}"


def test_queries_use_only_defined_variables(
    dashboard: dict[str, Any], dashboard_queries: list[tuple[str, str]]
) -> None:
    defined = {variable["name"] for variable in dashboard["templating"]["list"]}
    undefined = {
        where: sorted(variables_used(query) - defined)
        for where, query in dashboard_queries
        if variables_used(query) - defined
    }
    assert not undefined, undefined


def test_panels_are_well_formed(dashboard: dict[str, Any], panels: list[dict[str, Any]]) -> None:
    assert dashboard["uid"]
    assert dashboard["title"]
    ids = Counter(panel["id"] for panel in panels)
    assert not [pid for pid, n in ids.items() if n > 1], f"duplicate panel ids: {ids}"
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0, panel["title"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel.get("title"), panel
        assert panel.get("description"), f"panel {panel['title']!r} has no description"
        assert panel.get("targets"), f"panel {panel['title']!r} has no query"
        for target in [panel, *panel["targets"]]:
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel[
                "title"
            ]


def test_the_datasource_variable_defaults_to_the_provisioned_one(dashboard: dict[str, Any]) -> None:
    (variable,) = [v for v in dashboard["templating"]["list"] if v["name"] == "datasource"]
    assert variable["type"] == "datasource"
    assert variable["query"] == "prometheus"
    provisioned = yaml.safe_load(
        (GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text(encoding="utf-8")
    )
    (source,) = provisioned["datasources"]
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    assert variable["current"]["value"] == source["uid"]


def test_the_dashboard_provider_loads_the_dashboards_folder() -> None:
    provider = yaml.safe_load(
        (GRAFANA / "provisioning" / "dashboards" / "shipyard.yml").read_text(encoding="utf-8")
    )
    (entry,) = provider["providers"]
    assert entry["type"] == "file"
    assert entry["options"]["path"] == "/var/lib/grafana/dashboards"  # compose mounts it there


def test_the_dashboard_shows_what_an_operator_watches(
    dashboard_queries: list[tuple[str, str]],
) -> None:
    """Traffic, errors, latency, batching, queue, in-flight, classes, model version, drift,
    live vs test metric, prediction-log health."""
    text = "\n".join(query for _, query in dashboard_queries)
    wanted = [
        "shipyard_requests_total",
        'status=~"5.."',
        "histogram_quantile(0.5,",
        "histogram_quantile(0.95,",
        "histogram_quantile(0.99,",
        "shipyard_batch_size_bucket",
        "shipyard_queue_rows",
        "shipyard_queue_capacity_rows",
        "shipyard_in_flight_requests",
        "shipyard_predictions_total",
        "shipyard_model_info",
        "shipyard_model_ready",
        "shipyard_drift_score",
        "shipyard_dataset_drift",
        "shipyard_live_metric{",
        "shipyard_test_metric",
        "shipyard_prediction_log_database_up",
        "shipyard_prediction_log_rows",
        "ALERTS{",
    ]
    missing = [needle for needle in wanted if needle not in text]
    assert not missing, f"the dashboard has no query with {missing}"
