"""The adaptive batcher against raw ONNX Runtime on the same model, cores and rows.

Run: .venv/bin/python benchmarks/bench_batcher.py [--seconds 2] [--tune]

For the digits CNN and the wine MLP (default configs; trained once and reused from
``--home`` on later runs, or from an existing ``SHIPYARD_HOME`` passed as ``--home``), it
measures, on real test rows and one ORT intra-op thread:

* raw ORT at its best batch size: ``session.run`` in a tight loop on batches of
  1..512 rows; the best rows/s is the physical limit a server can approach;
* raw ORT per single row: the same loop with one row per call (what a server that
  calls the model per request gets at best);
* the batcher (:class:`shipyard.serve.batcher.Batcher` with its defaults) under N
  concurrent asyncio clients, each sending one-row requests back to back: rows/s, the
  ratio to raw ORT's best, the mean batch size and per-request latency.

``--tune`` adds the sweep the defaults were chosen from (max_batch_size x max_wait_ms
at 8 and 128 clients) and ORT threads/spinning under the batcher. No HTTP here: this is
the batcher's own ceiling; the server benchmark adds the web layer.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import inspect
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from shipyard.serve.batcher import Batcher

RAW_SIZES = (1, 8, 16, 32, 64, 128, 256, 512)
CLIENTS = (1, 8, 32, 128, 512)
TUNE_CLIENTS = (8, 128, 512)
_DEFAULTS = inspect.signature(Batcher).parameters
DEFAULT_SIZE: int = _DEFAULTS["max_batch_size"].default
DEFAULT_WAIT: float = _DEFAULTS["max_wait_ms"].default
TASKS = {"image": "digits CNN", "tabular": "wine MLP"}


def cpu_model() -> str:
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return platform.processor() or "unknown CPU"
    for line in text.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


# -- the packages -------------------------------------------------------------------------


def package_and_rows(task: str, packages: Path) -> tuple[Any, np.ndarray]:
    """The task's default model, trained once (reused when this home has a finished run of
    the same config), exported fp32, and its test split as model input."""
    from shipyard.config import compose
    from shipyard.data.prepare import prepare
    from shipyard.export.build import export_run
    from shipyard.tasks import get_task
    from shipyard.track import tracking
    from shipyard.track.lineage import training_fingerprint
    from shipyard.train.run import train

    cfg = compose(
        [f"task={task}", "quantize=null", "export.latency.repeats=3", f"paths.packages={packages}"]
    )
    snapshot = prepare(cfg).snapshot
    cached = tracking.find_finished_run(
        cfg,
        {tracking.TAG_SNAPSHOT: snapshot.id, tracking.TAG_TRAINING: training_fingerprint(cfg)},
    )
    run_id = str(cached.info.run_id) if cached is not None else train(cfg).run_id
    package = export_run(cfg, run_id).package
    test = snapshot.load("test")
    rows = get_task(task).model_input(test.features, snapshot.manifest["schema"])
    return package, np.ascontiguousarray(rows, dtype=np.float32)


def load_model(package: Any, threads: int = 1, spinning: bool | None = None) -> Any:
    """The served model; ``spinning`` rebuilds its session with ``allow_spinning`` set."""
    from shipyard.serve.runtime import ServedModel

    model = ServedModel.load(package, name="bench", version="1", intra_op_threads=threads)
    if spinning is None:
        return model
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    session = ort.InferenceSession(
        str(package.graph_path("fp32")), options, providers=["CPUExecutionProvider"]
    )
    return dataclasses.replace(model, session=session)


# -- raw ORT ------------------------------------------------------------------------------


def raw_rows_per_s(model: Any, rows: np.ndarray, size: int, seconds: float) -> float:
    """``model.run`` back to back on ``size``-row batches for about ``seconds``."""
    from shipyard.export.latency import batch_of

    batch = batch_of(rows, size)
    model.run(batch)  # warm-up: ORT allocates on the first call of a shape
    calls = 0
    started = time.perf_counter()
    deadline = started + seconds
    while True:
        for _ in range(20):
            model.run(batch)
        calls += 20
        now = time.perf_counter()
        if now >= deadline:
            return calls * size / (now - started)


# -- the batcher --------------------------------------------------------------------------


@dataclasses.dataclass
class Served:
    rows_per_s: float
    mean_batch: float
    p50_ms: float
    p99_ms: float


def batched(model: Any, rows: np.ndarray, clients: int, seconds: float, **options: Any) -> Served:
    return asyncio.run(_batched(model, rows, clients, seconds, options))


async def _batched(
    model: Any, rows: np.ndarray, clients: int, seconds: float, options: dict[str, Any]
) -> Served:
    sizes: list[int] = []
    latencies: list[float] = []
    batcher = Batcher(lambda: model, on_batch=lambda n, _s: sizes.append(n), **options)
    await batcher.start()
    singles = [rows[i : i + 1] for i in range(len(rows))]
    loop = asyncio.get_running_loop()
    stop_at = loop.time() + seconds / 4

    async def client(k: int) -> int:
        done = 0
        while loop.time() < stop_at:
            started = time.perf_counter()
            await batcher.submit(singles[(k + done) % len(singles)])
            latencies.append(time.perf_counter() - started)
            done += 1
        return done

    await asyncio.gather(*(client(k) for k in range(max(1, clients // 2))))  # warm-up
    sizes.clear()
    latencies.clear()
    stop_at = loop.time() + seconds
    started = time.perf_counter()
    counts = await asyncio.gather(*(client(k) for k in range(clients)))
    elapsed = time.perf_counter() - started
    await batcher.stop()
    ms = np.array(latencies) * 1e3
    return Served(
        rows_per_s=sum(counts) / elapsed,
        mean_batch=float(np.mean(sizes)),
        p50_ms=float(np.percentile(ms, 50)),
        p99_ms=float(np.percentile(ms, 99)),
    )


# -- the tables ---------------------------------------------------------------------------


def bench_task(task: str, package: Any, rows: np.ndarray, seconds: float) -> list[str]:
    model = load_model(package)
    raw = {size: raw_rows_per_s(model, rows, size, seconds) for size in RAW_SIZES}
    best_size = max(raw, key=lambda s: raw[s])
    best = raw[best_size]
    name = TASKS[task]
    lines = [
        f"| {name} | raw ORT, best batch ({best_size}) | {best:,.0f} | 1.00 | {best_size} | | |",
        f"| {name} | raw ORT, one row per call | {raw[1]:,.0f} | {raw[1] / best:.2f} | 1 | | |",
    ]
    for clients in CLIENTS:
        served = batched(model, rows, clients, seconds)
        lines.append(served_row(name, f"batcher, {clients} client(s)", served, best))
    # The same clients against a session that answers at once: the ceiling that Python's
    # per-request work (future, wake-up, slice) puts on any in-process batcher here.
    ceiling = dataclasses.replace(model, session=InstantSession(model.run(rows[:1])))
    served = batched(ceiling, rows, CLIENTS[-1], seconds)
    lines.append(
        served_row(name, f"batcher, {CLIENTS[-1]} clients, instant model (ceiling)", served, best)
    )
    print(
        f"  {name}: raw ORT rows/s by batch size: "
        + ", ".join(f"{s}: {v:,.0f}" for s, v in raw.items()),
        file=sys.stderr,
    )
    return lines


def served_row(name: str, setup: str, served: Served, best: float) -> str:
    return (
        f"| {name} | {setup} | {served.rows_per_s:,.0f} | {served.rows_per_s / best:.2f} | "
        f"{served.mean_batch:.1f} | {served.p50_ms:.2f} | {served.p99_ms:.2f} |"
    )


class InstantSession:
    """An ORT session stand-in that returns right-shaped zeros without computing."""

    def __init__(self, one_row: dict[str, np.ndarray]) -> None:
        self.one_row = one_row

    def run(self, names: list[str], feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        n = len(next(iter(feed.values())))
        return [np.zeros((n, *self.one_row[name].shape[1:]), np.float32) for name in names]


def tune_task(task: str, package: Any, rows: np.ndarray, seconds: float) -> list[str]:
    """max_batch_size x max_wait_ms at 8, 128 and 512 clients, then ORT threads/spinning."""
    model = load_model(package)
    name = TASKS[task]
    lines = []
    for clients in TUNE_CLIENTS:
        for size in (32, 64, 128, 256):
            for wait in (0.0, 0.5, 2.0):
                served = batched(
                    model, rows, clients, seconds, max_batch_size=size, max_wait_ms=wait
                )
                lines.append(tune_row(name, clients, size, wait, 1, "default", served))
    for threads, spinning in ((1, None), (2, None), (2, True), (2, False)):
        variant = load_model(package, threads, spinning)
        for clients in (8, 128):
            served = batched(variant, rows, clients, seconds)
            shown = "default" if spinning is None else ("on" if spinning else "off")
            lines.append(
                tune_row(name, clients, DEFAULT_SIZE, DEFAULT_WAIT, threads, shown, served)
            )
    return lines


def tune_row(
    name: str, clients: int, size: int, wait: float, threads: int, spinning: str, served: Served
) -> str:
    return (
        f"| {name} | {clients} | {size} | {wait:g} | {threads} | {spinning} | "
        f"{served.rows_per_s:,.0f} | {served.mean_batch:.1f} | "
        f"{served.p50_ms:.2f} | {served.p99_ms:.2f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=2.0, help="length of each measurement")
    parser.add_argument("--tune", action="store_true", help="also sweep the batcher's settings")
    parser.add_argument(
        "--home",
        default=str(Path(tempfile.gettempdir()) / "shipyard-bench-batcher"),
        help="SHIPYARD_HOME for the benchmark's runs (kept, so a re-run reuses the training)",
    )
    args = parser.parse_args()
    os.environ["SHIPYARD_HOME"] = args.home
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import onnxruntime

    from shipyard.console import quiet_libraries

    quiet_libraries()
    results: list[str] = []
    tuning: list[str] = []
    with tempfile.TemporaryDirectory(prefix="shipyard-bench-packages-") as packages:
        for task in TASKS:
            package, rows = package_and_rows(task, Path(packages))
            results += bench_task(task, package, rows, args.seconds)
            if args.tune:
                tuning += tune_task(task, package, rows, args.seconds)
    print(
        f"machine: {cpu_model()}, {os.cpu_count()} cores, {platform.machine()}, "
        f"python {platform.python_version()}, onnxruntime {onnxruntime.__version__}; "
        f"1 ORT thread, one-row requests, {args.seconds:g} s per measurement; batcher "
        f"defaults (max_batch_size={DEFAULT_SIZE}, max_wait_ms={DEFAULT_WAIT:g})"
    )
    print()
    print("| model | setup | rows/s | x raw ORT best | mean batch | p50 ms | p99 ms |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    print("\n".join(results))
    if tuning:
        print()
        print(
            "| model | clients | max_batch_size | max_wait_ms | ORT threads | spinning | "
            "rows/s | mean batch | p50 ms | p99 ms |"
        )
        print("| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: |")
        print("\n".join(tuning))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
