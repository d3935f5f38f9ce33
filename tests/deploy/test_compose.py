"""deploy/compose.yaml: the five services, each with a health check (so `docker compose up
--wait` can end healthy), pinned images, no secret in the file, bind mounts that exist, and
the wiring the other files assume (Prometheus scrapes `shipyard:8000`, Grafana reads the
provisioned folders). `docker compose config -q` validates it against Compose's schema where
a Compose CLI is installed."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
SERVICES = {"shipyard", "prometheus", "grafana", "mlflow", "postgres"}
SERVE_IMAGE = "${SHIPYARD_SERVE_IMAGE:-shipyard-serve:latest}"
SECRET_NAME = re.compile(r"PASSWORD|TOKEN|SECRET|(^|_)KEY$", re.IGNORECASE)
# ${VAR} or ${VAR:?message}: from the environment, never a default written here
FROM_ENV = re.compile(r"^\$\{\w+(:?\?[^}]*)?\}$")
URL_PASSWORD = re.compile(r"://[^:/@\s]+:([^@\s]+)@")
# Throwaway values made per test run: no credential, not even a test one, lives in the repo.
REQUIRED_ENV = {
    "POSTGRES_PASSWORD": secrets.token_hex(8),
    "GRAFANA_ADMIN_PASSWORD": secrets.token_hex(8),
}
ADMIN_TOKEN = secrets.token_hex(8)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    return loaded


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose["services"]
    return found


def environment(service: dict[str, Any]) -> dict[str, Any]:
    env = service.get("environment", {})
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return dict(env)


def test_the_stack_has_its_five_services(services: dict[str, dict[str, Any]]) -> None:
    assert set(services) == SERVICES


def test_every_service_has_a_health_check(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        check = service.get("healthcheck", {})
        assert check.get("test"), f"{name} has no health check"
        assert not check.get("disable"), f"{name} disables its health check"
        assert check["test"][0] in ("CMD", "CMD-SHELL"), name
        assert "curl" not in str(check["test"]), f"{name}: slim images have no curl"


def test_images_are_pinned(services: dict[str, dict[str, Any]]) -> None:
    assert services["shipyard"]["image"] == SERVE_IMAGE
    for name, service in services.items():
        if name == "shipyard":
            continue
        image = service["image"]
        tag = image.rpartition(":")[2] if ":" in image else ""
        assert "@sha256:" in image or (tag and tag != "latest" and re.search(r"\d", tag)), (
            f"{name}: pin the image to a version, not {image!r}"
        )


def test_the_mlflow_image_is_built_from_a_pinned_base() -> None:
    dockerfile = (DEPLOY / "mlflow" / "Dockerfile").read_text(encoding="utf-8")
    assert re.search(r"^ARG MLFLOW_VERSION=\d+\.\d+\.\d+$", dockerfile, re.MULTILINE)
    assert "FROM ghcr.io/mlflow/mlflow:v${MLFLOW_VERSION}" in dockerfile
    assert re.search(r"pip install --no-cache-dir psycopg2-binary==[\d.]+", dockerfile)


def test_mlflow_matches_the_locked_mlflow(services: dict[str, dict[str, Any]]) -> None:
    locked = re.search(r"^mlflow==([\d.]+)$", (ROOT / "constraints.txt").read_text(), re.MULTILINE)
    assert locked, "mlflow is not in constraints.txt"
    mlflow = services["mlflow"]
    assert str(mlflow["build"]["args"]["MLFLOW_VERSION"]) == locked[1]
    assert mlflow["image"].endswith(f":{locked[1]}")


def test_no_secret_is_written_in_the_file(services: dict[str, dict[str, Any]]) -> None:
    problems = []
    for name, service in services.items():
        for key, value in environment(service).items():
            text = "" if value is None else str(value)
            if SECRET_NAME.search(key) and value is not None and not FROM_ENV.match(text):
                problems.append(f"{name}.{key}: take it from the environment, e.g. ${{{key}:?...}}")
            for password in URL_PASSWORD.findall(text):
                if not FROM_ENV.match(password):
                    problems.append(f"{name}.{key}: the URL's password is written in the file")
    assert not problems, "\n".join(problems)
    assert environment(services["shipyard"])["SHIPYARD_ADMIN_TOKEN"] is None  # passed through


def test_ports_are_published_on_loopback_only(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} on every interface"


def test_bind_mounts_exist(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = str(volume).split(":", 1)[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name} mounts {source}, which is missing"


def test_the_wiring_matches_prometheus_and_grafana(services: dict[str, dict[str, Any]]) -> None:
    serve = services["shipyard"]
    env = environment(serve)
    assert env["SHIPYARD_SERVE_HOST"] == "0.0.0.0"
    assert str(env["SHIPYARD_SERVE_PORT"]) == "8000"
    assert env["SHIPYARD_SERVE_PREDICTION_LOG_URL"].startswith("postgresql+psycopg://")
    assert env["SHIPYARD_SERVE_PREDICTION_LOG_URL"].endswith("@postgres:5432/predictions")
    assert "/v2/health/ready" in str(serve["healthcheck"]["test"])
    assert serve["depends_on"]["postgres"]["condition"] == "service_healthy"

    assert "./prometheus:/etc/prometheus:ro" in services["prometheus"]["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in services["prometheus"]["command"]

    grafana = services["grafana"]
    assert "./grafana/provisioning:/etc/grafana/provisioning:ro" in grafana["volumes"]
    assert "./grafana/dashboards:/var/lib/grafana/dashboards:ro" in grafana["volumes"]
    home = environment(grafana)["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (DEPLOY / "grafana" / "dashboards" / Path(home).name).exists()

    init = (DEPLOY / "postgres" / "init" / "10-databases.sql").read_text(encoding="utf-8")
    assert "CREATE DATABASE mlflow;" in init
    assert "CREATE DATABASE predictions;" in init
    assert "pg_isready" in str(services["postgres"]["healthcheck"]["test"])
    assert environment(services["mlflow"])["MLFLOW_BACKEND_STORE_URI"].endswith(
        "@postgres:5432/mlflow"
    )


def run_compose(
    cli: list[str], env_file: Path, *args: str, **env: str
) -> subprocess.CompletedProcess[str]:
    """`docker compose` on the file, with an explicit env file so a developer's deploy/.env
    does not change the result."""
    clean = {k: v for k, v in os.environ.items() if k not in REQUIRED_ENV}
    return subprocess.run(
        [*cli, "--env-file", str(env_file), "-f", str(COMPOSE), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**clean, **env},
    )


def test_docker_compose_accepts_the_file(docker_compose: list[str], tmp_path: Path) -> None:
    env_file = tmp_path / "empty.env"
    env_file.write_text("")
    result = run_compose(docker_compose, env_file, "config", "-q", **REQUIRED_ENV)
    assert result.returncode == 0, result.stderr

    # the passwords are required, not defaulted
    result = run_compose(docker_compose, env_file, "config", "-q")
    assert result.returncode != 0
    assert "POSTGRES_PASSWORD" in result.stderr
    assert "GRAFANA_ADMIN_PASSWORD" in result.stderr

    # what the server gets: the password interpolated, the admin token passed through
    result = run_compose(
        docker_compose,
        env_file,
        "config",
        "--format",
        "json",
        **REQUIRED_ENV,
        SHIPYARD_ADMIN_TOKEN=ADMIN_TOKEN,
    )
    assert result.returncode == 0, result.stderr
    rendered = yaml.safe_load(result.stdout)["services"]["shipyard"]["environment"]
    assert rendered["SHIPYARD_ADMIN_TOKEN"] == ADMIN_TOKEN
    assert rendered["SHIPYARD_SERVE_PREDICTION_LOG_URL"] == (
        f"postgresql+psycopg://shipyard:{REQUIRED_ENV['POSTGRES_PASSWORD']}@postgres:5432/predictions"
    )
