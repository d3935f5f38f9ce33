"""The serving guarantees end to end, under concurrent load, against real servers.

``shipyard serve`` in a subprocess on a loopback port (the conftest's ``servers``), many
concurrent httpx clients, the prediction log read back from its database afterwards:

* batched answers equal unbatched ones (a server that batches against one started with
  ``serve.max_batch_size=1``), and batching really happened;
* SIGTERM in the middle of the load fails no in-flight request and loses no log row;
* a PostgreSQL outage loses no row once the database is back (skipped, saying why, where
  nothing answers on 127.0.0.1:5432).

Admin routes refusing a request without the token is ``test_admin_needs_the_bearer_token``
in ``test_app_server.py`` (and the schema fuzz replays them without it).
"""

from __future__ import annotations

import asyncio
import re
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import sqlalchemy as sa

from shipyard.serve.predlog import predictions_table

PG_HOST, PG_PORT = "127.0.0.1", 5432
#: every request and every wait of this file is bounded by this (seconds)
TIMEOUT = 20.0
LIMITS = httpx.Limits(max_connections=256, max_keepalive_connections=256)


# -- helpers ----------------------------------------------------------------------------------


def metric(text: str, name: str, labels: str = "") -> float:
    """One sample of the Prometheus text ``text``: ``name{labels} value``."""
    pattern = re.escape(name) + (r"\{" + re.escape(labels) + r"\}" if labels else "") + r" (\S+)"
    match = re.search(r"^" + pattern + r"$", text, re.MULTILINE)
    assert match, f"no {name}{{{labels}}} in /metrics"
    return float(match.group(1))


def wait_for(condition: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g} s: {what}")
        time.sleep(0.05)


def logged_ids(url: str) -> list[str]:
    """Every prediction id in the log's database (a fresh connection each time)."""
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.connect() as conn:
            return [str(i) for i in conn.execute(sa.select(predictions_table.c.id)).scalars()]
    finally:
        engine.dispose()


def prediction_ids(response: httpx.Response) -> list[str]:
    return [p["id"] for p in response.json()["predictions"]]


def request_bodies(packages: Any, task: str, n: int, wine_rows: Callable[..., Any]) -> list[Any]:
    """``n`` /predict bodies of 1 to 4 instances each, drawn from the test split."""
    rng = np.random.default_rng(7)
    if task == "image":
        pool: list[Any] = packages.digits_test[..., 0].tolist()
    else:
        pool = wine_rows(packages.wine_test)
    sizes = rng.integers(1, 5, size=n)
    return [{"instances": [pool[i] for i in rng.choice(len(pool), size)]} for size in sizes]


async def post_all(url: str, bodies: list[Any]) -> list[httpx.Response]:
    """All bodies to /predict at once, each on its own connection if need be."""
    async with httpx.AsyncClient(base_url=url, timeout=TIMEOUT, limits=LIMITS) as client:
        return await asyncio.wait_for(
            asyncio.gather(*(client.post("/predict", json=body) for body in bodies)), 2 * TIMEOUT
        )


# -- batched == unbatched ---------------------------------------------------------------------------


@pytest.mark.parametrize("task", ["image", "tabular"])
def test_batched_answers_equal_unbatched_ones(
    task: str, packages: Any, servers: Callable[..., Any], wine_rows: Callable[..., Any]
) -> None:
    """200 concurrent requests of 1-4 rows: a batching server (defaults) and a server
    that runs each request alone give the same labels and probabilities (1e-6), and the
    first one did gather several requests into one ONNX Runtime call."""
    package = packages.digits if task == "image" else packages.wine
    args = ("--package", str(package.path), "serve.prediction_log=false")
    batching = servers(packages.home, *args)
    alone = servers(packages.home, *args, "serve.max_batch_size=1")
    bodies = request_bodies(packages, task, 200, wine_rows)

    batched = asyncio.run(post_all(batching.url, bodies))
    unbatched = asyncio.run(post_all(alone.url, bodies))

    for body, a, b in zip(bodies, batched, unbatched, strict=True):
        assert a.status_code == b.status_code == 200, (a.text, b.text)
        pa, pb = a.json()["predictions"], b.json()["predictions"]
        assert len(pa) == len(pb) == len(body["instances"])
        assert [p["label"] for p in pa] == [p["label"] for p in pb]
        labels = list(pa[0]["probabilities"])
        got = np.array([[p["probabilities"][k] for k in labels] for p in pa])
        want = np.array([[p["probabilities"][k] for k in labels] for p in pb])
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)

    rows = sum(len(body["instances"]) for body in bodies)
    text = httpx.get(f"{batching.url}/metrics", timeout=TIMEOUT).text
    calls = metric(text, "shipyard_batch_size_count")
    assert metric(text, "shipyard_batch_size_sum") == rows
    assert calls < len(bodies), "no two requests ever shared an ONNX Runtime call"
    # a request has at most 4 rows: a call over more rows served several requests
    assert calls - metric(text, "shipyard_batch_size_bucket", 'le="4.0"') > 0
    text = httpx.get(f"{alone.url}/metrics", timeout=TIMEOUT).text
    assert metric(text, "shipyard_batch_size_count") == len(bodies)  # one call per request


# -- SIGTERM under load -----------------------------------------------------------------------------


@dataclass
class Sent:
    started: float
    finished: float
    status: int
    ids: list[str]


def test_sigterm_under_load_fails_no_request_and_loses_no_log_row(
    packages: Any, servers: Callable[..., Any], wine_rows: Callable[..., Any], tmp_path: Path
) -> None:
    """32 clients send back to back; SIGTERM lands while requests are in the server.
    Every request that got an answer got a 200 (the server stops accepting connections, so
    later requests are refused, not failed), and the log holds exactly one row per
    prediction answered — the rows still queued at SIGTERM are flushed on the way out."""
    url = f"sqlite:///{tmp_path / 'log.db'}"
    server = servers(
        packages.home,
        "--package",
        str(packages.digits.path),
        f"serve.prediction_log_url={url}",
        f"serve.prediction_log_spool={tmp_path / 'spool'}",
        "serve.prediction_log_flush_interval_s=1.0",  # rows wait in the queue at SIGTERM
        "serve.max_wait_ms=20",  # requests wait in the batcher at SIGTERM
    )
    bodies = request_bodies(packages, "image", 64, wine_rows)
    sent: list[Sent] = []
    refused: list[str] = []

    async def load() -> float:
        async with httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT, limits=LIMITS) as client:

            async def client_loop(k: int) -> None:
                for i in range(10_000):
                    started = time.monotonic()
                    try:
                        response = await client.post("/predict", json=bodies[(k + i) % len(bodies)])
                    except httpx.TransportError as exc:  # the server is gone: stop
                        refused.append(type(exc).__name__)
                        return
                    ids = prediction_ids(response) if response.status_code == 200 else []
                    sent.append(Sent(started, time.monotonic(), response.status_code, ids))

            loops = [asyncio.create_task(client_loop(k)) for k in range(32)]
            while len(sent) < 200 and not all(loop.done() for loop in loops):  # under way
                await asyncio.sleep(0.01)
            sigterm_at = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(asyncio.gather(*loops), 2 * TIMEOUT)
            return sigterm_at

    sigterm_at = asyncio.run(asyncio.wait_for(load(), 3 * TIMEOUT))
    assert server.process.wait(TIMEOUT) in (0, -signal.SIGTERM), server.stderr()

    statuses = sorted({s.status for s in sent})
    assert statuses == [200], statuses
    in_flight = [s for s in sent if s.started < sigterm_at < s.finished]
    assert in_flight, "no request was in flight at SIGTERM"
    # Every client loop ended on the server going away: a refused connection, or an idle
    # keep-alive connection closed before its next request was read (the server never
    # saw that request: no row, below). None hung until its timeout.
    assert len(refused) == 32
    assert not [kind for kind in refused if "Timeout" in kind], refused
    answered = [i for s in sent for i in s.ids]
    assert len(set(answered)) == len(answered)
    # rows == answers: no answered prediction lost its row, and no request the server
    # took (each one writes rows) lost its answer
    stored = logged_ids(url)
    assert len(stored) == len(set(stored))
    assert sorted(stored) == sorted(answered), (
        f"{len(set(answered) - set(stored))} answered predictions missing from the log, "
        f"{len(set(stored) - set(answered))} rows nobody was answered for"
    )
    assert "stopped (pid" in server.stderr()


# -- a PostgreSQL outage ------------------------------------------------------------------------------


@dataclass
class Database:
    name: str
    url: str
    admin: Any  # a psycopg connection to the ``postgres`` database, autocommit

    def available(self, yes: bool) -> None:
        """Allow connections again, or refuse new ones and end the open ones."""
        self.admin.execute(f'ALTER DATABASE "{self.name}" ALLOW_CONNECTIONS {str(yes).lower()}')
        if not yes:
            self.admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = %s AND pid <> pg_backend_pid()",
                (self.name,),
            )


@pytest.fixture
def postgres() -> Iterator[Database]:
    """A throwaway database ``shipyard_e2e_<random>`` on the local PostgreSQL, dropped after."""
    psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed (the serve extra)")
    try:
        admin = psycopg.connect(
            host=PG_HOST, port=PG_PORT, user="postgres", dbname="postgres",
            autocommit=True, connect_timeout=3,
        )  # fmt: skip
    except psycopg.OperationalError as error:
        pytest.skip(
            f"no PostgreSQL with trust auth on {PG_HOST}:{PG_PORT} "
            f"({str(error).strip().splitlines()[0]}); the outage test needs one"
        )
    name = f"shipyard_e2e_{uuid.uuid4().hex[:12]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield Database(name, f"postgresql://postgres@{PG_HOST}:{PG_PORT}/{name}", admin)
    finally:
        admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def test_a_database_outage_loses_no_row_once_it_recovers(
    packages: Any,
    servers: Callable[..., Any],
    wine_rows: Callable[..., Any],
    postgres: Database,
    tmp_path: Path,
) -> None:
    """Predictions before, during and after an outage of the log's PostgreSQL database all
    answer 200; the rows of the outage wait in the spool and are replayed once the
    database is back: every prediction id in the table, exactly once, nothing else."""
    import psycopg

    server = servers(
        packages.home,
        "--package",
        str(packages.wine.path),
        f"serve.prediction_log_url={postgres.url}",
        f"serve.prediction_log_spool={tmp_path / 'spool'}",
        "serve.prediction_log_flush_interval_s=0.05",
        "serve.prediction_log_retry_interval_s=0.2",
    )
    bodies = request_bodies(packages, "tabular", 150, wine_rows)

    def send(batch: list[Any]) -> list[str]:
        responses = asyncio.run(post_all(server.url, batch))
        assert [r.status_code for r in responses] == [200] * len(batch), [
            r.text for r in responses if r.status_code != 200
        ][:3]
        return [i for r in responses for i in prediction_ids(r)]

    def log_metric(state: str) -> float:
        text = httpx.get(f"{server.url}/metrics", timeout=TIMEOUT).text
        if state == "up":
            return metric(text, "shipyard_prediction_log_database_up")
        return metric(text, "shipyard_prediction_log_rows", f'state="{state}"')

    before = send(bodies[:30])
    wait_for(lambda: len(logged_ids(postgres.url)) == len(before), "rows written before")

    postgres.available(False)
    with pytest.raises(psycopg.OperationalError, match="not currently accepting connections"):
        psycopg.connect(postgres.url, connect_timeout=3).close()  # really down
    during = send(bodies[30:120])
    wait_for(lambda: log_metric("spooled") >= len(during), "the outage's rows spooled")
    assert log_metric("up") == 0
    assert any((tmp_path / "spool").iterdir())

    postgres.available(True)
    wait_for(
        lambda: len(logged_ids(postgres.url)) == len(before) + len(during),
        "the spool replayed into the database",
    )
    after = send(bodies[120:])
    assert server.stop() in (0, -signal.SIGTERM), server.stderr()

    stored = logged_ids(postgres.url)
    answered = before + during + after
    assert len(stored) == len(set(stored))  # each id once (it is the primary key, too)
    assert sorted(stored) == sorted(answered)
    assert not [p for p in (tmp_path / "spool").iterdir() if p.suffix == ".jsonl"]
