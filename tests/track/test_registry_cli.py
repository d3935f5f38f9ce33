"""``shipyard register / models / promote / rollback`` as a user meets them: exit codes,
the gate's table on stdout and one line on stderr."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from shipyard.track.registry import register

Cli = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def home(trained, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The shared home with the trained runs, for the ``cli`` fixture's subprocesses."""
    monkeypatch.setenv("SHIPYARD_HOME", str(trained.home))
    return trained.home


def _error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def test_register_promote_list_history_rollback(cli: Cli, trained) -> None:
    name = "wine-cli"
    registered = cli("register", f"run={trained.good}", "--name", name, "--json")
    assert registered.returncode == 0, registered.stderr
    first = json.loads(registered.stdout)
    assert (first["name"], first["version"], first["reused"]) == (name, 1, False)
    # Set-up through the API (faster than another process); the CLI is what is tested.
    bad = register(trained.cfg(), trained.bad, name=name).version

    promoted = cli("promote", name, "1", "--json")
    assert promoted.returncode == 0, promoted.stderr
    summary = json.loads(promoted.stdout)
    assert summary["version"] == 1
    assert all(check["passed"] for check in summary["checks"])

    # None of these changes the registry, so they run side by side (each process spends
    # seconds importing MLflow).
    commands = {
        "refused": ("promote", name, str(bad)),
        "no_reason": ("promote", name, str(bad), "--force"),
        "listed": ("models", "list", name, "--json"),
        "history": ("models", "history", name),
        "rollback": ("rollback", name),
        "unknown": ("promote", "nope", "1"),
        "report": ("report", f"{name}@champion", "--json"),
    }
    with ThreadPoolExecutor(len(commands)) as pool:
        futures = {key: pool.submit(cli, *args) for key, args in commands.items()}
    results = {key: future.result() for key, future in futures.items()}

    refused = results["refused"]
    assert "the gate refused wine-cli v2: metric failed" in _error_line(refused)
    assert "Promotion gate" in refused.stdout
    assert "FAIL" in refused.stdout
    assert "--force needs --reason" in _error_line(results["no_reason"])
    assert "nothing to roll wine-cli back to" in _error_line(results["rollback"])
    assert "no registered model 'nope'" in _error_line(results["unknown"])

    listed = results["listed"]
    assert listed.returncode == 0, listed.stderr
    versions = {v["version"]: v["aliases"] for v in json.loads(listed.stdout)["versions"]}
    assert versions == {2: [], 1: ["champion"]}
    reported = results["report"]
    assert reported.returncode == 0, reported.stderr
    html = Path(json.loads(reported.stdout)["report"]).read_text()
    assert "<title>wine-cli v1</title>" in html
    assert "Champion history" in html
    assert trained.good in html  # the lineage chain names the run
    shown = results["history"]
    assert shown.returncode == 0, shown.stderr
    assert "promote" in shown.stdout
