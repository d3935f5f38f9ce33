"""The server's side of monitoring: the live metric, scheduled drift checks, /monitoring.

Every ``serve.monitor_interval_s`` each worker (in a thread, never on the event loop):

* scores the newest predictions that have feedback (:func:`shipyard.monitor.accuracy.live_metric`,
  one SQL query; SQLAlchemy only) against the package's test metric;
* reads the newest drift summary (``<home>/monitoring/drift/latest.json``) when it changed;

and sets the Prometheus gauges from both. Every ``monitor.drift_interval_s`` one worker — the
one holding ``<home>/monitoring/drift.lock`` — runs ``shipyard monitor drift --json`` on the
served package in a **child process**: Evidently takes about 5 s to import and needs pandas,
and neither may touch the serving process. The child writes the reports; every worker picks
them up on its next refresh. ``GET /monitoring/summary`` is what the web page shows;
``GET /monitoring/drift`` the latest Evidently report.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import sys
import time
from typing import IO, TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, Response

from shipyard.monitor.reports import LATEST_HTML, LATEST_JSON, drift_folder, read_summary
from shipyard.serve.http import json_response

if TYPE_CHECKING:
    from shipyard.serve.metrics import Metrics
    from shipyard.serve.reload import ModelHolder
    from shipyard.serve.runtime import ServedModel
    from shipyard.serve.settings import ServeSettings

log = logging.getLogger("shipyard.serve")

#: a drift check that runs longer is killed (the next one is due anyway)
DRIFT_TIMEOUT_S = 600.0


class ServerMonitor:
    """Refreshes the live metric and drift gauges, and runs the drift check on schedule."""

    def __init__(
        self, settings: ServeSettings, metrics: Metrics, holder: ModelHolder, log_url: str | None
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.holder = holder
        self.log_url = log_url
        self.folder = drift_folder(settings.home_path)
        self.accuracy: dict[str, Any] | None = None
        self.drift: dict[str, Any] | None = None
        self._drift_mtime = 0.0
        self._engine: Any = None
        self._task: asyncio.Task[None] | None = None
        self._drift_job: asyncio.Task[None] | None = None
        self._next_drift = time.monotonic() + settings.monitor_drift_interval_s
        self._lock_file: IO[bytes] | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        if self.settings.monitor_interval_s > 0:
            self._task = asyncio.create_task(self._loop(), name="shipyard-monitor")

    async def stop(self) -> None:
        for task in (self._task, self._drift_job):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._engine is not None:
            self._engine.dispose()
        if self._lock_file is not None:
            self._lock_file.close()

    async def _loop(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self.refresh)
            except Exception as exc:  # a database that is down: try again next time
                log.warning("monitor: %s: %s", type(exc).__name__, str(exc).splitlines()[0])
            if self._drift_due():
                self._drift_job = asyncio.create_task(self._run_drift(), name="shipyard-drift")
            await asyncio.sleep(self.settings.monitor_interval_s)

    # -- the live metric and the drift summary -----------------------------------------------

    def refresh(self) -> None:
        """Read both and set the gauges (blocking: SQL and a file)."""
        model = self.holder.current
        if model is None:
            return
        self._read_drift(model.name)
        if self.log_url is not None:
            self._score(model)

    def _score(self, model: ServedModel) -> None:
        from shipyard.monitor.accuracy import engine_for, live_margin, live_metric, package_metric

        settings = self.settings
        if self._engine is None:
            self._engine = engine_for(self.log_url or "")
        metric, test_value = package_metric(model.manifest, model.precision)
        live = live_metric(
            self._engine,
            model.name,
            model.version,
            window=settings.monitor_accuracy_window,
            test_metric=test_value,
            metric=metric,
            margin=live_margin(
                metric, test_value, settings.monitor_accuracy_margin, settings.monitor_mae_margin
            ),
            min_samples=settings.monitor_accuracy_min_samples,
        )
        self.accuracy = live.to_dict()
        m, name = self.metrics, model.name
        m.live_samples.labels(name).set(live.samples)
        m.live_alert.labels(name).set(1 if live.alert else 0)
        if test_value is not None:
            m.test_metric.labels(name, metric).set(test_value)
        if live.value is not None:
            m.live_metric.labels(name, metric).set(live.value)
        if live.drop is not None:
            m.live_drop.labels(name, metric).set(live.drop)

    def _read_drift(self, model_name: str) -> None:
        path = self.folder / LATEST_JSON
        try:
            mtime = path.stat().st_mtime
        except FileNotFoundError:
            return
        if mtime == self._drift_mtime:
            return
        summary = read_summary(self.folder)
        if summary is None:
            return
        if (summary.get("model") or {}).get("name") != model_name:
            return  # another model's report in this home
        self._drift_mtime, self.drift = mtime, summary
        m = self.metrics
        m.dataset_drift.labels(model_name).set(1 if summary.get("dataset_drift") else 0)
        m.drift_share.labels(model_name).set(float(summary.get("drift_share") or 0.0))
        m.drift_timestamp.labels(model_name).set(mtime)
        for column in summary.get("features", []):
            labels = (model_name, str(column.get("name")), str(column.get("kind")))
            if column.get("score") is not None:
                m.drift_score.labels(*labels).set(float(column["score"]))
            m.drift_detected.labels(*labels).set(1 if column.get("drifted") else 0)

    # -- the scheduled drift check -------------------------------------------------------------

    def _drift_due(self) -> bool:
        interval = self.settings.monitor_drift_interval_s
        if interval <= 0 or time.monotonic() < self._next_drift:
            return False
        if self._drift_job is not None and not self._drift_job.done():
            return False
        self._next_drift = time.monotonic() + interval
        return self._hold_lock()

    def _hold_lock(self) -> bool:
        """One worker (of this home) runs the checks: the one holding the lock file."""
        if self._lock_file is not None:
            return True
        self.folder.parent.mkdir(parents=True, exist_ok=True)
        file = (self.folder.parent / "drift.lock").open("ab")
        try:
            fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            file.close()
            return False
        self._lock_file = file
        return True

    def drift_command(self, model: ServedModel) -> list[str]:
        settings = self.settings
        overrides = [
            *settings.config_overrides,
            f"paths.home={settings.home_path}",
            f"serve.model_name={model.name}",
            f"serve.precision={model.precision}",
        ]
        if self.log_url is not None:
            overrides.append(f"serve.prediction_log_url={self.log_url}")
        return [
            sys.executable, "-m", "shipyard", "monitor", "drift",
            "--package", str(model.package.path), "--version", model.version,
            "--json", *overrides,
        ]  # fmt: skip

    async def _run_drift(self) -> None:
        model = self.holder.current
        if model is None:
            return
        process = await asyncio.create_subprocess_exec(
            *self.drift_command(model),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            _, err = await asyncio.wait_for(process.communicate(), DRIFT_TIMEOUT_S)
        except (TimeoutError, asyncio.CancelledError):
            process.kill()
            await process.wait()
            raise
        if process.returncode == 0:
            await asyncio.to_thread(self._read_drift, model.name)
        else:  # too few predictions yet (exit 2) is the common case: one line, no traceback
            lines = err.decode(errors="replace").strip().splitlines()
            log.info("monitor: drift check skipped: %s", lines[-1] if lines else process.returncode)

    # -- what the page shows ------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        model = self.holder.current
        return {
            "model": {"name": model.name, "version": model.version} if model else None,
            "drift": self.drift,
            "accuracy": self.accuracy,
            "monitor_interval_s": self.settings.monitor_interval_s,
            "drift_interval_s": self.settings.monitor_drift_interval_s,
        }


router = APIRouter(prefix="/monitoring", tags=["monitoring"])


@router.get("/summary", summary="Live metric and the latest drift summary (the web page's view)")
async def monitoring_summary(request: Request) -> Response:
    monitor: ServerMonitor | None = request.app.state.server.monitor
    if monitor is None:
        return json_response({"model": None, "drift": None, "accuracy": None})
    return json_response(monitor.summary())


@router.get(
    "/drift",
    summary="The latest Evidently drift report (HTML)",
    responses={404: {"description": "No drift report yet."}},
)
async def monitoring_drift(request: Request) -> Response:
    server = request.app.state.server
    settings: ServeSettings = server.settings
    model = server.holder.current
    folder = drift_folder(settings.home_path)
    try:
        summary = read_summary(folder)
    except ValueError:  # a hand-edited file: no report to show
        summary = None
    ours = model is not None and (summary or {}).get("model", {}).get("name") == model.name
    path = folder / LATEST_HTML
    if not ours or not path.is_file():
        name = model.name if model is not None else "this model"
        return json_response(
            {
                "error": f"no drift report for {name} yet: run `shipyard monitor drift` or set "
                "monitor.drift_interval_s so the server runs it",
                "kind": "no_report",
            },
            404,
        )
    return FileResponse(path, media_type="text/html")
