"""``shipyard sweep``: hyperparameter search on Optuna (docs/sweeps.md).

Kept beside ``cli.py`` (which imports this module at its end to add the command); Optuna,
torch and MLflow are imported inside the command so ``shipyard --help`` stays instant.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from shipyard.cli import JsonFlag, Overrides, _emit, _working, app, out
from shipyard.errors import UserError

__all__ = ["sweep"]


@app.command()
def sweep(
    overrides: Overrides = None,
    trials: Annotated[
        int | None,
        typer.Option(
            "--trials",
            help="Finished trials (complete or pruned) the study should hold; a re-run adds "
            "only the missing ones. Default: sweep.trials.",
            show_default=False,
        ),
    ] = None,
    jobs: Annotated[
        int,
        typer.Option(
            "--jobs", help="Worker processes on this machine, sharing the study's trials."
        ),
    ] = 1,
    as_json: JsonFlag = False,
) -> None:
    """Search hyperparameters with Optuna: TPE sampling, pruning of bad trials, each trial a
    nested MLflow run; the best trial is written as an experiment file.

    The search space is the `sweep` config group (`sweep=default`, `sweep=cnn`). Run the
    same command again to resume an interrupted sweep. Examples:
    `shipyard sweep task=image trainer=fast --trials 20` ·
    `shipyard sweep task=image sweep=cnn --trials 40 --jobs 2` ·
    `shipyard sweep task=tabular sweep.storage=postgresql+psycopg://user@db/optuna sweep.study=wine`
    (one per machine: they share the study) · then `shipyard train experiment=sweep-STUDY`
    """
    from shipyard.sweep.run import run_sweep

    if trials is not None and trials < 1:
        raise UserError(f"--trials must be at least 1, got {trials}")
    if jobs < 1:
        raise UserError(f"--jobs must be at least 1, got {jobs}")
    with _working(as_json):
        result = run_sweep(overrides or [], trials=trials, jobs=jobs)
    _emit(result.summary(), as_json, _print_sweep)


def _print_sweep(result: dict[str, Any]) -> None:
    best = result["best"] or {}
    table = Table(
        title=f"Sweep {result['study']} ({result['metric']}, {result['direction']})",
        title_justify="left",
    )
    for column in ("trial", "state", "params", result["metric"], "seconds"):
        table.add_column(column, justify="right" if column in ("trial", "seconds") else "left")
    for row in result["trials"]:
        value = row["value"] if row["value"] is not None else row["last_reported"]
        shown = "-" if value is None else f"{value:.4f}"
        if row["state"] == "PRUNED" and value is not None:
            shown += f" (epoch {row['epochs_reported'] - 1})"
        star = " [bold green]*[/]" if row["number"] == best.get("number") else ""
        table.add_row(
            str(row["number"]) + star,
            _state(row["state"]),
            ", ".join(f"{k}={_param(v)}" for k, v in row["params"].items()),
            shown,
            "-" if row["duration_s"] is None else f"{row['duration_s']:.1f}",
        )
    out.print(table)
    tally = ", ".join(f"{n} {state.lower()}" for state, n in sorted(result["counts"].items()))
    out.print(f"Trials: {tally} (target {result['target_trials']})", highlight=False)
    if result["recovered_trials"]:
        out.print(
            f"Failed the trials of a dead worker: {result['recovered_trials']} (re-enqueued)",
            highlight=False,
        )
    if best:
        out.print(
            f"Best: trial {best['number']}, {result['metric']} {best['value']:.4f}, "
            f"run {best['run_id']}",
            highlight=False,
        )
        out.print(
            f"Experiment: [bold]{result['experiment_path']}[/] -> "
            f"[bold]shipyard train experiment={result['experiment']}[/]",
            highlight=False,
        )
        out.print(f"Plot: [bold]{result['plot']}[/]", highlight=False)
    reused = " (resumed)" if result["parent_reused"] else ""
    out.print(f"MLflow parent run: {result['parent_run_id']}{reused}", highlight=False)
    out.print(f"Study: {result['study']} in {result['storage']}", highlight=False)


def _param(value: Any) -> str:
    """Three significant digits: search values span decades (weight decay 1e-6..1e-2)."""
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _state(state: str) -> str:
    colour = {"COMPLETE": "green", "PRUNED": "yellow", "FAIL": "red"}.get(state, "white")
    return f"[{colour}]{state.lower()}[/]"
