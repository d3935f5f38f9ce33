"""Tabular prediction, training half: an MLP with the training split's statistics inside."""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from shipyard.errors import ConfigError
from shipyard.tasks.base import Split
from shipyard.tasks.layers import Rescale, Standardize, TaskModel


class TabularTraining:
    def to_tensors(self, split: Split, schema: dict[str, Any]) -> tuple[Tensor, Tensor]:
        from shipyard.tasks.tabular import TabularTask

        features = torch.from_numpy(TabularTask().model_input(split.features, schema))
        if schema["target"]["kind"] == "number":
            return features, torch.as_tensor(split.target, dtype=torch.float32)
        return features, torch.as_tensor(split.target, dtype=torch.long)

    def build_model(self, model_cfg: DictConfig, schema: dict[str, Any], train: Split) -> nn.Module:
        if model_cfg.family != "mlp":
            raise ConfigError(f"model family {model_cfg.family!r} does not fit the tabular task")
        features, target = self.to_tensors(train, schema)
        # A column with no value in the training split has no mean: 0, so that it stays
        # a constant input instead of turning every output (and metric) into NaN.
        mean = torch.nan_to_num(torch.nanmean(features, dim=0), nan=0.0)
        filled = torch.where(torch.isnan(features), mean.expand_as(features), features)
        preprocess = Standardize(mean, filled.std(dim=0, unbiased=False))
        layers: list[nn.Module] = []
        previous = features.shape[1]
        for width in model_cfg.hidden:
            layers += [
                nn.Linear(previous, int(width)),
                nn.ReLU(),
                nn.Dropout(float(model_cfg.dropout)),
            ]
            previous = int(width)
        encoder = nn.Sequential(*layers) if layers else nn.Identity()
        if schema["target"]["kind"] == "number":
            y = target.to(torch.float64)
            head: nn.Module = nn.Sequential(
                nn.Linear(previous, 1), Rescale(float(y.mean()), float(y.std()))
            )
        else:
            head = nn.Linear(previous, len(schema["target"]["labels"]))
        return TaskModel(preprocess, encoder, head)


TRAINING = TabularTraining()
