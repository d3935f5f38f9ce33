"""Scoring a model on a snapshot split; ``shipyard evaluate RUN_ID`` re-scores a tracked run."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from shipyard.data.snapshot import Snapshot, SnapshotStore
from shipyard.tasks import get_task
from shipyard.tasks.base import OutputKind, Split, TrainingHalf
from shipyard.track import tracking
from shipyard.train.metrics import scalars, score
from shipyard.train.plots import confusion_matrix_png

BATCH = 512
# Re-scored metrics must not land in the per-epoch series (val_loss, train_loss) that
# training logs, so the val and train splits get their own names.
METRIC_PREFIX = {"test": "test", "val": "best_val", "train": "best_train"}


@torch.no_grad()
def evaluate_model(
    model: nn.Module, half: TrainingHalf, split: Split, schema: dict[str, Any]
) -> dict[str, Any]:
    """Metrics of ``model`` on one split, in eval mode, in batches. Generated text is scored
    by generating (the half's ``score_split``: ROUGE against the reference summaries)."""
    kind = OutputKind(schema["target"]["kind"])
    labels = schema["target"].get("labels")
    was_training = model.training
    model.eval()
    if kind is OutputKind.TEXT:
        metrics: dict[str, Any] = half.score_split(model, split)  # type: ignore[attr-defined]
        model.train(was_training)
        return metrics
    features, target = half.to_tensors(split, schema)
    outputs = torch.cat([model(features[i : i + BATCH]) for i in range(0, len(features), BATCH)])
    model.train(was_training)
    return score(kind, outputs, target, len(labels) if labels else None)


def load_weights(model: nn.Module, checkpoint: Path) -> nn.Module:
    """Load a Lightning checkpoint's weights into the bare task model (no unpickling of objects)."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    model.load_state_dict({k.removeprefix("model."): v for k, v in state.items()})
    return model


def rebuild_model(
    run_cfg: DictConfig, half: TrainingHalf, schema: dict[str, Any], train: Split
) -> nn.Module:
    """The architecture of a finished run, without fetching pretrained weights again."""
    model_cfg = OmegaConf.create(OmegaConf.to_container(run_cfg.model, resolve=True))
    assert isinstance(model_cfg, DictConfig)
    for key, value in (("pretrained", False), ("checkpoint", None)):
        if key in model_cfg:
            model_cfg[key] = value
    return half.build_model(model_cfg, schema, train)


@dataclass(frozen=True)
class EvaluateResult:
    run_id: str
    snapshot_id: str
    split: str
    metrics: dict[str, float]
    confusion_matrix: list[list[int]] | None

    def summary(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "snapshot_id": self.snapshot_id,
            "split": self.split,
            "metrics": self.metrics,
        }


@dataclass(frozen=True)
class RunModel:
    """A tracked run's trained model, rebuilt, with what it was trained on."""

    run: Any  # mlflow.entities.Run
    run_cfg: DictConfig  # the run's resolved config (its config.yaml artifact)
    snapshot: Snapshot
    half: TrainingHalf
    model: nn.Module  # best checkpoint loaded, in eval mode

    @property
    def schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = self.snapshot.manifest["schema"]
        return schema


def load_run_model(cfg: DictConfig, run_id: str) -> RunModel:
    """Rebuild a run's model from its artifacts (config, best checkpoint) and its snapshot,
    found through the run's tags, never a path on the machine that trained it.

    ``evaluate`` and ``export`` both start here, so they score and export the same model.
    """
    run = tracking.get_run(cfg, run_id)
    tags = run.data.tags
    run_cfg = OmegaConf.load(tracking.download(cfg, run_id, tracking.ARTIFACT_CONFIG))
    assert isinstance(run_cfg, DictConfig)
    store = SnapshotStore(tags.get(tracking.TAG_SNAPSHOT_STORE) or str(run_cfg.paths.snapshots))
    snapshot = store.get(tags[tracking.TAG_SNAPSHOT])
    half = get_task(str(run_cfg.task.name)).training()
    schema = snapshot.manifest["schema"]
    model = rebuild_model(run_cfg, half, schema, snapshot.load("train"))
    load_weights(model, tracking.download(cfg, run_id, tracking.ARTIFACT_CHECKPOINT))
    return RunModel(run, run_cfg, snapshot, half, model.eval())


def evaluate_run(cfg: DictConfig, run_id: str, split: str = "test") -> EvaluateResult:
    """Re-score a tracked run's best checkpoint on its snapshot's split and record the metrics on the run."""
    loaded = load_run_model(cfg, run_id)
    snapshot = loaded.snapshot
    metrics = evaluate_model(loaded.model, loaded.half, snapshot.load(split), loaded.schema)
    flat = scalars(metrics, METRIC_PREFIX[split])
    tracking.log_metrics(cfg, run_id, flat)
    matrix = metrics.get("confusion_matrix")
    if matrix is not None:
        with tempfile.TemporaryDirectory() as tmp:
            png = confusion_matrix_png(
                matrix,
                snapshot.labels or [],
                Path(tmp) / f"confusion_matrix_{split}.png",
                f"{split} split",
            )
            tracking.log_file(cfg, run_id, png)
    return EvaluateResult(run_id, snapshot.id, split, flat, matrix)
