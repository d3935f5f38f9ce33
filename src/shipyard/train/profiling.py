"""``profile=true``: a torch.profiler trace of a few training steps, tracked with the run.

The trace is Chrome trace-event JSON (``*.pt.trace.json``): it opens in Perfetto
(ui.perfetto.dev), in chrome://tracing, and in TensorBoard's profiler plugin once downloaded
into a log folder. The top operations by self CPU time are printed as a table, so a slow
step points at its own cause without opening anything.

A Lightning callback and not Lightning's ``PyTorchProfiler``: the callback steps the
profiler on training batches only, with a fixed wait/warm-up/record schedule, writes one
trace file whose name is known, and records on global rank 0 only (one trace per run, not
one per DDP process).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig
from rich.table import Table
from torch.profiler import ProfilerActivity, profile, schedule

from shipyard.console import err_console
from shipyard.track import tracking

TRACE_FILE = "train.pt.trace.json"
ARTIFACT_DIR = "profile"
# Steps skipped before recording: the first step pays one-off costs (lazy allocations,
# kernel selection) that would crowd the table; the warm-up step runs the profiler
# without recording, as torch.profiler recommends.
WAIT_STEPS = 1
WARMUP_STEPS = 1
TOP_OPS = 15


@dataclass(frozen=True)
class OpStat:
    """One row of the top-operations table (times in microseconds, summed over the
    recorded steps)."""

    name: str
    calls: int
    self_cpu_us: float
    cpu_total_us: float
    self_device_us: float


class StepProfiler(L.Callback):
    """Records ``steps`` training steps with torch.profiler after WAIT_STEPS + WARMUP_STEPS."""

    def __init__(self, steps: int) -> None:
        if steps < 1:
            raise ValueError(f"profile_steps must be at least 1, got {steps}")
        self.steps = steps
        self.trace: Path | None = None
        self.top: list[OpStat] = []
        self.total_self_cpu_us = 0.0
        self.steps_seen = 0
        self._profiler: profile | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        # Kineto (the profiler's C++ side) prints start/stop lines, and on a machine without
        # a GPU an error about it, on stderr; a user's own KINETO_LOG_LEVEL still wins.
        os.environ.setdefault("KINETO_LOG_LEVEL", "6")
        activities = [ProfilerActivity.CPU]
        if torch.cuda.is_available() and pl_module.device.type == "cuda":
            activities.append(ProfilerActivity.CUDA)
        self._profiler = profile(
            activities=activities,
            schedule=schedule(wait=WAIT_STEPS, warmup=WARMUP_STEPS, active=self.steps, repeat=1),
            on_trace_ready=self._save,
        )
        self._profiler.start()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any
    ) -> None:
        if self._profiler is not None:
            self.steps_seen += 1
            self._profiler.step()
            if self.trace is not None:  # recorded all it was asked to: stop paying for it
                self._stop()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stop()  # a training shorter than the schedule: keep what was recorded

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self._stop()

    def _stop(self) -> None:
        if self._profiler is not None:
            self._profiler.stop()
            self._profiler = None

    def _save(self, prof: profile) -> None:
        trace = Path(tempfile.mkdtemp(prefix="shipyard-profile-")) / TRACE_FILE
        prof.export_chrome_trace(str(trace))
        self.trace = trace
        averages = prof.key_averages()
        self.top = top_operations(averages, TOP_OPS)
        self.total_self_cpu_us = float(sum(event.self_cpu_time_total for event in averages))

    def report(self, cfg: DictConfig, run_id: str) -> Path | None:
        """Print the top operations and attach the trace to the run; the artifact path, or
        None when the training ended before a step was recorded."""
        try:
            if self.trace is None:
                err_console.print(
                    f"[yellow]profile=true but no step was recorded: the training ran "
                    f"{self.steps_seen} steps and recording starts after "
                    f"{WAIT_STEPS + WARMUP_STEPS}[/]"
                )
                return None
            err_console.print(ops_table(self.top, self.steps, self.total_self_cpu_us))
            tracking.log_file(cfg, run_id, self.trace, ARTIFACT_DIR)
            err_console.print(
                f"Profiler trace: artifact {ARTIFACT_DIR}/{TRACE_FILE} of run {run_id} "
                "(open it in https://ui.perfetto.dev or TensorBoard)",
                highlight=False,
            )
            return Path(ARTIFACT_DIR) / TRACE_FILE
        finally:
            self.discard()

    def discard(self) -> None:
        """Stop recording and remove the local trace (once reported, or on a failed training)."""
        self._stop()
        if self.trace is not None:
            shutil.rmtree(self.trace.parent, ignore_errors=True)


def from_config(cfg: DictConfig) -> StepProfiler | None:
    """The profiler callback when ``profile=true``, else None."""
    if not cfg.get("profile"):
        return None
    return StepProfiler(int(cfg.get("profile_steps") or 5))


def top_operations(averages: Any, limit: int) -> list[OpStat]:
    """The ``limit`` operations with the most self CPU time, from ``key_averages()``."""
    rows = sorted(averages, key=lambda event: event.self_cpu_time_total, reverse=True)
    return [
        OpStat(
            name=event.key,
            calls=int(event.count),
            self_cpu_us=float(event.self_cpu_time_total),
            cpu_total_us=float(event.cpu_time_total),
            self_device_us=float(getattr(event, "self_device_time_total", 0.0) or 0.0),
        )
        for event in rows[:limit]
    ]


def ops_table(ops: list[OpStat], steps: int, total_self_cpu_us: float) -> Table:
    """A rich table of the top operations, with each one's share of all recorded self CPU
    time."""
    total = total_self_cpu_us or sum(op.self_cpu_us for op in ops) or 1.0
    show_device = any(op.self_device_us for op in ops)
    table = Table(title=f"Top operations over {steps} profiled steps", title_justify="left")
    table.add_column("operation")
    table.add_column("calls", justify="right")
    table.add_column("self CPU ms", justify="right")
    table.add_column("% self CPU", justify="right")
    table.add_column("CPU total ms", justify="right")
    if show_device:
        table.add_column("self device ms", justify="right")
    for op in ops:
        row = [
            op.name,
            str(op.calls),
            f"{op.self_cpu_us / 1000:.2f}",
            f"{100 * op.self_cpu_us / total:.1f}",
            f"{op.cpu_total_us / 1000:.2f}",
        ]
        if show_device:
            row.append(f"{op.self_device_us / 1000:.2f}")
        table.add_row(*row)
    return table
