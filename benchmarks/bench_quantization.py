"""int8 against fp32 for the bundled models: size, test metric and ONNX Runtime latency.

Run: .venv/bin/python benchmarks/bench_quantization.py [--repeats 200] [--threads 1]

Trains digits (CNN) and wine (MLP) with their default configs, or reuses a finished run
of the same config in the benchmark's home (``--home``, kept between runs), exports each
with ``quantize=int8`` exactly as ``shipyard export`` does, and also quantises the same
fp32 graph the *other* way (dynamic), so the table shows
why export picks what it picks. Latency is one ``session.run`` on real test rows, p50
over ``--repeats`` calls after a warm-up, the same code the package's latency comes from.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

BATCH_SIZES = (1, 8, 32, 128)


def cpu_model() -> str:
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return platform.processor() or "unknown CPU"
    for line in text.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def trained_run(cfg: Any) -> str:
    """A finished run of this exact training config and snapshot, trained if there is none."""
    from shipyard.data.prepare import prepare
    from shipyard.track import tracking
    from shipyard.track.lineage import training_fingerprint
    from shipyard.train.run import train

    snapshot = prepare(cfg).snapshot
    cached = tracking.find_finished_run(
        cfg,
        {tracking.TAG_SNAPSHOT: snapshot.id, tracking.TAG_TRAINING: training_fingerprint(cfg)},
    )
    if cached is not None:
        return str(cached.info.run_id)
    return train(cfg).run_id


def bench_task(task: str, repeats: int, threads: int, packages: Path) -> list[str]:
    """Markdown table rows for one task: fp32, the int8 graph export chose, the other int8."""
    from shipyard.config import compose
    from shipyard.export.build import export_run
    from shipyard.export.latency import measure_latency
    from shipyard.export.quantize import METHODS, calibration_rows, quantize_int8
    from shipyard.export.scoring import score_onnx
    from shipyard.tasks import get_task
    from shipyard.train.evaluate import load_run_model

    overrides = [
        f"task={task}",
        "quantize=int8",
        f"export.latency.repeats={repeats}",
        f"export.latency.threads={threads}",
        "export.latency.batch_sizes=[" + ",".join(str(b) for b in BATCH_SIZES) + "]",
        f"paths.packages={packages}",
    ]
    cfg = compose(overrides)
    result = export_run(cfg, trained_run(cfg))
    manifest = result.package.manifest
    metric = result.summary()["primary_metric"]
    graphs = {
        "fp32": manifest.graph("fp32"),
        f"int8 {result.quantization} (export's choice)": manifest.graph("int8"),
    }

    # The road not taken: the same fp32 graph, quantised the other way, measured alike.
    other = next(m for m in METHODS if m != result.quantization)
    loaded = load_run_model(cfg, result.run_id)
    schema = loaded.schema
    task_half = get_task(task)
    test = loaded.snapshot.load("test")
    rows = task_half.model_input(test.features, schema)
    calibration = calibration_rows(cfg, task_half, loaded.snapshot.load("train"), schema)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "other.int8.onnx"
        quantize_int8(result.package.graph_path("fp32"), path, calibration, other)
        alt = {
            "bytes": path.stat().st_size,
            "metrics": score_onnx(path, task, test, schema, threads),
            "latency": measure_latency(path, rows, BATCH_SIZES, repeats, threads),
        }

    fp32_p50 = {b: graphs["fp32"].latency[b].p50_ms for b in BATCH_SIZES}
    lines = []
    for name, spec in graphs.items():
        lines.append(row(task, name, spec.bytes, spec.metrics, metric, spec.latency, fp32_p50))
    lines.append(
        row(
            task,
            f"int8 {other} (not chosen)",
            alt["bytes"],
            alt["metrics"],
            metric,
            alt["latency"],
            fp32_p50,
        )
    )
    return lines


def row(
    task: str,
    name: str,
    size: int,
    metrics: dict[str, Any],
    metric: str,
    latency: dict[int, Any],
    fp32_p50: dict[int, float],
) -> str:
    cells = [
        f"{latency[b].p50_ms:.3f} ({latency[b].p50_ms / fp32_p50[b]:.2f}x)" for b in BATCH_SIZES
    ]
    return (
        f"| {task} | {name} | {size / 1024:.1f} | {float(metrics[metric]):.4f} | "
        f"{float(metrics['loss']):.4f} | " + " | ".join(cells) + " |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=200, help="timed calls per batch size")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    parser.add_argument(
        "--home",
        default=str(Path(tempfile.gettempdir()) / "shipyard-bench-quantization"),
        help="SHIPYARD_HOME for the benchmark's runs (kept, so a re-run reuses the training)",
    )
    args = parser.parse_args()
    os.environ["SHIPYARD_HOME"] = args.home
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import onnxruntime

    from shipyard.console import quiet_libraries

    quiet_libraries()
    lines = []
    with tempfile.TemporaryDirectory(prefix="shipyard-bench-packages-") as packages:
        for task in ("image", "tabular"):
            lines += bench_task(task, args.repeats, args.threads, Path(packages))
    print(
        f"machine: {cpu_model()}, {os.cpu_count()} cores, {platform.machine()}, "
        f"python {platform.python_version()}, onnxruntime {onnxruntime.__version__}, "
        f"{args.threads} ORT thread(s), p50 of {args.repeats} calls"
    )
    print()
    header = " | ".join(f"p50 ms batch {b} (x fp32)" for b in BATCH_SIZES)
    print(f"| task | graph | size KB | test accuracy / MAE | test loss | {header} |")
    print("| --- | --- | ---: | ---: | ---: | " + " | ".join("---:" for _ in BATCH_SIZES) + " |")
    for line in lines:
        print(line)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
