"""The search space: ``sweep.space`` read, checked against the training config, and sampled.

Checked before the first trial so that a typo costs one line and exit 2, not a trial that
trains the default and silently ignores the parameter. A distribution names a config key
that ``shipyard config show`` lists and is drawn by Optuna's ``suggest_*``; the drawn
values become ordinary command-line overrides, so a trial composes its config exactly
the way ``shipyard train`` does.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from shipyard.errors import ConfigError

if TYPE_CHECKING:
    import optuna

TYPES = ("float", "int", "categorical")
_KEYS = {
    "float": {"type", "low", "high", "log", "step"},
    "int": {"type", "low", "high", "log", "step"},
    "categorical": {"type", "choices"},
}
# What Optuna stores for a categorical choice (it refuses lists and mappings).
_CHOICE_TYPES = (bool, int, float, str, type(None))


@dataclass(frozen=True)
class Dimension:
    """One searched config key and its distribution."""

    key: str
    type: str
    low: float | int = 0
    high: float | int = 0
    log: bool = False
    step: float | int | None = None
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: optuna.Trial) -> Any:
        if self.type == "categorical":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.type == "int":
            return trial.suggest_int(
                self.key, int(self.low), int(self.high), step=int(self.step or 1), log=self.log
            )
        return trial.suggest_float(
            self.key,
            float(self.low),
            float(self.high),
            step=None if self.step is None else float(self.step),
            log=self.log,
        )

    def describe(self) -> str:
        if self.type == "categorical":
            return f"one of {list(self.choices)}"
        scale = ", log" if self.log else ""
        step = f", step {self.step}" if self.step is not None else ""
        return f"{self.type} in [{self.low}, {self.high}]{scale}{step}"


def parse_space(space: Any, base: DictConfig) -> list[Dimension]:
    """The dimensions of ``sweep.space`` (nested or dotted keys), each checked against ``base``.

    Raises :class:`ConfigError` naming the entry for an unknown config key, an unknown
    distribution type or key, bounds in the wrong order, a log scale that reaches zero,
    or an empty choice list.
    """
    raw = OmegaConf.to_container(space, resolve=True) if OmegaConf.is_config(space) else space
    if not isinstance(raw, Mapping) or not raw:
        raise ConfigError(
            "sweep.space is empty: give at least one config key to search, e.g. "
            "'+sweep.space.model.lr={type: float, low: 1e-4, high: 1e-2, log: true}'"
        )
    dimensions: dict[str, Dimension] = {}
    for key, spec in _entries({str(k): v for k, v in raw.items()}):
        if key in dimensions:
            raise ConfigError(f"sweep.space names {key!r} twice (once dotted, once nested)")
        dimensions[key] = _dimension(key, spec, base)
    if not dimensions:
        raise ConfigError("sweep.space has no entry left to search (every one is null)")
    return list(dimensions.values())


def _entries(node: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted key, spec) pairs: a mapping with a ``type`` is a distribution, any other
    mapping a level of nesting, and null an entry switched off from the command line."""
    found: list[tuple[str, Any]] = []
    for name, value in node.items():
        key = f"{prefix}{name}"
        if value is None:
            continue
        if isinstance(value, Mapping) and "type" not in value:
            if not value:
                raise ConfigError(f"sweep.space.{key} is empty: give it a distribution")
            found.extend(_entries(value, f"{key}."))
        else:
            found.append((key, value))
    return found


def _dimension(key: str, spec: Any, base: DictConfig) -> Dimension:
    where = f"sweep.space.{key}"
    if not isinstance(spec, Mapping):
        raise ConfigError(
            f"{where} must be a distribution like {{type: float, low: 0.001, high: 0.1}}, "
            f"got {spec!r}"
        )
    kind = spec.get("type")
    if kind not in TYPES:
        raise ConfigError(f"{where}.type is {kind!r}: use one of {', '.join(TYPES)}")
    unknown = sorted(set(spec) - _KEYS[kind])
    if unknown:
        raise ConfigError(
            f"{where} has unknown key(s) {', '.join(unknown)}: a {kind} distribution takes "
            f"{', '.join(sorted(_KEYS[kind]))}"
        )
    _check_key(key, base)
    if kind == "categorical":
        return _categorical(key, spec, where)
    number = int if kind == "int" else (int, float)
    for name in ("low", "high"):
        value = spec.get(name)
        if isinstance(value, bool) or not isinstance(value, number):
            raise ConfigError(f"{where}.{name} must be a{'n' if kind == 'int' else ''} {kind}")
    low: float | int = spec["low"]
    high: float | int = spec["high"]
    if not math.isfinite(low) or not math.isfinite(high) or low > high:
        raise ConfigError(f"{where}: low ({low}) must not be greater than high ({high})")
    log, step = bool(spec.get("log", False)), spec.get("step")
    if log and low <= 0:
        raise ConfigError(f"{where}: a log scale needs low > 0 (got {low})")
    if step is not None:
        if isinstance(step, bool) or not isinstance(step, number) or step <= 0:
            raise ConfigError(f"{where}.step must be a positive {kind}")
        if log:
            raise ConfigError(f"{where}: step and log cannot be combined (Optuna refuses it)")
    return Dimension(key=key, type=kind, low=low, high=high, log=log, step=step)


def _categorical(key: str, spec: Mapping[str, Any], where: str) -> Dimension:
    choices = spec.get("choices")
    if not isinstance(choices, list | tuple) or not choices:
        raise ConfigError(f"{where}.choices must be a non-empty list")
    for choice in choices:
        if not isinstance(choice, _CHOICE_TYPES):
            raise ConfigError(
                f"{where}.choices: {choice!r} is not a number, string, true/false or null "
                "(Optuna stores only those; search lists through separate keys)"
            )
    return Dimension(key=key, type="categorical", choices=tuple(choices))


def _check_key(key: str, base: DictConfig) -> None:
    """The key must exist in the training config and be a value, not a section."""
    missing = object()
    value = OmegaConf.select(base, key, default=missing, throw_on_missing=False)
    if value is missing:
        top = key.split(".")[0]
        raise ConfigError(
            f"sweep.space: unknown config key {key!r} (`shipyard config show` lists every key "
            f"of {top!r} for these overrides)"
        )
    if isinstance(value, DictConfig):
        raise ConfigError(
            f"sweep.space: {key!r} is a config section, not a value: search one of its keys "
            f"({', '.join(f'{key}.{k!s}' for k in list(value.keys())[:4])})"
        )


def to_override(key: str, value: Any) -> str:
    """A sampled value as a Hydra command-line override (``model.lr=0.00123``)."""
    if value is None:
        text = "null"
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, float):
        text = repr(value)
    elif isinstance(value, int):
        text = str(value)
    else:
        escaped = str(value).replace("\\", "\\\\").replace("'", "\\'")
        text = f"'{escaped}'"
    return f"{key}={text}"
