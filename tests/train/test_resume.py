"""resume=true: continue the last training of a config from its last checkpoint, in the same
MLflow run, possibly with more epochs; start fresh (with a warning) when there is none."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import DictConfig

from shipyard.track import tracking
from shipyard.train.run import checkpoint_key, train

Compose = Callable[..., DictConfig]

BASE = ("task=tabular", "trainer.early_stopping_patience=null")


def _last_checkpoint(cfg: DictConfig) -> dict[str, Any]:
    folders = [p for p in Path(str(cfg.paths.checkpoints)).iterdir() if p.is_dir()]
    assert len(folders) == 1, folders  # one training, one folder
    state: dict[str, Any] = torch.load(
        folders[0] / "last.ckpt", map_location="cpu", weights_only=True
    )
    return state


def test_resume_extends_the_same_run_from_its_last_checkpoint(compose: Compose) -> None:
    first_cfg = compose(*BASE, "trainer.max_epochs=2")
    first = train(first_cfg)
    after_first = _last_checkpoint(first_cfg)
    assert first.epochs == 2
    assert not first.resumed

    cfg = compose(*BASE, "trainer.max_epochs=4", "resume=true")
    resumed = train(cfg)

    assert resumed.resumed
    assert resumed.run_id == first.run_id
    assert resumed.epochs == 4
    after_resume = _last_checkpoint(cfg)
    assert after_resume["epoch"] == after_first["epoch"] + 2

    # The run's history has a point per epoch: two from the first training, two more now.
    client = tracking.client(cfg)
    history = client.get_metric_history(first.run_id, "val_loss")
    assert len(history) == 4
    steps = [m.step for m in sorted(history, key=lambda m: m.timestamp)]
    assert steps == sorted(steps)
    assert len(set(steps)) == 4
    runs = client.search_runs([tracking.experiment_id(cfg)])
    assert [r.info.run_id for r in runs] == [first.run_id]  # no second run was opened
    assert client.get_run(first.run_id).info.status == "FINISHED"
    assert set(resumed.metrics) == set(first.metrics)

    # Training went on from the checkpoint (weights moved) on a cosine stretched to the new
    # length: it ends at zero instead of climbing back up after the old length.
    key = "model.encoder.0.weight"
    assert not torch.equal(after_first["state_dict"][key], after_resume["state_dict"][key])
    schedule = after_resume["lr_schedulers"][0]
    assert schedule["T_max"] == 4
    assert after_resume["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(0.0)


def test_resume_without_an_interrupted_training_starts_fresh_with_a_warning(
    compose: Compose, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = compose(*BASE, "trainer.max_epochs=1", "resume=true")
    result = train(cfg)
    assert not result.resumed
    assert result.epochs == 1
    assert "resume=true but no interrupted training" in capsys.readouterr().err
    assert tracking.get_run(cfg, result.run_id).info.status == "FINISHED"


def test_resume_after_a_changed_model_starts_a_new_run(
    compose: Compose, capsys: pytest.CaptureFixture[str]
) -> None:
    first = train(compose(*BASE, "trainer.max_epochs=1"))
    capsys.readouterr()
    other = train(compose(*BASE, "trainer.max_epochs=1", "model.lr=1e-2", "resume=true"))
    assert not other.resumed
    assert other.run_id != first.run_id
    assert "starting fresh" in capsys.readouterr().err


def test_without_resume_the_same_config_trains_a_new_run(compose: Compose) -> None:
    cfg = compose(*BASE, "trainer.max_epochs=1")
    first, second = train(cfg), train(cfg)
    assert first.run_id != second.run_id
    assert not second.resumed
    assert _last_checkpoint(cfg)["epoch"] == 0  # the old folder was cleared, not continued


def test_checkpoint_key_ignores_only_what_may_change_on_resume(compose: Compose) -> None:
    base = checkpoint_key(compose(*BASE))
    assert checkpoint_key(compose(*BASE, "resume=true")) == base
    assert checkpoint_key(compose(*BASE, "trainer.max_epochs=99", "resume=true")) == base
    changes = (
        "model.lr=0.5",
        "model.hidden=[8]",
        "trainer.batch_size=7",
        "seed=1",
        "data.split_seed=3",
        "tracking.experiment=other",
    )
    for changed in changes:
        assert checkpoint_key(compose(*BASE, changed)) != base, changed
