"""The sustained run: find the saturation throughput, then hold a share of it for minutes.

    python -m shipyard.loadtest.sustained --url http://127.0.0.1:8000 --server-pid PID

1. **Ramp.** Closed-loop Locust users (no wait) are added one a second up to
   ``--ramp-users``; the timeline the Locust file records once a second gives the
   throughput at each moment, and the median over the seconds when all users ran is the
   *saturation throughput* (the best ``--window``-second average is reported beside it)
   — of the whole machine as set up: on a small machine the load generator shares the
   cores with the server, and that is part of the answer.
2. **Sustained.** ``--users`` users paced with Locust's ``constant_throughput`` so that
   together they ask for ``--share`` (0.8) of the saturation rate, for ``--duration``
   seconds (300), with the server's resident memory sampled once a second. It passes with
   zero failed requests and RSS growth under ``--max-growth`` percent (5) from the start of
   the paced run — the ramp has warmed the server by then, so growth means accumulation,
   not first-use allocation.

Same request mix, payloads and report files as ``shipyard loadtest`` (the same code
runs); the JSON result (``--json PATH``) holds every figure the docs quote.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from shipyard.errors import UserError
from shipyard.loadtest.run import LoadTestResult, run_loadtest


def throughput(timeline: list[dict[str, float]], window_s: float) -> tuple[float, float]:
    """The best average requests/s over ``window_s`` seconds of the timeline, and the users
    running at the end of that window."""
    best, users = 0.0, 0.0
    for i, start in enumerate(timeline):
        for end in timeline[i + 1 :]:
            span = end["t"] - start["t"]
            if span >= window_s:
                rate = (end["requests"] - start["requests"]) / span
                if rate > best:
                    best, users = rate, end["users"]
                break
    return best, users


def plateau(timeline: list[dict[str, float]]) -> float:
    """The median requests/s over the seconds when every user was running: the saturation
    throughput, robust to the odd second that another process took the cores."""
    top = max((point["users"] for point in timeline), default=0)
    rates = [
        (b["requests"] - a["requests"]) / (b["t"] - a["t"])
        for a, b in itertools.pairwise(timeline)
        if a["users"] == top and b["users"] == top and b["t"] > a["t"]
    ]
    return float(statistics.median(rates)) if rates else 0.0


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpus": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    from shipyard.settings import shipyard_home

    out_dir = Path(args.out).expanduser().resolve() if args.out else shipyard_home() / "loadtests"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    common = {"out_dir": out_dir, "server_pid": args.server_pid, "allow_remote": False}
    load_before = _load()
    print(f"ramp: up to {args.ramp_users} users, {args.ramp_duration} s", file=sys.stderr)
    ramp = run_loadtest(
        args.url,
        users=args.ramp_users,
        spawn_rate=args.ramp_spawn_rate,
        duration_s=args.ramp_duration,
        html=out_dir / f"ramp-{stamp}.html",
        max_failure_rate=1.0,
        **common,
    )
    best, at_users = throughput(ramp.timeline, args.window)
    saturation = plateau(ramp.timeline) or best
    if saturation <= 0:
        raise UserError("the ramp measured no throughput: is the server answering?")
    target = args.share * saturation
    print(
        f"saturation {saturation:.0f} req/s (plateau median; best {args.window:g} s: "
        f"{best:.0f} at {at_users:.0f} users); sustaining "
        f"{target:.0f} req/s with {args.users} users for {args.duration} s",
        file=sys.stderr,
    )
    sustained = run_loadtest(
        args.url,
        users=args.users,
        spawn_rate=args.users,
        duration_s=args.duration,
        rate=target,
        html=out_dir / f"sustained-{stamp}.html",
        **common,
    )
    memory = sustained.memory or {}
    growth = memory.get("growth_pct")
    failures = int(sustained.total.get("failures") or 0)
    return {
        "machine": machine(),
        "url": sustained.url,
        "model": sustained.model,
        "ramp": _brief(ramp)
        | {
            "saturation_rps": round(saturation, 1),
            "best_window_rps": round(best, 1),
            "best_window_users": at_users,
            "window_s": args.window,
        },
        "sustained": _brief(sustained)
        | {
            "target_rps": round(target, 1),
            "share": args.share,
            "steady_rps": round(_steady(sustained), 1),
            "memory": memory,
        },
        "load_average": {"before": load_before, "after": _load()},
        "passed": failures == 0 and growth is not None and growth < args.max_growth,
        "max_growth_pct": args.max_growth,
    }


def _steady(result: LoadTestResult) -> float:
    """Requests/s after the users have all started (Locust's own figure includes the ramp)."""
    timeline = [p for p in result.timeline if p["users"] == result.users]
    if len(timeline) < 2 or timeline[-1]["t"] <= timeline[0]["t"]:
        return float(result.total.get("rps") or 0.0)
    first, last = timeline[0], timeline[-1]
    return (last["requests"] - first["requests"]) / (last["t"] - first["t"])


def _load() -> list[float]:
    """The machine's 1/5/15-minute load averages: other work on the cores shows here."""
    return [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else []


def _brief(result: LoadTestResult) -> dict[str, Any]:
    total = result.total
    return {
        "users": result.users,
        "duration_s": result.duration_s,
        "requests": total.get("requests"),
        "failures": total.get("failures"),
        "rps": total.get("rps"),
        "p50_ms": total.get("p50_ms"),
        "p95_ms": total.get("p95_ms"),
        "p99_ms": total.get("p99_ms"),
        "endpoints": {e["name"]: e["requests"] for e in result.endpoints},
        "html": str(result.html),
        "command": result.summary()["command"],
        "warnings": result.warnings,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m shipyard.loadtest.sustained",
        description="Saturation ramp, then a paced run at a share of it (zero errors, flat RSS).",
    )
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--server-pid", type=int, default=None, help="Sample this PID's RSS.")
    parser.add_argument("--ramp-users", type=int, default=32)
    parser.add_argument("--ramp-spawn-rate", type=float, default=1.0)
    parser.add_argument("--ramp-duration", type=int, default=60)
    parser.add_argument("--window", type=float, default=5.0, help="Seconds averaged.")
    parser.add_argument("--share", type=float, default=0.8)
    parser.add_argument("--users", type=int, default=64)
    parser.add_argument("--duration", type=int, default=300)
    parser.add_argument("--max-growth", type=float, default=5.0, help="Percent RSS growth.")
    parser.add_argument(
        "--out", default=None, help="Reports folder; default $SHIPYARD_HOME/loadtests."
    )
    parser.add_argument("--json", dest="json_path", default=None, help="Write the result here.")
    args = parser.parse_args(argv)
    try:
        result = run(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    text = json.dumps(result, indent=2)
    if args.json_path:
        Path(args.json_path).write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
