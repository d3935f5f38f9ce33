"""``shipyard simulate``: production-like traffic, optionally shifted, with feedback labels.

The point is to let a person watch the monitor work: send a few hundred predictions of
clean test rows, then of noisy or shifted ones, and see the drift flag and the live
accuracy move. So the traffic is the model's own test split (:mod:`.traffic`), the true
label goes back through ``/feedback`` for a chosen share of predictions (live accuracy
needs labels), and the whole run is bounded: N requests, a timeout on each, a fixed
number of connections. Nothing is retried: an error is counted by status, because a
simulator that hides the server's refusals would hide exactly what a user should see.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shipyard.errors import UserError
from shipyard.loadtest.traffic import (
    JSON_HEADERS,
    Rows,
    ServedModel,
    feedback_body,
    predict_body,
)

MAX_REQUESTS = 100_000
MAX_BATCH = 256
MAX_CONCURRENCY = 64
MAX_TIMEOUT_S = 120.0


@dataclass
class SimulationResult:
    """What was sent and how the server answered; ``prediction_ids`` in the order answered."""

    url: str
    model: str
    snapshot_id: str
    scenario: str
    requests: int
    batch: int
    sent: int = 0
    ok: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    error_samples: list[str] = field(default_factory=list)
    predicted: Counter[str] = field(default_factory=Counter)
    values: list[float] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    feedback_sent: int = 0
    feedback_ok: int = 0
    feedback_errors: Counter[str] = field(default_factory=Counter)
    duration_s: float = 0.0
    prediction_ids: list[str] = field(default_factory=list, repr=False)

    @property
    def failed(self) -> int:
        return sum(self.errors.values()) + sum(self.feedback_errors.values())

    def summary(self) -> dict[str, Any]:
        latencies = sorted(self.latencies_ms)
        out: dict[str, Any] = {
            "url": self.url,
            "model": self.model,
            "snapshot_id": self.snapshot_id,
            "scenario": self.scenario,
            "sent": self.sent,
            "ok": self.ok,
            "errors": dict(self.errors),
            "predictions": len(self.prediction_ids),
            "feedback_sent": self.feedback_sent,
            "feedback_ok": self.feedback_ok,
            "feedback_errors": dict(self.feedback_errors),
            "mean_latency_ms": round(statistics.fmean(latencies), 3) if latencies else None,
            "p95_latency_ms": round(latencies[int(0.95 * (len(latencies) - 1))], 3)
            if latencies
            else None,
            "requests_per_s": round(self.sent / self.duration_s, 1) if self.duration_s else None,
            "duration_s": round(self.duration_s, 2),
        }
        if self.predicted:
            out["predicted_labels"] = dict(sorted(self.predicted.items()))
        if self.values:
            out["mean_predicted_value"] = statistics.fmean(self.values)
        if self.error_samples:
            out["first_error"] = self.error_samples[0]
        return out


def check_bounds(
    requests: int, batch: int, concurrency: int, feedback_share: float, timeout_s: float
) -> None:
    """The simulator's limits, as one-line errors."""
    checks = [
        (1 <= requests <= MAX_REQUESTS, f"--requests must be 1..{MAX_REQUESTS:,}"),
        (1 <= batch <= MAX_BATCH, f"--batch must be 1..{MAX_BATCH}"),
        (1 <= concurrency <= MAX_CONCURRENCY, f"--concurrency must be 1..{MAX_CONCURRENCY}"),
        (0.0 <= feedback_share <= 1.0, "--feedback-share must be between 0 and 1"),
        (
            0 < timeout_s <= MAX_TIMEOUT_S,
            f"--timeout must be above 0 and at most {MAX_TIMEOUT_S:g} s",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)


def simulate(
    model: ServedModel,
    rows: Rows,
    *,
    requests: int,
    batch: int = 1,
    feedback_share: float = 1.0,
    concurrency: int = 4,
    timeout_s: float = 10.0,
    seed: int = 0,
    on_request: Callable[[], None] | None = None,
) -> SimulationResult:
    """Send ``requests`` ``/predict`` calls of ``batch`` rows each (``rows`` holds
    ``requests * batch``), then ``/feedback`` with the true label for a ``feedback_share``
    of the predictions (chosen with ``seed``). ``on_request`` is called after each
    prediction request, for a progress bar."""
    check_bounds(requests, batch, concurrency, feedback_share, timeout_s)
    if len(rows) < requests * batch:
        raise ValueError(f"{len(rows)} rows for {requests} requests of {batch}")
    # decided up front, so the same seed gives feedback to the same rows whatever the timing
    wants_feedback = np.random.default_rng(seed + 1).random(requests * batch) < feedback_share
    result = SimulationResult(
        url=model.url,
        model=model.describe(),
        snapshot_id=rows.snapshot_id,
        scenario=rows.scenario,
        requests=requests,
        batch=batch,
    )
    started = time.perf_counter()
    asyncio.run(_send_all(model, rows, result, wants_feedback, concurrency, timeout_s, on_request))
    result.duration_s = time.perf_counter() - started
    return result


async def _send_all(
    model: ServedModel,
    rows: Rows,
    result: SimulationResult,
    wants_feedback: np.ndarray,
    concurrency: int,
    timeout_s: float,
    on_request: Callable[[], None] | None,
) -> None:
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    todo = iter(range(result.requests))  # shared: each coroutine takes the next request
    async with httpx.AsyncClient(base_url=model.url, timeout=timeout_s, limits=limits) as client:

        async def worker() -> None:
            for number in todo:
                await _one(client, number, rows, result, wants_feedback)
                if on_request is not None:
                    on_request()

        await asyncio.gather(*(worker() for _ in range(concurrency)))


async def _one(
    client: Any, number: int, rows: Rows, result: SimulationResult, wants_feedback: np.ndarray
) -> None:
    start = number * result.batch
    stop = start + result.batch
    body = predict_body(rows, start, stop)
    result.sent += 1
    began = time.perf_counter()
    response = await _post(client, "/predict", body, result.errors, result.error_samples)
    if response is None:
        return
    result.latencies_ms.append((time.perf_counter() - began) * 1000)
    if response.status_code != 200:
        result.errors[str(response.status_code)] += 1
        _sample(result.error_samples, f"/predict {response.status_code}: {response.text[:200]}")
        return
    result.ok += 1
    predictions = response.json()["predictions"]
    for offset, prediction in enumerate(predictions):
        result.prediction_ids.append(prediction["id"])
        if "label" in prediction:
            result.predicted[str(prediction["label"])] += 1
        elif prediction.get("value") is not None:
            result.values.append(float(prediction["value"]))
        if not wants_feedback[start + offset]:
            continue
        result.feedback_sent += 1
        answer = await _post(
            client,
            "/feedback",
            feedback_body(prediction["id"], rows.labels[start + offset]),
            result.feedback_errors,
            result.error_samples,
        )
        if answer is None:
            continue
        if answer.status_code == 202:
            result.feedback_ok += 1
        else:
            result.feedback_errors[str(answer.status_code)] += 1
            _sample(result.error_samples, f"/feedback {answer.status_code}: {answer.text[:200]}")


async def _post(
    client: Any, path: str, body: bytes, errors: Counter[str], samples: list[str]
) -> Any:
    """The response, or None with the transport failure counted (``timeout``, ``connection``)."""
    import httpx

    try:
        return await client.post(path, content=body, headers=JSON_HEADERS)
    except httpx.TimeoutException as exc:
        errors["timeout"] += 1
        _sample(samples, f"{path}: timeout ({type(exc).__name__})")
    except httpx.TransportError as exc:
        errors["connection"] += 1
        _sample(samples, f"{path}: {type(exc).__name__}: {exc}")
    return None


def _sample(samples: list[str], message: str, keep: int = 5) -> None:
    if len(samples) < keep:
        samples.append(message)
