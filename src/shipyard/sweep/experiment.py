"""The best trial as an experiment file that ``shipyard train experiment=NAME`` reproduces.

The file is the smallest experiment that composes to the trial's config: an ``override``
for every group choice (task, data, model, trainer, tracking: the ones a task picks in its
own defaults list included, so nothing depends on the defaults of the day), then every
key whose value differs from what those choices give (the sweep's own overrides and the
drawn parameters). It is written to ``<home>/conf/experiment/`` (the user's config root,
see :func:`shipyard.config.user_config_dir`), atomically, because several workers of a
study may write it at once. The snapshot is not pinned: the data config prepares the same
content-addressed snapshot again, and a header comment names it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig

from shipyard.config import GROUPS, compose, search_path_overrides, to_container, user_config_dir
from shipyard.sweep.space import to_override

GROUP = "experiment"


def experiment_name(study: str) -> str:
    return f"sweep-{study}"


def experiment_dir() -> Path:
    return user_config_dir() / GROUP


def trial_overrides(train_overrides: tuple[str, ...], params: dict[str, Any]) -> list[str]:
    """The overrides of a trial without the pinned snapshot."""
    return [*train_overrides, *(to_override(k, v) for k, v in params.items())]


def write_experiment(
    study: str, overrides: list[str], header: list[str]
) -> tuple[str, Path, DictConfig]:
    """Write the experiment that reproduces ``overrides``; returns (name, path, the config
    it must compose to)."""
    target = compose(overrides)
    choices = group_choices(overrides)
    base = compose([f"{group}={option}" for group, option in choices.items()])
    body = _diff(to_container(base), to_container(target))
    document: dict[str, Any] = {
        "defaults": [{f"override /{group}": option} for group, option in choices.items()],
        **body,
    }
    comments = "".join(f"# {line}\n" for line in header)
    text = "# @package _global_\n" + comments + yaml.safe_dump(document, sort_keys=False)
    name = experiment_name(study)
    path = experiment_dir() / f"{name}.yaml"
    atomic_write(path, text.encode())
    return name, path, target


def reproduces(name: str, target: DictConfig) -> bool:
    """Whether ``experiment=NAME`` composes to ``target`` (a check on the writer)."""
    return to_container(compose([f"{GROUP}={name}"])) == to_container(target)


def group_choices(overrides: list[str]) -> dict[str, str]:
    """The option each config group ended up with (``{"task": "image", "data": "digits",
    ...}``), including the ones a task picks in its own defaults list."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    from shipyard.config import CONFIG_MODULE

    with initialize_config_module(config_module=CONFIG_MODULE, version_base=None):
        cfg = hydra_compose(
            config_name="config",
            overrides=[*search_path_overrides(overrides), *overrides],
            return_hydra_config=True,
        )
    choices = cfg.hydra.runtime.choices
    return {
        group: str(choices[group])
        for group in GROUPS
        if group != GROUP and choices.get(group) is not None
    }


def _diff(base: dict[str, Any], target: dict[str, Any]) -> dict[str, Any]:
    """The nested keys of ``target`` whose values ``base`` lacks or holds differently
    (a list is one value)."""
    out: dict[str, Any] = {}
    for key, value in target.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            nested = _diff(base[key], value)
            if nested:
                out[key] = nested
        elif key not in base or base[key] != value:
            out[key] = value
    return out


def atomic_write(path: Path, data: bytes) -> None:
    """Write through a temporary file in the same folder and rename: readers see the old
    file or the new one, never half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
