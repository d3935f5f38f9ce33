"""Every `shipyard_*` series that the alerts, their unit tests, the dashboard and
docs/alerts.md name is one the server exposes (src/shipyard/serve/metrics.py), with the
labels it has — so a renamed metric fails here instead of leaving an alert that never fires
and a panel that says "No data"."""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
METRICS = ROOT / "src" / "shipyard" / "serve" / "metrics.py"
DEPLOY = ROOT / "deploy"

# Gauges the serving side is adding for monitoring (issue 5), by name with their labels.
# The serving engineer removes each entry once metrics.py defines it; until then an entry
# that metrics.py already defines must agree with it (test_planned_metrics_agree...).
PLANNED: dict[str, tuple[str, ...]] = {}
# Labels Prometheus adds to every scraped series.
TARGET_LABELS = {"job", "instance"}
KINDS = {"Counter", "Gauge", "Histogram", "Summary"}
NAME = re.compile(r"\bshipyard_[a-z0-9_]*[a-z0-9]")
SELECTOR = re.compile(r"\b(shipyard_[a-z0-9_]+)\{([^}]*)\}")
MATCHER = re.compile(r"(\w+)\s*(?:=~|!~|!=|=)")


@dataclass(frozen=True)
class Family:
    name: str
    kind: str
    labels: tuple[str, ...]

    def samples(self) -> dict[str, tuple[str, ...]]:
        """The series names the family exposes, each with its labels (as prometheus_client
        writes them: counters end in _total, histograms in _bucket/_sum/_count)."""
        if self.kind == "Counter":
            base = self.name.removesuffix("_total")
            return {f"{base}_total": self.labels, f"{base}_created": self.labels}
        if self.kind in ("Histogram", "Summary"):
            out = {f"{self.name}_{s}": self.labels for s in ("sum", "count", "created")}
            if self.kind == "Histogram":
                out[f"{self.name}_bucket"] = (*self.labels, "le")
            else:
                out[self.name] = (*self.labels, "quantile")
            return out
        return {self.name: self.labels}


def defined_families() -> dict[str, Family]:
    """The metric families metrics.py constructs: Counter("shipyard_x", doc, [labels], ...)."""
    families = {}
    for node in ast.walk(ast.parse(METRICS.read_text(encoding="utf-8"))):
        if not (isinstance(node, ast.Call) and getattr(node.func, "id", None) in KINDS):
            continue
        if not (node.args and isinstance(node.args[0], ast.Constant)):
            continue
        name = str(node.args[0].value)
        label_node = node.args[2] if len(node.args) > 2 else None
        for keyword in node.keywords:
            if keyword.arg == "labelnames":
                label_node = keyword.value
        labels = tuple(ast.literal_eval(label_node)) if label_node is not None else ()
        families[name] = Family(name, getattr(node.func, "id", ""), labels)
    return families


def known_series() -> dict[str, tuple[str, ...]]:
    series: dict[str, tuple[str, ...]] = {}
    for family in defined_families().values():
        series.update(family.samples())
    for name, labels in PLANNED.items():
        series.setdefault(name, labels)
    return series


def family_names() -> set[str]:
    """Names prose may use for a family as a whole (the histogram, the counter's base)."""
    return set(defined_families()) | set(PLANNED)


def strings_in(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [s for value in node.values() for s in strings_in(value)]
    if isinstance(node, list):
        return [s for value in node for s in strings_in(value)]
    return [node] if isinstance(node, str) else []


def texts() -> dict[str, str]:
    """Where names are used: the rules (expressions and annotations), the rules' tests
    (their input series), the dashboard (queries and panel text), and the runbook."""
    return {
        "alerts.yml": (DEPLOY / "prometheus" / "alerts.yml").read_text(encoding="utf-8"),
        "alerts_test.yml": (DEPLOY / "prometheus" / "alerts_test.yml").read_text(encoding="utf-8"),
        "shipyard.json": (DEPLOY / "grafana" / "dashboards" / "shipyard.json").read_text(
            encoding="utf-8"
        ),
        "docs/alerts.md": (ROOT / "docs" / "alerts.md").read_text(encoding="utf-8"),
    }


def queries(dashboard_queries: list[tuple[str, str]]) -> dict[str, str]:
    """The PromQL only: alert expressions, the tests' input series, the dashboard's queries."""
    rules = yaml.safe_load(texts()["alerts.yml"])
    tests = yaml.safe_load(texts()["alerts_test.yml"])
    out = {
        f"alerts.yml {rule.get('alert') or rule.get('record')}": rule["expr"]
        for group in rules["groups"]
        for rule in group["rules"]
    }
    out.update(
        {
            f"alerts_test.yml {test['name']!r}": series["series"]
            for test in tests["tests"]
            for series in test["input_series"]
        }
    )
    out.update({f"shipyard.json {where}": query for where, query in dashboard_queries})
    return out


def test_metrics_py_parses_into_the_known_families() -> None:
    families = defined_families()
    assert families["shipyard_requests"] == Family(
        "shipyard_requests", "Counter", ("route", "method", "status")
    )
    assert families["shipyard_request_duration_seconds"].kind == "Histogram"
    assert "shipyard_prediction_log_database_up" in families


def test_every_name_is_a_served_metric() -> None:
    allowed = set(known_series()) | family_names()
    unknown = {
        where: sorted(set(NAME.findall(text)) - allowed)
        for where, text in texts().items()
        if set(NAME.findall(text)) - allowed
    }
    assert not unknown, f"not in serve/metrics.py (nor PLANNED): {unknown}"


def test_queries_select_exposed_series_with_their_labels(
    dashboard_queries: list[tuple[str, str]],
) -> None:
    """Stricter for PromQL: a histogram is queried by _bucket/_sum/_count and a counter by
    _total, and a label matcher names a label the series has."""
    series = known_series()
    problems = []
    for where, query in queries(dashboard_queries).items():
        for name in sorted(set(NAME.findall(query))):
            if name not in series:
                problems.append(f"{where}: {name} is not an exposed series")
        for name, matchers in SELECTOR.findall(query):
            labels = set(series.get(name, ())) | TARGET_LABELS
            extra = set(MATCHER.findall(matchers)) - labels
            if name in series and extra:
                problems.append(f"{where}: {name} has no label {sorted(extra)}")
    assert not problems, "\n".join(problems)


def test_planned_metrics_agree_with_metrics_py_once_defined() -> None:
    families = defined_families()
    problems = []
    for name, labels in PLANNED.items():
        family = families.get(name)
        if family is None:
            continue  # not there yet
        if family.kind != "Gauge":
            problems.append(f"{name} is a {family.kind} in metrics.py, planned as a Gauge")
        if set(family.labels) != set(labels):
            problems.append(f"{name}: metrics.py has labels {family.labels}, deploy/ uses {labels}")
    assert not problems, "\n".join(problems)
