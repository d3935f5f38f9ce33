"""Drift: does recent traffic still look like the data the model was trained on?

:func:`run_drift` reads a window of the prediction log (:mod:`.logreader`), loads the
package's reference (:mod:`.reference`) and compares, with Evidently 0.7:

* every **monitor feature** (images: brightness, contrast, dark/bright share; tables: the
  columns) with the snapshot's reference — one Evidently ``ValueDrift`` per column, inside
  a ``DataDriftPreset`` so the HTML report shows them together;
* the model's **outputs** — the predicted label and its confidence (classes) or the
  predicted value (numbers) — with the same graph's outputs on training rows; an input
  shift that matters to the model shows up here even when no single feature moves much.
  A model that generates text (``output_kind: text``) has no such column: its documents'
  features and its encoder embedding are compared;
* the **embedding**, for graphs that export one (images, texts, summarisers), with Evidently's embedding drift
  method (``monitor.embedding_method``), a multivariate test on the model's own view.

Each of these is one *column* with a method, a score, a threshold and a verdict (the
verdict is Evidently's). The dataset drifts when the share of drifted columns reaches
``monitor.drift_share`` — Evidently's own rule, over all three kinds.

The summary and Evidently's HTML report are written by :mod:`.reports`. Evidently and
pandas are imported here, never by the server: the server runs ``shipyard monitor drift``
in a subprocess.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from shipyard.errors import UserError
from shipyard.export.package import ModelPackage
from shipyard.monitor.logreader import LogWindow, read_window
from shipyard.monitor.reference import Reference, load_reference
from shipyard.monitor.settings import DriftSettings

#: the output columns compared, as the log reader and the reference name them
OUTPUT_COLUMNS = ("label", "confidence", "value")
EMBEDDING = "embedding"


@dataclass(frozen=True)
class ColumnDrift:
    """One compared column: how it was tested and whether it drifted."""

    name: str
    kind: str  # "feature" | "output" | "embedding"
    method: str
    score: float | None  # p-value tests: drifted below threshold; distances: above
    threshold: float | None
    drifted: bool


@dataclass(frozen=True)
class DriftSummary:
    """The verdict of one drift run; :meth:`to_dict` is ``latest.json``."""

    created_at: str
    model_name: str
    model_version: str | None
    versions: list[str]
    rows: int
    start: str | None
    end: str | None
    dataset_drift: bool
    drift_share: float
    drift_share_threshold: float
    features: list[ColumnDrift]
    snapshot_id: str
    reference_rows: int
    seconds: float
    report_html: str = ""
    report_json: str = ""
    skipped: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "created_at": self.created_at,
            "model": {
                "name": self.model_name,
                "version": self.model_version,
                "versions": self.versions,
            },
            "window": {"rows": self.rows, "start": self.start, "end": self.end},
            "dataset_drift": self.dataset_drift,
            "drift_share": self.drift_share,
            "drift_share_threshold": self.drift_share_threshold,
            "features": [asdict(c) for c in self.features],
            "skipped": self.skipped,
            "reference": {"snapshot_id": self.snapshot_id, "rows": self.reference_rows},
            "seconds": self.seconds,
            "report_html": self.report_html,
            "report_json": self.report_json,
        }


def run_drift(
    cfg: DictConfig,
    *,
    package: ModelPackage,
    window: int | None = None,
    since: datetime | None = None,
    model_name: str | None = None,
    model_version: str | None = None,
    log_url: str | None = None,
    precision: str | None = None,
) -> DriftSummary:
    """Compare the log's newest ``window`` predictions (or those since ``since``; default
    ``monitor.window``) of the model with the package's reference, write the reports and
    return the summary. :class:`UserError` (nothing written) when the window holds fewer
    than ``monitor.min_rows`` predictions.

    ``model_name`` defaults to ``serve.model_name``, else the package's data name (what the
    server logs for a package folder); ``model_version`` None takes every version of that
    name; ``log_url`` defaults to ``serve.prediction_log_url``, else the home's SQLite log;
    ``precision`` (the graph whose outputs are the reference) to ``serve.precision``.
    """
    from shipyard.monitor.reports import write_reports

    started = time.perf_counter()
    settings = DriftSettings.from_cfg(cfg)
    name = model_name or default_model_name(cfg, package)
    if window is None and since is None:
        window = settings.window
    current = read_window(
        log_url or default_log_url(cfg),
        name,
        model_version,
        window=window,
        since=since,
        max_rows=settings.max_rows,
    )
    if current.rows < settings.min_rows:
        which = f"{name} v{model_version}" if model_version else name
        span = f"since {since.isoformat(timespec='seconds')}" if since else f"(--window {window})"
        hint = (
            f"--window {window} is below monitor.min_rows"
            if window is not None and window < settings.min_rows
            else "send more traffic or widen --window/--since"
        )
        raise UserError(
            f"the log holds {current.rows} predictions of {which} {span}; a drift verdict "
            f"needs at least {settings.min_rows} (monitor.min_rows): {hint}"
        )
    precision = precision or str(cfg.serve.get("precision") or "fp32")
    reference = load_reference(
        cfg,
        package,
        precision=precision,
        rows=settings.reference_rows,
        seed=settings.reference_seed,
    )
    columns, skipped, snapshot = _compare(current, reference, settings)
    drifted = sum(c.drifted for c in columns)
    share = drifted / len(columns) if columns else 0.0
    summary = DriftSummary(
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        model_name=name,
        model_version=model_version,
        versions=current.versions,
        rows=current.rows,
        start=current.start.isoformat() if current.start else None,
        end=current.end.isoformat() if current.end else None,
        dataset_drift=bool(columns) and share >= settings.drift_share,
        drift_share=share,
        drift_share_threshold=settings.drift_share,
        features=columns,
        snapshot_id=reference.snapshot_id,
        reference_rows=reference.rows,
        seconds=0.0,
        skipped=skipped,
    )
    return write_reports(cfg, summary, snapshot, settings.keep_reports, started)


def default_model_name(cfg: DictConfig, package: ModelPackage) -> str:
    """The name the server logs: ``serve.model_name``, else the package's data name."""
    configured = cfg.serve.get("model_name")
    if configured:
        return str(configured)
    from shipyard.serve.reload import package_name

    return package_name(package.manifest)


def default_log_url(cfg: DictConfig) -> str:
    """``serve.prediction_log_url``, else ``sqlite:///<paths.home>/predictions.db``."""
    from shipyard.serve.predlog import default_url

    return str(cfg.serve.get("prediction_log_url") or default_url(Path(str(cfg.paths.home))))


# -- the comparison -----------------------------------------------------------------------


def _frames(
    current: LogWindow, reference: Reference
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, str], list[str], list[str]]:
    """Current and reference frames over the columns both have values for; each column's
    kind; the categorical columns (the predicted label); and what was left out, and why."""
    kinds: dict[str, str] = {}
    categorical: list[str] = []
    skipped: list[str] = []
    cur_parts, ref_parts = [], []
    for frame_cur, frame_ref, kind, names in (
        (current.features, reference.features, "feature", list(reference.features.columns)),
        (current.outputs, reference.outputs, "output", list(OUTPUT_COLUMNS)),
    ):
        for column in names:
            if column not in frame_ref.columns:
                continue
            if column not in frame_cur.columns or frame_cur[column].notna().sum() == 0:
                skipped.append(f"{column} ({kind}: no values in the log window)")
                continue
            name = column if column not in kinds else f"output_{column}"
            kinds[name] = kind
            if kind == "output" and column == "label":
                categorical.append(name)
            cur_parts.append(frame_cur[column].reset_index(drop=True).rename(name))
            ref_parts.append(frame_ref[column].reset_index(drop=True).rename(name))
    cur = pd.concat(cur_parts, axis=1) if cur_parts else pd.DataFrame()
    ref = pd.concat(ref_parts, axis=1) if ref_parts else pd.DataFrame()
    return cur, ref, kinds, categorical, skipped


def _compare(
    current: LogWindow, reference: Reference, settings: DriftSettings
) -> tuple[list[ColumnDrift], list[str], Any]:
    """Per-column drift from one Evidently report, plus the embedding's; the report itself."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import EmbeddingsDrift
    from evidently.presets import DataDriftPreset

    cur, ref, kinds, categorical, skipped = _frames(current, reference)
    if not kinds:
        raise UserError(
            "the log window holds neither monitor features nor outputs to compare ("
            + "; ".join(skipped)
            + "): was it written by a server without pandas?"
        )
    unknown = sorted(set(settings.columns) - set(kinds))
    if unknown:
        raise UserError(
            f"monitor.columns names {', '.join(unknown)}, which this model does not have: "
            f"choose from {', '.join(kinds)}"
        )
    for frame in (cur, ref):
        for column in categorical:
            frame[column] = frame[column].astype("string").astype(object)
    numerical = [c for c in kinds if c not in categorical]
    embeddings: dict[str, list[str]] = {}
    method = _embedding_method(settings)
    emb_cur, emb_ref = _embedding_frames(current, reference)
    if (
        settings.embedding_plot
        and emb_cur is not None
        and emb_ref is not None
        and len(emb_cur) == len(cur)  # the picture needs an embedding on every row
    ):
        embeddings = {EMBEDDING: list(emb_cur.columns)}
        cur = pd.concat([cur, emb_cur], axis=1)
        ref = pd.concat([ref, emb_ref], axis=1)
    definition = DataDefinition(
        numerical_columns=numerical + [c for cols in embeddings.values() for c in cols],
        categorical_columns=categorical,
        embeddings=embeddings or None,
    )
    preset = DataDriftPreset(
        columns=list(kinds),
        drift_share=settings.drift_share,
        num_method=settings.num_method,
        num_threshold=settings.num_threshold,
        cat_method=settings.cat_method,
        cat_threshold=settings.cat_threshold,
        per_column_method={c: s["method"] for c, s in settings.columns.items() if s.get("method")},
        per_column_threshold={
            c: float(s["threshold"])
            for c, s in settings.columns.items()
            if s.get("threshold") is not None
        },
    )
    metrics: list[Any] = [preset]
    if embeddings:
        metrics.append(EmbeddingsDrift(embeddings_name=EMBEDDING, drift_method=method))
    try:
        # constant columns (no bright pixels at all) make scipy divide by zero: not news
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore", RuntimeWarning)
            snapshot = Report(metrics, include_tests=True).run(
                Dataset.from_pandas(cur, data_definition=definition),
                Dataset.from_pandas(ref, data_definition=definition),
            )
    except ValueError as exc:  # Evidently's StatTestNotFoundError and friends
        first = str(exc).strip().splitlines()[0]
        raise UserError(f"Evidently refused the drift settings (monitor.*): {first}") from exc
    results = _column_results(snapshot.dict(), kinds)
    if emb_cur is not None and emb_ref is not None:
        score, drifted, _ = method(emb_cur.copy(), emb_ref.copy())
        results.append(
            ColumnDrift(
                name=EMBEDDING,
                kind="embedding",
                method=settings.embedding_method,
                score=float(score),
                threshold=float(method.threshold),
                drifted=bool(drifted),
            )
        )
    return results, skipped, snapshot


def _column_results(report: dict[str, Any], kinds: dict[str, str]) -> list[ColumnDrift]:
    """Method, score and threshold of each ``ValueDrift`` metric; its verdict from the test
    Evidently attaches to it (FAIL: drift detected)."""
    verdicts = {
        t["metric_config"]["params"].get("column"): t["status"] == "FAIL"
        for t in report.get("tests", [])
        if t.get("metric_config", {}).get("params", {}).get("type", "").endswith(":ValueDrift")
    }
    results = []
    for metric in report.get("metrics", []):
        config = metric.get("config", {})
        column = config.get("column")
        if not config.get("type", "").endswith(":ValueDrift") or column not in kinds:
            continue
        value = metric.get("value")
        score = float(value) if isinstance(value, int | float) and np.isfinite(value) else None
        threshold = config.get("threshold")
        results.append(
            ColumnDrift(
                name=column,
                kind=kinds[column],
                method=str(config.get("method")),
                score=score,
                threshold=None if threshold is None else float(threshold),
                drifted=bool(verdicts.get(column, False)),
            )
        )
    order = list(kinds)
    return sorted(results, key=lambda c: order.index(c.name))


def _embedding_method(settings: DriftSettings) -> Any:
    from evidently.metrics.embeddings import (
        DistanceDriftMethod,
        MMDDriftMethod,
        ModelDriftMethod,
        RatioDriftMethod,
    )

    cls = {
        "model": ModelDriftMethod,
        "mmd": MMDDriftMethod,
        "distance": DistanceDriftMethod,
        "ratio": RatioDriftMethod,
    }[settings.embedding_method]
    kwargs = (
        {} if settings.embedding_threshold is None else {"threshold": settings.embedding_threshold}
    )
    return cls(**kwargs)


def _embedding_frames(
    current: LogWindow, reference: Reference
) -> tuple[pd.DataFrame | None, pd.DataFrame | None]:
    """Current and reference embeddings as frames of ``embedding_0..k``, finite rows only,
    when both exist with the same width."""
    if current.embeddings is None or reference.embeddings is None:
        return None, None
    cur, ref = current.embeddings, reference.embeddings
    if cur.shape[1] != ref.shape[1]:
        return None, None
    cur = cur[np.isfinite(cur).all(axis=1)]
    if len(cur) < 2:
        return None, None
    names = [f"{EMBEDDING}_{i}" for i in range(cur.shape[1])]
    return pd.DataFrame(cur, columns=names), pd.DataFrame(ref, columns=names)
