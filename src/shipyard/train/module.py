"""The one LightningModule: wraps any task's model; loss and metrics follow the output kind."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torch.optim.lr_scheduler import CosineAnnealingLR

from shipyard.tasks.base import OutputKind
from shipyard.train.metrics import loss_fn, score


class ShipyardModule(L.LightningModule):
    """Trains ``model`` (raw features -> logits or value) with AdamW and a cosine schedule."""

    def __init__(
        self,
        model: nn.Module,
        *,
        output_kind: OutputKind,
        num_classes: int | None,
        lr: float,
        weight_decay: float,
        target_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.model = model
        self.output_kind = output_kind
        self.num_classes = num_classes
        self.lr = lr
        self.weight_decay = weight_decay
        self.target_scale = target_scale
        self._val_outputs: list[tuple[Tensor, Tensor]] = []
        self._train_loss = torch.zeros(())
        self._train_rows = 0

    def forward(self, features: Tensor) -> Tensor:
        return self.model(features)  # type: ignore[no-any-return]

    def outputs(self, features: Tensor, target: Tensor) -> Tensor:
        """The model's outputs for a batch. Generated text is trained by teacher forcing:
        the model reads the reference (shifted right) to score each of its tokens, so the
        target goes in beside the features."""
        if self.output_kind is OutputKind.TEXT:
            return self.model(features, target)  # type: ignore[no-any-return]
        outputs: Tensor = self(features)
        return outputs

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        features, target = batch
        loss = loss_fn(self.output_kind, self.outputs(features, target), target, self.target_scale)
        # Summed here and logged once an epoch (on_train_epoch_end): Lightning's self.log
        # costs about as much per call as a whole step of a small model.
        rows = len(target)
        self._train_loss = self._train_loss + loss.detach().float() * rows
        self._train_rows += rows
        return loss

    def on_train_epoch_start(self) -> None:
        self._train_loss, self._train_rows = torch.zeros((), device=self.device), 0

    def on_train_epoch_end(self) -> None:
        """The epoch's mean training loss over its rows; sync_dist: under DDP the mean of
        every rank's mean (equal shards), not rank 0's alone."""
        if self._train_rows:
            mean = self._train_loss / self._train_rows
            self.log("train_loss", mean, on_epoch=True, sync_dist=True)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        features, target = batch
        if self.output_kind is OutputKind.TEXT:
            # Logits of generated text are (rows, tokens, vocab): too big to keep for the
            # epoch, so each batch keeps its summed token loss and its token count.
            tokens = (target != -100).sum()
            loss = loss_fn(self.output_kind, self.outputs(features, target), target)
            self._val_outputs.append((loss.detach().float() * tokens, tokens))
            return
        self._val_outputs.append((self(features).detach(), target))

    def on_validation_epoch_end(self) -> None:
        """Score the whole validation split. Under DDP each rank saw one shard (Lightning's
        DistributedSampler, padded to equal shards by repeating at most world_size - 1 rows),
        so the outputs are gathered first: every rank then logs the same numbers, and the
        best checkpoint and early stopping follow the whole split, not rank 0's shard."""
        if not self._val_outputs:
            return
        if self.output_kind is OutputKind.TEXT:
            self._log_token_loss()
            return
        # float(): under mixed precision the outputs are bf16/fp16.
        outputs = torch.cat([o for o, _ in self._val_outputs]).float()
        target = torch.cat([t for _, t in self._val_outputs])
        self._val_outputs.clear()
        if self.trainer.world_size > 1:
            outputs, target = self._gather(outputs), self._gather(target)
        metrics = score(self.output_kind, outputs, target, self.num_classes)
        metrics["loss"] = float(loss_fn(self.output_kind, outputs, target, self.target_scale))
        for name, value in metrics.items():
            if isinstance(value, float):
                # Equal on every rank already: sync_dist only tells Lightning so (no warning).
                self.log(
                    f"val_{name}",
                    value,
                    prog_bar=name in ("loss", "accuracy", "mae"),
                    sync_dist=self.trainer.world_size > 1,
                )

    def _log_token_loss(self) -> None:
        """val_loss of generated text: the mean cross-entropy per summary token over the
        whole split (every rank's sums, under DDP). ROUGE needs generation, which is too slow
        for every epoch; the test split is scored with it after training."""
        total = torch.stack([t for t, _ in self._val_outputs]).sum()
        tokens = torch.stack([n for _, n in self._val_outputs]).sum().float()
        self._val_outputs.clear()
        if self.trainer.world_size > 1:
            total, tokens = (
                self._gather(total.reshape(1)).sum(),
                self._gather(tokens.reshape(1)).sum(),
            )
        self.log(
            "val_loss",
            float(total / tokens.clamp_min(1)),
            prog_bar=True,
            sync_dist=self.trainer.world_size > 1,
        )

    def _gather(self, tensor: Tensor) -> Tensor:
        """Every rank's rows, concatenated in rank order (all_gather stacks them)."""
        gathered = self.all_gather(tensor)
        assert isinstance(gathered, Tensor)
        return gathered.flatten(0, 1)

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=self._epochs())
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": schedule, "interval": "epoch"},
        }

    def on_train_start(self) -> None:
        """Stretch the cosine schedule when a resumed training runs to a new max_epochs.

        Resuming restores the schedule of the interrupted training, whose length was the old
        max_epochs: extended, the learning rate would sit at zero, then climb back up. Here
        (after the restore) it continues on a cosine over the new length instead.
        """
        epochs = self._epochs()
        for config in self.trainer.lr_scheduler_configs:
            schedule = config.scheduler
            if not isinstance(schedule, CosineAnnealingLR) or schedule.T_max == epochs:
                continue
            schedule.T_max = epochs
            progress = (1 + math.cos(math.pi * min(schedule.last_epoch, epochs) / epochs)) / 2
            rates = [
                schedule.eta_min + (base - schedule.eta_min) * progress
                for base in schedule.base_lrs
            ]
            for group, rate in zip(schedule.optimizer.param_groups, rates, strict=True):
                group["lr"] = rate
            schedule._last_lr = rates

    def _epochs(self) -> int:
        return max(int(self.trainer.max_epochs or 1), 1)
