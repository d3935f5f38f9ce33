"""Reading a window of the prediction log into pandas, for the drift check.

Read-only: ``SELECT`` statements over the log's own table definitions
(:mod:`shipyard.serve.predlog`), so the reader and the writer cannot disagree about column
names or JSON types. A window is either the newest ``N`` predictions of a model or every
prediction since a time (capped at ``max_rows``, newest kept), returned oldest first.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from shipyard.errors import UserError
from shipyard.monitor.accuracy import engine_for, has_log_tables
from shipyard.serve.predlog import decode_embedding, predictions_table

#: ``30s``, ``15m``, ``1h``, ``2d``, ``1w`` (optionally with a space, e.g. ``1.5 h``)
_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$", re.IGNORECASE)
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(text: str, *, now: datetime | None = None) -> datetime:
    """``--since``: an ISO time (``2024-05-01T12:00``, ``...Z``, ``...+02:00``; without a zone
    it is UTC, like the log) or a span back from now (``30m``, ``1h``, ``2d``). UTC-aware."""
    now = now or datetime.now(UTC)
    match = _RELATIVE.match(text)
    if match:
        amount, unit = float(match.group(1)), match.group(2).lower()
        return now - timedelta(**{_UNITS[unit]: amount})
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UserError(
            f"--since {text!r} is neither an ISO time (2024-05-01T12:00:00Z) nor a span back "
            "from now (30m, 1h, 2d)"
        ) from None
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    if moment > now:
        raise UserError(f"--since {text!r} is in the future: give a past time or a span (1h)")
    return moment


@dataclass
class LogWindow:
    """Predictions of one model, oldest first, split the way the drift check compares them."""

    #: monitor features, one column per feature (NaN for a row logged without them)
    features: pd.DataFrame
    #: ``label`` and ``confidence`` (classes) or ``value`` (numbers), one row per prediction
    outputs: pd.DataFrame
    #: embeddings of the rows that have one (rows x width), or None
    embeddings: np.ndarray | None
    rows: int
    start: datetime | None
    end: datetime | None
    versions: list[str] = field(default_factory=list)


def read_window(
    log: Engine | str,
    model_name: str,
    model_version: str | None = None,
    *,
    window: int | None = None,
    since: datetime | None = None,
    max_rows: int = 100_000,
) -> LogWindow:
    """The newest ``window`` predictions of ``model_name`` (and ``model_version``), or all
    since ``since`` up to ``max_rows``; :class:`UserError` when the log cannot be read."""
    if window is not None and since is not None:
        raise UserError("give --window N or --since TIME, not both")
    if window is not None and window < 1:
        raise UserError(f"--window must be at least 1 prediction, got {window}")
    limit = window if window is not None else max_rows
    p = predictions_table
    query = sa.select(
        p.c.created_at,
        p.c.model_version,
        p.c.monitor_features,
        p.c.output,
        p.c.probabilities,
        p.c.embedding,
    ).where(p.c.model_name == model_name)
    if model_version is not None:
        query = query.where(p.c.model_version == str(model_version))
    if since is not None:
        query = query.where(p.c.created_at >= since)
    query = query.order_by(p.c.created_at.desc(), p.c.id.desc()).limit(limit)
    owned = isinstance(log, str)
    engine = engine_for(log) if isinstance(log, str) else log
    try:
        with engine.connect() as connection:
            rows = list(connection.execute(query)) if has_log_tables(connection) else []
    except sa.exc.SQLAlchemyError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"cannot read the prediction log at {engine.url.render_as_string()}: {first}"
        ) from exc
    finally:
        if owned:
            engine.dispose()
    rows.reverse()  # oldest first
    return _frames(rows)


def _frames(rows: list[Any]) -> LogWindow:
    # one row per prediction (NaN where a row has no features), aligned with ``outputs``
    features = [r.monitor_features if isinstance(r.monitor_features, dict) else {} for r in rows]
    outputs: list[dict[str, Any]] = []
    for r in rows:
        output = r.output if isinstance(r.output, dict) else {}
        entry: dict[str, Any] = {}
        if "label" in output:
            entry["label"] = None if output["label"] is None else str(output["label"])
            probabilities = r.probabilities
            if isinstance(probabilities, list) and probabilities:
                numbers = [float(v) for v in probabilities if v is not None]
                entry["confidence"] = max(numbers) if numbers else None
        if "value" in output:
            entry["value"] = None if output["value"] is None else float(output["value"])
        outputs.append(entry)
    embedded = [e for e in (decode_embedding(r.embedding) for r in rows) if e]
    embeddings = None
    if embedded:
        width = len(embedded[-1])  # the newest rows' width: an older version may differ
        same = [e for e in embedded if len(e) == width]
        embeddings = np.asarray(same, dtype=np.float64)
    return LogWindow(
        features=pd.DataFrame(features, dtype="float64"),
        outputs=pd.DataFrame(outputs),
        embeddings=embeddings,
        rows=len(rows),
        start=rows[0].created_at if rows else None,
        end=rows[-1].created_at if rows else None,
        versions=sorted({str(r.model_version) for r in rows}),
    )
