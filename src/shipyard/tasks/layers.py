"""Building blocks shared by the tasks' training halves (imports torch).

Every model is ``TaskModel(preprocess, encoder, head)``: ``preprocess`` turns raw
features into network input *inside the model*, so the exported ONNX graph carries it and
serving never re-implements it; ``encoder`` gives the penultimate embedding (the drift
monitor's second output); ``head`` maps it to logits or a value.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class TaskModel(nn.Module):
    """Raw features in, logits (classes) or a value (number) out."""

    def __init__(self, preprocess: nn.Module, encoder: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.preprocess = preprocess
        self.encoder = encoder
        self.head = head

    def embed(self, features: Tensor) -> Tensor:
        """The penultimate representation, one vector per row."""
        return self.encoder(self.preprocess(features))  # type: ignore[no-any-return]

    def forward(self, features: Tensor) -> Tensor:
        return self.head(self.embed(features))  # type: ignore[no-any-return]


class ImagePreprocess(nn.Module):
    """Pixels (float, 0..255, rows x height x width x channels) to normalised NCHW input."""

    mean: Tensor
    std: Tensor

    def __init__(
        self, mean: list[float], std: list[float], channels: int, size: tuple[int, int] | None
    ) -> None:
        super().__init__()
        self.size = size
        self.register_buffer("mean", _per_channel(mean, channels))
        self.register_buffer("std", _per_channel(std, channels))

    def forward(self, images: Tensor) -> Tensor:
        x = images.permute(0, 3, 1, 2) / 255.0
        if self.size is not None and tuple(x.shape[-2:]) != self.size:
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)
        return (x - self.mean) / self.std


def _per_channel(values: list[float], channels: int) -> Tensor:
    """Statistics shaped (1, C, 1, 1); one value broadcasts, RGB stats average for greyscale."""
    tensor = torch.tensor([float(v) for v in values], dtype=torch.float32)
    if len(tensor) != channels:
        tensor = tensor.mean().repeat(channels)
    return tensor.view(1, channels, 1, 1)


class Standardize(nn.Module):
    """(x - mean) / std with training-split statistics as buffers; NaN becomes the mean."""

    mean: Tensor
    std: Tensor

    def __init__(self, mean: Tensor, std: Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean.to(torch.float32))
        self.register_buffer(
            "std", torch.where(std > 0, std, torch.ones_like(std)).to(torch.float32)
        )

    def forward(self, x: Tensor) -> Tensor:
        x = torch.where(torch.isnan(x), self.mean.expand_as(x), x)
        return (x - self.mean) / self.std


class Rescale(nn.Module):
    """y * scale + shift: lets a regression head learn standardised targets."""

    shift: Tensor
    scale: Tensor

    def __init__(self, shift: float, scale: float) -> None:
        super().__init__()
        self.register_buffer("shift", torch.tensor(float(shift)))
        self.register_buffer("scale", torch.tensor(float(scale) if scale > 0 else 1.0))

    def forward(self, x: Tensor) -> Tensor:
        return (x * self.scale + self.shift).squeeze(-1)
