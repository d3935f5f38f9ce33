"""The Optuna study: RDB storage, TPE sampler, median pruner, and recovery of trials whose
worker died.

The study lives in a database (SQLite under the home by default, Postgres for workers on
several machines), so a killed sweep loses at most the trial it was running: the same
study name and storage load the study again. A trial that was RUNNING when its worker died
would otherwise stay RUNNING forever; two mechanisms fail it:

- every trial records its worker (host and process id); a sweep starting on the same host
  fails the RUNNING trials of processes that no longer exist, at once;
- workers write Optuna heartbeats, and a trial whose heartbeat is older than the grace
  period (a worker that died on another machine) is failed by whichever worker asks next.

A failed trial's parameters are enqueued again (``sweep.max_retry`` times), so the point
the killed worker was evaluating is not lost.
"""

from __future__ import annotations

import os
import socket
import warnings
from collections import Counter
from typing import TYPE_CHECKING, Any

from shipyard.errors import ConfigError, UserError

if TYPE_CHECKING:
    import optuna

    from shipyard.sweep.settings import SweepSettings

# A user attribute of every trial: which worker runs it ({"host": ..., "pid": ...}).
ATTR_WORKER = "shipyard.worker"
# Study user attributes: the MLflow parent run, and what the study optimises.
ATTR_PARENT_RUN = "shipyard.parent_run_id"
ATTR_METRIC = "shipyard.metric"
# Trial user attribute: the trial's MLflow run.
ATTR_RUN = "shipyard.run_id"
FINISHED_STATES = ("COMPLETE", "PRUNED")


def worker_identity() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid()}


def build_storage(settings: SweepSettings) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage on ``sweep.storage`` (created on first use)."""
    import optuna
    from sqlalchemy.exc import SQLAlchemyError

    url = settings.storage_url()
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        # Several local workers share the file: wait for the lock rather than fail.
        engine_kwargs["connect_args"] = {"timeout": 60}
    else:
        engine_kwargs["pool_pre_ping"] = True
    heartbeat = settings.heartbeat_interval_s
    retry = RetryTrial(settings.max_retry) if settings.max_retry > 0 and heartbeat else None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=heartbeat,
                grace_period=settings.grace_period_s if heartbeat else None,
                heartbeat_stale_trial_callback=retry,
            )
    except (SQLAlchemyError, ImportError, ValueError) as exc:
        raise UserError(
            f"cannot open the sweep storage {redact(url)}: {str(exc).splitlines()[0]} "
            "(sweep.storage takes a SQLAlchemy URL such as postgresql+psycopg://user@host/db)"
        ) from exc


def redact(url: str) -> str:
    """A storage URL safe to print and to tag (no password)."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy understands: show nothing of it
        return "<unparsable URL>"


def build_sampler(settings: SweepSettings, *, offset: int = 0) -> optuna.samplers.BaseSampler:
    """TPE seeded with ``sweep.sampler.seed + offset``.

    The offset is the number of trials the study already holds when this worker opens it:
    a sampler's random start-up draws depend only on its seed, so a resumed sweep (or a
    second worker) seeded like the first would draw the first worker's points again.
    """
    import optuna

    seed = None if settings.sampler_seed is None else settings.sampler_seed + offset
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=settings.n_startup_trials)


def build_pruner(settings: SweepSettings) -> optuna.pruners.BasePruner:
    import optuna

    if settings.pruner == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(
        n_startup_trials=settings.pruner_startup_trials,
        n_warmup_steps=settings.pruner_warmup_steps,
    )


def open_study(
    settings: SweepSettings, name: str, direction: str, metric: str
) -> tuple[optuna.Study, bool]:
    """Create the study, or load it when it exists; returns (study, created here).

    Only one worker can create a study (the storage refuses a second one), which is what
    lets exactly one worker create the MLflow parent run. A loaded study must optimise
    the same metric in the same direction.
    """
    import optuna

    storage = build_storage(settings)
    sampler, pruner = build_sampler(settings), build_pruner(settings)
    try:
        study = optuna.create_study(
            storage=storage,
            sampler=sampler,
            pruner=pruner,
            study_name=name,
            direction=optuna.study.StudyDirection[direction.upper()],
        )
        study.set_user_attr(ATTR_METRIC, metric)
        return study, True
    except optuna.exceptions.DuplicatedStudyError:
        pass
    study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
    study.sampler = build_sampler(settings, offset=len(study.get_trials(deepcopy=False)))
    existing = study.direction.name.lower()
    stored_metric = study.user_attrs.get(ATTR_METRIC, metric)
    if existing != direction or stored_metric != metric:
        raise ConfigError(
            f"study {name!r} optimises {stored_metric} ({existing}), not {metric} ({direction}): "
            "choose another sweep.study, or the same sweep.metric/sweep.direction"
        )
    return study, False


def recover_dead_trials(study: optuna.Study, max_retry: int) -> list[int]:
    """Fail the RUNNING trials whose worker process on this host no longer exists, and
    enqueue their parameters again (at most ``max_retry`` times per original trial).

    Returns the numbers of the trials failed. Trials of other hosts, and of live processes
    here (another ``--jobs`` worker), are left alone: the heartbeat covers other hosts.
    """
    import optuna
    from optuna.trial import TrialState

    here = socket.gethostname()
    failed: list[int] = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get(ATTR_WORKER) or {}
        if worker.get("host") != here or _alive(int(worker.get("pid", -1))):
            continue
        try:
            if not study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another worker got there first
        failed.append(trial.number)
        if max_retry > 0:
            RetryTrial(max_retry)(study, study._storage.get_trial(trial._trial_id))
    return failed


class RetryTrial:
    """Enqueue a failed trial's parameters again, at most ``max_retry`` times per original
    trial: Optuna's ``RetryHeartbeatStaleTrialCallback`` without the dead worker's
    ``shipyard.*`` attributes (a retry that inherited them would look like the dead
    worker's trial until it starts). Used for heartbeat-stale trials and local dead ones."""

    def __init__(self, max_retry: int) -> None:
        self.max_retry = max_retry

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        import optuna

        history = [*trial.system_attrs.get("retry_history", []), trial.number]
        if len(history) > self.max_retry:
            return
        study.add_trial(
            optuna.create_trial(
                state=optuna.trial.TrialState.WAITING,
                params=trial.params,
                distributions=trial.distributions,
                user_attrs={
                    k: v for k, v in trial.user_attrs.items() if not k.startswith("shipyard.")
                },
                system_attrs={
                    **trial.system_attrs,
                    "failed_trial": trial.system_attrs.get("failed_trial", trial.number),
                    "retry_history": history,
                },
            )
        )


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def counts(study: optuna.Study) -> dict[str, int]:
    """Trials by state name (COMPLETE, PRUNED, FAIL, RUNNING, WAITING)."""
    found = Counter(t.state.name for t in study.get_trials(deepcopy=False))
    return dict(found)


def finished(study: optuna.Study) -> int:
    """Trials that count towards ``--trials``: complete or pruned."""
    tally = counts(study)
    return sum(tally.get(state, 0) for state in FINISHED_STATES)
