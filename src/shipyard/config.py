"""Config composition: Hydra's compose API over the packaged YAML in ``shipyard/conf``.

The CLI stays ours (Typer); Hydra only composes. Config keys name registered things
(``task=image``, ``model=resnet18``) and plain Python maps names to classes, so "go to
definition" works — no ``_target_`` strings. Hydra's errors are translated here into one
line that says what was wrong and what is available.
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from omegaconf import DictConfig, OmegaConf

from shipyard.errors import ConfigError
from shipyard.settings import shipyard_home

CONFIG_MODULE = "shipyard.conf"
GROUPS = ("task", "data", "model", "trainer", "tracking", "experiment")
# The user's own config options live in <home>/conf/<group>/NAME.yaml, searched after the
# packaged ones (which win on a clash). `shipyard sweep` writes its best trial there as
# experiment/sweep-<study>.yaml, so `shipyard train experiment=sweep-<study>` finds it.
USER_CONFIG_DIR = "conf"


def _register_resolvers() -> None:
    if not OmegaConf.has_resolver("shipyard_home"):
        OmegaConf.register_new_resolver("shipyard_home", lambda: str(shipyard_home()))


def available(group: str) -> list[str]:
    """The options of a config group, e.g. ``available("model") -> ["cnn", "mlp", ...]``:
    the packaged ones and the user's (``<home>/conf/<group>/``)."""
    folder = resources.files(CONFIG_MODULE).joinpath(group)
    names = {p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml")}
    user = user_config_dir() / group
    if user.is_dir():
        names |= {p.stem for p in user.glob("*.yaml")}
    return sorted(names)


def user_config_dir() -> Path:
    """``<home>/conf``: a second config root for options of the user's own."""
    return shipyard_home() / USER_CONFIG_DIR


def search_path_overrides(overrides: list[str] | tuple[str, ...] = ()) -> list[str]:
    """The override that adds the user's config root to Hydra's search path, when it
    exists and the overrides do not set ``hydra.searchpath`` themselves."""
    folder = user_config_dir()
    if not folder.is_dir() or any(o.split("=", 1)[0] == "hydra.searchpath" for o in overrides):
        return []
    quoted = str(folder).replace("\\", "\\\\").replace("'", "\\'")
    return [f"hydra.searchpath=['file://{quoted}']"]


def compose(overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """Compose the root config with command-line style overrides and resolve it.

    Raises :class:`ConfigError` with a one-line message for an unknown option, an unknown
    key, a malformed override or a missing required value.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.errors import (
        ConfigCompositionException,
        MissingConfigException,
        OverrideParseException,
    )
    from omegaconf.errors import OmegaConfBaseException

    _register_resolvers()
    overrides = [o for o in overrides if o.strip()]
    for override in overrides:
        if "=" not in override:
            raise ConfigError(
                f"malformed override {override!r}: expected key=value, e.g. task=tabular "
                "or trainer.max_epochs=5"
            )
    _check_experiment(overrides)
    try:
        with initialize_config_module(config_module=CONFIG_MODULE, version_base=None):
            cfg = hydra_compose(
                config_name="config", overrides=[*search_path_overrides(overrides), *overrides]
            )
    except MissingConfigException as exc:
        raise ConfigError(_missing_option_message(str(exc), overrides)) from exc
    except OverrideParseException as exc:
        first = str(exc).splitlines()[0]
        raise ConfigError(
            f"malformed override ({first}): expected key=value, quote lists like 'data.image_size=[32,32]'"
        ) from exc
    except ConfigCompositionException as exc:
        raise ConfigError(_composition_message(exc)) from exc
    except OmegaConfBaseException as exc:
        raise ConfigError(f"invalid config: {str(exc).splitlines()[0]}") from exc
    try:
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"invalid config: {str(exc).splitlines()[0]}") from exc
    return cfg


def _check_experiment(overrides: list[str] | tuple[str, ...]) -> None:
    """``experiment`` is optional in the defaults list, and Hydra silently skips an optional
    option it cannot find: ``experiment=typo`` would train the defaults. Refuse it instead."""
    for override in overrides:
        key, _, option = override.partition("=")
        if key.lstrip("+") == "experiment" and option not in ("", "null"):
            choices = available("experiment")
            if option not in choices:
                raise ConfigError(
                    f"unknown experiment {option!r}: choose one of {', '.join(choices)} "
                    f"(packaged, or yours in {user_config_dir() / 'experiment'})"
                )


def require(node: DictConfig, *keys: str, prefix: str = "data") -> None:
    """Fail with a one-line error naming the first required (``???``) key that has no value."""
    for key in keys:
        if key not in node or OmegaConf.is_missing(node, key) or node[key] is None:
            raise ConfigError(f"{prefix}.{key} is required: pass {prefix}.{key}=VALUE")


def local_folder(value: object, key: str, hint: str = "") -> Path:
    """A config value that must name a folder on this machine (``file://`` URLs included).

    ``Path("s3://bucket/x")`` is the *relative* folder ``s3:/bucket/x``: without this check a
    bucket URL given to a key that only takes folders would silently be written into the
    working directory. ``hint`` says where such a URL belongs instead.
    """
    text = str(value)
    scheme, separator, _ = text.partition("://")
    if not separator:
        return Path(text)
    if scheme == "file":
        return Path(unquote(urlparse(text).path))
    raise ConfigError(f"{key} must be a folder on this machine, not {text}{hint}")


def to_container(cfg: DictConfig) -> dict[str, Any]:
    """The config as plain, JSON-able Python (required keys left unset become None)."""
    container = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    assert isinstance(container, dict)
    cleaned: dict[str, Any] = _replace_missing(container)
    return cleaned


def _replace_missing(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _replace_missing(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_replace_missing(v) for v in value]
    return None if value == "???" else value


def to_yaml(cfg: DictConfig) -> str:
    """The resolved config as YAML, saved with every run."""
    return OmegaConf.to_yaml(OmegaConf.create(to_container(cfg)))


def fingerprint(cfg: DictConfig, *, exclude: tuple[str, ...] = ()) -> str:
    """A short, stable hash of the resolved config minus the given top-level keys."""
    data = {k: v for k, v in to_container(cfg).items() if k not in exclude}
    blob = json.dumps(data, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _missing_option_message(text: str, overrides: list[str] | tuple[str, ...]) -> str:
    # Hydra says: "In 'task/image': Could not find 'model/nope'".
    marker = "Could not find '"
    if marker in text:
        missing = text.split(marker, 1)[1].split("'", 1)[0]
        group, _, option = missing.rpartition("/")
        if group in GROUPS:
            choices = ", ".join(available(group))
            return f"unknown {group} {option!r}: choose one of {choices} ({group}=NAME)"
    first = text.splitlines()[0] if text else "missing config"
    return f"{first} (overrides: {' '.join(overrides) or 'none'})"


def _composition_message(exc: Exception) -> str:
    text = str(exc)
    first = text.splitlines()[0]
    if "Could not override" in first:
        key = first.split("'")[1] if "'" in first else first
        top = key.split(".")[0]
        return (
            f"unknown config key {key!r}: check the spelling "
            f"(`shipyard config show` lists every key of {top!r}); "
            f"to add a new key use +{key}=VALUE"
        )
    if "Could not find" in first:
        return _missing_option_message(first, ())
    return f"invalid config: {first}"
