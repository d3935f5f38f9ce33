"""What a source produces: features, a target and what the target means."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shipyard.errors import DataError
from shipyard.tasks.base import DataKind, OutputKind

# A target with at most this many distinct integers counts as classes under target_type=auto.
AUTO_MAX_CLASSES = 20


@dataclass
class Dataset:
    """Rows of one source before splitting.

    ``features`` is a uint8 array (rows, height, width, channels) for images or a
    pandas DataFrame of named columns for tables; ``target`` holds class indices (int64)
    into ``labels`` for classes, or float32 values for numbers.
    """

    kind: DataKind
    features: Any
    target: np.ndarray
    target_name: str
    output_kind: OutputKind
    labels: list[str] | None
    source: dict[str, Any]
    skipped: list[dict[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.target)


def encode_target(
    values: Any, target_name: str, target_type: str
) -> tuple[np.ndarray, OutputKind, list[str] | None]:
    """Turn raw target values into class indices (with labels) or float32 numbers.

    ``target_type`` is ``classes``, ``number``, ``text`` or ``auto``: text, booleans and
    integers with few distinct values are classes; everything else numeric is a number.
    ``text`` (summaries: generated, not chosen) is never guessed by ``auto``; it keeps
    each value as a string, in a fixed-width numpy unicode array (saved without pickle).
    """
    import pandas as pd

    series = pd.Series(values)
    if series.isna().any():
        raise DataError(
            f"target column {target_name!r} has {int(series.isna().sum())} missing values: "
            "drop those rows or choose another target"
        )
    numeric = pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)
    if target_type == "auto":
        integral = numeric and bool(np.all(np.mod(series.to_numpy(dtype=float), 1) == 0))
        few = series.nunique() <= AUTO_MAX_CLASSES
        target_type = "classes" if (not numeric or (integral and few)) else "number"
    if target_type == "number":
        if not numeric:
            raise DataError(
                f"target column {target_name!r} is not numeric, so it cannot be a number target: "
                "use data.target_type=classes"
            )
        return series.to_numpy(dtype=np.float32), OutputKind.NUMBER, None
    if target_type == "text":
        texts = [str(v) for v in series.tolist()]
        empty = sum(1 for t in texts if not t.strip())
        if empty:
            raise DataError(
                f"target column {target_name!r} has {empty} empty texts: a text target needs a "
                "reference text (a summary) on every row"
            )
        return np.array(texts, dtype=np.str_), OutputKind.TEXT, None
    if target_type != "classes":
        raise DataError(
            f"data.target_type must be classes, number, text or auto, not {target_type!r}"
        )
    uniques = sorted(series.unique().tolist(), key=lambda v: (str(type(v)), v))
    if len(uniques) < 2:
        raise DataError(
            f"target column {target_name!r} has a single class ({uniques}): need at least two"
        )
    labels = [str(v) for v in uniques]
    index = {v: i for i, v in enumerate(uniques)}
    return series.map(index).to_numpy(dtype=np.int64), OutputKind.CLASSES, labels
