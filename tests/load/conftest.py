"""Real packages, real servers and the real CLI for the traffic commands' tests.

The server helpers are the serving tests' own (``tests/serve/app/conftest.py``: a
``python -m shipyard serve`` subprocess on a free loopback port, waited for until ready),
loaded from that file so both suites start servers the same way. The packages are built
here, smaller: digits and wine trained for two epochs and exported once per session.
Every server gets its own SQLite prediction log, so a test can count exactly its rows.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

_SERVE_CONFTEST = Path(__file__).resolve().parents[1] / "serve" / "app" / "conftest.py"
_spec = importlib.util.spec_from_file_location("_shipyard_serve_app_helpers", _SERVE_CONFTEST)
assert _spec is not None
assert _spec.loader is not None
serve_helpers = sys.modules.setdefault(_spec.name, importlib.util.module_from_spec(_spec))
if not hasattr(serve_helpers, "start_server"):
    _spec.loader.exec_module(serve_helpers)

QUICK: tuple[str, ...] = serve_helpers.QUICK
Server = serve_helpers.Server
free_port: Callable[[], int] = serve_helpers.free_port
start_server: Callable[..., Any] = serve_helpers.start_server


@dataclass
class Built:
    """One session's home with an exported digits (image) and wine (table) package."""

    home: Path
    digits: Path
    wine: Path


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    from shipyard.config import compose
    from shipyard.export.build import export_run
    from shipyard.train.run import train

    home = tmp_path_factory.mktemp("load") / "home"

    def package(task: str) -> Path:
        cfg = compose([f"paths.home={home}", *QUICK, f"task={task}"])
        return Path(export_run(cfg, train(cfg).run_id).package.path)

    return Built(home=home, digits=package("image"), wine=package("tabular"))


@dataclass
class Served:
    """A running server and the SQLite file of its prediction log."""

    server: Any
    db: Path

    @property
    def url(self) -> str:
        return str(self.server.url)

    @property
    def pid(self) -> int:
        return int(self.server.process.pid)

    def logged(self) -> set[str]:
        """Prediction ids in the log (a fresh connection each time)."""
        if not self.db.exists():
            return set()
        with sqlite3.connect(self.db) as conn:
            return {row[0] for row in conn.execute("SELECT id FROM predictions")}

    def wait_logged(self, ids: set[str], feedback: int = 0) -> None:
        """Until every id is in the log and at least ``feedback`` feedback rows are."""
        _wait_for(
            lambda: ids <= self.logged() and len(self.feedback()) >= feedback,
            f"{len(ids)} predictions and {feedback} feedback rows in {self.db}",
        )

    def feedback(self) -> dict[str, Any]:
        """prediction id -> feedback label."""
        if not self.db.exists():
            return {}
        with sqlite3.connect(self.db) as conn:
            rows = conn.execute("SELECT prediction_id, label FROM feedback").fetchall()
        return {pid: json.loads(label) for pid, label in rows}


@pytest.fixture(scope="module")
def serve(built: Built) -> Iterator[Callable[..., Served]]:
    """Start a server for a package (``digits`` or ``wine``) with its own log; all are
    stopped (SIGTERM) after the module."""
    started: list[Any] = []

    def start(which: str, *overrides: str) -> Served:
        db = built.home.parent / f"log-{which}-{len(started)}-{os.getpid()}.db"
        server = start_server(
            built.home,
            "--package",
            str(getattr(built, which)),
            f"serve.prediction_log_url=sqlite:///{db}",
            "serve.prediction_log_flush_interval_s=0.05",
            *overrides,
        )
        started.append(server)
        return Served(server, db)

    yield start
    for server in started:
        server.stop()


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g} s: {what}")
        time.sleep(0.05)


def run_shipyard(*args: str, home: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """The installed CLI in a subprocess, as a user runs it."""
    env = {**os.environ, "SHIPYARD_HOME": str(home), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "shipyard", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=home.parent,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def cli(built: Built) -> Callable[..., subprocess.CompletedProcess[str]]:
    """``shipyard ARGS`` against the session's home (its snapshots)."""

    def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return run_shipyard(*args, home=built.home, timeout=timeout)

    return run


@pytest.fixture
def bare_cli(tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """``shipyard ARGS`` in an empty home: for refusals that need no model."""

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return run_shipyard(*args, home=tmp_path / "home", timeout=60)

    return run


@pytest.fixture(scope="session")
def wait_for() -> Callable[..., None]:
    """Poll ``condition`` until true, or fail naming ``what``."""
    return _wait_for


@pytest.fixture
def unused_url() -> str:
    """A loopback URL where nothing listens."""
    return f"http://127.0.0.1:{free_port()}"


@pytest.fixture(scope="session")
def refusal() -> Callable[[subprocess.CompletedProcess[str]], str]:
    """The CLI's refusal: exit 2, exactly one line on stderr (``error: ...``); that line."""

    def check(result: subprocess.CompletedProcess[str]) -> str:
        assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith("error: "), result.stderr
        return lines[0]

    return check
