"""``shipyard sweep``: a hyperparameter search whose trials are ordinary tracked trainings.

One call is one *worker* of a study: it opens (or resumes) the study, runs trials until the
study holds ``--trials`` finished ones (complete or pruned, counted over every worker),
and reports. ``--jobs J`` starts J-1 more workers as child processes, each a plain
``shipyard sweep`` on the same study: processes, not threads, because a training seeds and
configures torch process-wide (``seed_everything``, deterministic algorithms), and a
worker on another machine is the same thing with the same storage URL.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shipyard.console import err_console, quiet_libraries
from shipyard.errors import ConfigError, UserError
from shipyard.sweep import runs
from shipyard.sweep.experiment import experiment_dir, reproduces, trial_overrides, write_experiment
from shipyard.sweep.report import plot_trials, trial_rows
from shipyard.sweep.settings import SweepSettings, load_settings
from shipyard.sweep.study import (
    counts,
    finished,
    open_study,
    recover_dead_trials,
    redact,
)

if TYPE_CHECKING:
    import optuna

# What each output kind scores on the validation split (train/metrics.py), so that a wrong
# sweep.metric fails before the first trial rather than after it.
METRICS = {
    "classes": ("accuracy", "macro_f1", "loss"),
    "number": ("mae", "rmse", "r2", "loss"),
    # generated text: only the teacher-forced loss is scored every epoch (ROUGE generates)
    "text": ("loss",),
}


@dataclass
class SweepResult:
    study: str
    storage: str
    metric: str
    direction: str
    target_trials: int
    counts: dict[str, int]
    trials: list[dict[str, Any]]
    parent_run_id: str
    parent_reused: bool
    recovered_trials: list[int]
    snapshot_id: str
    tracking_uri: str
    duration_s: float
    best: dict[str, Any] | None = None
    experiment: str | None = None
    experiment_path: str | None = None
    plot: str | None = None
    workers: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "study": self.study,
            "storage": self.storage,
            "metric": f"val_{self.metric}",
            "direction": self.direction,
            "target_trials": self.target_trials,
            "counts": self.counts,
            "best": self.best,
            "experiment": self.experiment,
            "experiment_path": self.experiment_path,
            "plot": self.plot,
            "parent_run_id": self.parent_run_id,
            "parent_reused": self.parent_reused,
            "recovered_trials": self.recovered_trials,
            "snapshot_id": self.snapshot_id,
            "tracking_uri": self.tracking_uri,
            "duration_s": round(self.duration_s, 2),
            "workers": self.workers,
            "trials": self.trials,
        }


def run_sweep(
    overrides: list[str] | tuple[str, ...], *, trials: int | None = None, jobs: int = 1
) -> SweepResult:
    """Run (or resume) the sweep the overrides describe until the study holds ``trials``
    finished trials; write the best trial's experiment file and plot; return the summary."""
    import optuna

    started = time.perf_counter()
    if trials is not None and trials < 1:
        raise UserError(f"--trials must be at least 1, got {trials}")
    if jobs < 1:
        raise UserError(f"--jobs must be at least 1, got {jobs}")
    settings = load_settings(overrides)
    target = trials if trials is not None else settings.trials
    quiet_libraries()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    base = settings.base
    snapshot_id, primary, kind = check_inputs(base)
    metric, direction = settings.metric_and_direction(primary)
    if metric not in METRICS.get(kind, (metric,)):
        raise ConfigError(
            f"sweep.metric {metric!r} is not scored for {kind} targets: use one of "
            f"{', '.join(METRICS[kind])}"
        )
    name = settings.study_name()
    study, created = open_study(settings, name, direction, metric)
    storage = redact(settings.storage_url())
    parent, reused = runs.ensure_parent(
        base,
        study,
        created=created,
        tags={
            runs.TAG_STUDY: name,
            runs.TAG_STORAGE: storage,
            "shipyard.task": str(base.task.name),
            "shipyard.model": str(base.model.name),
            "shipyard.snapshot_id": snapshot_id,
            "shipyard.sweep.metric": f"val_{metric}",
            "shipyard.sweep.direction": direction,
        },
    )
    recovered = recover_dead_trials(study, settings.max_retry)
    runs.close_dead_trial_runs(base, parent, recovered)
    children = _start_workers(overrides, settings, name, target, jobs - 1)
    from shipyard.sweep.objective import Objective

    objective = Objective(settings, snapshot_id, metric, parent, name)
    try:
        _optimize(study, objective, target)
    finally:
        workers = _wait(children)
    return _report(
        settings,
        study,
        started,
        parent=parent,
        reused=reused,
        recovered=recovered,
        snapshot_id=snapshot_id,
        metric=metric,
        direction=direction,
        target=target,
        storage=storage,
        workers=workers,
    )


def check_inputs(base: Any) -> tuple[str, tuple[str, str], str]:
    """Prepare (or reuse) the snapshot once for every trial and check that task, model and
    data fit; returns (snapshot id, the task's primary metric and direction, output kind)."""
    from shipyard.tasks import get_task
    from shipyard.tasks.base import OutputKind, primary_metric
    from shipyard.train.run import check_data, check_model, resolve_snapshot

    if str(base.trainer.strategy).startswith("ddp"):
        # Lightning's DDP launcher re-runs the whole command in every rank: each rank would
        # run the sweep itself. Trials are parallel with --jobs, one process each.
        raise ConfigError(
            f"a sweep cannot train with trainer.strategy={base.trainer.strategy}: run trials "
            "in parallel with --jobs J instead (one process per trial)"
        )
    task = get_task(str(base.task.name))
    check_model(task, base)
    snapshot = resolve_snapshot(base)
    check_data(task, snapshot)
    kind = OutputKind(snapshot.manifest["schema"]["target"]["kind"])
    if kind is OutputKind.TEXT:
        # ROUGE needs generation, which is too slow for every epoch: trials of a summariser
        # are pruned and ranked on the validation loss per summary token, logged each epoch.
        return snapshot.id, ("loss", "min"), kind.value
    return snapshot.id, primary_metric(kind), kind.value


def _optimize(study: optuna.Study, objective: Any, target: int) -> None:
    """Trials until the study holds ``target`` finished ones; a trial whose training raises
    a RuntimeError (out of memory, say) is recorded as FAIL and the sweep goes on."""
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState

    remaining = target - finished(study)
    if remaining <= 0:
        return
    enough = MaxTrialsCallback(target, states=(TrialState.COMPLETE, TrialState.PRUNED))
    with _progress(target, finished(study)) as advance:
        study.optimize(
            objective,
            n_trials=remaining,
            catch=(RuntimeError,),
            callbacks=[enough, lambda s, _t: advance(finished(s))],
            gc_after_trial=True,
        )


@contextlib.contextmanager
def _progress(total: int, done: int) -> Iterator[Any]:
    """A bar over the study's finished trials (all workers'), on stderr when it is a terminal."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        disable=not err_console.is_terminal,
        transient=True,
    ) as bar:
        task = bar.add_task("sweep trials", total=total, completed=done)
        yield lambda completed: bar.update(task, completed=min(completed, total))


def _start_workers(
    overrides: list[str] | tuple[str, ...],
    settings: SweepSettings,
    study: str,
    target: int,
    count: int,
) -> list[tuple[subprocess.Popen[bytes], Path]]:
    """``count`` more workers: ``shipyard sweep`` children on the same study, logging to
    ``<home>/sweeps/<study>/worker-N.log``. Started after this worker created the study,
    its parent run and the snapshot, so they race for none of them; each gets its own
    sampler seed, or all would draw the same start-up points."""
    children = []
    logs = Path(str(settings.base.paths.home)) / "sweeps" / study
    seed = settings.sampler_seed
    flags = ["--trials", str(target), "--jobs", "1", "--json"]
    for index in range(1, count + 1):
        logs.mkdir(parents=True, exist_ok=True)
        log = logs / f"worker-{index}.log"
        reseed = [] if seed is None else [f"sweep.sampler.seed={seed + 1000 * index}"]
        command = [sys.executable, "-m", "shipyard", "sweep", *overrides, *reseed, *flags]
        command.insert(-len(flags), f"sweep.study={study}")
        with log.open("wb") as out:
            child = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        children.append((child, log))
    return children


def _wait(children: list[tuple[subprocess.Popen[bytes], Path]]) -> list[dict[str, Any]]:
    workers = []
    for child, log in children:
        code = child.wait()
        workers.append({"pid": child.pid, "exit_code": code, "log": str(log)})
        if code != 0:
            err_console.print(f"[yellow]warning:[/] sweep worker {child.pid} exited {code}: {log}")
    return workers


def _report(
    settings: SweepSettings,
    study: optuna.Study,
    started: float,
    *,
    parent: str,
    reused: bool,
    recovered: list[int],
    snapshot_id: str,
    metric: str,
    direction: str,
    target: int,
    storage: str,
    workers: list[dict[str, Any]],
) -> SweepResult:
    from shipyard.track import tracking

    base = settings.base
    rows = trial_rows(study)
    tally = counts(study)
    result = SweepResult(
        study=study.study_name,
        storage=storage,
        metric=metric,
        direction=direction,
        target_trials=target,
        counts=tally,
        trials=rows,
        parent_run_id=parent,
        parent_reused=reused,
        recovered_trials=recovered,
        snapshot_id=snapshot_id,
        tracking_uri=tracking.tracking_uri(base),
        duration_s=0.0,
        workers=workers,
    )
    if not tally.get("COMPLETE"):
        reasons = [t.system_attrs.get("fail_reason") for t in study.get_trials(deepcopy=False)]
        first = next((r for r in reasons if r), "no trial completed")
        raise UserError(
            f"sweep {study.study_name!r} has no complete trial: {first.splitlines()[0]}"
        )
    best = study.best_trial
    result.best = {
        "number": best.number,
        "value": best.value,
        "params": dict(best.params),
        "run_id": next((r["run_id"] for r in rows if r["number"] == best.number), None),
    }
    header = [
        f"Best trial of sweep {study.study_name}: trial {best.number}, val_{metric} "
        f"{best.value:.6g} ({direction}), MLflow run {result.best['run_id']}.",
        f"Written by `shipyard sweep`; reproduce with: shipyard train experiment=sweep-{study.study_name}",
        f"Trained on snapshot {snapshot_id} (prepared again from the data config below).",
    ]
    name, path, target_cfg = write_experiment(
        study.study_name, trial_overrides(settings.train_overrides, best.params), header
    )
    if not reproduces(name, target_cfg):
        warnings.warn(
            f"experiment {name} does not compose to the best trial's config", stacklevel=1
        )
    plot = plot_trials(
        rows,
        metric=metric,
        direction=direction,
        path=experiment_dir() / f"{name}.png",
        title=f"sweep {study.study_name}: val_{metric} per trial",
    )
    result.experiment, result.experiment_path, result.plot = name, str(path), str(plot)
    running = tally.get("RUNNING", 0) + tally.get("WAITING", 0)
    runs.finish_parent(
        base,
        parent,
        metrics={
            f"best_val_{metric}": float(best.value),  # type: ignore[arg-type]
            "trials_complete": float(tally.get("COMPLETE", 0)),
            "trials_pruned": float(tally.get("PRUNED", 0)),
            "trials_failed": float(tally.get("FAIL", 0)),
        },
        files=[plot, path],
        texts={"trials.json": json.dumps(rows, indent=2, default=str)},
        tags={
            "shipyard.sweep.best_trial": str(best.number),
            "shipyard.sweep.best_run_id": str(result.best["run_id"]),
        },
        done=running == 0,
    )
    result.duration_s = time.perf_counter() - started
    return result
