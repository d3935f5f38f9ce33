"""Prometheus metrics of the server, in one process or aggregated over several workers.

Each app gets its own :class:`Metrics` with a private registry (several apps in one test
process must not collide in the global one). With several uvicorn workers each worker is
its own process, so counters live in files: when ``PROMETHEUS_MULTIPROC_DIR`` is set
(``shipyard serve --workers N`` sets it to a fresh folder when it is not), prometheus_client
writes every value there and ``/metrics`` — whichever worker answers it — aggregates all
workers with ``MultiProcessCollector``. Gauges declare how workers combine: queue depth and
in-flight requests add up (``livesum``), model info is 1 when any live worker serves that
version (``livemax``). A worker marks itself dead on shutdown so its gauges disappear.

Metric names (all prefixed ``shipyard_``): ``requests_total{route,method,status}``,
``request_duration_seconds{route}``, ``batch_size``, ``batch_duration_seconds``,
``queue_rows``, ``in_flight_requests``, ``model_info{name,version,precision}``,
``predictions_total{model,label}``, ``errors_total{kind}``, ``reloads_total{result}``,
``prediction_log_rows{state}``, ``prediction_log_database_up``, ``model_ready``,
``queue_capacity_rows``; from the monitor (:mod:`shipyard.serve.monitoring`):
``drift_score{model,feature,kind}``, ``drift_detected{model,feature,kind}``,
``dataset_drift{model}``, ``drift_share{model}``, ``drift_last_run_timestamp_seconds{model}``,
``live_metric{model,metric}``, ``live_metric_samples{model}``, ``test_metric{model,metric}``,
``live_metric_drop{model,metric}`` and ``live_metric_alert{model}``.
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.02,
    0.05,
    0.1,
    0.2,
    0.5,
    1.0,
    2.0,
    5.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


def multiprocess() -> bool:
    return bool(os.environ.get(MULTIPROC_ENV))


class Metrics:
    """The server's metric families and the few helpers that update them."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        # process_resident_memory_bytes, cpu seconds, open fds: the load test's memory check
        ProcessCollector(registry=r)
        self.requests = Counter(
            "shipyard_requests",
            "HTTP requests by route template, method and status code.",
            ["route", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "shipyard_request_duration_seconds",
            "Time from request to response, by route template.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "shipyard_batch_size",
            "Rows per ONNX Runtime call (the batcher's batches).",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.batch_seconds = Histogram(
            "shipyard_batch_duration_seconds",
            "Wall time of one ONNX Runtime call on a batch.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_rows = Gauge(
            "shipyard_queue_rows",
            "Rows waiting in the batcher's queue.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.in_flight = Gauge(
            "shipyard_in_flight_requests",
            "Prediction requests being served right now.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.model_info = Gauge(
            "shipyard_model_info",
            "1 for the model version being served.",
            ["name", "version", "precision"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.predictions = Counter(
            "shipyard_predictions",
            "Predictions by model and predicted class (label 'value' for numbers).",
            ["model", "label"],
            registry=r,
        )
        self.errors = Counter(
            "shipyard_errors",
            "Refused or failed requests by kind (bad_shape, queue_full, ...).",
            ["kind"],
            registry=r,
        )
        self.reloads = Counter(
            "shipyard_reloads",
            "Model reloads by result: swapped, unchanged or refused.",
            ["result"],
            registry=r,
        )
        self.log_rows = Gauge(
            "shipyard_prediction_log_rows",
            "Prediction-log rows by state: queued, written, spooled, replayed.",
            ["state"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.log_up = Gauge(
            "shipyard_prediction_log_database_up",
            "1 when the prediction log's database accepts writes.",
            registry=r,
            multiprocess_mode="livemin",
        )
        self.model_ready = Gauge(
            "shipyard_model_ready",
            "1 when a model is loaded and answering (GET /v2/health/ready is 200).",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.queue_capacity = Gauge(
            "shipyard_queue_capacity_rows",
            "Rows the batcher's queue holds before requests get 503 (serve.max_queue_rows).",
            registry=r,
            multiprocess_mode="livesum",
        )

        # The monitor's gauges: every worker reads the same monitor summary, so any live
        # worker's value will do (livemax).
        self.drift_score = Gauge(
            "shipyard_drift_score",
            "Drift score per monitored column (the method's statistic or p-value).",
            ["model", "feature", "kind"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.drift_detected = Gauge(
            "shipyard_drift_detected",
            "1 when the column drifted in the latest drift run.",
            ["model", "feature", "kind"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.dataset_drift = Gauge(
            "shipyard_dataset_drift",
            "1 when the latest drift run flagged the dataset.",
            ["model"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.drift_share = Gauge(
            "shipyard_drift_share",
            "Share of monitored columns that drifted.",
            ["model"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.drift_timestamp = Gauge(
            "shipyard_drift_last_run_timestamp_seconds",
            "When the latest drift run finished (Unix time).",
            ["model"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.live_metric = Gauge(
            "shipyard_live_metric",
            "Accuracy (classes) or MAE (numbers) over the newest predictions with feedback.",
            ["model", "metric"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.live_samples = Gauge(
            "shipyard_live_metric_samples",
            "Predictions with feedback behind shipyard_live_metric.",
            ["model"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.test_metric = Gauge(
            "shipyard_test_metric",
            "The model's metric on its test split, from the package.",
            ["model", "metric"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.live_drop = Gauge(
            "shipyard_live_metric_drop",
            "How much worse the live metric is than the test metric (positive: worse).",
            ["model", "metric"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.live_alert = Gauge(
            "shipyard_live_metric_alert",
            "1 when the live metric is worse than the test metric by more than the margin.",
            ["model"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self._model: tuple[str, str, str] | None = None

    def set_model(self, name: str, version: str, precision: str) -> None:
        """Model info: the new version 1, the previous one 0 (kept, so a dashboard sees the swap)."""
        if self._model is not None:
            self.model_info.labels(*self._model).set(0)
        self._model = (name, version, precision)
        self.model_info.labels(name, version, precision).set(1)

    def observe_batch(self, rows: int, seconds: float) -> None:
        self.batch_size.observe(rows)
        self.batch_seconds.observe(seconds)

    def set_log_stats(self, stats: dict[str, Any]) -> None:
        for state in ("queued", "written", "spooled", "replayed"):
            if state in stats:
                self.log_rows.labels(state).set(float(stats[state]))
        if "database_up" in stats:
            self.log_up.set(1.0 if stats["database_up"] else 0.0)

    def render(self) -> bytes:
        """The exposition text: this process's registry, or every worker's files."""
        if multiprocess():
            from prometheus_client import multiprocess as mp

            registry = CollectorRegistry()
            mp.MultiProcessCollector(registry)
            ProcessCollector(registry=registry)  # of the worker that answers this scrape
            return generate_latest(registry)
        return generate_latest(self.registry)


def mark_dead(pid: int | None = None) -> None:
    """Drop a worker's live gauges from the shared folder (multiprocess mode only)."""
    if multiprocess():
        from prometheus_client import multiprocess as mp

        mp.mark_process_dead(pid or os.getpid())


def clear_multiprocess_dir(path: str) -> None:
    """Remove a previous server's value files, which would otherwise be added to this one's."""
    from pathlib import Path

    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    for file in folder.glob("*.db"):
        file.unlink(missing_ok=True)
