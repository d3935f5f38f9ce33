"""Model families trained end to end (timm backbone from a local file, tabular regression)
and the metrics that score them, on real data with a real MLflow store."""

from __future__ import annotations

import math
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from omegaconf import DictConfig

from shipyard.errors import ConfigError
from shipyard.tasks.base import OutputKind
from shipyard.track import tracking
from shipyard.train.evaluate import evaluate_run
from shipyard.train.metrics import primary_metric, scalars, score
from shipyard.train.run import train

Compose = Callable[..., DictConfig]
Cli = Callable[..., subprocess.CompletedProcess[str]]

TINY = (
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.early_stopping_patience=null",
)


# -- timm backbone from a local weights file -------------------------------------------------


def test_resnet18_trains_from_a_local_checkpoint_and_is_tracked(
    compose: Compose, tmp_path: Path
) -> None:
    import timm
    from safetensors.torch import save_file

    source: Any = timm.create_model("resnet18", pretrained=False, in_chans=1, num_classes=0)
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    weights = tmp_path / "resnet18.safetensors"
    save_file(state, str(weights))

    cfg = compose(
        "task=image",
        "model=resnet18",
        f"model.checkpoint={weights}",
        "model.input_size=[32,32]",
        "trainer.batch_size=16",
        "trainer.limit_val_batches=1",
        *TINY,
    )
    result = train(cfg)

    run = tracking.get_run(cfg, result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags[tracking.TAG_MODEL] == "resnet18"
    assert run.data.params["model.checkpoint"] == str(weights)
    assert 0.0 <= result.metrics["test_accuracy"] <= 1.0
    assert result.epochs == 1

    # Two optimiser steps from the file's weights leave them close to it; a random start
    # would be far away.
    trained = torch.load(result.checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    deep = trained["model.encoder.layer4.1.conv2.weight"]
    assert (deep - state["layer4.1.conv2.weight"]).abs().max() < 0.02
    scratch: Any = timm.create_model("resnet18", pretrained=False, in_chans=1, num_classes=0)
    assert (deep - scratch.layer4[1].conv2.weight).abs().max() > 0.1

    # Re-scoring the run needs the tracked checkpoint only, not the starting weights file.
    weights.unlink()
    evaluated = evaluate_run(cfg, result.run_id)
    assert evaluated.metrics["test_accuracy"] == pytest.approx(result.metrics["test_accuracy"])


def test_pretrained_timm_model_offline_fails_in_one_line_via_cli(cli: Cli) -> None:
    result = cli("train", "task=image", "model=resnet18", "trainer.max_epochs=1")
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "model.checkpoint" in lines[0]
    assert "resnet18" in lines[0]
    assert "Traceback" not in result.stderr


def test_model_family_that_does_not_fit_the_task_is_a_config_error(compose: Compose) -> None:
    with pytest.raises(ConfigError, match="does not fit task 'tabular'") as error:
        train(compose("task=tabular", "model=cnn", *TINY))
    assert "\n" not in str(error.value)


def test_vit_tiny_trains_at_a_small_input_size(compose: Compose) -> None:
    cfg = compose(
        "task=image",
        "model=vit_tiny",
        "model.pretrained=false",
        "model.input_size=[32,32]",
        "trainer.batch_size=16",
        "trainer.limit_val_batches=1",
        *TINY,
    )
    result = train(cfg)
    assert result.epochs == 1
    assert tracking.get_run(cfg, result.run_id).data.tags[tracking.TAG_MODEL] == "vit_tiny"


# -- tabular regression ------------------------------------------------------------------------


def test_tabular_regression_on_a_csv_with_missing_values(
    compose: Compose, regression_csv: Path
) -> None:
    csv = regression_csv
    cfg = compose(
        "task=tabular",
        "data=csv",
        f"data.path={csv}",
        "data.target=y",
        "data.target_type=number",
        "trainer.max_epochs=40",
        "trainer.early_stopping_patience=null",
    )
    result = train(cfg)

    assert {"test_mae", "test_rmse", "test_r2", "best_val_mae"} <= set(result.metrics)
    assert "test_accuracy" not in result.metrics
    assert result.confusion_matrix is None
    assert result.metrics["test_r2"] > 0.8
    # the target's standard deviation is about 6.1: the model is far better than the mean
    assert result.metrics["test_mae"] < 2.0
    assert result.metrics["test_rmse"] >= result.metrics["test_mae"]

    run = tracking.get_run(cfg, result.run_id)
    assert run.data.tags[tracking.TAG_OUTPUT_KIND] == "number"
    assert "val_mae" in run.data.metrics
    artifacts = {a.path for a in tracking.client(cfg).list_artifacts(result.run_id)}
    assert "confusion_matrix.png" not in artifacts


# -- metrics on hand-made tensors ---------------------------------------------------------------


def test_class_metrics_have_the_known_values() -> None:
    # true:      0  0  1  1  2  2
    # predicted: 0  1  1  1  2  0
    target = torch.tensor([0, 0, 1, 1, 2, 2])
    predicted = torch.tensor([0, 1, 1, 1, 2, 0])
    logits = torch.nn.functional.one_hot(predicted, 3).float() * 5

    metrics = score(OutputKind.CLASSES, logits, target, num_classes=3)

    assert metrics["accuracy"] == pytest.approx(4 / 6)
    # per class F1: 0 -> p=1/2 r=1/2 f=1/2; 1 -> p=2/3 r=1 f=4/5; 2 -> p=1 r=1/2 f=2/3
    assert metrics["macro_f1"] == pytest.approx((1 / 2 + 4 / 5 + 2 / 3) / 3)
    assert metrics["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    expected_loss = torch.nn.functional.cross_entropy(logits, target)
    assert metrics["loss"] == pytest.approx(float(expected_loss))


def test_confusion_matrix_counts_classes_that_never_occur() -> None:
    metrics = score(OutputKind.CLASSES, torch.eye(4)[[0, 0]], torch.tensor([0, 1]), num_classes=4)
    assert np.asarray(metrics["confusion_matrix"]).shape == (4, 4)
    assert sum(map(sum, metrics["confusion_matrix"])) == 2


def test_number_metrics_have_the_known_values() -> None:
    target = torch.tensor([1.0, 2.0, 3.0, 4.0])
    outputs = torch.tensor([1.5, 2.0, 2.0, 4.0])  # errors 0.5, 0, -1, 0

    metrics = score(OutputKind.NUMBER, outputs, target, num_classes=None)

    assert metrics["mae"] == pytest.approx(1.5 / 4)
    assert metrics["rmse"] == pytest.approx(math.sqrt(1.25 / 4))
    # r2 = 1 - SS_res / SS_tot = 1 - 1.25 / 5
    assert metrics["r2"] == pytest.approx(0.75)
    assert metrics["loss"] == pytest.approx(1.25 / 4)
    assert "confusion_matrix" not in metrics

    perfect = score(OutputKind.NUMBER, target, target, num_classes=None)
    assert perfect["mae"] == 0
    assert perfect["rmse"] == 0
    assert perfect["r2"] == pytest.approx(1.0)


def test_scalars_and_primary_metric() -> None:
    metrics = score(OutputKind.CLASSES, torch.eye(2), torch.tensor([0, 1]), num_classes=2)
    flat = scalars(metrics, "test")
    assert flat["test_accuracy"] == 1.0
    assert "test_confusion_matrix" not in flat
    assert all(isinstance(v, float) for v in flat.values())
    assert primary_metric(OutputKind.CLASSES) == ("accuracy", "max")
    assert primary_metric(OutputKind.NUMBER) == ("mae", "min")
