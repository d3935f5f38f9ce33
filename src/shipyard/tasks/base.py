"""The Task contract: Shipyard's one extension point.

A task says how a kind of data becomes model input, which model fits it, what the
model's output means and what the drift monitor compares. It has two halves, because the
serving side must not import torch:

* :class:`Task` (this module, torch-free): the data kind it accepts, the model families
  that fit it, the *monitor features* computed from raw inputs (the same function builds
  the snapshot's drift reference and, later, describes live traffic — so there is no
  training/serving skew), and later the request schema and response formatting.
* :class:`TrainingHalf` (``tasks/<name>/training.py``, imports torch): turns a snapshot
  split into tensors and builds the model with its preprocessing inside, so that the
  exported graph carries it.

What differs between tasks is declared, not asked for: the :class:`OutputKind` of a
snapshot's target decides loss, metrics, response shape and the monitor's reference, so
no room around a task asks "which task is this?".
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    from omegaconf import DictConfig
    from torch import Tensor, nn


class OutputKind(StrEnum):
    """What a model predicts; everything downstream follows from it."""

    CLASSES = "classes"  # a label and class probabilities
    NUMBER = "number"  # a regression value
    TEXT = "text"  # generated text (summarisation)


def primary_metric(kind: OutputKind) -> tuple[str, str]:
    """The metric that ranks models of this kind, and whether higher is better ("max"/"min").

    Torch-free: the promotion gate and the server compare models with it.
    """
    if kind is OutputKind.TEXT:
        return ("rougeL", "max")
    return ("accuracy", "max") if kind is OutputKind.CLASSES else ("mae", "min")


class DataKind(StrEnum):
    """How a snapshot stores its features."""

    IMAGE = "image"  # uint8 array, shape (rows, height, width, channels)
    TABLE = "table"  # a table of named columns (Parquet)
    TEXT = "text"  # a table with one string column, ``text`` (Parquet)


@dataclass(frozen=True)
class Split:
    """One split of a snapshot, in memory: features plus the target."""

    features: Any  # np.ndarray for images, pd.DataFrame for tables and text
    target: np.ndarray

    def __len__(self) -> int:
        return len(self.target)


class Task(ABC):
    """The torch-free half of a task. Subclasses are registered by name in ``shipyard.tasks``."""

    name: ClassVar[str]
    data_kind: ClassVar[DataKind]
    #: model families (``model.family``) that this task can build
    model_families: ClassVar[tuple[str, ...]]
    #: output kinds this task supports (tabular: classes or number)
    output_kinds: ClassVar[tuple[OutputKind, ...]]
    #: whether the exported graph has a second output, ``embedding`` (the penultimate
    #: vector), for the drift monitor: images are compared through it, tables through
    #: their own columns (the monitor features), so they do not need it
    exports_embedding: ClassVar[bool] = False
    #: the graph's one input: its name, numpy dtype and dynamic axes (the batch, and for
    #: token ids the sequence, whose length follows the longest text of a batch)
    input_name: ClassVar[str] = "features"
    input_dtype: ClassVar[str] = "float32"
    dynamic_axes: ClassVar[tuple[int, ...]] = (0,)

    @abstractmethod
    def monitor_features(self, features: Any) -> pd.DataFrame:
        """Per-row numbers that the drift monitor compares with the reference.

        Tables: the feature columns themselves. Images: pixel statistics (brightness,
        contrast, per-channel means). Embeddings join these at export time.
        """

    @abstractmethod
    def model_input(self, features: Any, schema: dict[str, Any]) -> np.ndarray:
        """Raw features (a snapshot split's, or a request's) as the graph's input
        (``input_dtype``: float32 pixels or columns; int64 token ids for text).

        Torch-free, so that training (through ``TrainingHalf.to_tensors``), the promotion
        gate and the server build the model input with the same code. ``schema`` is the
        snapshot's schema, completed by :func:`shipyard.export.package.input_schema` with
        what a model package carries for its input (text: ``schema["tokenizer"]``, the path
        of the package's ``tokenizer.json``).
        """

    def training(self) -> TrainingHalf:
        """The training half, imported only when training (it imports torch)."""
        import importlib

        module = importlib.import_module(f"shipyard.tasks.{self.name}.training")
        half: TrainingHalf = module.TRAINING
        return half


class TrainingHalf(Protocol):
    """The torch half of a task, used by ``train/`` and ``export/``."""

    def to_tensors(self, split: Split, schema: dict[str, Any]) -> tuple[Tensor, Tensor]:
        """Features and target as tensors, in the model's input dtype (float32 features)."""
        ...

    def build_model(self, model_cfg: DictConfig, schema: dict[str, Any], train: Split) -> nn.Module:
        """The network with its preprocessing inside (scaling, standardisation, resizing).

        ``train`` is the training split, so statistics (a table's means) come from it
        and only from it. The module maps raw features to logits (or a value).
        """
        ...


def class_balance(target: np.ndarray, labels: list[str]) -> dict[str, int]:
    """Rows per class label."""
    import numpy as np

    counts = np.bincount(target.astype("int64"), minlength=len(labels))
    return {label: int(n) for label, n in zip(labels, counts, strict=True)}
