"""Metrics that follow from the output kind: classes or a number.

One function scores predictions for every stage (validation during training, the test
split after it, ``shipyard evaluate``), so the numbers a run reports are the numbers the
promotion gate later compares.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from shipyard.tasks.base import OutputKind, primary_metric

__all__ = ["loss_fn", "primary_metric", "scalars", "score"]


def loss_fn(kind: OutputKind, outputs: Tensor, target: Tensor, scale: float = 1.0) -> Tensor:
    """Cross-entropy for classes; MSE on the standardised scale for numbers; for text, the
    cross-entropy of (rows, tokens, vocab) logits against (rows, tokens) token ids, with
    padding (-100) ignored."""
    if kind is OutputKind.CLASSES:
        return torch.nn.functional.cross_entropy(outputs, target)
    if kind is OutputKind.TEXT:
        return torch.nn.functional.cross_entropy(
            outputs.reshape(-1, outputs.shape[-1]).float(), target.reshape(-1), ignore_index=-100
        )
    return torch.nn.functional.mse_loss(outputs / scale, target / scale)


def score(
    kind: OutputKind, outputs: Tensor, target: Tensor, num_classes: int | None
) -> dict[str, Any]:
    """Scalar metrics plus, for classes, the confusion matrix (rows: true, columns: predicted)."""
    from torchmetrics.functional import classification as clf
    from torchmetrics.functional import regression as reg

    outputs, target = outputs.detach().float().cpu(), target.detach().cpu()
    if kind is OutputKind.CLASSES:
        assert num_classes is not None
        predicted = outputs.argmax(dim=1)
        return {
            "accuracy": float(
                clf.multiclass_accuracy(predicted, target, num_classes, average="micro")
            ),
            "macro_f1": float(
                clf.multiclass_f1_score(predicted, target, num_classes, average="macro")
            ),
            "loss": float(loss_fn(kind, outputs, target)),
            "confusion_matrix": clf.multiclass_confusion_matrix(
                predicted, target, num_classes
            ).tolist(),
        }
    target = target.float()
    return {
        "mae": float(reg.mean_absolute_error(outputs, target)),
        "rmse": float(reg.mean_squared_error(outputs, target, squared=False)),
        "r2": float(reg.r2_score(outputs, target)) if len(target) > 1 else float("nan"),
        "loss": float(torch.nn.functional.mse_loss(outputs, target)),
    }


def scalars(metrics: dict[str, Any], prefix: str) -> dict[str, float]:
    """Only the scalar metrics, prefixed (``test_accuracy``), for trackers and tables."""
    return {f"{prefix}_{k}": float(v) for k, v in metrics.items() if isinstance(v, float | int)}
