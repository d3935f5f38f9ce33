"""The model registry on MLflow, write side: packages become versions, ``champion`` moves.

* :func:`register` turns a run's model package into a version. The package is downloaded
  and verified *before* anything is created, so a missing or altered package leaves the
  registry as it was; the same run and package registered twice is the same version
  (``reused``), which is what the pipeline caches on.
* :func:`promote` moves the ``champion`` alias (what ``serve`` loads) only through the
  gate (:mod:`shipyard.track.gate`); :func:`rollback` moves it back. Both append to the
  history (:mod:`shipyard.track.history`) and tag the version with who and when.

Reading (list, history, :func:`fetch_package`) is :mod:`shipyard.track.versions`,
re-exported here so that callers need one module.
"""

from __future__ import annotations

import getpass
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from omegaconf import DictConfig

from shipyard.errors import ConfigError, NotFoundError, UserError
from shipyard.export.package import (
    MANIFEST,
    REEXPORT_HINT,
    Manifest,
    ModelPackage,
    PackageError,
    sha256_file,
)
from shipyard.track import gate, history, tracking, versions
from shipyard.track.versions import (
    CHAMPION,
    TAG_METRIC,
    TAG_METRIC_VALUE,
    TAG_PACKAGE,
    TAG_PARITY,
    TAG_PARITY_PASSED,
    ModelVersionInfo,
    fetch_package,
    get_history,
    list_versions,
    parse_ref,
)

__all__ = [
    "ModelVersionInfo",
    "Promotion",
    "fetch_package",
    "get_history",
    "list_versions",
    "parse_ref",
    "promote",
    "register",
    "rollback",
]

ARTIFACT_PACKAGE = "package"
FORCE_TAGS = ("shipyard.forced", "shipyard.forced_by", "shipyard.force_reason")
NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]*")


@dataclass(frozen=True)
class Promotion:
    """What ``promote`` or ``rollback`` did (``reused``: it was already so, nothing changed)."""

    action: str
    name: str
    version: int
    previous: int | None
    checks: list[gate.Check]
    forced: bool
    reused: bool
    at: str
    by: str
    reason: str | None = None
    skipped: list[int] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "name": self.name,
            "version": self.version,
            "previous": self.previous,
            "forced": self.forced,
            "reused": self.reused,
            "at": self.at,
            "by": self.by,
            "reason": self.reason,
            "skipped": self.skipped,
            "checks": [c.summary() for c in self.checks],
        }


# -- register ------------------------------------------------------------------------------


def register(
    cfg: DictConfig, run_id: str | None = None, name: str | None = None
) -> ModelVersionInfo:
    """Register a run's model package as a new version of ``name`` (or reuse its version).

    The run is ``run_id``, else ``cfg.run``, else the newest run of this task that has a
    package. The name is ``name``, else ``registry.model_name``, else derived from the data.
    """
    from mlflow.exceptions import MlflowException

    client = tracking.client(cfg)
    run = _resolve_run(cfg, run_id)
    run_id = str(run.info.run_id)
    expected = run.data.tags.get(TAG_PACKAGE)
    if not expected:
        raise NotFoundError(
            f"run {run_id} has no model package: run `shipyard export run={run_id}` first"
        )
    wanted = name or cfg.registry.get("model_name")
    # Already registered (verified then): no download, which matters for large models.
    for version in client.search_model_versions(f"run_id = '{run_id}'"):
        if version.tags.get(TAG_PACKAGE) == expected and wanted in (None, version.name):
            return versions.version_info(client, version, reused=True)
    source = f"{str(run.info.artifact_uri).rstrip('/')}/{ARTIFACT_PACKAGE}"
    staging = Path(tempfile.mkdtemp(prefix="shipyard-register-"))
    try:
        package = versions.download(cfg, source, staging)
        digest = sha256_file(package.path / MANIFEST)
        if digest != expected:
            raise PackageError(
                f"run {run_id}'s package manifest does not match the SHA-256 recorded at export "
                f"(expected {expected[:12]}…, found {digest[:12]}…): {REEXPORT_HINT}"
            )
        manifest = package.manifest
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    model_name = check_name(wanted or derive_name(manifest))
    existing = client.search_model_versions(f"name = '{model_name}' and run_id = '{run_id}'")
    for version in sorted(existing, key=lambda v: int(v.version), reverse=True):
        if version.tags.get(TAG_PACKAGE) == digest:
            return versions.version_info(client, version, reused=True)
    try:
        client.create_registered_model(model_name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    created = client.create_model_version(
        model_name, source, run_id=run_id, tags=version_tags(manifest, digest)
    )
    return versions.version_info(client, created)


def version_tags(manifest: Manifest, digest: str) -> dict[str, str]:
    """What ``models list`` shows without downloading anything."""
    from shipyard.tasks.base import OutputKind, primary_metric

    metric = f"test_{primary_metric(OutputKind(manifest.output_kind))[0]}"
    tags = {
        tracking.TAG_TASK: manifest.task,
        tracking.TAG_OUTPUT_KIND: manifest.output_kind,
        tracking.TAG_SNAPSHOT: manifest.lineage.snapshot_id,
        TAG_METRIC: metric,
        TAG_PARITY: repr(manifest.parity.max_abs_diff),
        TAG_PARITY_PASSED: str(manifest.parity.passed).lower(),
        TAG_PACKAGE: digest,
    }
    if metric in manifest.metrics:
        tags[TAG_METRIC_VALUE] = repr(manifest.metrics[metric])
    return tags


def derive_name(manifest: Manifest) -> str:
    """The data's name: digits, wine, a CSV's file stem, an image folder's or a dataset's name.

    The snapshot's own record of its source wins over the run's ``data`` config, which a
    run trained with ``snapshot=ID`` may not have used.
    """
    source: dict[str, Any] = {}
    try:
        from shipyard.data.snapshot import SnapshotStore

        snapshot = SnapshotStore(manifest.lineage.snapshot_store).get(manifest.lineage.snapshot_id)
        source = dict(snapshot.manifest.get("source") or {})
        kind, dataset = source.get("name"), source.get("dataset")
    except Exception:  # an unreachable store: the run's config says the same in most cases
        data = manifest.config.get("data") or {}
        source = dict(data)
        kind, dataset = data.get("source"), data.get("name")
    if kind in ("table", "folder") and source.get("path"):
        path = PurePosixPath(str(source["path"]).rstrip("/"))
        raw = path.stem if kind == "table" else path.name
    elif kind == "huggingface" and dataset:
        raw = str(dataset).rstrip("/").rsplit("/", 1)[-1]
    else:
        raw = str(kind or manifest.task)
    return re.sub(r"[^a-z0-9_-]+", "-", raw.lower()).strip("-_")[:100] or manifest.task


def check_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name) or len(name) > 100:
        raise ConfigError(
            f"invalid model name {name!r}: use lowercase letters, digits, '-' and '_' "
            "(registry.model_name=NAME or --name NAME)"
        )
    return name


# -- promote, rollback ---------------------------------------------------------------------


def promote(
    cfg: DictConfig,
    name: str,
    version: int | str,
    force: bool = False,
    reason: str | None = None,
    user: str | None = None,
) -> Promotion:
    """Make ``version`` the champion if the gate passes (or, with ``force`` and a ``reason``,
    if only overridable checks fail). Raises :class:`gate.GateRefused` and changes nothing
    otherwise."""
    if force and not (reason and reason.strip()):
        raise UserError("--force needs --reason TEXT: say why the gate is overridden")
    client = tracking.client(cfg)
    number = int(versions.get_version(cfg, client, name, str(version)).version)
    current = versions.alias_map(client, name).get(CHAMPION)
    by, at = user or _whoami(), _now()
    if current == number:
        return Promotion("promote", name, number, current, [], False, True, at, by, reason)
    check, candidate = gate.integrity(number, _loader(cfg, name, number, refresh=True))
    champion = None
    if current is not None:
        champion = gate.integrity(current, _loader(cfg, name, current))[1]
    checks = gate.run_gate(cfg, check, candidate, champion)
    failed = [c for c in checks if not c.passed]
    if failed and (not force or any(not c.overridable for c in failed)):
        raise gate.GateRefused(gate.refusal_message(name, number, checks, force), checks)
    forced = bool(failed)
    tags = {"shipyard.promoted_at": at, "shipyard.promoted_by": by}
    if forced:
        tags |= {
            "shipyard.forced": "true",
            "shipyard.forced_by": by,
            "shipyard.force_reason": str(reason),
            "shipyard.forced_checks": ",".join(c.name for c in failed),
        }
    _move_champion(client, name, number, tags)
    _record(client, name, history.event("promote", number, current, at, by, reason, forced))
    return Promotion("promote", name, number, current, checks, forced, False, at, by, reason)


def rollback(
    cfg: DictConfig, name: str, reason: str | None = None, user: str | None = None
) -> Promotion:
    """Move ``champion`` back to the version that held it before the current one.

    Versions deleted since are skipped; the target must still verify (a rollback is an
    emergency: no metric gate, but never a package that was altered).
    """
    from mlflow.exceptions import MlflowException

    client = tracking.client(cfg)
    model = versions.get_model(cfg, client, name)
    current = versions.alias_map(client, name).get(CHAMPION)
    events = history.parse(model.tags.get(history.TAG_HISTORY))
    skipped: list[int] = []
    for target in history.rollback_targets(events, current):
        try:
            client.get_model_version(name, str(target))
        except MlflowException:
            skipped.append(target)
            continue
        check, _ = gate.integrity(target, _loader(cfg, name, target))
        if not check.passed:
            raise PackageError(f"cannot roll {name} back to v{target}: {check.detail}")
        by, at = user or _whoami(), _now()
        tags = {"shipyard.rolled_back_at": at, "shipyard.rolled_back_by": by}
        _move_champion(client, name, target, tags)
        _record(client, name, history.event("rollback", target, current, at, by, reason, False))
        return Promotion(
            "rollback", name, target, current, [check], False, False, at, by, reason, skipped
        )
    gone = f" (v{', v'.join(map(str, skipped))} no longer exist)" if skipped else ""
    now = f"v{current} is champion" if current is not None else "there is no champion"
    raise UserError(
        f"nothing to roll {name} back to: {now} and the history holds no earlier champion{gone}; "
        f"`shipyard models history {name}` shows it"
    )


def config_for_version(overrides: list[str], name: str, version: int | str) -> DictConfig:
    """The config the gate judges a version by: its own task's (a summariser's latency
    budget is for whole summaries, a classifier's for one call), unless ``overrides`` name
    a task. The other overrides apply on top, as always."""
    from shipyard.config import compose

    cfg = compose(list(overrides))
    if any(o.split("=", 1)[0].lstrip("+~") == "task" for o in overrides):
        return cfg
    found = versions.get_version(cfg, tracking.client(cfg), name, str(version))
    task = (found.tags or {}).get(tracking.TAG_TASK)
    if task and task != str(cfg.task.name):
        return compose([f"task={task}", *overrides])
    return cfg


def _loader(
    cfg: DictConfig, name: str, version: int, refresh: bool = False
) -> Callable[[], ModelPackage]:
    """Download-and-verify of one version, for the gate's integrity check to run."""

    def load() -> ModelPackage:
        return fetch_package(cfg, f"{name}/{version}", refresh=refresh)[0]

    return load


def _move_champion(client: Any, name: str, version: int, tags: dict[str, str]) -> None:
    version_tags = client.get_model_version(name, str(version)).tags
    client.set_registered_model_alias(name, CHAMPION, str(version))
    if "shipyard.forced" not in tags and "shipyard.promoted_at" in tags:
        for key in (*FORCE_TAGS, "shipyard.forced_checks"):
            if key in version_tags:  # a forced promotion's record must not outlive it
                client.delete_model_version_tag(name, str(version), key)
    for key, value in tags.items():
        client.set_model_version_tag(name, str(version), key, value)


def _record(client: Any, name: str, item: dict[str, Any]) -> None:
    events = history.parse(client.get_registered_model(name).tags.get(history.TAG_HISTORY))
    client.set_registered_model_tag(name, history.TAG_HISTORY, history.dump([*events, item]))


# -- helpers -------------------------------------------------------------------------------


def _resolve_run(cfg: DictConfig, run_id: str | None) -> Any:
    chosen = run_id or cfg.get("run")
    if chosen:
        return tracking.get_run(cfg, str(chosen))
    task = str(cfg.task.name)
    runs = tracking.newest_runs(
        cfg, [f"tags.`{TAG_PACKAGE}` LIKE '%'", f"tags.`{tracking.TAG_TASK}` = '{task}'"]
    )
    if not runs:
        raise NotFoundError(
            f"no {task} run with a model package in experiment {cfg.tracking.experiment!r}: "
            f"run `shipyard export task={task}` first, or name one with run=RUN_ID"
        )
    return runs[0]


def _whoami() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name in some containers
        return "unknown"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
