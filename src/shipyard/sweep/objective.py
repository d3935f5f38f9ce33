"""One trial: draw the parameters, compose the config, train, return the validation score.

The trial trains through the same ``train`` as ``shipyard train`` (a real Lightning fit,
tracked in MLflow), with two additions: Optuna's Lightning pruning callback, which reports
``val_<metric>`` after every validation epoch and stops a trial that is doing worse than
the median of earlier trials at that epoch; and the run context that nests the trial's run
under the sweep's parent run (see :mod:`shipyard.sweep.runs`).

The value returned is the best checkpoint's score on the *validation* split
(``best_val_<metric>``). The test split is never looked at: choosing on it would make the
best trial's test score an optimistic estimate.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shipyard.config import compose
from shipyard.errors import ConfigError
from shipyard.sweep import runs
from shipyard.sweep.space import to_override
from shipyard.sweep.study import ATTR_RUN, ATTR_WORKER, worker_identity

if TYPE_CHECKING:
    import optuna

    from shipyard.sweep.settings import SweepSettings


@dataclass
class Objective:
    """Optuna's objective for one sweep (called once per trial by ``study.optimize``)."""

    settings: SweepSettings
    snapshot_id: str
    metric: str
    parent: str
    study_name: str

    def overrides(self, params: dict[str, Any]) -> list[str]:
        """A trial's command-line overrides: the sweep's own, the snapshot resolved once
        (so trials do not re-read the source), then the drawn parameters."""
        drawn = [to_override(key, value) for key, value in params.items()]
        return [*self.settings.train_overrides, f"snapshot={self.snapshot_id}", *drawn]

    def __call__(self, trial: optuna.Trial) -> float:
        import optuna
        from optuna_integration import PyTorchLightningPruningCallback

        from shipyard.train.run import train

        trial.set_user_attr(ATTR_WORKER, worker_identity())
        params = {dim.key: dim.suggest(trial) for dim in self.settings.space}
        cfg = compose(self.overrides(params))
        # Optuna's own callback: it imports `lightning.pytorch` (Lightning 2.x) and, outside
        # DDP, reports the metric and raises TrialPruned from on_validation_end.
        pruning = PyTorchLightningPruningCallback(trial, monitor=f"val_{self.metric}")
        try:
            with runs.trial_context(self.parent, self.study_name, trial.number):
                result = train(cfg, callbacks=[pruning])
        except optuna.TrialPruned:
            self._close(cfg, trial, "PRUNED")
            raise
        except BaseException:
            self._close(cfg, trial, "FAIL")
            raise
        trial.set_user_attr(ATTR_RUN, result.run_id)
        runs.close_trial_run(cfg, result.run_id, "COMPLETE")
        key = f"best_val_{self.metric}"
        if key not in result.metrics:
            names = sorted(k.removeprefix("best_val_") for k in result.metrics if "best_val_" in k)
            raise ConfigError(
                f"sweep.metric {self.metric!r} is not scored for this task: use one of "
                f"{', '.join(names)}"
            )
        return float(result.metrics[key])

    def _close(self, cfg: Any, trial: optuna.Trial, state: str) -> None:
        """Find the trial's run (created inside ``train``) and record how it ended; the
        trial's own exception is the one to report, so a failure here is swallowed."""
        with contextlib.suppress(Exception):
            run_id = runs.trial_run_id(cfg, self.parent, trial.number)
            if run_id is not None:
                trial.set_user_attr(ATTR_RUN, run_id)
                runs.close_trial_run(cfg, run_id, state)
