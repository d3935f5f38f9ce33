"""The prediction log: one row per prediction, plus feedback labels, off the request path.

Design note
===========

*Path of a row.* ``record``/``feedback`` put the row on a bounded :class:`queue.Queue`
(``put_nowait``: O(1), never blocks, never raises). One background thread takes up to
``batch_size`` rows, or what arrived within ``flush_interval_s`` of the first, and
inserts them in one transaction (``executemany``). Storage is SQLAlchemy Core: SQLite in
WAL mode with a busy timeout by default (``default_url``), any SQLAlchemy URL otherwise
(``postgresql://`` means psycopg 3).

*Tables.* ``predictions`` (primary key: the server's prediction id; indexes on
``created_at`` and on model name/version/time) and ``feedback`` (append-only, its own
uuid primary key, indexed by ``prediction_id``; no foreign key and no UPDATE, because
feedback may arrive before its prediction is flushed). ``recent`` joins the newest label
of each prediction. JSON fields are JSON columns (JSONB on Postgres); NaN and infinity
become null, numpy values become plain numbers.

*The spool.* When the database cannot be reached (an ``OperationalError``,
``InterfaceError``, a pool timeout or an invalidated connection), the batch is appended
to a JSON Lines *segment* in ``spool_dir`` (``fsync`` per batch) and the writer retries
every ``retry_interval_s``. A full queue also spills to the spool, from the calling
thread (flushed, and fsynced by the writer at its next turn). On recovery the writer
seals the open segment and replays the segments oldest first, ``batch_size`` lines per
transaction, deleting a segment only after all its rows are committed. Every insert
ignores rows whose primary key already exists (``ON CONFLICT DO NOTHING`` on SQLite and
Postgres, ``INSERT IGNORE`` on MySQL, a row-by-row existence check elsewhere), so a
replay interrupted at any point — the process killed mid-replay, a segment committed but
not yet deleted — is simply replayed again: no row lost, none duplicated.

*Several processes.* A segment is named ``predlog-<start ns>-<random>-<pid>-<seq>.jsonl``,
so workers never share a file, and names sort in creation order. A process holds an
exclusive ``flock`` on every segment it owns (created under a temporary name, locked,
then renamed into place). On ``start`` a log adopts every segment it can lock — those
left by a process that died — and replays them first (crash recovery); a live worker's
segments stay locked and untouched. (Without ``fcntl``, on Windows, give each worker
its own ``spool_dir``.) Create and ``start`` the log in each worker, after any fork: the
writer thread does not survive a fork.

*Bad rows.* If a batch fails for another reason (a constraint a row violates), the
writer re-creates the schema once and then inserts row by row; rows that still fail are
appended to ``rejected-*.jsonl`` in ``spool_dir`` (never replayed automatically, counted
in ``stats()["rejected"]``) so that one bad row cannot stall the log.

*Shutdown.* ``close`` stops taking rows, lets the writer drain the queue and replay what
it can, and releases its segments for the next process; if the writer has not finished
within ``timeout_s``, what is still queued and the batch it holds go to the spool
(duplicates there are harmless, see above). Rows recorded after ``close`` are spooled,
each call in a complete segment of its own. Rows are lost only when a process is killed
while they sit in the in-memory queue (normally under ``flush_interval_s`` worth), or
when the database *and* the spool's disk fail together (counted in ``stats()["dropped"]``).

*Counters.* ``stats()`` gives ``queued``, ``written`` (rows, predictions and feedback,
committed from the queue), ``spooled``, ``replayed`` (committed from the spool, including
rows adopted from earlier processes), ``database_up`` (0/1), ``spool_pending``,
``rejected`` and ``dropped``.

*Why hand-written.* It is thin glue around SQLAlchemy — a bounded queue, one thread, an
append-only file and a replay loop — and no library offers bounded-queue + spool +
idempotent replay across worker processes. A plain ``threading.Thread`` fits because
SQLAlchemy is synchronous and the request path must never wait on database I/O.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import queue
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import orjson
import sqlalchemy as sa
from sqlalchemy import exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, Engine, make_url

from shipyard.errors import ConfigError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; one spool_dir per worker
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

DB_FILE = "predictions.db"
SQLITE_BUSY_TIMEOUT_MS = 10_000
POSTGRES_CONNECT_TIMEOUT_S = 5
SEGMENT_PREFIX = "predlog-"
REJECTED_PREFIX = "rejected-"


# --------------------------------------------------------------------------- rows


@dataclass(frozen=True)
class PredictionRow:
    """One prediction, as the server made it."""

    id: str  # uuid4 hex, made by the server
    created_at: datetime  # UTC
    model_name: str
    model_version: str
    input: Any  # JSON-able: the raw instance, or a {"sha256": ..., "shape": [...]} digest
    monitor_features: dict[str, float] | None  # per-row numbers the drift monitor compares
    #: the model's embedding of the input: :func:`encode_embedding` (or a plain list)
    embedding: dict[str, str] | list[float] | None
    output: Any  # JSON-able: {"label": "7"} or {"value": 5.3}
    probabilities: list[float] | None
    latency_ms: float


@dataclass(frozen=True)
class FeedbackRow:
    """A true label (or value) for a prediction; several per prediction are allowed, the newest counts."""

    prediction_id: str
    label: Any  # JSON-able true label/value
    created_at: datetime
    #: this feedback's own key, so that replaying it from the spool is idempotent
    id: str = field(default_factory=lambda: uuid.uuid4().hex)


_Row = PredictionRow | FeedbackRow


EMBEDDING_KEY = "float32_base64"


def encode_embedding(vector: Any) -> dict[str, str]:
    """An embedding as little-endian float32 bytes in base64: exact, and 1.4 KB for 256 values
    where JSON numbers take 5 KB. Embedding models write one per prediction, and at a few
    thousand predictions a second the JSON text was what made the log's commits slow."""
    import base64

    import numpy as np

    data = np.ascontiguousarray(vector, dtype="<f4").tobytes()
    return {EMBEDDING_KEY: base64.b64encode(data).decode("ascii")}


def decode_embedding(value: Any) -> list[float] | None:
    """A stored embedding back as numbers (either form: :func:`encode_embedding` or a list)."""
    if isinstance(value, list):
        return [float(v) for v in value]
    if isinstance(value, dict) and isinstance(value.get(EMBEDDING_KEY), str):
        import base64

        import numpy as np

        data = base64.b64decode(value[EMBEDDING_KEY])
        return [float(v) for v in np.frombuffer(data, dtype="<f4")]
    return None


def default_url(home: Path) -> str:
    """The embedded default: ``sqlite:///<home>/predictions.db``."""
    return f"sqlite:///{(Path(home) / DB_FILE).as_posix()}"


# --------------------------------------------------------------------------- schema


class _UTCDateTime(sa.types.TypeDecorator[datetime]):
    """Stored as UTC; read back timezone-aware (SQLite keeps no zone)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        return None if value is None else _utc(value)

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        return None if value is None else _utc(value)


def _json_type() -> sa.types.TypeEngine[Any]:
    return sa.JSON(none_as_null=True).with_variant(
        postgresql.JSONB(none_as_null=True), "postgresql"
    )


metadata = sa.MetaData()

predictions_table = sa.Table(
    "predictions",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("created_at", _UTCDateTime(), nullable=False),
    sa.Column("model_name", sa.String(200), nullable=False),
    sa.Column("model_version", sa.String(64), nullable=False),
    sa.Column("input", _json_type()),
    sa.Column("monitor_features", _json_type()),
    sa.Column("embedding", _json_type()),
    sa.Column("output", _json_type()),
    sa.Column("probabilities", _json_type()),
    sa.Column("latency_ms", sa.Float()),
    sa.Index("ix_predictions_created_at", "created_at"),
    sa.Index("ix_predictions_model", "model_name", "model_version", "created_at"),
)

feedback_table = sa.Table(
    "feedback",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("prediction_id", sa.String(64), nullable=False),
    sa.Column("label", _json_type()),
    sa.Column("created_at", _UTCDateTime(), nullable=False),
    sa.Index("ix_feedback_prediction", "prediction_id", "created_at"),
)

# --------------------------------------------------------------------------- helpers


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# orjson writes numpy arrays and scalars natively and NaN/inf as null, about 25x faster than
# converting to lists for the json module (an embedding of 128 floats: 3 us against 80 us).
# The writer shares the server's GIL, so this is request-path time in disguise.
_ORJSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


def _fallback(value: Any) -> Any:
    """What orjson cannot write itself: non-contiguous arrays, odd numpy types, anything else."""
    tolist = getattr(value, "tolist", None)
    return tolist() if callable(tolist) else str(value)


def _dumps(value: Any) -> str:
    return orjson.dumps(value, default=_fallback, option=_ORJSON_OPTIONS).decode()


def _finite(value: Any) -> float | None:
    number = None if value is None else float(value)
    return number if number is not None and math.isfinite(number) else None


def _params(row: _Row) -> tuple[str, dict[str, Any]]:
    """A row as its table's name and insert parameters (JSON-safe values)."""
    if isinstance(row, PredictionRow):
        return "predictions", {
            "id": str(row.id),
            "created_at": _utc(row.created_at),
            "model_name": row.model_name,
            "model_version": row.model_version,
            "input": row.input,
            "monitor_features": row.monitor_features,
            "embedding": row.embedding,
            "output": row.output,
            "probabilities": row.probabilities,
            "latency_ms": _finite(row.latency_ms),
        }
    return "feedback", {
        "id": str(row.id),
        "prediction_id": str(row.prediction_id),
        "label": row.label,
        "created_at": _utc(row.created_at),
    }


_Item = tuple[str, dict[str, Any]]  # (table name, insert parameters)


def _to_line(item: _Item) -> bytes:
    table, params = item
    row = {**params, "created_at": params["created_at"].isoformat()}
    return (_dumps({"table": table, "row": row}) + "\n").encode()


def _from_line(line: bytes) -> _Item:
    record = orjson.loads(line)
    table, row = record["table"], record["row"]
    if table not in ("predictions", "feedback"):
        raise ValueError(f"unknown table {table!r}")
    row["created_at"] = datetime.fromisoformat(row["created_at"])
    return table, row


def _is_outage(error: BaseException) -> bool:
    """Whether an error means "the database cannot be reached now" (retry later) rather than a bad row."""
    if isinstance(
        error,
        exc.OperationalError | exc.InterfaceError | exc.DisconnectionError | exc.TimeoutError,
    ):
        return True
    return isinstance(error, exc.DBAPIError) and error.connection_invalidated


class _Outage(Exception):
    """The database is unavailable; the caller spools and retries later."""


def _try_lock(file: IO[bytes]) -> bool:
    if fcntl is None:
        return True
    try:
        fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every platform can open a directory
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _count_lines(path: Path) -> int:
    with path.open("rb") as file:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: file.read(1 << 20), b""))


@dataclass
class _Segment:
    """One spool file; ``file`` is held open for the lock (and, while active, for appending)."""

    path: Path
    file: IO[bytes]
    rows: int  # not yet replayed
    offset: int = 0  # bytes already replayed and committed by this process


def _make_engine(url: str) -> Engine:
    parsed: URL = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    backend = parsed.get_backend_name()
    kwargs: dict[str, Any] = {"pool_pre_ping": True, "json_serializer": _dumps}
    if backend == "sqlite":
        if parsed.database in (None, "", ":memory:"):
            raise ConfigError(
                f"the prediction log needs a database file, not an in-memory SQLite database ({url!r}); expected sqlite:///PATH"
            )
    elif backend == "postgresql" and "connect_timeout" not in parsed.query:
        kwargs["connect_args"] = {"connect_timeout": POSTGRES_CONNECT_TIMEOUT_S}
    try:
        engine = sa.create_engine(parsed, **kwargs)
    except (exc.ArgumentError, exc.NoSuchModuleError, ImportError) as error:
        raise ConfigError(f"cannot use prediction log URL {parsed!r}: {error}") from error
    if backend == "sqlite":
        sa.event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_connection: Any, _connection_record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        # In WAL mode NORMAL syncs at checkpoints, not at every commit: the database stays
        # consistent through a crash, and a power cut can lose only the last commits, the
        # trade SQLite documents for WAL. Commits (one per batch) stop paying an fsync.
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    finally:
        cursor.close()


# --------------------------------------------------------------------------- the log


class PredictionLog:
    """Batched, never-blocking writer of predictions and feedback, with a spool for outages.

    ``record``/``feedback`` are safe from any thread; ``recent``/``count`` are plain
    queries (they raise SQLAlchemy's errors when the database is down).
    """

    def __init__(
        self,
        url: str,
        spool_dir: Path,
        *,
        queue_size: int = 10_000,
        batch_size: int = 256,
        flush_interval_s: float = 0.5,
        retry_interval_s: float = 2.0,
    ) -> None:
        if queue_size < 1 or batch_size < 1 or flush_interval_s <= 0 or retry_interval_s <= 0:
            raise ConfigError(
                "prediction log: queue_size and batch_size must be >= 1, flush_interval_s and retry_interval_s > 0"
            )
        self.url = url
        self.spool_dir = Path(spool_dir)
        self._engine = _make_engine(url)
        self._batch_size = batch_size
        self._flush_interval_s = flush_interval_s
        self._retry_interval_s = retry_interval_s
        self._queue: queue.Queue[_Row] = queue.Queue(maxsize=queue_size)

        self._submit_lock = threading.Lock()  # orders record() against close()
        self._closed = False
        self._stop = threading.Event()
        self._abandoned = False  # close() timed out: the writer must not touch the database again
        self._thread: threading.Thread | None = None

        self._spool_lock = threading.Lock()  # guards the segments and the spool counters
        self._tag = ""  # set at start: names this process's segments
        self._seq = 0
        self._active: _Segment | None = None
        self._sealed: list[_Segment] = []  # oldest first; replayed before the active one
        self._spool_dirty = False  # appended without fsync (from record())
        self._finished = False  # close() is done: late rows get a closed segment each

        self._inflight: list[_Row] = []
        self._backlog: list[_Row] = []  # neither database nor spool took it; retried
        self._schema_ready = False
        self._up = False
        self._next_retry = 0.0

        self._counts_lock = threading.Lock()
        self._written = 0
        self._spooled = 0
        self._replayed = 0
        self._rejected = 0
        self._dropped = 0

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Create the tables if missing, adopt spool files left by dead processes, start the writer."""
        if self._thread is not None:
            return
        self._tag = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"
        database = self._engine.url.database
        if self._engine.dialect.name == "sqlite" and database:
            with contextlib.suppress(OSError):  # unwritable: the database is down; spool
                Path(database).parent.mkdir(parents=True, exist_ok=True)
        try:
            self._ensure_schema()
            self._mark_up()
        except exc.SQLAlchemyError as error:
            self._mark_down(error)
        self._adopt_orphans()
        self._thread = threading.Thread(target=self._run, name="shipyard-predlog", daemon=True)
        self._thread.start()

    def close(self, timeout_s: float = 10.0) -> None:
        """Drain the queue, flush, stop; what the writer cannot write within ``timeout_s`` is spooled."""
        with self._submit_lock:
            if self._closed:
                return
            self._closed = True
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout_s)
        if thread is None or thread.is_alive():
            if thread is not None:
                self._abandoned = True
                log.warning(
                    "prediction log: the writer did not finish within %.1f s; spooling what is left",
                    timeout_s,
                )
            leftover = list(self._inflight) + self._backlog + self._drain()
            if leftover and not self._spool(leftover, sync=True):
                self._count_dropped(len(leftover))
        with self._spool_lock:
            for segment in [*self._sealed, *([self._active] if self._active else [])]:
                with contextlib.suppress(OSError):
                    os.fsync(segment.file.fileno())
                    segment.file.close()  # releases the lock: the next process adopts it
            self._active = None
            self._sealed = []
            self._finished = True
        self._engine.dispose()

    # ----------------------------------------------------------------- request path

    def record(self, row: PredictionRow) -> None:
        """Queue one prediction (non-blocking, never raises); a full queue spills to the spool."""
        self._submit(row)

    def feedback(self, row: FeedbackRow) -> None:
        """Queue one feedback label, like :meth:`record`."""
        self._submit(row)

    def record_many(self, rows: Sequence[PredictionRow]) -> None:
        """Queue several predictions at once, like :meth:`record` row by row, but taking the
        queue's lock and waking the writer once: a ``put`` per row woke the writer thread
        per row, and each wake-up is a GIL hand-off the event loop pays for. What does not
        fit in the queue spills to the spool, as in :meth:`record`."""
        rest: Sequence[_Row] = rows
        try:
            with self._submit_lock:
                if not self._closed:
                    q = self._queue
                    with q.mutex:
                        room = max(0, q.maxsize - len(q.queue)) if q.maxsize > 0 else len(rows)
                        taken = rows[:room]
                        if taken:
                            q.queue.extend(taken)
                            q.unfinished_tasks += len(taken)
                            q.not_empty.notify()
                    rest = rows[room:]
        except Exception:  # never raise into the recorder
            log.exception("prediction log: cannot queue %d rows", len(rows))
        if not rest:
            return
        try:
            ok = self._spool(rest, sync=False)
        except Exception:
            log.exception("prediction log: cannot spool %d rows", len(rest))
            ok = False
        if not ok:
            self._count_dropped(len(rest))

    def _submit(self, row: _Row) -> None:
        try:
            with self._submit_lock:
                if not self._closed:
                    self._queue.put_nowait(row)
                    return
        except queue.Full:
            pass
        except Exception:  # never raise into the request
            log.exception("prediction log: cannot queue a row")
        try:
            ok = self._spool([row], sync=False)
        except Exception:
            log.exception("prediction log: cannot spool a row")
            ok = False
        if not ok:
            self._count_dropped(1)

    def stats(self) -> dict[str, float]:
        """Counters for Prometheus gauges."""
        with self._spool_lock:
            pending = sum(s.rows for s in self._sealed) + (self._active.rows if self._active else 0)
        with self._counts_lock:
            return {
                "queued": float(self._queue.qsize()),
                "written": float(self._written),
                "spooled": float(self._spooled),
                "replayed": float(self._replayed),
                "database_up": 1.0 if self._up else 0.0,
                "spool_pending": float(pending),
                "rejected": float(self._rejected),
                "dropped": float(self._dropped),
            }

    # ----------------------------------------------------------------- reading side

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine, for readers that need more than :meth:`recent` (the monitor)."""
        return self._engine

    def recent(self, limit: int = 1000, since: datetime | None = None) -> list[dict[str, Any]]:
        """The newest predictions first, each with its newest feedback ``label``/``labeled_at`` (None if none)."""
        self._ensure_schema()
        p, f = predictions_table, feedback_table

        def newest(column: sa.Column[Any]) -> sa.ScalarSelect[Any]:
            return (
                sa.select(column)
                .where(f.c.prediction_id == p.c.id)
                .order_by(f.c.created_at.desc(), f.c.id.desc())
                .limit(1)
                .correlate(p)
                .scalar_subquery()
            )

        query = sa.select(
            p, newest(f.c.label).label("label"), newest(f.c.created_at).label("labeled_at")
        )
        if since is not None:
            query = query.where(p.c.created_at >= _utc(since))
        query = query.order_by(p.c.created_at.desc(), p.c.id.desc()).limit(limit)
        with self._engine.connect() as conn:
            return [dict(row) for row in conn.execute(query).mappings()]

    def count(self) -> int:
        """How many predictions the database holds."""
        self._ensure_schema()
        with self._engine.connect() as conn:
            return int(
                conn.execute(sa.select(sa.func.count()).select_from(predictions_table)).scalar_one()
            )

    # ----------------------------------------------------------------- writer thread

    def _run(self) -> None:
        while True:
            stopping = self._stop.is_set()
            if self._backlog:  # the spool's disk failed too: retry it, slowly
                batch, self._backlog = self._backlog, []
                if not stopping:
                    self._stop.wait(self._flush_interval_s)
            else:
                batch = self._take(wait=not stopping)
            self._inflight = batch
            try:
                self._step(batch)
            except Exception:  # a bug must not kill the writer or lose the batch
                log.exception("prediction log: writer error; spooling the batch")
                if batch and not self._spool(batch, sync=True):
                    self._backlog.extend(batch)
                self._stop.wait(self._retry_interval_s)
            finally:
                self._inflight = []
            if self._abandoned or (stopping and not batch and not self._backlog):
                return

    def _take(self, *, wait: bool) -> list[_Row]:
        """Up to ``batch_size`` rows: what arrives within ``flush_interval_s`` of the first."""
        batch: list[_Row] = []
        try:
            if wait:
                batch.append(self._queue.get(timeout=self._flush_interval_s))
            else:
                batch.append(self._queue.get_nowait())
        except queue.Empty:
            return batch
        deadline = time.monotonic() + self._flush_interval_s
        while len(batch) < self._batch_size:
            remaining = deadline - time.monotonic()
            try:
                if wait and remaining > 0 and not self._stop.is_set():
                    batch.append(self._queue.get(timeout=remaining))
                else:
                    batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _step(self, batch: list[_Row]) -> None:
        """Replay the spool and write ``batch``; if the database is down, spool ``batch``."""
        self._sync_spool()
        if not self._abandoned and (self._up or time.monotonic() >= self._next_retry):
            try:
                self._ensure_schema()
                self._replay()
                if batch and not self._abandoned:
                    stored = self._write([_params(row) for row in batch])
                    with self._counts_lock:
                        self._written += stored
                    batch = []
                self._mark_up()
            except (_Outage, exc.SQLAlchemyError) as error:
                self._mark_down(error.__cause__ or error)
        if batch and not self._spool(batch, sync=True):
            log.error("prediction log: database and spool both failed; holding %d rows", len(batch))
            self._backlog.extend(batch)

    def _mark_up(self) -> None:
        if not self._up:
            log.info("prediction log: database %s is up", self._engine.url.render_as_string())
        self._up = True

    def _mark_down(self, error: BaseException) -> None:
        if self._up or self._next_retry == 0.0:
            log.warning(
                "prediction log: database %s unavailable (%s); spooling to %s, retrying every %.1f s",
                self._engine.url.render_as_string(),
                str(error).splitlines()[0] if str(error) else type(error).__name__,
                self.spool_dir,
                self._retry_interval_s,
            )
        self._up = False
        self._schema_ready = False
        self._next_retry = time.monotonic() + self._retry_interval_s
        self._engine.dispose()  # drop pooled connections to the dead server

    def _ensure_schema(self) -> None:
        if self._schema_ready:
            return
        try:
            metadata.create_all(self._engine, checkfirst=True)
        except exc.DBAPIError as error:
            if _is_outage(error):
                raise
            # another worker created the tables between our check and our CREATE
            metadata.create_all(self._engine, checkfirst=True)
        self._schema_ready = True

    # ----------------------------------------------------------------- inserting

    def _insert_stmt(self, table: sa.Table) -> sa.Insert:
        dialect = self._engine.dialect.name
        if dialect == "sqlite":
            return sqlite.insert(table).on_conflict_do_nothing(index_elements=["id"])
        if dialect == "postgresql":
            return postgresql.insert(table).on_conflict_do_nothing(index_elements=["id"])
        if dialect in ("mysql", "mariadb"):
            return table.insert().prefix_with("IGNORE")
        return table.insert()  # duplicates fail and are sorted out row by row

    def _write(self, items: Sequence[_Item]) -> int:
        """Insert in one transaction; raise :class:`_Outage` when the database is unreachable.

        A batch failing for another reason is retried once after re-creating the schema,
        then row by row: rows that still fail go to the rejected file. Returns how many
        rows the database now holds (inserted, or already there).
        """
        try:
            self._insert(items)
            return len(items)
        except exc.SQLAlchemyError as error:
            if _is_outage(error):
                raise _Outage() from error
            first_error = error
        try:
            self._schema_ready = False
            self._ensure_schema()
            self._insert(items)
            return len(items)
        except exc.SQLAlchemyError as error:
            if _is_outage(error):
                raise _Outage() from error
        log.warning(
            "prediction log: a batch failed (%s); inserting row by row",
            str(first_error).splitlines()[0],
        )
        stored = 0
        for item in items:
            try:
                self._insert([item])
            except exc.SQLAlchemyError as error:
                if _is_outage(error):
                    raise _Outage() from error
                if not self._exists(item):
                    self._reject(item, error)
                    continue
            stored += 1
        return stored

    def _insert(self, items: Sequence[_Item]) -> None:
        predictions = [params for table, params in items if table == "predictions"]
        feedback = [params for table, params in items if table == "feedback"]
        with self._engine.begin() as conn:
            if predictions:
                conn.execute(self._insert_stmt(predictions_table), predictions)
            if feedback:
                conn.execute(self._insert_stmt(feedback_table), feedback)

    def _exists(self, item: _Item) -> bool:
        table = predictions_table if item[0] == "predictions" else feedback_table
        try:
            with self._engine.connect() as conn:
                found = conn.execute(
                    sa.select(table.c.id).where(table.c.id == item[1]["id"])
                ).first()
        except exc.SQLAlchemyError as error:
            if _is_outage(error):
                raise _Outage() from error
            return False
        return found is not None

    def _reject(self, item: _Item, error: BaseException) -> None:
        log.error(
            "prediction log: %s row %s rejected by the database (%s); kept in %s",
            item[0],
            item[1].get("id"),
            str(error).splitlines()[0],
            self.spool_dir,
        )
        self._keep_rejected(_to_line(item))

    def _keep_rejected(self, line: bytes) -> None:
        """Append a row the database refused (or an unreadable spool line) to the rejected file."""
        path = self.spool_dir / f"{REJECTED_PREFIX}{self._tag}-{os.getpid()}.jsonl"
        try:
            self.spool_dir.mkdir(parents=True, exist_ok=True)
            with path.open("ab") as file:
                file.write(line if line.endswith(b"\n") else line + b"\n")
                file.flush()
                os.fsync(file.fileno())
        except OSError:
            log.exception("prediction log: cannot write %s", path)
        with self._counts_lock:
            self._rejected += 1

    # ----------------------------------------------------------------- the spool

    def _spool(self, rows: Sequence[_Row], *, sync: bool) -> bool:
        """Append rows to this process's open segment; False if the disk refused them."""
        data = b"".join(_to_line(_params(row)) for row in rows)
        with self._spool_lock:
            try:
                if self._finished:  # after close: a complete file of its own, no lock kept
                    self._write_closed_segment(data)
                    self._spooled += len(rows)
                    return True
                if self._active is None:
                    self._active = self._open_segment()
                self._active.file.write(data)
                self._active.file.flush()
                if sync:
                    os.fsync(self._active.file.fileno())
                else:
                    self._spool_dirty = True
            except OSError:
                log.exception("prediction log: cannot write the spool in %s", self.spool_dir)
                if self._active is not None:  # it may end in a torn line: append no more to it
                    self._sealed.append(self._active)
                    self._active = None
                return False
            self._active.rows += len(rows)
            self._spooled += len(rows)
        return True

    def _segment_path(self) -> Path:
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        self._seq += 1
        tag = self._tag or f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"
        return self.spool_dir / f"{SEGMENT_PREFIX}{tag}-{os.getpid()}-{self._seq:06d}.jsonl"

    def _write_closed_segment(self, data: bytes) -> None:
        path = self._segment_path()
        staging = path.with_name(path.name + ".tmp")
        with staging.open("wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        staging.replace(path)  # complete before anyone can see it
        _fsync_dir(self.spool_dir)

    def _open_segment(self) -> _Segment:
        path = self._segment_path()
        staging = path.with_name(path.name + ".tmp")
        file = staging.open("ab")
        _try_lock(file)  # a fresh name: nobody else can hold it
        staging.replace(path)  # visible to other processes only once locked
        _fsync_dir(self.spool_dir)
        return _Segment(path, file, 0)

    def _sync_spool(self) -> None:
        with self._spool_lock:
            if self._spool_dirty and self._active is not None:
                with contextlib.suppress(OSError):
                    os.fsync(self._active.file.fileno())
            self._spool_dirty = False

    def _adopt_orphans(self) -> None:
        """Lock and queue for replay the segments of processes that are gone."""
        if not self.spool_dir.is_dir():
            return
        for staging in self.spool_dir.glob(f"{SEGMENT_PREFIX}*.jsonl.tmp"):
            # never renamed: its process died before writing to it
            with contextlib.suppress(OSError), staging.open("rb") as file:
                if _try_lock(file):
                    staging.unlink()
        adopted = []
        for path in sorted(self.spool_dir.glob(f"{SEGMENT_PREFIX}*.jsonl")):
            try:
                file = path.open("rb")
            except OSError:
                continue  # replayed and deleted by another process meanwhile
            if not _try_lock(file) or os.fstat(file.fileno()).st_nlink == 0:
                file.close()  # a live process owns it, or it was deleted after we listed it
                continue
            adopted.append(_Segment(path, file, _count_lines(path)))
        if adopted:
            log.info(
                "prediction log: replaying %d rows left in %d spool file(s) by earlier processes",
                sum(s.rows for s in adopted),
                len(adopted),
            )
            with self._spool_lock:
                self._sealed[:0] = adopted

    def _replay(self) -> None:
        """Replay the spool oldest segment first; delete each segment once all its rows are committed."""
        with self._spool_lock:
            if self._active is not None and self._active.rows:
                self._sealed.append(self._active)
                self._active = None
            if not self._sealed:
                return
            segment = self._sealed[0]
        while True:
            total = self._replay_segment(segment)
            if self._abandoned:
                return
            with contextlib.suppress(FileNotFoundError):
                segment.path.unlink()
            _fsync_dir(self.spool_dir)
            with self._spool_lock:
                with contextlib.suppress(OSError):
                    segment.file.close()
                if self._sealed and self._sealed[0] is segment:
                    self._sealed.pop(0)
                log.info(
                    "prediction log: replayed %d spooled rows from %s", total, segment.path.name
                )
                if not self._sealed:
                    return
                segment = self._sealed[0]

    def _replay_segment(self, segment: _Segment) -> int:
        """Insert a segment's rows from where this process left it; return how many."""
        total = 0
        for chunk, end in self._read_segment(segment):
            if self._abandoned:
                break
            stored = self._write(chunk) if chunk else 0
            total += stored
            with self._counts_lock:
                self._replayed += stored
            with self._spool_lock:
                segment.rows = max(0, segment.rows - len(chunk))
                segment.offset = end
        return total

    def _read_segment(self, segment: _Segment) -> Iterator[tuple[list[_Item], int]]:
        """Chunks of ``batch_size`` rows, each with the byte offset just past it."""
        chunk: list[_Item] = []
        offset = segment.offset
        try:
            file = segment.path.open("rb")
        except FileNotFoundError:
            return
        with file:
            file.seek(offset)
            for line in file:
                offset += len(line)
                if not line.strip():
                    continue
                if not line.endswith(b"\n"):
                    # the last line of a process that died mid-write: never a complete row
                    log.warning("prediction log: %s ends in a torn line", segment.path.name)
                    continue
                try:
                    chunk.append(_from_line(line))
                except (ValueError, KeyError, TypeError) as error:
                    log.error(
                        "prediction log: unreadable line in %s (%s)", segment.path.name, error
                    )
                    self._keep_rejected(line)
                    continue
                if len(chunk) >= self._batch_size:
                    yield chunk, offset
                    chunk = []
        yield chunk, offset

    def _drain(self) -> list[_Row]:
        rows: list[_Row] = []
        while True:
            try:
                rows.append(self._queue.get_nowait())
            except queue.Empty:
                return rows

    def _count_dropped(self, n: int) -> None:
        log.error("prediction log: %d row(s) lost: neither the database nor the spool took them", n)
        with self._counts_lock:
            self._dropped += n
