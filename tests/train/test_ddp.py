"""``trainer.strategy=ddp`` on CPU: two real processes (gloo) through the real CLI, one
tracked run.

Lightning's launcher re-runs ``shipyard train ...`` for rank 1; both ranks train on their
own shard, rank 0 alone records, evaluates and prints. The MLflow store and the checkpoint
folder must show one training, not two.
"""

from __future__ import annotations

import math
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from shipyard.data.snapshot import SnapshotStore

pytestmark = pytest.mark.slow

WORLD = 2
BATCH = 64
EPOCHS = 2
# Lightning logs `epoch` beside the metrics of each logging call, and at an epoch's end it
# makes two: the validation metrics, then the training metrics.
CALLS_PER_EPOCH = 2


def test_ddp_on_cpu_trains_two_processes_into_one_run(
    cli: Callable[..., subprocess.CompletedProcess[str]], home: Path
) -> None:
    done = cli(
        "train",
        "task=image",
        "trainer=fast",
        f"trainer.max_epochs={EPOCHS}",
        "trainer.strategy=ddp",
        f"trainer.devices={WORLD}",
        "trainer.accelerator=cpu",
        f"trainer.batch_size={BATCH}",
    )
    assert done.returncode == 0, done.stderr
    assert "[rank1]" not in done.stderr, done.stderr  # rank 1 exited cleanly, no traceback
    assert done.stdout.count("Training run") == 1, done.stdout  # one result, from rank 0

    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    experiments = client.search_experiments()
    runs = client.search_runs([e.experiment_id for e in experiments])
    assert len(runs) == 1, [r.info.run_id for r in runs]
    run = runs[0]
    run_id = run.info.run_id
    assert run.info.status == "FINISHED"
    assert run_id in done.stdout

    # Each rank trained on its own half of the training split (Lightning's
    # DistributedSampler): an epoch is ceil(ceil(rows / 2) / 64) optimizer steps, half
    # of a single process's, and the per-epoch metrics land at those steps.
    snapshot_id = run.data.tags["shipyard.snapshot_id"]
    rows = len(SnapshotStore(str(home / "snapshots")).get(snapshot_id).load("train").target)
    per_epoch = math.ceil(math.ceil(rows / WORLD) / BATCH)
    assert per_epoch < math.ceil(rows / BATCH)
    epoch_steps = [per_epoch * (epoch + 1) - 1 for epoch in range(EPOCHS)]

    histories = {key: client.get_metric_history(run_id, key) for key in run.data.metrics}
    for key in ("train_loss", "val_loss", "val_accuracy", "val_macro_f1"):
        steps = [m.step for m in histories[key]]
        assert sorted(steps) == epoch_steps, (key, steps)  # once per epoch, not once per rank
    assert sorted(m.step for m in histories["epoch"]) == sorted(
        step for step in epoch_steps for _ in range(CALLS_PER_EPOCH)
    )
    for key in ("test_accuracy", "test_loss", "test_macro_f1", "best_val_loss"):
        assert len(histories[key]) == 1, (key, histories[key])
    assert 0.0 <= run.data.metrics["test_accuracy"] <= 1.0

    # The per-epoch validation metrics were gathered from both ranks' shards: the best
    # epoch's val_loss is what rank 0 recomputes alone on the whole split afterwards.
    best_epoch_loss = min(m.value for m in histories["val_loss"])
    assert run.data.metrics["best_val_loss"] == pytest.approx(best_epoch_loss, rel=1e-4)

    folders = [p for p in (home / "checkpoints").iterdir() if p.is_dir()]
    assert len(folders) == 1
    assert sorted(p.name for p in folders[0].iterdir()) == ["best.ckpt", "last.ckpt"]
    assert [p.name for p in (home / "checkpoints").glob("*.run_id")] == [
        f"{folders[0].name}.run_id"
    ]
    assert [a.path for a in client.list_artifacts(run_id, "checkpoints")] == [
        "checkpoints/best.ckpt"
    ]


def test_ddp_trains_a_summariser_with_one_token_weighted_val_loss(
    cli: Callable[..., subprocess.CompletedProcess[str]], home: Path, tiny_bart: Path
) -> None:
    """Generated text under DDP: each rank sums its shard's token losses, rank 0 logs the
    gathered mean once per epoch, and scores the test split by generating, once."""
    done = cli(
        "train",
        "task=summarize",
        "model.family=seq2seq",
        f"model.backbone={tiny_bart}",
        "data.limit=8",
        "model.max_source_length=32",
        "model.max_target_length=12",
        f"trainer.max_epochs={EPOCHS}",
        "trainer.early_stopping_patience=null",
        "trainer.strategy=ddp",
        f"trainer.devices={WORLD}",
        "trainer.accelerator=cpu",
    )
    assert done.returncode == 0, done.stderr
    assert "[rank1]" not in done.stderr, done.stderr
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1
    run_id = runs[0].info.run_id
    val_loss = client.get_metric_history(run_id, "val_loss")
    assert len(val_loss) == EPOCHS
    assert all(math.isfinite(m.value) and m.value > 0 for m in val_loss)
    for key in ("test_rougeL", "baseline_test_rougeL"):
        assert len(client.get_metric_history(run_id, key)) == 1, key
