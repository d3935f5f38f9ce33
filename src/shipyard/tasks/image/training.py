"""Image classification, training half: a small CNN or any timm backbone."""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from shipyard.errors import ConfigError
from shipyard.tasks.base import Split
from shipyard.tasks.layers import ImagePreprocess, TaskModel


class ImageTraining:
    def to_tensors(self, split: Split, schema: dict[str, Any]) -> tuple[Tensor, Tensor]:
        features = torch.as_tensor(split.features, dtype=torch.float32)
        return features, torch.as_tensor(split.target, dtype=torch.long)

    def build_model(self, model_cfg: DictConfig, schema: dict[str, Any], train: Split) -> nn.Module:
        features = schema["features"]
        channels = int(features["channels"])
        classes = len(schema["target"]["labels"])
        size = _input_size(model_cfg.get("input_size"))
        preprocess = ImagePreprocess(list(model_cfg.mean), list(model_cfg.std), channels, size)
        if model_cfg.family == "cnn":
            encoder, width = small_cnn(
                channels, list(model_cfg.channels), int(model_cfg.hidden), float(model_cfg.dropout)
            )
        elif model_cfg.family == "timm":
            encoder, width = timm_encoder(model_cfg, channels)
        else:
            raise ConfigError(f"model family {model_cfg.family!r} does not fit the image task")
        head = nn.Sequential(
            nn.Dropout(float(model_cfg.get("dropout", 0.0))), nn.Linear(width, classes)
        )
        return TaskModel(preprocess, encoder, head)


def _input_size(value: Any) -> tuple[int, int] | None:
    if value is None:
        return None
    size = tuple(int(v) for v in value)
    if len(size) != 2 or min(size) <= 0:
        raise ConfigError(f"model.input_size must be [height, width] or null, got {list(value)}")
    return size[0], size[1]


def small_cnn(
    channels: int, widths: list[int], hidden: int, dropout: float
) -> tuple[nn.Module, int]:
    """conv-bn-relu-pool blocks, global average pooling, one hidden layer."""
    layers: list[nn.Module] = []
    previous = channels
    for width in widths:
        layers += [
            nn.Conv2d(previous, width, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2, ceil_mode=True),
        ]
        previous = width
    layers += [
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(previous, hidden),
        nn.ReLU(inplace=True),
    ]
    return nn.Sequential(*layers), hidden


def timm_encoder(model_cfg: DictConfig, channels: int) -> tuple[nn.Module, int]:
    """A timm backbone without its classifier: pretrained from a local file, the Hub, or scratch."""
    import timm

    arch = str(model_cfg.arch)
    if arch not in timm.list_models() and not timm.is_model(arch):
        raise ConfigError(
            f"unknown timm model {arch!r}: see timm.list_models(), e.g. resnet18, resnet50, vit_tiny_patch16_224"
        )
    kwargs: dict[str, Any] = {"num_classes": 0, "in_chans": channels}
    size = model_cfg.get("input_size")
    if size is not None and "vit" in arch:
        kwargs["img_size"] = tuple(int(v) for v in size)
    checkpoint = model_cfg.get("checkpoint")
    if checkpoint:
        from pathlib import Path

        if not Path(str(checkpoint)).is_file():
            raise ConfigError(
                f"model.checkpoint {checkpoint!r} is not a file: give a .safetensors/.pth weights file"
            )
        kwargs |= {"pretrained": True, "pretrained_cfg_overlay": {"file": str(checkpoint)}}
    else:
        kwargs["pretrained"] = bool(model_cfg.pretrained)
    try:
        encoder = timm.create_model(arch, **kwargs)
    except (OSError, RuntimeError, ValueError) as exc:
        if kwargs.get("pretrained") and not checkpoint:
            raise ConfigError(
                f"cannot fetch pretrained weights for {arch!r} ({str(exc).splitlines()[0][:120]}): "
                "give a local file with model.checkpoint=PATH, or train from scratch with model.pretrained=false"
            ) from exc
        raise ConfigError(f"cannot build timm model {arch!r}: {str(exc).splitlines()[0]}") from exc
    width: int = encoder.num_features  # type: ignore[assignment]
    return encoder, int(width)


TRAINING = ImageTraining()
