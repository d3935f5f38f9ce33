"""The server's resident memory while load runs, to tell a leak from a warm-up.

Three ways to read it, best first: a PID given by the user (``--server-pid``; with
psutil, the process and its children — uvicorn workers — summed), the server's own
``process_resident_memory_bytes`` on ``/metrics`` (any URL; summed over the samples, so
several workers add up), or, for a loopback URL, the PID of the process listening on its
port. Samples are taken in a thread once a second, off the load generator's process.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

METRIC = "process_resident_memory_bytes"


@dataclass
class MemoryReport:
    """RSS samples ``(seconds since start, bytes)`` and the figures a reader wants."""

    source: str
    samples: list[tuple[float, int]] = field(default_factory=list)
    #: seconds after which the ramp is over and memory should be flat
    warm_after_s: float = 0.0

    @property
    def start(self) -> int | None:
        return self.samples[0][1] if self.samples else None

    @property
    def end(self) -> int | None:
        return self.samples[-1][1] if self.samples else None

    @property
    def warm(self) -> int | None:
        later = [rss for t, rss in self.samples if t >= self.warm_after_s]
        return later[0] if later else self.end

    def summary(self) -> dict[str, Any]:
        if not self.samples:
            return {"source": self.source, "samples": 0}
        start, end, warm = self.start or 0, self.end or 0, self.warm or 0
        return {
            "source": self.source,
            "samples": len(self.samples),
            "start_mib": round(start / 2**20, 1),
            "warm_mib": round(warm / 2**20, 1),
            "end_mib": round(end / 2**20, 1),
            "peak_mib": round(max(r for _, r in self.samples) / 2**20, 1),
            "growth_pct": round(100 * (end - start) / start, 2) if start else None,
            "growth_after_warmup_pct": round(100 * (end - warm) / warm, 2) if warm else None,
            "warm_after_s": self.warm_after_s,
        }


def reader(url: str, server_pid: int | None) -> tuple[str, Any] | None:
    """``(description, read() -> bytes)``, or None when memory cannot be read."""
    if server_pid is not None:
        return f"pid {server_pid}", _pid_reader(server_pid)
    metrics = _metrics_reader(url)
    if metrics is not None and metrics() is not None:
        return f"{url}/metrics", metrics
    pid = _listening_pid(url)
    if pid is not None:
        return f"pid {pid}, found listening on the port", _pid_reader(pid)
    return None


def _pid_reader(pid: int) -> Any:
    import psutil

    process = psutil.Process(pid)

    def read() -> int | None:
        try:
            total = process.memory_info().rss
            for child in process.children(recursive=True):
                total += child.memory_info().rss
        except psutil.Error:
            return None
        return int(total)

    return read


def _metrics_reader(url: str) -> Any:
    import httpx

    def read() -> int | None:
        try:
            text = httpx.get(f"{url}/metrics", timeout=2.0).text
        except httpx.HTTPError:
            return None
        values = [
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith(METRIC) and not line.startswith("#")
        ]
        return int(sum(values)) if values else None

    return read


def _listening_pid(url: str) -> int | None:
    """The PID listening on a loopback URL's port (our own processes; None if hidden)."""
    import psutil

    from shipyard.loadtest.traffic import is_loopback

    parts = urlsplit(url)
    if not is_loopback(url):
        return None
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        connections = psutil.net_connections(kind="tcp")
    except psutil.Error:
        return None
    for conn in connections:
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
            return int(conn.pid) if conn.pid else None
    return None


class Sampler:
    """Reads RSS every ``interval_s`` in a daemon thread between :meth:`start` and :meth:`stop`."""

    def __init__(self, source: str, read: Any, *, interval_s: float = 1.0, warm_after_s: float = 0):
        self.report = MemoryReport(source, warm_after_s=warm_after_s)
        self._read = read
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="shipyard-rss", daemon=True)
        self._started = 0.0

    def start(self) -> None:
        self._started = time.monotonic()
        self._sample()
        self._thread.start()

    def stop(self) -> MemoryReport:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        self._sample()
        return self.report

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._sample()

    def _sample(self) -> None:
        value = self._read()
        if value:
            self.report.samples.append((round(time.monotonic() - self._started, 2), int(value)))
