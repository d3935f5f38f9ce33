"""Image classification, training half: a small CNN or any timm backbone."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from shipyard.errors import ConfigError
from shipyard.tasks.base import Split
from shipyard.tasks.layers import ImagePreprocess, TaskModel

# How timm reports model weights that a pretrained file did not provide.
MISSING_KEYS = "Missing keys ("


class ImageTraining:
    def to_tensors(self, split: Split, schema: dict[str, Any]) -> tuple[Tensor, Tensor]:
        from shipyard.tasks.image import ImageTask

        features = torch.from_numpy(ImageTask().model_input(split.features, schema))
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
    import difflib

    import timm
    from huggingface_hub.errors import EntryNotFoundError
    from safetensors import SafetensorError

    arch = str(model_cfg.arch)
    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=3)
        hint = (
            f"did you mean {', '.join(close)}?"
            if close
            else "e.g. resnet18, resnet50, vit_tiny_patch16_224"
        )
        raise ConfigError(
            f"unknown timm model {arch!r} (model.arch): {hint} (timm.list_models() lists them all)"
        )
    kwargs: dict[str, Any] = {"num_classes": 0, "in_chans": channels}
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
        with _missing_weights() as missing:
            encoder = _create_timm(arch, kwargs, _input_size(model_cfg.get("input_size")))
    except (OSError, RuntimeError, ValueError, EntryNotFoundError, SafetensorError) as exc:
        reason = _reason(exc)
        if checkpoint:
            raise ConfigError(
                f"cannot load model.checkpoint {str(checkpoint)!r} into timm model {arch!r} ({reason}): "
                "give weights saved from that architecture (.safetensors, .pth or .bin)"
            ) from exc
        if kwargs["pretrained"]:
            raise ConfigError(
                f"cannot fetch pretrained weights for {arch!r} ({reason}): "
                "give a local file with model.checkpoint=PATH, or train from scratch with model.pretrained=false"
            ) from exc
        raise ConfigError(f"cannot build timm model {arch!r}: {reason}") from exc
    if checkpoint and missing:
        total = len(encoder.state_dict())
        raise ConfigError(
            f"model.checkpoint {str(checkpoint)!r} does not fit timm model {arch!r}: {len(missing)} of "
            f"{total} weights are not in the file (e.g. {missing[0]}); give weights saved from {arch}"
        )
    width: int = encoder.num_features  # type: ignore[assignment]
    return encoder, int(width)


@contextmanager
def _missing_weights() -> Iterator[list[str]]:
    """The model weights that timm's pretrained loading found no value for.

    Once it has dropped the classifier, timm loads a weights file non-strictly and only logs
    (at INFO) what the file lacked: a file of another architecture, or with prefixed keys,
    would leave the backbone randomly initialised without a word.
    """
    logger = logging.getLogger("timm.models._builder")
    missing: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            text = record.getMessage()
            if text.startswith(MISSING_KEYS):
                names = text.removeprefix(MISSING_KEYS).partition(") discovered")[0]
                missing.extend(name for name in names.split(", ") if name)

    handler, level = Collect(logging.INFO), logger.level
    logger.addHandler(handler)
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    try:
        yield missing
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _reason(exc: BaseException, limit: int = 160) -> str:
    """An exception as a short phrase for a one-line error: its first line (and the detail
    line after a heading such as "Error(s) in loading state_dict for ResNet:"), cut at a word."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    text = " ".join(lines[:2]) if lines[0].endswith(":") and len(lines) > 1 else lines[0]
    if len(text) > limit:
        text = text[:limit].rsplit(" ", 1)[0].rstrip(" ,.;:") + "..."
    return text


def _create_timm(arch: str, kwargs: dict[str, Any], size: tuple[int, int] | None) -> nn.Module:
    """``timm.create_model``, built for ``size`` when the architecture takes an image size.

    Transformers (ViT, DeiT, Swin, ...) fix their patch grid at construction, so they must be
    told the input size (their pretrained position embeddings are resampled to it);
    convolutional networks take any size and refuse the argument.
    """
    import timm

    if size is not None:
        try:
            model: nn.Module = timm.create_model(arch, img_size=size, **kwargs)
            return model
        except TypeError as exc:
            if "img_size" not in str(exc):
                raise
    model = timm.create_model(arch, **kwargs)
    return model


TRAINING = ImageTraining()
