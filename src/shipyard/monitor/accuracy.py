"""Live accuracy: how the served model does on the predictions that got feedback.

The server calls :func:`live_metric` on a timer, so this module imports only the standard
library and SQLAlchemy (through the prediction log's table definitions): no NumPy, pandas
or Evidently, and a call costs one indexed query.

*What counts.* The newest ``window`` predictions of the model (and version, if given) that
have at least one feedback row, newest prediction first; of several feedback rows for one
prediction the newest counts (a correction overrides a mistake). Classes: the share whose
predicted label equals the feedback label (``3`` and ``3.0`` both mean the label ``"3"``,
as ``POST /feedback`` treats them). Numbers: the mean absolute error of the predicted value
against the fed-back value; feedback that is not a number is skipped. Generated text
(``output_kind: text``): the mean ROUGE-L F1 of the generated text (the log's ``summary``)
against the fed-back reference text, scored as at test time
(:func:`shipyard.tasks.summarize.metrics.rouge`, imported only then); feedback that is not
a non-empty text is skipped.

*The alert.* ``drop`` is how much worse the live value is than the model's test metric
(accuracy, ROUGE-L: test - live; MAE: live - test), so positive is always worse; ``alert`` is set
when ``drop > margin`` and at least ``min_samples`` predictions were scored, so that three
unlucky requests do not page anyone.

The SQL is plain SQLAlchemy Core (a ``ROW_NUMBER()`` window over the feedback joined to
the predictions by primary key) and runs unchanged on SQLite and Postgres; it reads the
feedback table once and one prediction per feedback row, whatever the log's size.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

from shipyard.errors import UserError
from shipyard.serve.predlog import feedback_table, predictions_table

Metric = Literal["accuracy", "mae", "rougeL"]
METRICS: tuple[str, ...] = ("accuracy", "mae", "rougeL")
#: metrics where higher is better (the drop is test - live); the others: live - test
HIGHER_IS_BETTER = ("accuracy", "rougeL")
#: a generated text's field in the log's ``output`` (``shipyard.serve.http.TEXT_OUTPUT``)
TEXT_OUTPUT = "summary"
POSTGRES_CONNECT_TIMEOUT_S = 5
#: 0.9 - 0.7 is 0.20000000000000007 in floating point: not a drop of more than 0.2
EPSILON = 1e-9


@dataclass(frozen=True)
class LiveMetric:
    """The live metric over the feedback window, beside the test metric it is judged by."""

    metric: str  # "accuracy" | "mae" | "rougeL"
    value: float | None  # None: no prediction in the window has feedback yet
    samples: int  # predictions scored
    test_value: float | None  # the package's test-split value of the same metric
    drop: float | None  # positive = worse than at test time; None without both values
    alert: bool
    window: int
    margin: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def engine_for(url: str) -> Engine:
    """An engine for reading the prediction log at ``url``.

    ``postgresql://`` means psycopg 3, as for the writer. A SQLite file must exist: a reader
    must not create an empty database where the server would later write its own.
    """
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    backend = parsed.get_backend_name()
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if backend == "sqlite":
        database = parsed.database or ""
        if database in ("", ":memory:") or not Path(database).is_file():
            raise UserError(
                f"no prediction log at {url!r}: serve the model first (`shipyard serve`), or "
                "point serve.prediction_log_url at the server's database"
            )
    elif backend == "postgresql" and "connect_timeout" not in parsed.query:
        kwargs["connect_args"] = {"connect_timeout": POSTGRES_CONNECT_TIMEOUT_S}
    return sa.create_engine(parsed, **kwargs)


def has_log_tables(connection: sa.Connection) -> bool:
    """Whether the server has created the log's tables yet (it does at its first start)."""
    inspector = sa.inspect(connection)
    return all(
        inspector.has_table(t.name, schema=t.schema) for t in (predictions_table, feedback_table)
    )


def label_text(label: Any) -> str:
    """A class label as text, as ``POST /feedback`` stores it: ``3`` and ``3.0`` are ``"3"``."""
    if isinstance(label, float) and label.is_integer():
        return str(int(label))
    return str(label)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _output_field(output: Any, key: str) -> Any:
    return output.get(key) if isinstance(output, dict) else None


def feedback_rows(
    connection: sa.Connection, model_name: str, model_version: str | None, window: int
) -> list[tuple[Any, Any]]:
    """``(output, newest feedback label)`` of the newest ``window`` predictions with feedback.

    Driven from the feedback table (each prediction's newest label, by a window function),
    joined to the predictions by primary key: feedback is sparse, and a query driven from the
    predictions (``EXISTS`` per prediction, newest first) scanned every prediction of the
    model when few had feedback — 2.4 s on a million-row log, every refresh — against 2 ms."""
    p, f = predictions_table, feedback_table
    ranked = sa.select(
        f.c.prediction_id,
        f.c.label,
        sa.func.row_number()
        .over(partition_by=f.c.prediction_id, order_by=(f.c.created_at.desc(), f.c.id.desc()))
        .label("rank"),
    ).subquery()
    query = (
        sa.select(p.c.output, ranked.c.label)
        .select_from(ranked.join(p, ranked.c.prediction_id == p.c.id))
        .where(ranked.c.rank == 1, p.c.model_name == model_name)
    )
    if model_version is not None:
        query = query.where(p.c.model_version == str(model_version))
    query = query.order_by(p.c.created_at.desc(), p.c.id.desc()).limit(window)
    return [(row.output, row.label) for row in connection.execute(query)]


def score(rows: list[tuple[Any, Any]], metric: str) -> tuple[float | None, int]:
    """The metric over ``(output, label)`` pairs and how many pairs it scored."""
    if metric == "accuracy":
        pairs = [
            (label_text(_output_field(out, "label")), label_text(label))
            for out, label in rows
            if _output_field(out, "label") is not None and label is not None
        ]
        if not pairs:
            return None, 0
        return sum(a == b for a, b in pairs) / len(pairs), len(pairs)
    if metric == "rougeL":
        return _rouge_l(rows)
    errors = []
    for out, label in rows:
        predicted, truth = _number(_output_field(out, "value")), _number(label)
        if predicted is not None and truth is not None:
            errors.append(abs(predicted - truth))
    return (sum(errors) / len(errors), len(errors)) if errors else (None, 0)


def _rouge_l(rows: list[tuple[Any, Any]]) -> tuple[float | None, int]:
    """Mean ROUGE-L F1 of the generated texts against the fed-back reference texts."""
    pairs = [
        (str(_output_field(out, TEXT_OUTPUT)), label)
        for out, label in rows
        if _output_field(out, TEXT_OUTPUT) is not None and isinstance(label, str) and label.strip()
    ]
    if not pairs:
        return None, 0
    from shipyard.tasks.summarize.metrics import rouge

    scores = rouge([p for p, _ in pairs], [r for _, r in pairs])
    return float(scores["rougeL"]), len(pairs)


def live_metric(
    engine_or_url: Engine | str,
    model_name: str,
    model_version: str | None,
    *,
    window: int,
    test_metric: float | None,
    metric: Metric,
    margin: float,
    min_samples: int = 1,
) -> LiveMetric:
    """Accuracy (classes), MAE (numbers) or ROUGE-L (generated text) over the newest ``window`` predictions with
    feedback, compared with ``test_metric``; see the module doc for what counts.

    A log whose tables do not exist yet gives ``value=None, samples=0``; a database that
    cannot be reached raises SQLAlchemy's error (the caller decides whether to retry).
    """
    if metric not in METRICS:
        raise UserError(f"unknown live metric {metric!r}: choose one of {', '.join(METRICS)}")
    if window < 1:
        raise UserError(f"the live-accuracy window must be at least 1 prediction, got {window}")
    if not math.isfinite(margin) or margin < 0:
        raise UserError(f"the alert margin must be a number >= 0, got {margin}")
    owned = isinstance(engine_or_url, str)
    engine = engine_for(engine_or_url) if isinstance(engine_or_url, str) else engine_or_url
    try:
        with engine.connect() as connection:
            if not has_log_tables(connection):
                rows: list[tuple[Any, Any]] = []
            else:
                rows = feedback_rows(connection, model_name, model_version, window)
    finally:
        if owned:
            engine.dispose()
    value, samples = score(rows, metric)
    drop: float | None = None
    if value is not None and test_metric is not None:
        drop = (test_metric - value) if metric in HIGHER_IS_BETTER else (value - test_metric)
    # a drop equal to the margin is not "more than" it, whatever the float rounding says
    alert = drop is not None and drop > margin + EPSILON and samples >= max(1, min_samples)
    return LiveMetric(
        metric=metric,
        value=value,
        samples=samples,
        test_value=test_metric,
        drop=drop,
        alert=alert,
        window=window,
        margin=margin,
    )


def package_metric(manifest: Any, precision: str) -> tuple[Metric, float | None]:
    """The metric that ranks this kind of model, and its test-split value for the graph of
    ``precision`` (the PyTorch test metric when that graph was not scored)."""
    from shipyard.tasks.base import OutputKind, primary_metric

    metric, _ = primary_metric(OutputKind(manifest.output_kind))
    for graph in manifest.graphs:
        if graph.precision == precision and metric in graph.metrics:
            return metric, float(graph.metrics[metric])  # type: ignore[return-value]
    value = manifest.metrics.get(f"test_{metric}")
    return metric, None if value is None else float(value)  # type: ignore[return-value]


def live_margin(
    metric: str, test_value: float | None, accuracy_margin: float, mae_margin: float | None
) -> float:
    """The allowed drop: accuracy points (``monitor.accuracy_margin``, also the ROUGE-L F1
    points for a model that generates text: both are shares in 0..1), or MAE in target units
    (``monitor.mae_margin``; null: 25% of the test MAE)."""
    if metric in HIGHER_IS_BETTER:
        return accuracy_margin
    if mae_margin is not None:
        return mae_margin
    return 0.25 * test_value if test_value is not None else 0.0
