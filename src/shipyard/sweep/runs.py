"""MLflow for a sweep: one parent run per study, one nested run per trial.

The MLflow UI nests a run under another by its ``mlflow.parentRunId`` tag. A trial's run
is created by ``shipyard train`` (Lightning's ``MLFlowLogger``), which resolves its tags
through MLflow's run-context providers; one of them reads ``MLFLOW_RUN_CONTEXT`` (a JSON
object of tags, a documented, stable MLflow hook). Setting it while a trial trains gives
the trial's run its parent, study and trial number *at creation*, with no change to the
training code and no window in which a killed sweep leaves an orphan run. A worker runs one
trial at a time, so the process-wide variable is never shared by two trials.

The parent run's id is a user attribute of the study: a resumed sweep, and every other
worker of the study, log into the same parent.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig

from shipyard.errors import UserError
from shipyard.sweep.study import ATTR_PARENT_RUN
from shipyard.track import tracking

if TYPE_CHECKING:
    import optuna

PARENT_TAG = "mlflow.parentRunId"
TAG_STUDY = "shipyard.sweep.study"
TAG_STORAGE = "shipyard.sweep.storage"
TAG_TRIAL = "shipyard.sweep.trial"
TAG_STATE = "shipyard.sweep.state"
TAG_ROLE = "shipyard.sweep.role"
_CONTEXT_ENV = "MLFLOW_RUN_CONTEXT"
# How long a worker that loaded (not created) a study waits for its creator to record the
# parent run before creating one itself (the creator may have died in between).
PARENT_WAIT_S = 30.0


def ensure_parent(
    cfg: DictConfig, study: optuna.Study, *, created: bool, tags: dict[str, str]
) -> tuple[str, bool]:
    """The study's parent run id, created on first use; returns (run id, reused).

    A reused parent is set back to RUNNING while this worker adds trials to it.
    """
    parent = study.user_attrs.get(ATTR_PARENT_RUN)
    deadline = time.monotonic() + (0 if created else PARENT_WAIT_S)
    while parent is None and time.monotonic() < deadline:
        time.sleep(0.5)
        parent = _reload_attr(study)
    if parent is None:
        run = tracking.client(cfg).create_run(
            _experiment_id(cfg),
            run_name=f"sweep-{study.study_name}",
            tags={**tags, TAG_ROLE: "parent"},
        )
        parent = str(run.info.run_id)
        study.set_user_attr(ATTR_PARENT_RUN, parent)
        return parent, False
    _check_in_store(cfg, str(parent), study.study_name)
    tracking.client(cfg).update_run(str(parent), status="RUNNING")
    return str(parent), True


def _reload_attr(study: optuna.Study) -> Any:
    return study._storage.get_study_user_attrs(study._study_id).get(ATTR_PARENT_RUN)


def _experiment_id(cfg: DictConfig) -> str:
    """The experiment id; two workers starting together may both try to create it, and the
    loser finds the winner's."""
    from mlflow.exceptions import MlflowException

    try:
        return tracking.experiment_id(cfg)
    except MlflowException:
        time.sleep(1.0)
        return tracking.experiment_id(cfg)


def _check_in_store(cfg: DictConfig, run_id: str, study: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        tracking.client(cfg).get_run(run_id)
    except MlflowException:
        raise UserError(
            f"study {study!r} logs into MLflow run {run_id}, which {tracking.tracking_uri(cfg)} "
            "does not hold: every worker of a study must use the same tracking.uri"
        ) from None


@contextmanager
def trial_context(parent: str, study: str, number: int) -> Iterator[None]:
    """While a trial trains: runs created in this process are tagged as its nested run."""
    previous = os.environ.get(_CONTEXT_ENV)
    context = json.loads(previous) if previous else {}
    os.environ[_CONTEXT_ENV] = json.dumps(
        {**context, PARENT_TAG: parent, TAG_STUDY: study, TAG_TRIAL: str(number)}
    )
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(_CONTEXT_ENV, None)
        else:
            os.environ[_CONTEXT_ENV] = previous


def trial_run_id(cfg: DictConfig, parent: str, number: int) -> str | None:
    """The nested run of trial ``number`` (the newest, should a retry share the number)."""
    runs = tracking.newest_runs(
        cfg, [f"tags.`{PARENT_TAG}` = '{parent}'", f"tags.`{TAG_TRIAL}` = '{number}'"]
    )
    return str(runs[0].info.run_id) if runs else None


def close_trial_run(cfg: DictConfig, run_id: str, state: str) -> None:
    """Record how a trial ended on its run; a pruned or failed trial's run ends KILLED
    (Lightning marks it FAILED when the pruning exception stops the fit)."""
    mlflow_client = tracking.client(cfg)
    mlflow_client.set_tag(run_id, TAG_STATE, state)
    if state != "COMPLETE":
        mlflow_client.set_terminated(run_id, status="KILLED")


def close_dead_trial_runs(cfg: DictConfig, parent: str, numbers: list[int]) -> None:
    """The runs of trials whose worker died are left RUNNING by MLflow: end them."""
    for number in numbers:
        run_id = trial_run_id(cfg, parent, number)
        if run_id is not None:
            close_trial_run(cfg, run_id, "FAIL")


def finish_parent(
    cfg: DictConfig,
    parent: str,
    *,
    metrics: dict[str, float],
    files: list[Path],
    texts: dict[str, str],
    tags: dict[str, str],
    done: bool,
) -> None:
    """Log the sweep's summary on the parent run; end it once no trial is running."""
    tracking.log_metrics(cfg, parent, metrics)
    for key, value in tags.items():
        tracking.client(cfg).set_tag(parent, key, value)
    for path in files:
        tracking.log_file(cfg, parent, path)
    for name, text in texts.items():
        tracking.log_text(cfg, parent, text, name)
    if done:
        tracking.client(cfg).set_terminated(parent, status="FINISHED")
