"""data -> train -> evaluate on the real bundled data, with a real MLflow store."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable

import pytest
from omegaconf import DictConfig

from shipyard.track import tracking
from shipyard.train.evaluate import evaluate_run
from shipyard.train.run import train

FAST = ("trainer.max_epochs=3", "trainer.early_stopping_patience=null")


def test_train_tracks_the_run_and_evaluate_rescores_it(compose: Callable[..., DictConfig]) -> None:
    cfg = compose("task=tabular", *FAST)
    result = train(cfg)
    assert result.metrics["test_accuracy"] > 0.5
    assert {"test_macro_f1", "best_val_accuracy", "test_loss"} <= set(result.metrics)

    run = tracking.get_run(cfg, result.run_id)
    assert run.data.tags[tracking.TAG_SNAPSHOT] == result.snapshot_id
    assert run.data.params["model.lr"] == str(cfg.model.lr)
    assert "val_loss" in run.data.metrics
    assert "train_loss" in run.data.metrics
    history = tracking.client(cfg).get_metric_history(result.run_id, "val_loss")
    assert len(history) == 3  # one point per epoch
    artifacts = {a.path for a in tracking.client(cfg).list_artifacts(result.run_id)}
    assert {
        "config.yaml",
        "checkpoints",
        "confusion_matrix.png",
        "snapshot_manifest.json",
    } <= artifacts

    evaluated = evaluate_run(cfg, result.run_id)
    assert evaluated.metrics["test_accuracy"] == pytest.approx(result.metrics["test_accuracy"])
    assert evaluated.snapshot_id == result.snapshot_id


@pytest.mark.slow
def test_same_config_and_snapshot_give_identical_metrics(
    compose: Callable[..., DictConfig],
) -> None:
    cfg = compose("task=image", "trainer.max_epochs=4", "trainer.early_stopping_patience=null")
    first, second = train(cfg), train(cfg)
    assert first.run_id != second.run_id
    assert first.metrics == second.metrics


@pytest.mark.slow
def test_make_run_equivalent_reaches_the_accuracy_bars(
    cli: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    digits = cli("pipeline", "task=image", "--json")
    assert digits.returncode == 0, digits.stderr
    assert json.loads(digits.stdout)["metrics"]["test_accuracy"] >= 0.97
    wine = cli("pipeline", "task=tabular", "--json")
    assert wine.returncode == 0, wine.stderr
    assert json.loads(wine.stdout)["metrics"]["test_accuracy"] >= 0.95
