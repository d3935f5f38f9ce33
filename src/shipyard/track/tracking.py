"""MLflow tracking: where runs live, and reading and writing them.

The default is an embedded SQLite store under the Shipyard home (``<home>/mlflow.db``,
artifacts in ``<home>/mlartifacts``); ``tracking.uri`` points at any MLflow server or
database instead. Browse the default store with::

    mlflow ui --backend-store-uri sqlite:///.shipyard/mlflow.db
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from shipyard.errors import ConfigError, NotFoundError

# Tags every Shipyard run carries; later stages read them instead of paths on disk.
TAG_SNAPSHOT = "shipyard.snapshot_id"
TAG_SNAPSHOT_STORE = "shipyard.snapshot_store"
TAG_TASK = "shipyard.task"
TAG_MODEL = "shipyard.model"
TAG_COMMIT = "shipyard.git_commit"
TAG_FINGERPRINT = "shipyard.config_fingerprint"
TAG_OUTPUT_KIND = "shipyard.output_kind"
# Set when a training finishes: the pipeline reuses a finished run with the same value.
TAG_TRAINING = "shipyard.training_fingerprint"
ARTIFACT_CONFIG = "config.yaml"
ARTIFACT_CHECKPOINT = "checkpoints/best.ckpt"
# Set by `shipyard export`: the SHA-256 of the package's manifest.json, and what the
# export is cached on (see shipyard.track.lineage.export_fingerprint).
TAG_PACKAGE_SHA = "shipyard.package_sha256"
TAG_EXPORT = "shipyard.export_fingerprint"
# What MLflow imports to reach an artifact store, by URL scheme, and the package that has
# it. MLflow imports it only when the first artifact is written -- for `train`, after the
# whole training -- so Shipyard checks before anything starts. (MLflow uses these clients,
# not fsspec: gs:// needs google-cloud-storage here, gcsfs for the snapshot store.)
ARTIFACT_CLIENTS = {
    "s3": ("boto3", "boto3"),
    "gs": ("google.cloud.storage", "google-cloud-storage"),
}


def tracking_uri(cfg: DictConfig) -> str:
    if cfg.tracking.get("uri"):
        return str(cfg.tracking.uri)
    return f"sqlite:///{Path(str(cfg.paths.home)) / 'mlflow.db'}"


def artifact_location(cfg: DictConfig) -> str:
    if cfg.tracking.get("artifacts"):
        return str(cfg.tracking.artifacts)
    return (Path(str(cfg.paths.home)) / "mlartifacts").as_uri()


def require_artifact_client(uri: str) -> None:
    """Raise a one-line :class:`ConfigError` when MLflow cannot reach the artifact store at
    ``uri`` because its client library is not installed (``pip install ...`` in the message)."""
    import importlib.util

    scheme, separator, _ = uri.partition("://")
    needed = ARTIFACT_CLIENTS.get(scheme) if separator else None
    if needed is None:
        return
    module, package = needed
    try:
        found = importlib.util.find_spec(module) is not None
    except ImportError:  # a parent package (google.cloud) is missing too
        found = False
    if not found:
        raise ConfigError(
            f"MLflow artifacts at {uri} need the {package} package, which is not installed: "
            f"pip install {package}"
        )


def client(cfg: DictConfig) -> Any:
    """An ``MlflowClient`` on the configured store (created on first use)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from shipyard.console import quiet_libraries

    quiet_libraries()
    # MLflow draws a tqdm bar for every artifact download; ours are single small files.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    uri = tracking_uri(cfg)
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    return MlflowClient(tracking_uri=uri)


def experiment_id(cfg: DictConfig) -> str:
    """The configured experiment's id, creating it with Shipyard's artifact location."""
    mlflow_client = client(cfg)
    name = str(cfg.tracking.experiment)
    experiment = mlflow_client.get_experiment_by_name(name)
    if experiment is not None:
        require_artifact_client(str(experiment.artifact_location))
        return str(experiment.experiment_id)
    remote = tracking_uri(cfg).startswith(("http://", "https://", "databricks"))
    if remote and not cfg.tracking.get("artifacts"):
        # A tracking server owns its artifact store; a path on this machine would be wrong there.
        return str(mlflow_client.create_experiment(name))
    location = artifact_location(cfg)
    require_artifact_client(location)  # before the experiment exists with an unusable store
    return str(mlflow_client.create_experiment(name, artifact_location=location))


def get_run(cfg: DictConfig, run_id: str) -> Any:
    """A run by id, with a one-line error when the store does not hold it."""
    from mlflow.exceptions import MlflowException

    try:
        return client(cfg).get_run(run_id)
    except MlflowException:
        raise NotFoundError(
            f"no run {run_id!r} in {tracking_uri(cfg)}: run ids are printed by `shipyard train` "
            "(or set tracking.uri to the store that holds it)"
        ) from None


def log_json(cfg: DictConfig, run_id: str, data: Any, artifact_file: str) -> None:
    log_text(cfg, run_id, json.dumps(data, indent=2, default=str), artifact_file)


def log_text(cfg: DictConfig, run_id: str, text: str, artifact_file: str) -> None:
    client(cfg).log_text(run_id, text, artifact_file)


def log_file(cfg: DictConfig, run_id: str, path: Path, artifact_dir: str | None = None) -> None:
    client(cfg).log_artifact(run_id, str(path), artifact_dir)


def log_metrics(cfg: DictConfig, run_id: str, metrics: dict[str, float]) -> None:
    import time

    from mlflow.entities import Metric

    stamp = int(time.time() * 1000)
    batch = [Metric(key, float(value), stamp, 0) for key, value in metrics.items()]
    client(cfg).log_batch(run_id, metrics=batch)


def download(cfg: DictConfig, run_id: str, artifact_path: str) -> Path:
    """Download one artifact of a run into a fresh temporary folder; returns the local path."""
    from mlflow.exceptions import MlflowException

    target = Path(tempfile.mkdtemp(prefix="shipyard-artifact-"))
    try:
        return Path(client(cfg).download_artifacts(run_id, artifact_path, str(target)))
    except ImportError:  # the run's store needs a client library this machine lacks
        require_artifact_client(str(get_run(cfg, run_id).info.artifact_uri))
        raise
    except (MlflowException, OSError) as exc:
        raise NotFoundError(
            f"run {run_id} has no artifact {artifact_path!r}: was it trained by Shipyard?"
        ) from exc


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config as dotted keys (``model.lr``), the form MLflow params take."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat |= flatten(value, f"{name}.")
        else:
            flat[name] = value
    return flat


def newest_runs(cfg: DictConfig, conditions: list[str], max_results: int = 1) -> list[Any]:
    """Runs of the configured experiment matching every MLflow filter clause in
    ``conditions``, newest first; empty when the experiment does not exist yet."""
    mlflow_client = client(cfg)
    experiment = mlflow_client.get_experiment_by_name(str(cfg.tracking.experiment))
    if experiment is None:
        return []
    runs: list[Any] = mlflow_client.search_runs(
        [experiment.experiment_id],
        filter_string=" and ".join(conditions),
        order_by=["attributes.start_time DESC"],
        max_results=max_results,
    )
    return runs


def find_finished_run(cfg: DictConfig, tags: dict[str, str]) -> Any | None:
    """The newest FINISHED run of the configured experiment carrying all ``tags``; None if none."""
    conditions = [f"tags.`{key}` = '{value}'" for key, value in tags.items()]
    runs = newest_runs(cfg, [*conditions, "attributes.status = 'FINISHED'"])
    return runs[0] if runs else None


def latest_run(cfg: DictConfig, task: str, *, scan: int = 20) -> Any:
    """The newest FINISHED run of ``task`` in the configured experiment that has a best
    checkpoint (a run that crashed before saving one cannot be exported or re-scored).

    Looks at the ``scan`` newest finished runs of the task; a one-line
    :class:`NotFoundError` when none has a checkpoint.
    """
    mlflow_client = client(cfg)
    name = str(cfg.tracking.experiment)
    runs = newest_runs(
        cfg, [f"tags.`{TAG_TASK}` = '{task}'", "attributes.status = 'FINISHED'"], scan
    )
    folder, _, file = ARTIFACT_CHECKPOINT.rpartition("/")
    for run in runs:
        listed = mlflow_client.list_artifacts(run.info.run_id, folder)
        if any(
            item.path == ARTIFACT_CHECKPOINT or item.path.endswith(f"/{file}") for item in listed
        ):
            return run
    raise NotFoundError(
        f"no finished {task} run with a checkpoint in experiment {name!r} ({tracking_uri(cfg)}): "
        f"run `shipyard train task={task}` first, or pass run=RUN_ID"
    )
