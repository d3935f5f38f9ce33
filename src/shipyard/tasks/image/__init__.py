"""Image classification, torch-free half: pixel statistics for the drift monitor."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from shipyard.tasks.base import DataKind, OutputKind, Task

CHANNEL_NAMES = ("red", "green", "blue")


class ImageTask(Task):
    """Images (uint8, rows x height x width x channels) in, one class out."""

    name: ClassVar[str] = "image"
    data_kind: ClassVar[DataKind] = DataKind.IMAGE
    model_families: ClassVar[tuple[str, ...]] = ("cnn", "timm")
    output_kinds: ClassVar[tuple[OutputKind, ...]] = (OutputKind.CLASSES,)
    exports_embedding: ClassVar[bool] = True

    def model_input(self, features: Any, schema: dict[str, Any]) -> np.ndarray:
        """Pixels 0..255, NHWC, as float32: scaling and resizing happen inside the graph."""
        return np.asarray(features, dtype=np.float32)

    def monitor_features(self, features: Any) -> Any:
        """Brightness, contrast, dark/bright share and (RGB) per-channel means per image.

        Cheap to compute on live requests, and they move when lighting, exposure or
        sensor noise shift — the drifts an image service sees first.
        """
        import pandas as pd

        images = np.asarray(features, dtype=np.float32) / 255.0
        if images.ndim != 4:
            raise ValueError(
                f"expected images shaped (rows, height, width, channels), got {images.shape}"
            )
        flat = images.reshape(len(images), -1)
        columns: dict[str, np.ndarray] = {
            "brightness": flat.mean(axis=1),
            "contrast": flat.std(axis=1),
            "dark_share": (flat < 0.1).mean(axis=1),
            "bright_share": (flat > 0.9).mean(axis=1),
        }
        if images.shape[-1] == 3:
            for index, channel in enumerate(CHANNEL_NAMES):
                columns[f"{channel}_mean"] = (
                    images[..., index].reshape(len(images), -1).mean(axis=1)
                )
        return pd.DataFrame({k: v.astype(np.float64) for k, v in columns.items()})
