"""The prediction log against real databases: SQLite files and, when it answers, PostgreSQL.

Outages are real: a SQLite path whose folder is a plain file (no process, root included,
can open it) that is later replaced by a folder, and a Postgres database that stops
accepting connections (``ALLOW_CONNECTIONS false`` + its backends terminated).
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from shipyard.errors import ConfigError
from shipyard.serve.predlog import (
    FeedbackRow,
    PredictionLog,
    PredictionRow,
    default_url,
    feedback_table,
    predictions_table,
)

FAST = {"flush_interval_s": 0.02, "retry_interval_s": 0.1}
PG_HOST = "127.0.0.1:5432"


def make_row(
    i: int = 0, *, at: datetime | None = None, model_name: Any = "digits"
) -> PredictionRow:
    return PredictionRow(
        id=uuid.uuid4().hex,
        created_at=at or datetime.now(UTC),
        model_name=model_name,
        model_version="3",
        input={"features": [float(i), 1.5]},
        monitor_features={"brightness": 0.25 * i, "contrast": float("nan")},
        embedding=[0.1, 0.2],
        output={"label": str(i % 10)},
        probabilities=[0.9, 0.1],
        latency_ms=1.25,
    )


def wait_for(condition: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}")
        time.sleep(0.01)


def spool_files(spool: Path) -> list[Path]:
    return sorted(spool.glob("predlog-*.jsonl")) if spool.is_dir() else []


def spooled_lines(spool: Path) -> int:
    return sum(len(p.read_bytes().splitlines()) for p in spool_files(spool))


def ids_in(log: PredictionLog, table: sa.Table = predictions_table) -> list[str]:
    with log.engine.connect() as conn:
        return list(conn.execute(sa.select(table.c.id)).scalars())


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return default_url(tmp_path / "home")


def test_default_url(tmp_path: Path) -> None:
    assert default_url(tmp_path) == f"sqlite:///{tmp_path.as_posix()}/predictions.db"
    with pytest.raises(ConfigError, match="database file"):
        PredictionLog("sqlite://", tmp_path)


def test_serve_package_imports_no_torch() -> None:
    code = "import sys, shipyard.serve.predlog; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# --------------------------------------------------------------------------- SQLite


def test_batches_feedback_and_recent(sqlite_url: str, tmp_path: Path) -> None:
    log = PredictionLog(sqlite_url, tmp_path / "spool", batch_size=16, **FAST)
    inserts: list[tuple[str, int]] = []

    @sa.event.listens_for(log.engine, "before_cursor_execute")
    def count_inserts(conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool) -> None:  # fmt: skip
        if statement.startswith("INSERT INTO predictions"):
            inserts.append((statement, len(params) if many else 1))

    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    rows = [make_row(i, at=t0 + timedelta(seconds=i)) for i in range(100)]
    # feedback that arrives before its prediction, and a corrected label: the newest wins
    log.feedback(FeedbackRow(rows[5].id, "5", t0 + timedelta(minutes=5)))
    for row in rows:
        log.record(row)  # queued before start: the writer takes them 16 at a time
    log.feedback(FeedbackRow(rows[7].id, "1", t0 + timedelta(minutes=6)))
    log.feedback(FeedbackRow(rows[7].id, "7", t0 + timedelta(minutes=7)))
    assert log.stats()["queued"] == 103
    log.start()
    log.close()

    assert log.count() == 100
    assert sum(n for _, n in inserts) == 100
    assert len(inserts) == 7  # ceil(100 / 16) transactions, each one executemany
    stats = log.stats()
    assert stats["written"] == 103
    assert (stats["queued"], stats["spooled"], stats["dropped"]) == (0, 0, 0)
    assert stats["database_up"] == 1

    recent = log.recent(limit=10)
    assert [r["id"] for r in recent] == [r.id for r in reversed(rows[-10:])]  # newest first
    everything = {r["id"]: r for r in log.recent()}
    assert everything[rows[5].id]["label"] == "5"
    assert everything[rows[7].id]["label"] == "7"
    assert everything[rows[7].id]["labeled_at"] == t0 + timedelta(minutes=7)
    assert everything[rows[8].id]["label"] is None
    first = everything[rows[4].id]
    assert first["created_at"] == rows[4].created_at
    assert first["created_at"].tzinfo is not None
    assert first["input"] == {"features": [4.0, 1.5]}
    assert first["monitor_features"] == {"brightness": 1.0, "contrast": None}  # NaN -> null
    assert first["output"] == {"label": "4"}
    assert first["probabilities"] == [0.9, 0.1]
    assert len(log.recent(since=t0 + timedelta(seconds=90))) == 10
    assert len(ids_in(log, feedback_table)) == 3  # append-only: both labels of rows[7] kept


def test_many_threads_exactly_once(sqlite_url: str, tmp_path: Path) -> None:
    log = PredictionLog(sqlite_url, tmp_path / "spool", **FAST)
    log.start()
    made: list[list[str]] = [[] for _ in range(8)]

    def produce(k: int) -> None:
        for i in range(625):
            row = make_row(i)
            made[k].append(row.id)
            log.record(row)

    threads = [threading.Thread(target=produce, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.close()

    stored = ids_in(log)
    assert len(stored) == 5000
    assert sorted(stored) == sorted(i for ids in made for i in ids)
    assert log.stats()["written"] == 5000
    assert spool_files(tmp_path / "spool") == []


def test_full_queue_spills_to_spool_then_replays(sqlite_url: str, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    log = PredictionLog(sqlite_url, spool, queue_size=10, **FAST)
    rows = [make_row(i) for i in range(100)]
    started = time.perf_counter()
    for row in rows:
        log.record(row)  # never blocks: 10 queued, 90 to the spool
    assert time.perf_counter() - started < 1.0
    assert log.stats()["queued"] == 10
    assert log.stats()["spooled"] == 90
    assert spooled_lines(spool) == 90

    log.start()
    wait_for(lambda: log.count() == 100, what="all rows written")
    wait_for(lambda: not spool_files(spool), what="the spool replayed and deleted")
    log.close()
    assert sorted(ids_in(log)) == sorted(r.id for r in rows)
    assert log.stats()["replayed"] == 90


def test_sqlite_outage_spools_and_recovers(tmp_path: Path) -> None:
    """The database's folder is a plain file (unopenable), then becomes a folder."""
    folder = tmp_path / "db"
    folder.write_text("not a folder")
    url = f"sqlite:///{folder.as_posix()}/predictions.db"
    spool = tmp_path / "spool"
    log = PredictionLog(url, spool, **FAST)
    log.start()
    assert log.stats()["database_up"] == 0
    rows = [make_row(i) for i in range(300)]
    for row in rows:
        log.record(row)
    log.feedback(FeedbackRow(rows[0].id, "0", datetime.now(UTC)))
    wait_for(lambda: log.stats()["spooled"] == 301, what="rows spooled during the outage")
    assert spooled_lines(spool) == 301
    with pytest.raises(sa.exc.OperationalError):
        log.count()  # really down

    folder.unlink()
    folder.mkdir()
    wait_for(lambda: log.stats()["database_up"] == 1, what="recovery")
    wait_for(lambda: not spool_files(spool), what="the spool replayed and deleted")
    log.close()
    assert sorted(ids_in(log)) == sorted(r.id for r in rows)
    assert {r["id"]: r["label"] for r in log.recent()}[rows[0].id] == "0"
    assert len(ids_in(log, feedback_table)) == 1
    stats = log.stats()
    assert (stats["spooled"], stats["replayed"], stats["written"]) == (301, 301, 0)


def test_live_spool_is_not_adopted_and_restart_replays(tmp_path: Path, sqlite_url: str) -> None:
    """A running worker's spool stays its own; once it is gone, the next process replays it."""
    folder = tmp_path / "unreachable"
    folder.write_text("")
    spool = tmp_path / "spool"
    down = PredictionLog(f"sqlite:///{folder.as_posix()}/p.db", spool, **FAST)
    down.start()
    rows = [make_row(i) for i in range(50)]
    for row in rows:
        down.record(row)
    wait_for(lambda: down.stats()["spooled"] == 50)

    other = PredictionLog(sqlite_url, spool, **FAST)
    other.start()  # a second worker on the same spool folder
    assert other.stats()["spool_pending"] == 0
    other.close()
    assert spooled_lines(spool) == 50
    assert other.count() == 0

    down.close()  # "the previous process" exits while its database is still down
    assert spooled_lines(spool) == 50

    restarted = PredictionLog(sqlite_url, spool, **FAST)
    restarted.start()
    assert restarted.stats()["spool_pending"] == 50
    restarted.close()
    assert sorted(ids_in(restarted)) == sorted(r.id for r in rows)
    assert spool_files(spool) == []


def test_replay_after_kill_mid_replay_is_idempotent(tmp_path: Path, sqlite_url: str) -> None:
    """A spool whose first half was committed before the process died, ending in a torn line."""
    spool = tmp_path / "spool"
    rows = [make_row(i) for i in range(600)]
    never_started = PredictionLog(sqlite_url, spool, **FAST)
    for row in rows:
        never_started.record(row)
    never_started.close()  # no writer ran: everything goes to the spool
    (segment,) = spool_files(spool)
    with segment.open("ab") as file:
        file.write(b'{"table":"predictions","row":{"id":"torn')  # killed mid-write

    committed = PredictionLog(sqlite_url, tmp_path / "other-spool", **FAST)
    committed.start()
    for row in rows[:300]:
        committed.record(row)
    committed.close()
    assert committed.count() == 300

    log = PredictionLog(sqlite_url, spool, batch_size=64, **FAST)
    log.start()
    log.close()
    stored = ids_in(log)
    assert len(stored) == 600
    assert sorted(stored) == sorted(r.id for r in rows)
    assert spool_files(spool) == []
    assert log.stats()["rejected"] == 0


def test_bad_row_is_rejected_without_blocking_the_rest(sqlite_url: str, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    log = PredictionLog(sqlite_url, spool, **FAST)
    good = [make_row(i) for i in range(20)]
    bad = make_row(99, model_name=None)  # violates NOT NULL
    for row in [*good[:10], bad, *good[10:]]:
        log.record(row)
    log.start()
    log.close()
    assert sorted(ids_in(log)) == sorted(r.id for r in good)
    assert log.stats()["rejected"] == 1
    (rejected,) = spool.glob("rejected-*.jsonl")
    assert bad.id in rejected.read_text()
    assert spool_files(spool) == []


def test_record_after_close_goes_to_the_spool(sqlite_url: str, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    log = PredictionLog(sqlite_url, spool, **FAST)
    log.start()
    log.close()
    late = make_row()
    log.record(late)
    assert spooled_lines(spool) == 1
    again = PredictionLog(sqlite_url, spool, **FAST)
    again.start()
    again.close()
    assert ids_in(again) == [late.id]


def test_close_timeout_spools_what_a_stuck_writer_holds(sqlite_url: str, tmp_path: Path) -> None:
    """The writer waits on a lock held elsewhere; close() gives up on it without losing rows."""
    spool = tmp_path / "spool"
    log = PredictionLog(sqlite_url, spool, batch_size=10, **FAST)
    log.start()
    blocker = sqlite3.connect(sa.make_url(sqlite_url).database or "", isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")  # another writer holds the database
    try:
        rows = [make_row(i) for i in range(50)]
        for row in rows:
            log.record(row)
        time.sleep(0.2)  # the writer is now inside an INSERT, waiting for the lock
        log.close(timeout_s=0.3)
        assert spooled_lines(spool) >= 40  # what was queued, plus the batch it held
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()

    after = PredictionLog(sqlite_url, spool, **FAST)
    after.start()
    after.close()
    assert sorted(ids_in(after)) == sorted(r.id for r in rows)
    assert spool_files(spool) == []


# --------------------------------------------------------------------------- PostgreSQL


@pytest.fixture
def postgres() -> Iterator[tuple[str, sa.Engine, str]]:
    """A fresh database on the local PostgreSQL (dropped afterwards): (url, admin engine, name)."""
    pytest.importorskip("psycopg", reason="psycopg is not installed (the serve extra)")
    admin = sa.create_engine(
        f"postgresql+psycopg://postgres@{PG_HOST}/postgres",
        isolation_level="AUTOCOMMIT",
        connect_args={"connect_timeout": 2},
    )
    try:
        with admin.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.OperationalError as error:
        admin.dispose()
        pytest.skip(f"no PostgreSQL with trust auth on {PG_HOST}: {str(error).splitlines()[0]}")
    name = f"shipyard_test_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"postgresql://postgres@{PG_HOST}/{name}", admin, name
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def set_available(admin: sa.Engine, name: str, available: bool) -> None:
    with admin.connect() as conn:
        conn.execute(sa.text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {str(available).lower()}'))
        if not available:
            conn.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = :name AND pid <> pg_backend_pid()"
                ),
                {"name": name},
            )


def test_postgres_outage_spools_and_replays_exactly_once(
    postgres: tuple[str, sa.Engine, str], tmp_path: Path
) -> None:
    url, admin, name = postgres
    spool = tmp_path / "spool"
    log = PredictionLog(url, spool, batch_size=64, **FAST)
    assert log.engine.dialect.driver == "psycopg"
    log.start()
    before = [make_row(i) for i in range(100)]
    for row in before:
        log.record(row)
    wait_for(lambda: log.stats()["written"] == 100, what="rows written before the outage")

    set_available(admin, name, False)
    during = [make_row(i) for i in range(150)]
    for row in during:
        log.record(row)
    for row in during[:20]:
        log.feedback(FeedbackRow(row.id, "3", datetime.now(UTC)))
    wait_for(lambda: log.stats()["spooled"] == 170, what="rows spooled during the outage")
    assert log.stats()["database_up"] == 0
    assert spooled_lines(spool) == 170
    with pytest.raises(sa.exc.OperationalError):
        log.count()  # really down

    set_available(admin, name, True)
    wait_for(lambda: not spool_files(spool), what="the spool replayed and deleted")
    after = [make_row(i) for i in range(30)]
    for row in after:
        log.record(row)
    log.close()

    stored = ids_in(log)
    assert len(stored) == 280
    assert sorted(stored) == sorted(r.id for r in [*before, *during, *after])
    assert len(ids_in(log, feedback_table)) == 20
    labelled = {r["id"]: r["label"] for r in log.recent(limit=1000)}
    assert all(labelled[r.id] == "3" for r in during[:20])
    assert labelled[after[0].id] is None
    stats = log.stats()
    assert (stats["spooled"], stats["replayed"], stats["database_up"]) == (170, 170, 1)


CRASHING_WORKER = textwrap.dedent(
    """
    import os, signal, sys, time, uuid
    from datetime import UTC, datetime
    from pathlib import Path
    from shipyard.serve.predlog import PredictionLog, PredictionRow
    log = PredictionLog(sys.argv[1], Path(sys.argv[2]), flush_interval_s=0.02, retry_interval_s=0.1)
    log.start()
    for i in range(int(sys.argv[3])):
        log.record(PredictionRow(uuid.uuid4().hex, datetime.now(UTC), "m", "1", [i], None, None,
                                 {"value": i}, None, 1.0))
    while log.stats()["spooled"] < int(sys.argv[3]):
        time.sleep(0.01)
    print(log.stats(), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)  # no close(), no atexit: a crash
    """
)


def test_postgres_crash_while_down_replays_on_restart(
    postgres: tuple[str, sa.Engine, str], tmp_path: Path
) -> None:
    url, admin, name = postgres
    spool = tmp_path / "spool"
    set_available(admin, name, False)
    worker = subprocess.run(
        [sys.executable, "-c", CRASHING_WORKER, url, str(spool), "400"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert worker.returncode == -9, worker.stderr
    assert spooled_lines(spool) == 400

    set_available(admin, name, True)
    log = PredictionLog(url, spool, **FAST)
    log.start()
    log.close()
    assert log.count() == 400
    assert len(set(ids_in(log))) == 400
    assert spool_files(spool) == []
    assert list(spool.iterdir()) == []
