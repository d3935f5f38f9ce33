"""Locust users for a Shipyard server: ``/predict``, ``/predict/upload``, V2 infer, ``/feedback``.

Run it through ``shipyard loadtest`` (bounded, with a report and the server's memory), or
with Locust itself::

    locust -f src/shipyard/loadtest/locustfile.py --host http://127.0.0.1:8000 \\
        --headless -u 8 -r 2 -t 60s --shipyard-scenario noise

Payloads are real: at test start each Locust process asks the server what it serves (V2
metadata), takes the test split of the snapshot that model was trained on
(:func:`~shipyard.loadtest.traffic.find_snapshot`: ``--shipyard-snapshot ID``, else the
default snapshot of the server's task under ``$SHIPYARD_HOME``), shifts it by a monitor
scenario and encodes a pool of request bodies once, so the load generator spends its CPU on
requests, not on JSON. Every option has an environment variable (``SHIPYARD_LOAD_*``).

Each user runs this mix (weights): predict 6, V2 infer 2, upload 1 (image models; a table
model gets a predict instead), feedback 2 — feedback sends the true label of one of the
user's earlier predictions, by its id (a predict when it has none yet). A request fails on
any status but the expected one (200; 202 for feedback) and on an answer without one
prediction per row. ``--shipyard-pace R`` paces each user at R tasks/s with Locust's
``constant_throughput``; 0 (default) sends as fast as the server answers.
"""

from __future__ import annotations

import itertools
import json
import logging
import shlex
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from locust import FastHttpUser, constant_throughput, events, task
from locust.env import Environment
from locust.runners import MasterRunner, WorkerRunner

from shipyard.errors import UserError
from shipyard.loadtest.traffic import (
    JSON_HEADERS,
    UPLOAD_HEADERS,
    ServedModel,
    draw_rows,
    feedback_body,
    find_snapshot,
    infer_body,
    predict_body,
    probe,
    upload_body,
)
from shipyard.tasks.base import DataKind

log = logging.getLogger("shipyard.loadtest")

INFER_NAME = "/v2/models/{name}/infer"


@dataclass
class Body:
    """One request's worth of rows, encoded for every route, and their true labels."""

    predict: bytes
    infer: bytes
    upload: bytes | None
    labels: list[str | float]


@dataclass
class Pool:
    model: ServedModel
    bodies: list[Body]
    batch: int
    wait: Any  # constant_throughput(pace), or None: no wait

    def __post_init__(self) -> None:
        self._next = itertools.cycle(self.bodies)

    def take(self) -> Body:
        return next(self._next)


POOL: Pool | None = None


class Summary:
    """The figures ``shipyard loadtest`` reads, written when Locust quits.

    Locust's ``_stats.csv`` is rewritten on a timer, so the final second (and the requests
    finished during the stop timeout) can be missing from it; this is written from the
    final statistics, with percentiles computed by Locust itself, and with a timeline —
    cumulative requests and users once a second — from which a ramp's plateau is read.
    """

    def __init__(self, environment: Environment, path: str) -> None:
        self.environment = environment
        self.path = path
        self.timeline: list[dict[str, float]] = []
        self._sampler: Any = None
        events.quit.add_listener(self.write)

    def start(self) -> None:
        import gevent

        if self._sampler is None:
            self._started = time.monotonic()
            self._sampler = gevent.spawn(self._sample_forever)

    def _sample_forever(self) -> None:
        import gevent

        while True:
            total = self.environment.stats.total
            runner = self.environment.runner
            self.timeline.append(
                {
                    "t": round(time.monotonic() - self._started, 3),
                    "users": runner.user_count if runner is not None else 0,
                    "requests": total.num_requests,
                    "failures": total.num_failures,
                }
            )
            gevent.sleep(1.0)

    def write(self, **_: Any) -> None:
        stats = self.environment.stats

        def entry(e: Any) -> dict[str, Any]:
            has = e.num_requests > 0
            return {
                "method": e.method or "",
                "name": e.name,
                "requests": e.num_requests,
                "failures": e.num_failures,
                "rps": round(e.total_rps, 2),
                "mean_ms": round(e.avg_response_time, 3) if has else None,
                **{
                    f"p{p}_ms": e.get_response_time_percentile(p / 100) if has else None
                    for p in (50, 95, 99)
                },
                "max_ms": round(e.max_response_time, 3) if has else None,
            }

        body = {
            "endpoints": [entry(e) for _, e in sorted(stats.entries.items())],
            "total": entry(stats.total),
            "failures": [
                {
                    "method": e.method,
                    "name": e.name,
                    "error": e.parse_error(e.error),
                    "occurrences": e.occurrences,
                }
                for e in stats.errors.values()
            ],
            "timeline": self.timeline,
        }
        Path(self.path).write_text(json.dumps(body), encoding="utf-8")


SUMMARY: Summary | None = None


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    group = parser.add_argument_group("Shipyard", "Payloads from a Shipyard snapshot")
    group.add_argument(
        "--shipyard-snapshot",
        env_var="SHIPYARD_LOAD_SNAPSHOT",
        default="",
        help="Snapshot id (or prefix) to draw rows from; default: the default snapshot of the "
        "served model's task.",
    )
    group.add_argument(
        "--shipyard-overrides",
        env_var="SHIPYARD_LOAD_OVERRIDES",
        default="",
        help="Config overrides, space-separated (e.g. 'data=csv data.path=x.csv').",
    )
    group.add_argument(
        "--shipyard-scenario",
        env_var="SHIPYARD_LOAD_SCENARIO",
        default="clean",
        help="clean, noise, brightness, feature-shift or label-shift.",
    )
    group.add_argument(
        "--shipyard-strength", type=float, env_var="SHIPYARD_LOAD_STRENGTH", default=1.0
    )
    group.add_argument(
        "--shipyard-batch",
        type=int,
        env_var="SHIPYARD_LOAD_BATCH",
        default=1,
        help="Rows per request.",
    )
    group.add_argument(
        "--shipyard-pace",
        type=float,
        env_var="SHIPYARD_LOAD_PACE",
        default=0.0,
        help="Tasks per second per user (constant_throughput); 0: no wait.",
    )
    group.add_argument("--shipyard-seed", type=int, env_var="SHIPYARD_LOAD_SEED", default=0)
    group.add_argument(
        "--shipyard-summary",
        env_var="SHIPYARD_LOAD_SUMMARY",
        default="",
        help="Write the final figures (per endpoint, failures, a per-second timeline) as JSON here.",
    )
    group.add_argument(
        "--shipyard-pool",
        type=int,
        env_var="SHIPYARD_LOAD_POOL",
        default=256,
        help="Distinct request bodies, encoded once and cycled.",
    )


def load_pool(host: str, options: Any) -> Pool:
    """Probe the server, draw and shift its snapshot's test rows, encode the bodies."""
    model = probe(host)
    snapshot = find_snapshot(
        model, shlex.split(options.shipyard_overrides or ""), options.shipyard_snapshot or None
    )
    batch = max(1, int(options.shipyard_batch))
    count = max(1, int(options.shipyard_pool))
    rows = draw_rows(
        snapshot,
        options.shipyard_scenario,
        count * batch,
        seed=int(options.shipyard_seed),
        strength=float(options.shipyard_strength),
    )
    images = rows.kind is DataKind.IMAGE
    bodies = [
        Body(
            predict=predict_body(rows, i, i + batch),
            infer=infer_body(rows, i, i + batch, model),
            upload=upload_body(rows, i, i + batch) if images else None,
            labels=rows.labels[i : i + batch],
        )
        for i in range(0, count * batch, batch)
    ]
    pace = float(options.shipyard_pace)
    wait = constant_throughput(pace) if pace > 0 else None
    log.info(
        "shipyard: %d bodies of %d row(s) from snapshot %s (%s) for %s",
        len(bodies),
        batch,
        snapshot.id,
        rows.scenario,
        model.describe(),
    )
    return Pool(model, bodies, batch, wait)


def _ensure_pool(environment: Environment) -> None:
    global POOL
    if POOL is not None or isinstance(environment.runner, MasterRunner):
        return
    if not environment.host:
        raise UserError("no --host: give the server's URL, e.g. --host http://127.0.0.1:8000")
    POOL = load_pool(environment.host, environment.parsed_options)


@events.init.add_listener
def _on_init(environment: Environment, **_: Any) -> None:
    """Headless runs know the host now: a bad server or snapshot stops Locust at once."""
    global SUMMARY
    path = getattr(environment.parsed_options, "shipyard_summary", "")
    if path and not isinstance(environment.runner, WorkerRunner):
        SUMMARY = Summary(environment, path)
    if environment.host and environment.parsed_options is not None:
        try:
            _ensure_pool(environment)
        except UserError as exc:
            log.error("shipyard: %s", exc)
            raise SystemExit(2) from None


@events.test_start.add_listener
def _on_test_start(environment: Environment, **_: Any) -> None:
    """The web UI gives the host only when a test starts."""
    if SUMMARY is not None:
        SUMMARY.start()
    try:
        _ensure_pool(environment)
    except UserError as exc:
        log.error("shipyard: %s", exc)
        environment.process_exit_code = 2
        if environment.runner is not None:
            environment.runner.quit()


class ShipyardUser(FastHttpUser):
    """A client of one Shipyard server: predictions in three protocols, then feedback."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: (prediction id, true label) of this user's answered predictions, newest last
        self.pending: deque[tuple[str, str | float]] = deque(maxlen=256)

    def wait_time(self) -> float:
        wait = POOL.wait if POOL is not None else None
        return float(wait(self)) if wait is not None else 0.0

    def _pool(self) -> Pool:
        if POOL is None:  # the pool failed to load: nothing sensible to send
            from locust.exception import StopUser

            raise StopUser
        return POOL

    @task(6)
    def predict(self) -> None:
        body = self._pool().take()
        with self._post("/predict", body.predict, JSON_HEADERS) as response:
            self._check_predictions(response, body, 200)

    @task(2)
    def infer(self) -> None:
        pool = self._pool()
        body = pool.take()
        path = f"/v2/models/{pool.model.name}/infer"
        with self._post(path, body.infer, JSON_HEADERS, name=INFER_NAME) as response:
            if response.status_code != 200:
                response.failure(_why(response))
                return
            ids = (response.json().get("parameters") or {}).get("prediction_ids") or []
            if len(ids) != pool.batch:
                response.failure(f"{len(ids)} prediction ids for {pool.batch} rows")
                return
            self.pending.extend(zip(ids, body.labels, strict=True))

    @task(1)
    def upload(self) -> None:
        body = self._pool().take()
        if body.upload is None:  # a table model has no upload route
            self.predict()
            return
        with self._post("/predict/upload", body.upload, UPLOAD_HEADERS) as response:
            self._check_predictions(response, body, 200)

    @task(2)
    def feedback(self) -> None:
        if not self.pending:
            self.predict()
            return
        prediction_id, label = self.pending.popleft()
        with self._post("/feedback", feedback_body(prediction_id, label), JSON_HEADERS) as response:
            if response.status_code != 202:
                response.failure(_why(response))

    def _post(
        self, path: str, body: bytes, headers: dict[str, str], name: str | None = None
    ) -> Any:
        """A POST whose outcome the caller decides (``catch_response``)."""
        return self.client.post(
            path,
            data=body,  # type: ignore[arg-type]  # bytes are sent as is; the hint says str
            headers=headers,
            name=name,
            catch_response=True,
        )

    def _check_predictions(self, response: Any, body: Body, expected: int) -> None:
        if response.status_code != expected:
            response.failure(_why(response))
            return
        predictions = response.json().get("predictions") or []
        if len(predictions) != len(body.labels):
            response.failure(f"{len(predictions)} predictions for {len(body.labels)} rows")
            return
        self.pending.extend(
            (p["id"], label) for p, label in zip(predictions, body.labels, strict=True)
        )


def _why(response: Any) -> str:
    """A failure's message: the status and the server's one-line error (grouped by Locust)."""
    text = (response.text or "").strip().replace("\n", " ")
    return f"HTTP {response.status_code}: {text[:160]}" if text else f"HTTP {response.status_code}"
