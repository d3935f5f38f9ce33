"""``shipyard train``: a snapshot and a config in, a tracked MLflow run with test metrics out."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from omegaconf import DictConfig, OmegaConf

from shipyard.config import fingerprint, to_container, to_yaml
from shipyard.console import err_console, quiet_libraries
from shipyard.data.snapshot import SPLITS, Snapshot, SnapshotStore
from shipyard.errors import ConfigError, DataError
from shipyard.tasks import Task, get_task
from shipyard.tasks.base import OutputKind
from shipyard.track import tracking
from shipyard.track.lineage import git_commit, training_fingerprint

RUN_ID_FILE = "run_id"

# Config keys left out of the checkpoint folder's key. resume=true continues an interrupted
# training: the same snapshot, data, model, optimiser and batches, so the same folder. A
# user resumes a run that stopped (a crash, a pre-empted machine, a run that turned out to
# be too short), often with more epochs, so ``resume`` and ``trainer.max_epochs`` must not
# move the folder; the cosine schedule is stretched to the new length on resume (see
# ShipyardModule.on_train_start). Every other key stays in: a changed model, data,
# learning rate, batch size or tracking store would not be the same training (or not the
# same run), and resuming it from these weights would record a run that no config
# describes — resume=true then starts fresh, with a warning.
# `snapshot` too: the folder name already carries the snapshot id, and `pipeline` passes
# snapshot=ID where a plain `train` leaves it null — the same training either way.
# `profile` and `profile_steps` only watch a training: a profiled resume is the same one.
RESUME_INVARIANT_KEYS = ("resume", "trainer.max_epochs", "snapshot", "profile", "profile_steps")


@dataclass
class TrainResult:
    run_id: str
    snapshot_id: str
    metrics: dict[str, float]
    epochs: int
    duration_s: float
    resumed: bool
    checkpoint: str
    tracking_uri: str
    confusion_matrix: list[list[int]] | None = field(default=None, repr=False)

    def summary(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "snapshot_id": self.snapshot_id,
            "metrics": self.metrics,
            "epochs": self.epochs,
            "duration_s": round(self.duration_s, 2),
            "resumed": self.resumed,
            "tracking_uri": self.tracking_uri,
        }


def resolve_snapshot(cfg: DictConfig) -> Snapshot:
    """``snapshot=ID`` names one; otherwise prepare (or reuse) the snapshot of ``data``."""
    if cfg.get("snapshot"):
        return SnapshotStore(str(cfg.paths.snapshots)).get(str(cfg.snapshot))
    from shipyard.data.prepare import prepare

    return prepare(cfg).snapshot


def check_model(task: Task, cfg: DictConfig) -> None:
    family = str(cfg.model.family)
    if family not in task.model_families:
        from shipyard.config import available

        raise ConfigError(
            f"model {cfg.model.name!r} ({family}) does not fit task {task.name!r}: "
            f"use a {'/'.join(task.model_families)} model (options: {', '.join(available('model'))})"
        )


def check_data(task: Task, snapshot: Snapshot) -> None:
    if snapshot.kind is not task.data_kind:
        raise DataError(
            f"snapshot {snapshot.id} holds {snapshot.kind.value} data but task {task.name!r} "
            f"needs {task.data_kind.value} data"
        )


def train(cfg: DictConfig, *, callbacks: list[Any] | None = None) -> TrainResult:
    """Train the configured model on its snapshot, track it in MLflow and score the test split.

    ``callbacks`` are extra Lightning callbacks (a sweep's pruning callback, say).
    """
    import lightning as L
    from lightning.pytorch.loggers import MLFlowLogger
    from torch.utils.data import TensorDataset

    from shipyard.train import profiling
    from shipyard.train.evaluate import evaluate_model, load_weights
    from shipyard.train.metrics import scalars
    from shipyard.train.module import ShipyardModule
    from shipyard.train.trainer import build_trainer

    quiet_libraries()
    started = time.perf_counter()
    task = get_task(str(cfg.task.name))
    check_model(task, cfg)
    snapshot = resolve_snapshot(cfg)
    check_data(task, snapshot)
    half = task.training()
    schema = snapshot.manifest["schema"]
    kind = OutputKind(schema["target"]["kind"])
    labels = schema["target"].get("labels")
    splits = {name: snapshot.load(name) for name in SPLITS}

    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    model = half.build_model(cfg.model, schema, splits["train"])
    scale = float(splits["train"].target.std()) if kind is OutputKind.NUMBER else 1.0
    module = ShipyardModule(
        model,
        output_kind=kind,
        num_classes=len(labels) if labels else None,
        lr=float(cfg.model.lr),
        weight_decay=float(cfg.model.weight_decay),
        target_scale=scale or 1.0,
    )
    tensors = {name: half.to_tensors(split, schema) for name, split in splits.items()}
    batch_size = int(cfg.trainer.batch_size)
    train_loader = _loader(cfg, TensorDataset(*tensors["train"]), batch_size, shuffle=True)
    val_loader = _loader(cfg, TensorDataset(*tensors["val"]), batch_size * 4, shuffle=False)

    profiler = profiling.from_config(cfg)
    extra_callbacks = [*(callbacks or []), *([profiler] if profiler else [])]
    config_id = fingerprint(cfg, exclude=("resume",))
    workdir = Path(str(cfg.paths.checkpoints)) / f"{snapshot.id}-{checkpoint_key(cfg)}"
    # Building the Trainer settles this process's global rank (from torchrun's, SLURM's or
    # Lightning's own launcher's environment); under DDP only rank 0 cleans the checkpoint
    # folder, opens the MLflow run, evaluates and records. The others train, then leave.
    trainer, checkpoint = build_trainer(cfg, workdir, [], callbacks=extra_callbacks)
    lead = trainer.is_global_zero
    resume_from, run_id = _resume_point(workdir, bool(cfg.resume), lead=lead)
    loggers: list[Any] = []
    if lead:
        tracking.experiment_id(cfg)  # creates the experiment with Shipyard's artifact location
        logger = MLFlowLogger(
            experiment_name=str(cfg.tracking.experiment),
            tracking_uri=tracking.tracking_uri(cfg),
            run_name=f"{task.name}-{cfg.model.name}",
            run_id=run_id,
            tags=_tags(cfg, snapshot, config_id),
            # Metrics go to the store from MLflow's background thread: a SQLite commit
            # (an fsync) each epoch stalled training by more than the epoch's compute
            # (benchmarks/training). Ending the run flushes the queue.
            synchronous=False,
        )
        loggers = [logger, *_extra_loggers(cfg)]
        if run_id is None:
            logger.log_hyperparams(tracking.flatten(to_container(cfg)))
        run_id = str(logger.run_id)
        _run_id_file(workdir).parent.mkdir(parents=True, exist_ok=True)
        _run_id_file(workdir).write_text(run_id)
        trainer.loggers = loggers
    try:
        trainer.fit(
            module, train_loader, val_loader, ckpt_path=str(resume_from) if resume_from else None
        )
        if not lead:
            _leave_worker_rank()
        assert run_id is not None
        best = Path(checkpoint.best_model_path or workdir / "last.ckpt")
        load_weights(model, best)
        test = evaluate_model(model, half, splits["test"], schema)
        val = evaluate_model(model, half, splits["val"], schema)
        metrics = scalars(test, "test") | scalars(val, "best_val")
        # A task may bring a yardstick (text: TF-IDF + logistic regression on the same split).
        baseline = getattr(half, "baseline", None)
        if baseline is not None:
            metrics |= scalars(baseline(splits["train"], splits["test"]), "baseline_test")
        _record(cfg, run_id, metrics, best, snapshot, test.get("confusion_matrix"), labels)
        if profiler is not None:
            profiler.report(cfg, run_id)
        for extra in loggers[1:]:
            extra.log_metrics(metrics)
    except BaseException:
        if profiler is not None:
            profiler.discard()
        with contextlib.suppress(Exception):  # the training's error is the one to report
            _close_extra_loggers(loggers[1:], success=False)
        raise
    _close_extra_loggers(loggers[1:], success=True)
    return TrainResult(
        run_id=run_id,
        snapshot_id=snapshot.id,
        metrics=metrics,
        epochs=int(trainer.current_epoch),
        duration_s=time.perf_counter() - started,
        resumed=resume_from is not None,
        checkpoint=str(best),
        tracking_uri=tracking.tracking_uri(cfg),
        confusion_matrix=test.get("confusion_matrix"),
    )


def _loader(cfg: DictConfig, dataset: Any, batch_size: int, *, shuffle: bool) -> Any:
    """A DataLoader over in-memory tensors. Under DDP, Lightning swaps in a
    DistributedSampler (``use_distributed_sampler``, on by default), so each rank sees its
    own shard. Worker processes, when asked for, stay alive across epochs
    (``trainer.persistent_workers``) instead of being forked again for every epoch and
    every validation pass."""
    from torch.utils.data import DataLoader

    workers = int(cfg.trainer.num_workers)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=workers,
        persistent_workers=workers > 0 and bool(cfg.trainer.get("persistent_workers", True)),
    )


def _leave_worker_rank() -> NoReturn:
    """End a DDP worker process (global rank > 0) once ``fit`` returns.

    Rank 0 alone evaluates, records and returns the result. A worker runs the same command
    as rank 0 (Lightning's launcher re-runs ``shipyard train ...``; torchrun and srun start
    it on every rank), so returning would print a second result, or let ``shipyard
    pipeline`` go on to export and register from every rank: it exits, successfully.
    """
    raise SystemExit(0)


def checkpoint_key(cfg: DictConfig) -> str:
    """The fingerprint that names a training's checkpoint folder: the config less RESUME_INVARIANT_KEYS."""
    data = to_container(cfg)
    for dotted in RESUME_INVARIANT_KEYS:
        *parents, leaf = dotted.split(".")
        node: Any = data
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    return fingerprint(OmegaConf.create(data))


def _resume_point(
    workdir: Path, resume: bool, *, lead: bool = True
) -> tuple[Path | None, str | None]:
    """With resume, the last checkpoint and run id of this exact config; otherwise a clean
    folder. Only the ``lead`` process (global rank 0) warns and cleans: DDP workers load the
    same checkpoint but must not delete what rank 0 is about to write."""
    last, run_file = workdir / "last.ckpt", _run_id_file(workdir)
    if resume and last.is_file() and run_file.is_file():
        return last, run_file.read_text().strip()
    if not lead:
        return None, None
    if resume:
        err_console.print(
            "[yellow]resume=true but no interrupted training of this config: starting fresh[/]"
        )
    if workdir.exists():
        shutil.rmtree(workdir)
    return None, None


def _run_id_file(workdir: Path) -> Path:
    """Beside the checkpoint folder, which Lightning wants empty at the start."""
    return workdir.with_name(f"{workdir.name}.{RUN_ID_FILE}")


def _tags(cfg: DictConfig, snapshot: Snapshot, config_id: str) -> dict[str, str]:
    from shipyard import __version__

    return {
        tracking.TAG_SNAPSHOT: snapshot.id,
        tracking.TAG_SNAPSHOT_STORE: snapshot.store.url,
        tracking.TAG_TASK: str(cfg.task.name),
        tracking.TAG_MODEL: str(cfg.model.name),
        tracking.TAG_OUTPUT_KIND: str(snapshot.manifest["schema"]["target"]["kind"]),
        tracking.TAG_COMMIT: git_commit() or "unknown",
        tracking.TAG_FINGERPRINT: config_id,
        "shipyard.version": __version__,
    }


def _extra_loggers(cfg: DictConfig) -> list[Any]:
    wandb_cfg = cfg.tracking.get("wandb")
    if not wandb_cfg or not wandb_cfg.get("enabled"):
        return []
    from lightning.pytorch.loggers import WandbLogger

    save_dir = Path(str(cfg.paths.home)) / "wandb"
    save_dir.mkdir(parents=True, exist_ok=True)
    return [
        WandbLogger(
            project=str(wandb_cfg.project),
            save_dir=str(save_dir),
            offline=str(wandb_cfg.mode) == "offline",
            config=to_container(cfg),
        )
    ]


def _close_extra_loggers(loggers: list[Any], *, success: bool) -> None:
    """Finalize the extra loggers and end their runs (W&B keeps a process-wide run open
    otherwise, and the next training in the same process would log into it)."""
    for extra in loggers:
        extra.finalize("success" if success else "failed")
        finish = getattr(getattr(extra, "experiment", None), "finish", None)
        if callable(finish):
            finish(exit_code=0 if success else 1)


def _record(
    cfg: DictConfig,
    run_id: str,
    metrics: dict[str, float],
    best: Path,
    snapshot: Snapshot,
    matrix: list[list[int]] | None,
    labels: list[str] | None,
) -> None:
    """Final metrics and the artifacts later stages read: config, checkpoint, snapshot manifest, plot."""
    from shipyard.train.plots import confusion_matrix_png

    tracking.log_metrics(cfg, run_id, metrics)
    tracking.client(cfg).set_tag(run_id, tracking.TAG_TRAINING, training_fingerprint(cfg))
    tracking.log_text(cfg, run_id, to_yaml(cfg), tracking.ARTIFACT_CONFIG)
    tracking.log_json(cfg, run_id, snapshot.manifest, "snapshot_manifest.json")
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "best.ckpt"
        shutil.copyfile(best, ckpt)
        tracking.log_file(cfg, run_id, ckpt, "checkpoints")
        if matrix is not None and labels:
            png = confusion_matrix_png(
                matrix, labels, Path(tmp) / "confusion_matrix.png", "test split"
            )
            tracking.log_file(cfg, run_id, png)
