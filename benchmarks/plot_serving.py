"""Plot the serving benchmark's results for docs/benchmarks.md.

    .venv/bin/python benchmarks/plot_serving.py [RESULTS_JSON] [--out docs/images/bench-serving.png]

Reads what ``benchmarks/serving/bench_serving.py`` wrote (``results.json``): per model,
throughput at each concurrency for every case, beside the raw ONNX Runtime limit (a line),
and p99 latency at the highest concurrency. One figure, one row per model.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DEFAULT_RESULTS = HERE / "serving" / "results.json"
DEFAULT_OUT = HERE.parent / "docs" / "images" / "bench-serving.png"


def plot(results: dict[str, Any], out: Path) -> Path:
    """Write the figure to ``out`` (staged, then renamed) and return it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = results["models"]
    fig, axes = plt.subplots(len(models), 2, figsize=(12, 3.6 * len(models) + 0.8), squeeze=False)
    for row, (model, data) in enumerate(models.items()):
        cases: dict[str, dict[str, dict[str, float]]] = data["cases"]
        levels = sorted({int(c) for case in cases.values() for c in case})
        throughput, latency = axes[row]
        width = 0.8 / max(len(cases), 1)
        for index, (case, by_level) in enumerate(cases.items()):
            xs = [i + (index - (len(cases) - 1) / 2) * width for i in range(len(levels))]
            values = [by_level.get(str(level), {}).get("requests_per_s", 0.0) for level in levels]
            throughput.bar(xs, values, width, label=case)
        limit = data.get("raw_limit", {}).get("rows_per_s")
        if limit:
            throughput.axhline(limit, color="black", linestyle="--", linewidth=1)
            throughput.annotate(
                f"a) raw ONNX Runtime limit {limit:,.0f} rows/s",
                (0, limit),
                xytext=(2, 4),
                textcoords="offset points",
                fontsize=8,
            )
        throughput.set_xticks(range(len(levels)), [f"{level} clients" for level in levels])
        throughput.set_ylabel("requests/s")
        throughput.set_yscale("log")
        throughput.set_title(f"{model}: throughput (log scale)", fontsize=10)
        top = str(levels[-1])
        names = [case for case in cases if top in cases[case]]
        latency.barh(names, [cases[case][top]["p99_ms"] for case in names], color="tab:gray")
        latency.invert_yaxis()
        latency.set_xlabel(f"p99 latency at {top} clients (ms)")
        latency.set_title(f"{model}: tail latency", fontsize=10)
        latency.tick_params(axis="y", labelsize=8)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.suptitle(
        f"Serving benchmark ({results.get('machine', '')}, {results.get('duration_s', '?')} s "
        f"per point, prediction log {'on' if results.get('prediction_log') else 'off'})",
        fontsize=11,
    )
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    out.parent.mkdir(parents=True, exist_ok=True)
    staged = out.with_name(f".{out.name}.partial.png")
    fig.savefig(staged, dpi=110)
    plt.close(fig)
    staged.replace(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="?", type=Path, default=DEFAULT_RESULTS)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    if not args.results.is_file():
        parser.exit(2, f"error: no results at {args.results}: run bench_serving.py first\n")
    written = plot(json.loads(args.results.read_text()), args.out)
    print(f"wrote {written}")


if __name__ == "__main__":
    main()
