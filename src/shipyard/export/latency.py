"""Latency of one ONNX Runtime call per batch size, measured on real rows.

The package records it per graph (fp32 and int8) so that the promotion gate can hold a
candidate to a latency budget and the report can show what int8 buys. It is torch-free
(NumPy and ONNX Runtime only): the serving side and the benchmarks reuse it to measure
the same thing the same way.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from shipyard.errors import ConfigError
from shipyard.export.package import Latency
from shipyard.export.scoring import onnx_session


def batch_of(rows: np.ndarray, size: int) -> np.ndarray:
    """The first ``size`` rows, tiled when there are fewer: a small test split still gives
    a full batch of real inputs (ONNX Runtime's time depends on the batch's size, not on
    whether rows repeat)."""
    if len(rows) == 0:
        raise ValueError("cannot time a graph on zero rows")
    repeats = -(-size // len(rows))
    tiled = np.concatenate([rows] * repeats) if repeats > 1 else rows
    return np.ascontiguousarray(tiled[:size])


#: seconds of timed calls per batch size at most (after MIN_TIMED calls): a transformer's
#: batch of 128 texts takes seconds a call, and 30 of them would stretch an export by minutes
BUDGET_S = 5.0
MIN_TIMED = 3


def time_session(
    session: Any, batch: np.ndarray, repeats: int, budget_s: float = BUDGET_S
) -> Latency:
    """One warm-up call (ORT allocates and picks kernels on the first), then ``repeats``
    timed calls computing every output, as the server would -- fewer (at least
    ``MIN_TIMED``) when they would take longer than ``budget_s`` in all."""
    if repeats < 1:
        raise ConfigError(f"export.latency.repeats must be at least 1, got {repeats}")
    feed = {session.get_inputs()[0].name: batch}
    session.run(None, feed)
    samples: list[float] = []
    spent = 0.0
    for i in range(repeats):
        if i >= MIN_TIMED and spent > budget_s:
            break
        started = time.perf_counter()
        session.run(None, feed)
        samples.append(time.perf_counter() - started)
        spent += samples[-1]
    times = np.asarray(samples, dtype=np.float64)
    p50 = float(np.percentile(times, 50))
    return Latency(
        p50_ms=p50 * 1e3,
        p95_ms=float(np.percentile(times, 95)) * 1e3,
        rows_per_s=len(batch) / max(p50, 1e-9),
    )


def measure_latency(
    path: Path, rows: np.ndarray, batch_sizes: Sequence[int], repeats: int, threads: int = 1
) -> dict[int, Latency]:
    """p50/p95 milliseconds and rows per second of the graph at ``path`` for each batch size,
    with ``threads`` ONNX Runtime intra-op threads."""
    sizes = [int(b) for b in batch_sizes]
    if not sizes or min(sizes) < 1:
        raise ConfigError(
            f"export.latency.batch_sizes must be positive integers, got {list(batch_sizes)}"
        )
    session = onnx_session(path, threads)
    rows = np.asarray(rows)
    if rows.dtype.kind == "f":
        rows = rows.astype(np.float32, copy=False)
    return {size: time_session(session, batch_of(rows, size), repeats) for size in sizes}
