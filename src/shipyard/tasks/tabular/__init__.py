"""Tabular prediction, torch-free half: the feature columns are the monitor features."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from shipyard.tasks.base import DataKind, OutputKind, Task


class TabularTask(Task):
    """Numeric feature columns in; a class (classification) or a number (regression) out."""

    name: ClassVar[str] = "tabular"
    data_kind: ClassVar[DataKind] = DataKind.TABLE
    model_families: ClassVar[tuple[str, ...]] = ("mlp",)
    output_kinds: ClassVar[tuple[OutputKind, ...]] = (OutputKind.CLASSES, OutputKind.NUMBER)
    exports_embedding: ClassVar[bool] = False

    def model_input(self, features: Any, schema: dict[str, Any]) -> np.ndarray:
        """The schema's feature columns, in schema order, as float32 (NaN stays NaN: the
        graph fills it with the training mean)."""
        columns = [c["name"] for c in schema["features"]["columns"]]
        return np.asarray(features[columns].to_numpy(dtype=np.float32))

    def monitor_features(self, features: Any) -> Any:
        """The feature columns themselves, as float64."""
        return features.astype("float64").reset_index(drop=True)
