"""Tabular prediction, torch-free half: the feature columns are the monitor features."""

from __future__ import annotations

from typing import Any, ClassVar

from shipyard.tasks.base import DataKind, OutputKind, Task


class TabularTask(Task):
    """Numeric feature columns in; a class (classification) or a number (regression) out."""

    name: ClassVar[str] = "tabular"
    data_kind: ClassVar[DataKind] = DataKind.TABLE
    model_families: ClassVar[tuple[str, ...]] = ("mlp",)
    output_kinds: ClassVar[tuple[OutputKind, ...]] = (OutputKind.CLASSES, OutputKind.NUMBER)

    def monitor_features(self, features: Any) -> Any:
        """The feature columns themselves, as float64."""
        return features.astype("float64").reset_index(drop=True)
