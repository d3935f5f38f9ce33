"""Training throughput: ``shipyard train`` against a plain PyTorch loop, one command, one run.

Run: .venv/bin/python benchmarks/training/bench_training.py [--epochs 8] [--rounds 3]

Both sides train the same model (built by the task's training half, same seed), on the
same snapshot tensors, with the same batch size, optimiser (AdamW + cosine), threads and
deterministic setting, and do the same work per epoch: the training batches, a validation
pass scored with the same metrics function, and a best + last checkpoint written to disk.
The plain loop is what one would write by hand for that job; ``shipyard train`` is the
real ``shipyard.train.run.train`` (Lightning, MLflow logging, checkpoint callback), timed
through its ``callbacks`` hook with a callback that only reads the clock.

An epoch is timed from its start to the next epoch's start (the last to the end of
training), so Lightning's end-of-epoch logging and checkpointing are inside it. The first
epoch of every training is warm-up and left out. Cases run in alternation, ``--rounds``
times, and the median epoch is reported: the machine may be shared. The fixed costs of
``shipyard train`` outside the epochs (snapshot loading, the MLflow run, the final
evaluation and artifacts) are reported on their own line.

Prints a table with the ratio shipyard / plain (samples/s) per setting and writes JSON
next to this file (results.json). The goal: Lightning's overhead at most 5%.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
GOAL = 0.05


@dataclass
class CaseResult:
    case: str
    deterministic: bool
    epochs_timed: int
    median_epoch_s: float
    samples_per_s: float
    median_epoch_cpu_s: float
    fixed_cost_s: float | None = None


Stamp = tuple[float, float]  # (wall clock, this process's CPU time)


def stamp() -> Stamp:
    return time.perf_counter(), time.process_time()


def cpu_model() -> str:
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return platform.processor() or "unknown CPU"
    for line in text.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def epoch_times(starts: list[Stamp], end: Stamp) -> list[Stamp]:
    """(wall, CPU) seconds of each epoch from consecutive start stamps, the first (warm-up)
    dropped. CPU time is the process's own (all its threads): on a shared machine it moves
    less than the wall clock when other processes take turns on the cores."""
    stamps = [*starts, end]
    return [(b[0] - a[0], b[1] - a[1]) for a, b in itertools.pairwise(stamps[1:])]


def shipyard_epochs(overrides: list[str]) -> tuple[list[Stamp], float]:
    """Run the real ``train`` and return its timed epochs and its total seconds."""
    import lightning as L

    from shipyard.config import compose
    from shipyard.train.run import train

    class Clock(L.Callback):
        def __init__(self) -> None:
            self.starts: list[Stamp] = []
            self.end: Stamp = (0.0, 0.0)

        def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            self.starts.append(stamp())

        def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            self.end = stamp()

    clock = Clock()
    started = time.perf_counter()
    train(compose(overrides), callbacks=[clock])
    total = time.perf_counter() - started
    return epoch_times(clock.starts, clock.end), total


def plain_epochs(overrides: list[str], workdir: Path) -> list[Stamp]:
    """The same training as a hand-written PyTorch loop; returns its timed epochs."""
    import lightning as L
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from shipyard.config import compose
    from shipyard.data.snapshot import SPLITS
    from shipyard.tasks import get_task
    from shipyard.tasks.base import OutputKind
    from shipyard.train.metrics import loss_fn, score
    from shipyard.train.run import resolve_snapshot

    cfg = compose(overrides)
    torch.use_deterministic_algorithms(bool(cfg.trainer.deterministic))
    snapshot = resolve_snapshot(cfg)
    half = get_task(str(cfg.task.name)).training()
    schema = snapshot.manifest["schema"]
    labels = schema["target"]["labels"]
    splits = {name: snapshot.load(name) for name in SPLITS}
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    model = half.build_model(cfg.model, schema, splits["train"])
    tensors = {name: half.to_tensors(split, schema) for name, split in splits.items()}
    batch = int(cfg.trainer.batch_size)
    train_loader = DataLoader(TensorDataset(*tensors["train"]), batch_size=batch, shuffle=True)
    val_loader = DataLoader(TensorDataset(*tensors["val"]), batch_size=batch * 4)
    epochs = int(cfg.trainer.max_epochs)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=float(cfg.model.lr), weight_decay=float(cfg.model.weight_decay)
    )
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    best = float("inf")
    starts: list[Stamp] = []
    for _ in range(epochs):
        starts.append(stamp())
        model.train()
        for features, target in train_loader:
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(OutputKind.CLASSES, model(features), target)
            loss.backward()
            optimizer.step()
        schedule.step()
        model.eval()
        with torch.no_grad():
            pairs = [(model(features), target) for features, target in val_loader]
        outputs = torch.cat([o for o, _ in pairs])
        metrics = score(OutputKind.CLASSES, outputs, torch.cat([t for _, t in pairs]), len(labels))
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict()}
        torch.save(state, workdir / "last.pt")
        if metrics["loss"] < best:
            best = metrics["loss"]
            torch.save(state, workdir / "best.pt")
    return epoch_times(starts, stamp())


def summarise(
    case: str, det: bool, epochs: list[Stamp], rows: int, fixed: list[float]
) -> CaseResult:
    median = statistics.median(wall for wall, _ in epochs)
    return CaseResult(
        case=case,
        deterministic=det,
        epochs_timed=len(epochs),
        median_epoch_s=median,
        samples_per_s=rows / median,
        median_epoch_cpu_s=statistics.median(cpu for _, cpu in epochs),
        fixed_cost_s=statistics.median(fixed) if fixed else None,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--epochs", type=int, default=8, help="epochs per training (first: warm-up)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per case")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--deterministic",
        choices=["both", "true", "false"],
        default="both",
        help="which trainer.deterministic settings to measure",
    )
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        help="extra config override for both sides, e.g. --override 'model.channels=[64,128]'",
    )
    parser.add_argument("--json", type=Path, default=HERE / "results.json")
    args = parser.parse_args()

    import torch

    from shipyard.console import err_console

    torch.set_num_threads(args.threads)
    # Lightning's progress bar is on when stderr is a terminal (as for `shipyard train`).
    progress_bar = err_console.is_terminal
    home = Path(tempfile.mkdtemp(prefix="shipyard-bench-training-"))
    os.environ["SHIPYARD_HOME"] = str(home)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    settings = {"both": [True, False], "true": [True], "false": [False]}[args.deterministic]
    results: list[CaseResult] = []
    try:
        from shipyard.config import compose
        from shipyard.train.run import resolve_snapshot

        base = [
            "task=image",
            f"trainer.max_epochs={args.epochs}",
            "trainer.early_stopping_patience=null",
            f"trainer.batch_size={args.batch_size}",
            "trainer.accelerator=cpu",
            "trainer.devices=1",
            *args.override,
        ]
        rows = len(resolve_snapshot(compose(base)).load("train").target)
        for det in settings:
            overrides = [*base, f"trainer.deterministic={str(det).lower()}"]
            plain: list[Stamp] = []
            ours: list[Stamp] = []
            fixed: list[float] = []
            for round_ in range(args.rounds):
                workdir = Path(tempfile.mkdtemp(dir=home))
                plain += plain_epochs(overrides, workdir)
                epochs, total = shipyard_epochs(overrides)
                ours += epochs
                fixed.append(total - sum(wall for wall, _ in epochs))
                print(
                    f"deterministic={det} round {round_ + 1}/{args.rounds}: median s/epoch "
                    f"plain {statistics.median(w for w, _ in plain):.4f}, "
                    f"shipyard {statistics.median(w for w, _ in ours):.4f}",
                    file=sys.stderr,
                )
            results.append(summarise("plain PyTorch loop", det, plain, rows, []))
            results.append(summarise("shipyard train", det, ours, rows, fixed))
    finally:
        shutil.rmtree(home, ignore_errors=True)

    machine = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "arch": platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": __import__("lightning").__version__,
        "threads": args.threads,
        "progress_bar": progress_bar,
    }
    print(
        f"\nmachine: {machine['cpu']}, {machine['cores']} cores, {machine['arch']}, python "
        f"{machine['python']}, torch {machine['torch']}, lightning {machine['lightning']}, "
        f"{args.threads} threads"
    )
    extra = f", overrides {' '.join(args.override)}" if args.override else ""
    print(
        f"digits CNN{extra}, {rows} training rows, batch {args.batch_size}, {args.epochs} "
        f"epochs x {args.rounds} rounds (first epoch of each left out); progress bar "
        f"{'on' if progress_bar else 'off'}; samples/s = training rows / median epoch "
        "(train + validation + checkpoints)\n"
    )
    print(
        "| case | deterministic | epochs timed | median s/epoch | samples/s | x plain "
        "| median CPU s/epoch | x plain (CPU) |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    ratios: dict[str, float] = {}
    for det in settings:
        plain_r, ours_r = [r for r in results if r.deterministic == det]
        ratio = ours_r.samples_per_s / plain_r.samples_per_s
        ratios[str(det).lower()] = ratio
        for result in (plain_r, ours_r):
            x = result.samples_per_s / plain_r.samples_per_s
            x_cpu = plain_r.median_epoch_cpu_s / result.median_epoch_cpu_s
            print(
                f"| {result.case} | {str(det).lower()} | {result.epochs_timed} | "
                f"{result.median_epoch_s:.4f} | {result.samples_per_s:,.0f} | {x:.3f} | "
                f"{result.median_epoch_cpu_s:.4f} | {x_cpu:.3f} |"
            )
    for det in settings:
        ours_r = next(r for r in results if r.deterministic == det and r.fixed_cost_s is not None)
        overhead = 1 / ratios[str(det).lower()] - 1
        verdict = "within" if overhead <= GOAL else "above"
        print(
            f"\ndeterministic={str(det).lower()}: shipyard/plain = {ratios[str(det).lower()]:.3f} "
            f"(overhead {100 * overhead:+.1f}% per epoch, {verdict} the {100 * GOAL:.0f}% goal); "
            f"fixed cost outside the epochs {ours_r.fixed_cost_s:.2f} s per training"
        )
    args.json.write_text(
        json.dumps(
            {
                "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "machine": machine,
                "args": {k: str(v) for k, v in vars(args).items() if k != "json"},
                "training_rows": rows,
                "results": [asdict(r) for r in results],
                "ratio_shipyard_over_plain": ratios,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
