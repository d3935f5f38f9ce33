"""A second run with nothing changed, against the first, in one run of this script.

Run: .venv/bin/python benchmarks/bench_pipeline_cache.py [--task image] [--repeat 3] [--no-clone]

Two measurements:

1. `make run` in a fresh clone of this repository's HEAD, twice (the figure the README
   promises: the first one creates `.venv` from the lock and builds the champion; the
   second must reuse every stage). Skipped with --no-clone.
2. `shipyard pipeline task=...` in a fresh, temporary SHIPYARD_HOME, then again
   `--repeat` times: stricter, because the first run here installs nothing.

Exits non-zero when a re-run does not reuse every stage, or when the second `make run`
takes a tenth of the first or more.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def timed(command: list[str], **kwargs: object) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(command, check=True, capture_output=True, text=True, **kwargs)  # type: ignore[call-overload]
    return time.perf_counter() - started, str(done.stdout)


def pipeline(task: str, home: str) -> tuple[float, dict[str, object]]:
    command = [sys.executable, "-m", "shipyard", "pipeline", f"task={task}", "--json"]
    seconds, stdout = timed(command, env={**ENV, "SHIPYARD_HOME": home})
    return seconds, json.loads(stdout)


def make_run_twice() -> tuple[float, float, str]:
    with tempfile.TemporaryDirectory(prefix="shipyard-clone-") as tmp:
        clone = Path(tmp) / "shipyard"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        env = {k: v for k, v in ENV.items() if k not in {"SHIPYARD_HOME", "VIRTUAL_ENV"}}
        first, _ = timed(["make", "run"], cwd=clone, env=env)
        second, stdout = timed(["make", "run"], cwd=clone, env=env)
    return first, second, stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--task", default="image")
    parser.add_argument("--repeat", type=int, default=3, help="warm pipeline runs (median)")
    parser.add_argument("--no-clone", action="store_true", help="skip the fresh-clone make run")
    args = parser.parse_args()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}"
    )
    failures = []

    if not args.no_clone:
        first, second, stdout = make_run_twice()
        print("| `make run` in a fresh clone | seconds | x first |")
        print("| --- | ---: | ---: |")
        print(f"| first (creates .venv, builds the champion) | {first:.1f} | 1.00 |")
        print(f"| second, nothing changed | {second:.1f} | {second / first:.3f} |")
        print()
        if second / first >= 0.1:
            failures.append("the second make run took a tenth of the first or more")
        if stdout.count("(reused)") < 6:
            failures.append("the second make run did not reuse all six stages")

    with tempfile.TemporaryDirectory(prefix="shipyard-bench-") as home:
        cold, first_run = pipeline(args.task, home)
        warm_runs = [pipeline(args.task, home) for _ in range(args.repeat)]
    warm = statistics.median(seconds for seconds, _ in warm_runs)
    stages = warm_runs[-1][1]["stages"]
    print(f"| `shipyard pipeline task={args.task}`, fresh home | seconds | x first |")
    print("| --- | ---: | ---: |")
    print(f"| first (every stage runs) | {cold:.1f} | 1.00 |")
    print(f"| unchanged re-run, median of {args.repeat} | {warm:.1f} | {warm / cold:.3f} |")
    print()
    for label, result in (("first run", first_run), ("re-run", warm_runs[-1][1])):
        parts = [f"{s['stage']} {s['seconds']}s" for s in result["stages"]]  # type: ignore[attr-defined]
        print(f"{label}: {', '.join(parts)}")
    if not all(stage["reused"] for stage in stages):  # type: ignore[attr-defined]
        failures.append("a pipeline re-run did not reuse every stage")
    if failures:
        sys.exit("; ".join(failures))


if __name__ == "__main__":
    main()
