"""How long `shipyard --help` takes, against bare Python and a torch import, in one run.

Run: .venv/bin/python benchmarks/bench_cli_startup.py [--repeat 7]
The ratio to `python -c pass` is what matters: it shows the CLI imports nothing heavy.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import time

CASES = {
    "python -c pass (baseline)": [sys.executable, "-c", "pass"],
    "shipyard --help": [sys.executable, "-m", "shipyard", "--help"],
    "python -c 'import torch, lightning, mlflow'": [
        sys.executable,
        "-c",
        "import torch, lightning, mlflow",
    ],
}


def measure(command: list[str], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    results = {name: measure(command, args.repeat) for name, command in CASES.items()}
    baseline = results["python -c pass (baseline)"]
    print(
        f"machine: {platform.machine()}, {platform.processor() or 'cpu'}, python {platform.python_version()}"
    )
    print(f"| command | median seconds ({args.repeat} runs) | x baseline |")
    print("| --- | ---: | ---: |")
    for name, seconds in results.items():
        print(f"| `{name}` | {seconds:.3f} | {seconds / baseline:.1f} |")


if __name__ == "__main__":
    main()
