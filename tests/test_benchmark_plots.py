"""The benchmark figures in docs/ are drawn from the recorded results by one command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_serving_plot_is_drawn_from_the_recorded_results(tmp_path: Path) -> None:
    results = ROOT / "benchmarks" / "serving" / "results.json"
    assert json.loads(results.read_text())["models"]
    out = tmp_path / "serving.png"
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "plot_serving.py"),
            str(results),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.stat().st_size > 20_000  # a drawn figure, not an empty canvas
    assert not list(tmp_path.glob(".*partial*"))


def test_missing_results_exit_2_with_one_line(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "plot_serving.py"), str(tmp_path / "none.json")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "run bench_serving.py first" in done.stderr
