"""Image classification, torch-free half: pixel statistics for the drift monitor."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from shipyard.tasks.base import DataKind, OutputKind, Task

CHANNEL_NAMES = ("red", "green", "blue")
#: pixel values converted to float64 at a time by ``monitor_features`` (16 MB)
MONITOR_CHUNK_VALUES = 2_000_000


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

        images = np.asarray(features)
        if images.ndim != 4:
            raise ValueError(
                f"expected images shaped (rows, height, width, channels), got {images.shape}"
            )
        # This runs on every logged prediction (in the log writer), so it is written for
        # speed: chunks of float64 pixels (exact for 0..255 values, bounded memory for a
        # large image set) reduced with matrix products, which beat numpy's strided
        # reductions by 10-40x on the per-channel sums.
        rows, channels = len(images), images.shape[-1]
        per_image = int(np.prod(images.shape[1:]))
        names = ["brightness", "contrast", "dark_share", "bright_share"]
        if channels == 3:
            names += [f"{channel}_mean" for channel in CHANNEL_NAMES]
        out = np.empty((rows, len(names)), dtype=np.float64)
        ones_per_channel = np.ones(per_image // channels)
        step = max(1, MONITOR_CHUNK_VALUES // max(per_image, 1))
        # pixel < 0.1 * 255 (25.5) and > 0.9 * 255 (229.5), as integers for integer pixels
        # (a float threshold would make numpy convert every uint8 pixel first)
        dark, bright = (26, 229) if images.dtype.kind in "ui" else (25.5, 229.5)
        for start in range(0, rows, step):
            chunk = images[start : start + step].reshape(-1, per_image)
            flat = chunk.astype(np.float64)
            mean = flat.sum(axis=1) / per_image
            squares = np.einsum("ij,ij->i", flat, flat) / per_image
            block = out[start : start + len(chunk)]
            block[:, 0] = mean / 255.0
            block[:, 1] = np.sqrt(np.maximum(squares - mean * mean, 0.0)) / 255.0
            block[:, 2] = np.count_nonzero(chunk < dark, axis=1) / per_image
            block[:, 3] = np.count_nonzero(chunk > bright, axis=1) / per_image
            if channels == 3:
                sums = ones_per_channel @ flat.reshape(len(chunk), -1, channels)
                block[:, 4:] = sums / (per_image // channels * 255.0)
        return pd.DataFrame(out, columns=names)
