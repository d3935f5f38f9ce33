"""``shipyard serve``: every start-up mistake is one line and exit code 2, before uvicorn."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from shipyard.cli_serve import _settings_values
from shipyard.serve.settings import ServeSettings


def serve(
    home: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environment = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SHIPYARD_SERVE_")},
        "SHIPYARD_HOME": str(home),
        "COLUMNS": "200",
        **(env or {}),
    }
    return subprocess.run(
        [sys.executable, "-m", "shipyard", "serve", *args],
        capture_output=True,
        text=True,
        env=environment,
        timeout=60,
        check=False,
        cwd=home.parent,
    )


def assert_usage_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def test_nothing_to_serve(packages: Any) -> None:
    assert_usage_error(serve(packages.home), "nothing to serve", "digits@champion", "--package")


def test_unknown_model_and_alias(packages: Any) -> None:
    assert_usage_error(serve(packages.home, "cats@champion"), "no registered model 'cats'", "wine")
    assert_usage_error(serve(packages.home, "wine@staging"), "wine has no alias 'staging'")


def test_missing_package_and_both_sources(packages: Any, tmp_path: Path) -> None:
    assert_usage_error(
        serve(packages.home, "--package", str(tmp_path / "nope")), "is not a model package"
    )
    assert_usage_error(
        serve(packages.home, "wine@champion", "--package", str(packages.wine.path)), "not both"
    )


def test_invalid_settings_name_the_key(packages: Any) -> None:
    path = str(packages.wine.path)
    assert_usage_error(
        serve(packages.home, "--package", path, "serve.max_batch_size=0"),
        "serve.max_batch_size",
        "SHIPYARD_SERVE_MAX_BATCH_SIZE",
    )
    assert_usage_error(
        serve(packages.home, "--package", path, env={"SHIPYARD_SERVE_MAX_WAIT_MS": "soon"}),
        "serve.max_wait_ms",
    )
    assert_usage_error(
        serve(packages.home, "--package", path, "serve.precision=int8"),
        "no model graph in int8",
    )
    assert_usage_error(serve(packages.home, "--package", path, "serve.nope=1"), "serve.nope")
    assert_usage_error(
        serve(packages.home, "--package", path, "serve.prediction_log_url=nonsense"),
        "'nonsense' is not a usable database URL",
    )


def test_a_port_in_use_is_one_line(packages: Any) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = serve(packages.home, "--package", str(packages.wine.path), "--port", str(port))
    assert_usage_error(result, f"cannot listen on 127.0.0.1:{port}", "--port")


def test_environment_beats_the_config_and_the_command_line_beats_both(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = {"max_batch_size": 64, "max_wait_ms": 2.0, "model": None, "port": 8000}
    monkeypatch.setenv("SHIPYARD_SERVE_MAX_BATCH_SIZE", "16")
    monkeypatch.setenv("SHIPYARD_SERVE_MAX_WAIT_MS", "5")
    values = _settings_values(config, ["serve.max_wait_ms=1", "task=tabular"])
    assert values == {"max_batch_size": "16", "max_wait_ms": 2.0, "port": 8000}
    settings = ServeSettings(**values, package="x")
    assert (settings.max_batch_size, settings.max_wait_ms) == (16, 2.0)


def test_settings_round_trip_through_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """What `shipyard serve` exports is exactly what a worker rebuilds."""
    token = secrets.token_hex(16)  # made per run: no credential lives in the repo
    settings = ServeSettings(
        model="wine@champion",
        package="/p",
        model_version="3",
        config_overrides=["tracking.uri=sqlite:///x.db", "paths.home=/h"],
        max_batch_size=8,
        prediction_log=False,
        admin_token=token,
    )
    env = settings.to_env()
    assert token not in str(env)  # the token travels only as SHIPYARD_ADMIN_TOKEN
    for name in ServeSettings.env_names():
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("SHIPYARD_ADMIN_TOKEN", token)
    rebuilt = ServeSettings()
    assert rebuilt == settings
    assert rebuilt.admin_token is not None
    assert rebuilt.admin_token.get_secret_value() == token
    monkeypatch.setenv("SHIPYARD_ADMIN_TOKEN", "  ")
    assert ServeSettings().admin_token is None  # blank: admin routes stay disabled


@pytest.mark.parametrize("variable", ["SHIPYARD_SERVE_HOME", "SHIPYARD_SERVE_CONFIG_OVERRIDES"])
def test_a_container_configures_the_registry_through_the_environment(
    packages: Any, servers: Any, tmp_path: Path, variable: str
) -> None:
    """A container sets no flags: the home (or overrides such as the tracking URI) come from
    SHIPYARD_SERVE_* variables, and `shipyard serve wine@champion` resolves the model there,
    not in the (empty) default home of the working directory."""
    import json

    import httpx

    elsewhere = tmp_path / "elsewhere" / "home"
    elsewhere.mkdir(parents=True)
    value = (
        str(packages.home)
        if variable == "SHIPYARD_SERVE_HOME"
        else json.dumps([f"paths.home={packages.home}"])
    )
    server = servers(elsewhere, "wine@champion", env={variable: value})
    metadata = httpx.get(f"{server.url}/v2/models/wine", timeout=20)
    assert metadata.status_code == 200, metadata.text
    assert metadata.json()["versions"] == ["1"]
