"""What a sweep was asked to do: the ``sweep`` config group read once, plus the overrides
that configure each trial's training.

The ``sweep`` section is composed *beside* the training config, never inside it: a trial's
config must be exactly what ``shipyard train`` composes from the same overrides, or its
checkpoint folder, fingerprints and the best trial's experiment file would describe a
config nobody can reproduce.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from shipyard.config import available, compose, to_container
from shipyard.errors import ConfigError
from shipyard.sweep.space import Dimension, parse_space

GROUP = "sweep"
DEFAULT_OPTION = "default"
PRUNERS = ("median", "none")
DIRECTIONS = ("maximize", "minimize")
# Metrics whose smaller values are better, as the Trainer's checkpointing decides.
_MINIMISED = ("loss", "mae", "rmse")


@dataclass(frozen=True)
class SweepSettings:
    """The resolved ``sweep`` section and the overrides each trial trains with."""

    option: str
    study: str | None
    storage: str | None
    trials: int
    metric: str | None
    direction: str | None
    sampler_seed: int | None
    n_startup_trials: int
    pruner: str
    pruner_startup_trials: int
    pruner_warmup_steps: int
    heartbeat_interval_s: int | None
    grace_period_s: int | None
    max_retry: int
    space: list[Dimension]
    space_spec: dict[str, Any]
    train_overrides: tuple[str, ...]
    base: DictConfig = field(repr=False)

    def storage_url(self) -> str:
        """``sweep.storage``, else a SQLite file under the Shipyard home."""
        if self.storage:
            return self.storage
        path = Path(str(self.base.paths.home)) / "sweeps.db"
        path.parent.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{path}"

    def metric_and_direction(self, primary: tuple[str, str]) -> tuple[str, str]:
        """The metric to optimise and its direction; ``primary`` is the task's
        (``("accuracy", "max")``), used where ``sweep.metric``/``sweep.direction`` are null."""
        metric = (self.metric or primary[0]).removeprefix("val_")
        if self.direction:
            return metric, self.direction
        if metric == primary[0]:
            return metric, "maximize" if primary[1] == "max" else "minimize"
        return metric, "minimize" if metric.endswith(_MINIMISED) else "maximize"

    def study_name(self) -> str:
        """``sweep.study``, else the task, model and a hash of what defines the search: the
        same command finds its study again, a different space or override starts another."""
        if self.study:
            return self.study
        basis = {
            "overrides": list(self.train_overrides),
            "space": self.space_spec,
            "metric": self.metric,
            "direction": self.direction,
        }
        digest = hashlib.sha256(json.dumps(basis, sort_keys=True).encode()).hexdigest()[:8]
        return f"{self.base.task.name}-{self.base.model.name}-{digest}"


def split_overrides(overrides: list[str] | tuple[str, ...]) -> tuple[list[str], list[str], str]:
    """(training overrides, ``sweep.*`` overrides, the chosen sweep option)."""
    train: list[str] = []
    sweep: list[str] = []
    option = DEFAULT_OPTION
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if key == GROUP:
            option = override.split("=", 1)[1] if "=" in override else ""
        elif key.startswith(f"{GROUP}."):
            sweep.append(override)
        else:
            train.append(override)
    return train, sweep, option


def load_settings(overrides: list[str] | tuple[str, ...]) -> SweepSettings:
    """Compose the training config and the ``sweep`` group from command-line overrides and
    check the search space against the training config.

    Raises :class:`ConfigError` (one line) for an unknown sweep option, key or distribution.
    """
    train, sweep_overrides, option = split_overrides(overrides)
    options = available(GROUP)
    if option not in options:
        raise ConfigError(
            f"unknown sweep {option!r}: choose one of {', '.join(options)} ({GROUP}=NAME)"
        )
    base = compose(train)
    section = compose([*train, f"+{GROUP}={option}", *sweep_overrides])[GROUP]
    known = set(OmegaConf.to_container(compose([f"+{GROUP}={DEFAULT_OPTION}"])[GROUP]).keys())  # type: ignore[union-attr]
    unknown = sorted(set(section.keys()) - known)
    if unknown:
        raise ConfigError(
            f"unknown sweep key(s) {', '.join(f'sweep.{k}' for k in unknown)}: "
            f"the keys are {', '.join(sorted(known))}"
        )
    pruner = str(section.pruner.type)
    if pruner not in PRUNERS:
        raise ConfigError(f"sweep.pruner.type is {pruner!r}: use one of {', '.join(PRUNERS)}")
    direction = section.get("direction")
    if direction is not None and direction not in DIRECTIONS:
        raise ConfigError(f"sweep.direction is {direction!r}: use maximize, minimize or null")
    spec = to_container(section)["space"]
    return SweepSettings(
        option=option,
        study=_opt_str(section.get("study")),
        storage=_opt_str(section.get("storage")),
        trials=_positive(section.trials, "sweep.trials"),
        metric=_opt_str(section.get("metric")),
        direction=_opt_str(direction),
        sampler_seed=None if section.sampler.seed is None else int(section.sampler.seed),
        n_startup_trials=int(section.sampler.n_startup_trials),
        pruner=pruner,
        pruner_startup_trials=int(section.pruner.n_startup_trials),
        pruner_warmup_steps=int(section.pruner.n_warmup_steps),
        heartbeat_interval_s=_opt_int(section.get("heartbeat_interval_s")),
        grace_period_s=_opt_int(section.get("grace_period_s")),
        max_retry=int(section.max_retry),
        space=parse_space(spec, base),
        space_spec=spec,
        train_overrides=tuple(train),
        base=base,
    )


def _opt_str(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _positive(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a whole number of at least 1, got {value!r}")
    return value
