"""What a training leaves in MLflow (and, optionally, W&B): params, tags, metrics, artifacts;
``shipyard evaluate`` re-scores a run and records on it. Real SQLite stores, no network."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from omegaconf import DictConfig

from shipyard.config import fingerprint
from shipyard.errors import NotFoundError
from shipyard.track import tracking
from shipyard.train.evaluate import evaluate_run
from shipyard.train.run import train

Compose = Callable[..., DictConfig]
Cli = Callable[..., subprocess.CompletedProcess[str]]

TINY = ("task=tabular", "trainer.max_epochs=2", "trainer.early_stopping_patience=null")


def _git_head() -> str | None:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def test_tracking_uri_points_at_a_second_sqlite_store(
    compose: Compose, home: Path, tmp_path: Path
) -> None:
    other = tmp_path / "elsewhere" / "runs.db"
    cfg = compose(*TINY, f"tracking.uri=sqlite:///{other}", "tracking.experiment=second")
    result = train(cfg)

    assert result.tracking_uri == f"sqlite:///{other}"
    assert other.is_file()
    run = tracking.get_run(cfg, result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["test_accuracy"] == pytest.approx(result.metrics["test_accuracy"])

    # The default store does not hold it.
    default = compose(*TINY)
    with pytest.raises(NotFoundError, match=result.run_id):
        tracking.get_run(default, result.run_id)


def test_run_records_the_flattened_config_and_its_lineage(compose: Compose) -> None:
    cfg = compose(*TINY, "model.hidden=[32,16]")
    result = train(cfg)
    run = tracking.get_run(cfg, result.run_id)
    params, tags = run.data.params, run.data.tags

    # Every leaf of the resolved config, under its dotted key.
    expected = {
        "task.name": "tabular",
        "model.name": "mlp",
        "model.hidden": "[32, 16]",
        "model.lr": str(cfg.model.lr),
        "trainer.max_epochs": "2",
        "trainer.early_stopping_patience": "None",
        "data.source": "wine",
        "data.split_seed": "0",
        "tracking.wandb.enabled": "False",
        "paths.home": str(cfg.paths.home),
        "seed": "42",
        "resume": "False",
    }
    assert {k: params.get(k) for k in expected} == expected
    assert not any(isinstance(v, dict) for v in params.values())

    head = _git_head()
    commit = tags[tracking.TAG_COMMIT]
    if head is None:
        assert commit == "unknown"
    else:
        assert commit in (head, f"{head}-dirty")
    assert tags[tracking.TAG_SNAPSHOT] == result.snapshot_id
    assert tags[tracking.TAG_FINGERPRINT] == fingerprint(cfg, exclude=("resume",))
    assert tags[tracking.TAG_TASK] == "tabular"
    assert tags[tracking.TAG_OUTPUT_KIND] == "classes"
    assert tags[tracking.TAG_SNAPSHOT_STORE]

    # The same config with resume=true is the same config.
    assert (
        fingerprint(compose(*TINY, "model.hidden=[32,16]", "resume=true"), exclude=("resume",))
        == (tags[tracking.TAG_FINGERPRINT])
    )


def test_evaluate_records_metrics_and_the_confusion_matrix_on_the_run(
    compose: Compose,
) -> None:
    cfg = compose(*TINY)
    result = train(cfg)

    evaluated = evaluate_run(cfg, result.run_id, split="val")

    assert evaluated.split == "val"
    assert evaluated.metrics["best_val_accuracy"] == pytest.approx(
        result.metrics["best_val_accuracy"]
    )
    matrix = evaluated.confusion_matrix
    assert matrix is not None
    assert len(matrix) == 3
    assert all(len(row) == 3 for row in matrix)
    run = tracking.get_run(cfg, result.run_id)
    assert run.data.metrics["best_val_accuracy"] == pytest.approx(
        evaluated.metrics["best_val_accuracy"]
    )
    assert "best_val_macro_f1" in run.data.metrics
    artifacts = {a.path for a in tracking.client(cfg).list_artifacts(result.run_id)}
    assert "confusion_matrix_val.png" in artifacts
    png = tracking.download(cfg, result.run_id, "confusion_matrix_val.png")
    assert png.read_bytes().startswith(b"\x89PNG")


def test_evaluate_an_unknown_run_is_one_line_exit_2(cli: Cli) -> None:
    result = cli("evaluate", "0123456789abcdef0123456789abcdef")
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "no run '0123456789abcdef0123456789abcdef'" in lines[0]
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_wandb_offline_is_a_second_logger(
    compose: Compose, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    cfg = compose(*TINY, "tracking.wandb.enabled=true")

    first = train(cfg)
    second = train(cfg)

    runs = sorted((home / "wandb").glob("**/offline-run-*"))
    assert len(runs) == 2  # the second training did not log into the first's W&B run
    for folder in runs:
        assert list(folder.glob("run-*.wandb")), folder
    # MLflow stays the store of record.
    for result in (first, second):
        assert tracking.get_run(cfg, result.run_id).info.status == "FINISHED"
    import wandb

    assert wandb.run is None  # finished, not left open for the next training
