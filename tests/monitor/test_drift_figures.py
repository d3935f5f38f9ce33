"""The figures in docs/monitoring.md, measured: how many rows of traffic each scenario needs
before the dataset-drift flag rises, whether clean traffic ever raises it, and how long a
drift run takes. Reproduce with::

    pytest tests/monitor/test_drift_figures.py -m slow -s

For each scenario and each window size in the grid, traffic drawn with seeds 0, 1 and 2 is
checked; "rows to flag" is the smallest size at which all three seeds are flagged.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from shipyard.monitor.drift import run_drift
from shipyard.monitor.scenarios import scenarios_for

pytestmark = pytest.mark.slow

SEEDS = (0, 1, 2)
GRID = {"image": (25, 50, 100, 200), "tabular": (9, 18, 27)}
STATED = {"image": 200, "tabular": 27}  # docs/monitoring.md


def measure(trained: Any, traffic: Callable[..., str], task: str) -> dict[str, Any]:
    grid = GRID[task]
    cfg = trained.cfg(f"monitor.min_rows={grid[0]}")
    figures: dict[str, Any] = {}
    seconds: list[float] = []
    for scenario in scenarios_for(trained.snapshot.kind):
        flagged_at: dict[int, int] = {}
        for rows in grid:
            flags = 0
            for seed in SEEDS:
                url = traffic(trained, scenario, rows, seed)
                started = time.perf_counter()
                summary = run_drift(
                    cfg, package=trained.package, window=rows, model_name=trained.name, log_url=url
                )
                seconds.append(time.perf_counter() - started)
                flags += summary.dataset_drift
            flagged_at[rows] = flags
            if scenario != "clean" and flags == len(SEEDS):
                break
        needed = [r for r, f in flagged_at.items() if f == len(SEEDS)]
        figures[scenario] = {"flagged": flagged_at, "rows_to_flag": min(needed, default=None)}
    figures["_seconds"] = sorted(seconds)[len(seconds) // 2]
    return figures


def report(task: str, figures: dict[str, Any]) -> None:
    print(f"\n{task}: seeds {SEEDS}, grid {GRID[task]}")
    print("| scenario | rows to flag (all seeds) | seeds flagged per window size |")
    print("| --- | --- | --- |")
    for scenario, row in figures.items():
        if scenario.startswith("_"):
            continue
        shown = ", ".join(f"{rows}: {flags}/{len(SEEDS)}" for rows, flags in row["flagged"].items())
        print(f"| {scenario} | {row['rows_to_flag'] or '-'} | {shown} |")
    print(f"median drift run (in process, Evidently imported): {figures['_seconds']:.2f} s")


@pytest.mark.parametrize("task", ["image", "tabular"])
def test_rows_needed_to_flag_each_scenario(
    request: pytest.FixtureRequest, traffic: Callable[..., str], task: str
) -> None:
    trained = request.getfixturevalue("digits" if task == "image" else "wine")
    figures = measure(trained, traffic, task)
    report(task, figures)
    stated = STATED[task]
    for scenario, row in figures.items():
        if scenario.startswith("_"):
            continue
        if scenario == "clean":
            assert row["flagged"][stated] == 0, row
        else:
            assert row["rows_to_flag"] is not None, (scenario, row)
            assert row["rows_to_flag"] <= stated, (scenario, row)
