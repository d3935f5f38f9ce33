"""``shipyard loadtest``: the Locust file, headless and bounded, with the server's memory.

Locust runs as a subprocess (``python -m locust --headless -f locustfile.py ...``), not
in-process through ``locust.env.Environment``: importing Locust monkey-patches the whole
interpreter with gevent (sockets, threads, ``time.sleep``), which must happen before
anything else is imported — the CLI has long since imported Typer, Rich, Hydra and httpx
by then, and Locust warns about exactly that. A child process gets a clean gevent world,
runs the very command a user would type (so the documented ``locust -f`` path is the tested
one), and leaves this process free to sample the server's memory in a plain thread and to
enforce the time limit from outside: a Locust that hangs is killed, not waited for.

Bounds: at most :data:`MAX_USERS` users and :data:`MAX_DURATION_S` seconds, loopback URLs
only unless ``allow_remote`` (a load test aimed at someone else's server by a typo is a
denial-of-service attack). Results come from the final statistics, which the Locust file writes as JSON when Locust
quits (:class:`~shipyard.loadtest.locustfile.Summary`), beside Locust's CSV files and HTML report.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shipyard.errors import UserError

MAX_USERS = 1000
MAX_SPAWN_RATE = 100.0
MAX_DURATION_S = 3600
#: Locust's grace for in-flight tasks at the end, and ours on top before a kill
STOP_TIMEOUT_S = 10
KILL_GRACE_S = 30
LOCUSTFILE = Path(__file__).with_name("locustfile.py")


@dataclass
class LoadTestResult:
    """Per-endpoint figures from Locust, the totals, failures and the server's memory."""

    url: str
    model: str
    snapshot_id: str
    users: int
    spawn_rate: float
    duration_s: int
    rate: float | None
    endpoints: list[dict[str, Any]]
    total: dict[str, Any]
    failures: list[dict[str, Any]]
    html: Path
    csv_prefix: Path
    command: list[str]
    max_failure_rate: float
    memory: dict[str, Any] | None = None
    #: once a second: seconds, users, cumulative requests and failures
    timeline: list[dict[str, float]] = field(default_factory=list, repr=False)
    warnings: list[str] = field(default_factory=list)

    @property
    def failure_rate(self) -> float:
        requests = int(self.total.get("requests") or 0)
        return int(self.total.get("failures") or 0) / requests if requests else 1.0

    @property
    def passed(self) -> bool:
        return bool(self.total.get("requests")) and self.failure_rate <= self.max_failure_rate

    def summary(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "model": self.model,
            "snapshot_id": self.snapshot_id,
            "users": self.users,
            "spawn_rate": self.spawn_rate,
            "duration_s": self.duration_s,
            "target_rate": self.rate,
            "endpoints": self.endpoints,
            "total": self.total,
            "failure_rate": round(self.failure_rate, 6),
            "max_failure_rate": self.max_failure_rate,
            "passed": self.passed,
            "failures": self.failures,
            "memory": self.memory,
            "warnings": self.warnings,
            "html": str(self.html),
            "csv_prefix": str(self.csv_prefix),
            "command": shlex.join(self.command),
        }


def check_bounds(
    url: str, users: int, spawn_rate: float, duration_s: int, rate: float | None, allow_remote: bool
) -> str:
    """The normalised URL, or a one-line error for a run outside the limits."""
    from shipyard.loadtest.traffic import is_loopback, normalize_url

    url = normalize_url(url)
    checks = [
        (1 <= users <= MAX_USERS, f"--users must be 1..{MAX_USERS}"),
        (
            0 < spawn_rate <= MAX_SPAWN_RATE,
            f"--spawn-rate must be above 0 and at most {MAX_SPAWN_RATE:g}",
        ),
        (1 <= duration_s <= MAX_DURATION_S, f"--duration must be 1..{MAX_DURATION_S} seconds"),
        (rate is None or rate > 0, "--rate must be above 0 requests/s"),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)
    if not allow_remote and not is_loopback(url):
        raise UserError(
            f"{url} is not a loopback address: a load test sends as much traffic as the server "
            "takes; pass --allow-remote if that server is yours to load"
        )
    return url


def run_loadtest(
    url: str,
    *,
    users: int,
    spawn_rate: float,
    duration_s: int,
    out_dir: Path,
    html: Path | None = None,
    csv_prefix: Path | None = None,
    max_failure_rate: float = 0.0,
    server_pid: int | None = None,
    allow_remote: bool = False,
    rate: float | None = None,
    snapshot: str | None = None,
    overrides: list[str] | None = None,
    scenario: str = "clean",
    batch: int = 1,
    seed: int = 0,
    on_tick: Callable[[float], None] | None = None,
) -> LoadTestResult:
    """Check, run Locust headless for ``duration_s`` and collect its figures.

    ``rate``: the total requests/s to hold (each user paced at ``rate / users`` with
    ``constant_throughput``); None: every user sends as soon as it has its answer.
    """
    from shipyard.loadtest import memory
    from shipyard.loadtest.traffic import find_snapshot, probe
    from shipyard.monitor.scenarios import check_scenario

    url = check_bounds(url, users, spawn_rate, duration_s, rate, allow_remote)
    check_scenario(scenario)
    if not 0 <= max_failure_rate <= 1:
        raise UserError("--max-failure-rate must be between 0 and 1")
    model = probe(url)
    found = find_snapshot(model, overrides, snapshot)  # a mismatch is one line now, not in Locust
    stamp = time.strftime("%Y%m%d-%H%M%S")
    html = (html or out_dir / f"loadtest-{stamp}.html").expanduser().resolve()
    prefix = (csv_prefix or html.with_suffix("")).expanduser().resolve()
    html.parent.mkdir(parents=True, exist_ok=True)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
        "--host", url, "--users", str(users), "--spawn-rate", f"{spawn_rate:g}",
        "--run-time", f"{duration_s}s", "--stop-timeout", str(STOP_TIMEOUT_S),
        "--html", str(html), "--csv", str(prefix), "--only-summary", "--loglevel", "WARNING",
        "--shipyard-snapshot", found.id, "--shipyard-scenario", scenario,
        "--shipyard-batch", str(batch), "--shipyard-summary", f"{prefix}_summary.json", "--shipyard-seed", str(seed),
        "--shipyard-pace", f"{rate / users:.6g}" if rate else "0",
    ]  # fmt: skip
    if overrides:
        command += ["--shipyard-overrides", shlex.join(overrides)]
    log_path = prefix.with_name(prefix.name + ".log")
    source = memory.reader(url, server_pid)
    sampler = (
        memory.Sampler(source[0], source[1], warm_after_s=min(users / spawn_rate + 5, duration_s))
        if source
        else None
    )
    if sampler is not None:
        sampler.start()
    try:
        code = _run_locust(command, log_path, duration_s, on_tick)
    finally:
        report = sampler.stop() if sampler is not None else None
    summary_path = Path(f"{prefix}_summary.json")
    if not summary_path.exists():
        raise UserError(f"Locust exited {code} without results: {_last_error(log_path)}")
    figures = json.loads(summary_path.read_text(encoding="utf-8"))
    return LoadTestResult(
        url=url,
        model=model.describe(),
        snapshot_id=found.id,
        users=users,
        spawn_rate=spawn_rate,
        duration_s=duration_s,
        rate=rate,
        endpoints=figures["endpoints"],
        total=figures["total"],
        failures=figures["failures"],
        timeline=figures["timeline"],
        html=html,
        csv_prefix=prefix,
        command=command,
        max_failure_rate=max_failure_rate,
        memory=report.summary() if report is not None else None,
        warnings=_warnings(log_path),
    )


def _run_locust(
    command: list[str], log_path: Path, duration_s: int, on_tick: Callable[[float], None] | None
) -> int:
    """Run to completion, or stop it (SIGINT, then kill) when it overstays its time."""
    deadline_s = duration_s + STOP_TIMEOUT_S + KILL_GRACE_S
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        started = time.monotonic()
        try:
            while process.poll() is None:
                elapsed = time.monotonic() - started
                if on_tick is not None:
                    on_tick(elapsed)
                if elapsed > deadline_s:
                    process.send_signal(signal.SIGINT)  # Locust writes its reports on SIGINT
                    try:
                        process.wait(KILL_GRACE_S)
                    except subprocess.TimeoutExpired:
                        process.kill()
                    break
                time.sleep(0.25)
        except BaseException:  # Ctrl-C here: stop Locust too, never leave it running
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
                try:
                    process.wait(KILL_GRACE_S)
                except subprocess.TimeoutExpired:
                    process.kill()
            raise
        return int(process.wait())


def _warnings(log_path: Path) -> list[str]:
    """Locust's own warnings worth a reader's attention (its CPU was the bottleneck)."""
    text = log_path.read_text(errors="replace") if log_path.exists() else ""
    lines = [line.strip() for line in text.splitlines() if "CPU usage" in line]
    return lines[:1] + ([f"(and {len(lines) - 1} more)"] if len(lines) > 1 else [])


def _last_error(log_path: Path) -> str:
    text = log_path.read_text(errors="replace") if log_path.exists() else ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    mine = [line.split("shipyard: ", 1)[1] for line in lines if "shipyard: " in line]
    if mine:
        return mine[-1]
    return (lines[-1] if lines else "no output") + f" (log: {log_path})"
