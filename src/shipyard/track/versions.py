"""Reading the model registry: versions, aliases, references and verified local copies.

:func:`fetch_package` resolves ``NAME@ALIAS``, ``NAME@VERSION`` or ``NAME/VERSION`` to a
verified local copy of the version's package, cached under
``<home>/registry/<name>/<version>``: what ``serve`` loads. Every load verifies every
checksum and the manifest's SHA-256 against the one recorded at registration, so a copy
altered on disk or in the artifact store is never used.

A version's source is the run's ``package/`` artifact URI (``file://``, ``s3://``,
``mlflow-artifacts:`` ...), downloaded with MLflow's own artifact repositories
(``mlflow.artifacts.download_artifacts``), so the same code works on a laptop's store and
on a team's server. MLflow is imported lazily. Writing (register, promote, rollback) is
:mod:`shipyard.track.registry`.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from shipyard.errors import NotFoundError, UserError
from shipyard.export.package import (
    MANIFEST,
    REEXPORT_HINT,
    ModelPackage,
    PackageError,
    load_package,
    sha256_file,
)
from shipyard.track import history, tracking

CHAMPION = "champion"
# Set on the run by `shipyard export` and on every version: the SHA-256 of manifest.json.
TAG_PACKAGE = tracking.TAG_PACKAGE_SHA
TAG_METRIC = "shipyard.metric"
TAG_METRIC_VALUE = "shipyard.metric_value"
TAG_PARITY = "shipyard.parity_max_abs_diff"
TAG_PARITY_PASSED = "shipyard.parity_passed"


@dataclass(frozen=True)
class ModelVersionInfo:
    """A registered version: what the registry knows about it."""

    name: str
    version: int
    aliases: list[str]
    run_id: str | None
    source: str
    created_at: str
    tags: dict[str, str]
    #: register found this run's package already registered and created nothing
    reused: bool = False

    @property
    def champion(self) -> bool:
        return CHAMPION in self.aliases

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "aliases": self.aliases,
            "run_id": self.run_id,
            "snapshot_id": self.tags.get(tracking.TAG_SNAPSHOT),
            "metric": self.tags.get(TAG_METRIC),
            "metric_value": _float(self.tags.get(TAG_METRIC_VALUE)),
            "parity_max_abs_diff": _float(self.tags.get(TAG_PARITY)),
            "parity_passed": self.tags.get(TAG_PARITY_PASSED) == "true",
            "created_at": self.created_at,
            "source": self.source,
            "reused": self.reused,
            "tags": self.tags,
        }


# -- list, history, fetch ---------------------------------------------------------------------


def list_versions(cfg: DictConfig, name: str | None = None) -> list[ModelVersionInfo]:
    """Every version (of ``name``, or of every model), newest first within a model."""
    client = tracking.client(cfg)
    names = [name] if name else sorted(m.name for m in all_models(client))
    if name:
        get_model(cfg, client, name)
    infos: list[ModelVersionInfo] = []
    for model_name in names:
        aliases = alias_map(client, model_name)
        found = client.search_model_versions(f"name = '{model_name}'")
        for version in sorted(found, key=lambda v: int(v.version), reverse=True):
            infos.append(version_info(client, version, aliases=aliases))
    return infos


def get_history(cfg: DictConfig, name: str) -> list[dict[str, Any]]:
    """The promotion/rollback events of ``name``, oldest first."""
    client = tracking.client(cfg)
    return history.parse(get_model(cfg, client, name).tags.get(history.TAG_HISTORY))


def parse_ref(ref: str) -> tuple[str, str]:
    """``NAME@ALIAS`` / ``NAME@VERSION`` / ``NAME/VERSION`` / ``NAME`` (the champion)
    -> (name, alias or version number); ``models:/`` in front is accepted."""
    text = ref.strip().removeprefix("models:/")
    match = re.fullmatch(r"([^@/\s]+)(?:@([^@/\s]+)|/(\d+))?", text)
    if not match:
        raise UserError(
            f"malformed model reference {ref!r}: expected NAME@ALIAS (wine@champion), "
            "NAME@VERSION or NAME/VERSION (wine/3)"
        )
    return match.group(1), match.group(2) or match.group(3) or CHAMPION


def fetch_package(
    cfg: DictConfig, ref: str, *, refresh: bool = False
) -> tuple[ModelPackage, ModelVersionInfo]:
    """A registered version's package on local disk, verified (checksums and the manifest's
    SHA-256 against the one registered) every time it is loaded.

    Downloads into ``<home>/registry/<name>/<version>`` (staged, then renamed) unless a
    copy that verifies is there; ``refresh`` downloads again regardless (the gate does, to
    check what the registry really holds).
    """
    client = tracking.client(cfg)
    name, selector = parse_ref(ref)
    info = version_info(client, get_version(cfg, client, name, selector))
    cache = Path(str(cfg.paths.home)) / "registry" / name / str(info.version)
    if not refresh and (cache / MANIFEST).is_file():
        try:
            return verified(load_package(cache), info), info
        except PackageError:
            pass  # a damaged local copy: download it again
    cache.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{info.version}-", dir=cache.parent))
    try:
        package = verified(download(cfg, info.source, staging), info)
        install(package.path, cache)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ModelPackage(cache, package.manifest), info


# -- helpers (shared with shipyard.track.registry) ----------------------------------------


def download(cfg: DictConfig, source: str, into: Path) -> ModelPackage:
    """Download the package folder at ``source`` into ``into`` and verify its checksums."""
    import mlflow.artifacts

    tracking.require_artifact_client(source)  # else: an ImportError blamed on the package
    try:
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=source, dst_path=str(into), tracking_uri=tracking.tracking_uri(cfg)
        )
    except Exception as exc:  # each artifact store raises its own client's errors (botocore,
        # google.cloud, azure, MLflow's): no common base, and all mean "not downloadable"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise PackageError(
            f"cannot download the package at {source} ({type(exc).__name__}: {first}): "
            f"{REEXPORT_HINT}"
        ) from None
    return load_package(local)


def verified(package: ModelPackage, info: ModelVersionInfo) -> ModelPackage:
    expected = info.tags.get(TAG_PACKAGE)
    digest = sha256_file(package.path / MANIFEST)
    if expected and digest != expected:
        raise PackageError(
            f"{info.name} v{info.version}: the package's manifest changed after registration "
            f"(expected {expected[:12]}…, found {digest[:12]}…): register a fresh export"
        )
    return package


def install(staged: Path, final: Path) -> None:
    """Move a verified download into the cache by rename, replacing an older copy."""
    old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
    if final.exists():
        final.replace(old)
    try:
        staged.replace(final)
    except OSError:
        if not (final / MANIFEST).is_file():  # not a concurrent fetch that got there first
            raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


def all_models(client: Any) -> list[Any]:
    models: list[Any] = []
    token = None
    while True:
        page = client.search_registered_models(max_results=100, page_token=token)
        models.extend(page)
        token = page.token
        if not token:
            return models


def get_model(cfg: DictConfig, client: Any, name: str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(name)
    except MlflowException:
        names = sorted(m.name for m in all_models(client))
        have = f"registered: {', '.join(names)}" if names else "none is registered yet"
        raise NotFoundError(
            f"no registered model {name!r} in {tracking.tracking_uri(cfg)} ({have}): "
            "`shipyard register` registers one"
        ) from None


def get_version(cfg: DictConfig, client: Any, name: str, selector: str) -> Any:
    """A version by number or alias, with a one-line error listing what exists."""
    from mlflow.exceptions import MlflowException

    model = get_model(cfg, client, name)
    try:
        if selector.isdigit():
            return client.get_model_version(name, selector)
        return client.get_model_version_by_alias(name, selector)
    except MlflowException:
        versions = sorted(int(v.version) for v in client.search_model_versions(f"name = '{name}'"))
        aliases = {alias: int(v) for alias, v in (model.aliases or {}).items()}
        if selector.isdigit():
            have = ", ".join(map(str, versions)) or "none"
            raise NotFoundError(f"{name} has no version {selector} (versions: {have})") from None
        have = ", ".join(f"{a}=v{v}" for a, v in sorted(aliases.items())) or "none"
        hint = f": `shipyard promote {name} VERSION` sets champion" if selector == CHAMPION else ""
        raise NotFoundError(f"{name} has no alias {selector!r} (aliases: {have}){hint}") from None


def alias_map(client: Any, name: str) -> dict[str, int]:
    """alias -> version (search results may leave a version's aliases empty; the model's don't)."""
    return {alias: int(v) for alias, v in (client.get_registered_model(name).aliases or {}).items()}


def version_info(
    client: Any, version: Any, *, reused: bool = False, aliases: dict[str, int] | None = None
) -> ModelVersionInfo:
    aliases = aliases if aliases is not None else alias_map(client, str(version.name))
    number = int(version.version)
    stamp = datetime.fromtimestamp(int(version.creation_timestamp) / 1000, UTC)
    return ModelVersionInfo(
        name=str(version.name),
        version=number,
        aliases=sorted(a for a, v in aliases.items() if v == number),
        run_id=version.run_id,
        source=str(version.source),
        created_at=stamp.isoformat(timespec="seconds"),
        tags=dict(version.tags or {}),
        reused=reused,
    )


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
