"""What a sweep shows at its end: one row per trial, and a plot of the objective per trial
with the best value so far (the curve that says whether more trials would still help)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shipyard.sweep.study import ATTR_RUN

if TYPE_CHECKING:
    import optuna


def trial_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """The trials as plain rows (number, state, params, value, duration, run id)."""
    rows = []
    for trial in study.get_trials(deepcopy=False):
        duration = (
            (trial.datetime_complete - trial.datetime_start).total_seconds()
            if trial.datetime_start and trial.datetime_complete
            else None
        )
        last_step = max(trial.intermediate_values) if trial.intermediate_values else None
        rows.append(
            {
                "number": trial.number,
                "state": trial.state.name,
                "params": dict(trial.params),
                "value": trial.value,
                "last_reported": (
                    trial.intermediate_values[last_step] if last_step is not None else None
                ),
                "epochs_reported": len(trial.intermediate_values),
                "duration_s": None if duration is None else round(duration, 2),
                "run_id": trial.user_attrs.get(ATTR_RUN),
                "retry_of": trial.system_attrs.get("failed_trial"),
            }
        )
    return rows


def plot_trials(
    rows: list[dict[str, Any]], *, metric: str, direction: str, title: str, path: Path
) -> Path:
    """A PNG: each complete trial's value, pruned trials at their last reported value, and
    the best value so far as a step line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    better = max if direction == "maximize" else min
    complete = [r for r in rows if r["state"] == "COMPLETE" and r["value"] is not None]
    pruned = [r for r in rows if r["state"] == "PRUNED" and r["last_reported"] is not None]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    ax.scatter(
        [r["number"] for r in complete],
        [r["value"] for r in complete],
        color="#1f77b4",
        label="complete",
        zorder=3,
    )
    if pruned:
        ax.scatter(
            [r["number"] for r in pruned],
            [r["last_reported"] for r in pruned],
            marker="x",
            color="#d62728",
            label="pruned (last epoch reported)",
            zorder=3,
        )
    best_x, best_y, best = [], [], None
    for row in sorted(complete, key=lambda r: r["number"]):
        best = row["value"] if best is None else better(best, row["value"])
        best_x.append(row["number"])
        best_y.append(best)
    if best_x:
        ax.step(best_x, best_y, where="post", color="#2ca02c", label="best so far")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial")
    ax.set_ylabel(f"val_{metric} ({direction})")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    # Several workers of a study may draw it at once: write aside, then rename into place.
    staged = path.with_name(f".{path.stem}.{os.getpid()}.png")
    fig.savefig(staged)
    plt.close(fig)
    staged.replace(path)
    return path
