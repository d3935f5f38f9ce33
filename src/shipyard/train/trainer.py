"""The Lightning Trainer, built in plain Python from the ``trainer`` config group."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from omegaconf import DictConfig

from shipyard.console import err_console

BEST = "best"
LAST = "last"


def build_trainer(
    cfg: DictConfig,
    checkpoint_dir: Path,
    loggers: list[Any],
    *,
    callbacks: list[Any] | None = None,
) -> tuple[L.Trainer, ModelCheckpoint]:
    """A Trainer with best/last checkpointing, optional early stopping, the given loggers and
    any extra ``callbacks``."""
    trainer_cfg = cfg.trainer
    monitor = str(trainer_cfg.monitor)
    mode = "min" if monitor.endswith(("loss", "mae", "rmse")) else "max"
    checkpoint = ModelCheckpoint(
        dirpath=checkpoint_dir,
        filename=BEST,
        monitor=monitor,
        mode=mode,
        # A link, not a second copy, when the epoch's checkpoint is the new best: the same
        # last.ckpt for resume, half the checkpoint writes in every improving epoch
        # (MiniLM: two 260 MB files an epoch were most of Lightning's overhead over a plain
        # loop, benchmarks/training). A later epoch that is not the best replaces the link
        # with a file.
        save_last="link",
        save_top_k=1,
        enable_version_counter=False,
    )
    callbacks = [checkpoint, *(callbacks or [])]
    if trainer_cfg.get("early_stopping_patience") is not None:
        callbacks.append(
            EarlyStopping(
                monitor=monitor, mode=mode, patience=int(trainer_cfg.early_stopping_patience)
            )
        )
    trainer = L.Trainer(
        max_epochs=int(trainer_cfg.max_epochs),
        accelerator=trainer_cfg.accelerator,
        devices=trainer_cfg.devices,
        strategy=trainer_cfg.strategy,
        num_nodes=int(trainer_cfg.num_nodes),
        precision=trainer_cfg.precision,
        deterministic=bool(trainer_cfg.deterministic),
        **_limits(trainer_cfg),
        gradient_clip_val=trainer_cfg.get("gradient_clip_val"),
        log_every_n_steps=int(trainer_cfg.log_every_n_steps),
        callbacks=callbacks,
        logger=loggers or False,
        default_root_dir=str(checkpoint_dir),
        enable_progress_bar=err_console.is_terminal,
        enable_model_summary=False,
    )
    return trainer, checkpoint


def _limits(trainer_cfg: DictConfig) -> dict[str, Any]:
    """Pass batch limits only when they limit (Lightning logs a line for every explicit 1.0).

    The int 1 (one batch) limits: it equals 1.0, so it is told apart by type."""
    keys = ("limit_train_batches", "limit_val_batches")
    return {k: trainer_cfg[k] for k in keys if not _all_batches(trainer_cfg.get(k))}


def _all_batches(limit: Any) -> bool:
    return limit is None or (isinstance(limit, float) and limit == 1.0)
