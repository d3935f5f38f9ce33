"""``shipyard data prepare``: source -> fixed splits -> content-addressed snapshot."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from omegaconf import DictConfig

from shipyard.config import to_container
from shipyard.data.dataset import Dataset
from shipyard.data.snapshot import (
    ID_LENGTH,
    Snapshot,
    SnapshotStore,
    content_hash,
    creator,
    now_iso,
)
from shipyard.data.sources import load_source
from shipyard.errors import ConfigError, DataError
from shipyard.tasks import Task, get_task
from shipyard.tasks.base import DataKind, OutputKind, Split, class_balance

# With fewer rows than this a split would be empty or meaningless.
MIN_ROWS = 10
MAX_SKIPPED_LISTED = 100


@dataclass(frozen=True)
class PrepareResult:
    snapshot: Snapshot
    reused: bool

    def summary(self) -> dict[str, Any]:
        manifest = self.snapshot.manifest
        return {
            "snapshot_id": self.snapshot.id,
            "reused": self.reused,
            "store": self.snapshot.store.url,
            "rows": manifest["rows"],
            "splits": {name: info["rows"] for name, info in manifest["splits"].items()},
            "skipped": manifest["skipped"]["count"],
        }


def prepare(cfg: DictConfig) -> PrepareResult:
    """Read the configured source, split it, and store (or reuse) its snapshot."""
    task = get_task(cfg.task.name)
    dataset = load_source(cfg.data)
    if dataset.kind is not task.data_kind:
        raise DataError(
            f"task {task.name!r} needs {task.data_kind.value} data but source "
            f"{cfg.data.source!r} gives {dataset.kind.value} data: pick a matching data=... option"
        )
    if dataset.output_kind not in task.output_kinds:
        can = " or ".join(k.value for k in task.output_kinds)
        raise DataError(
            f"task {task.name!r} predicts {can}, not a {dataset.output_kind.value} target: "
            "set data.target_type, or pick the task that fits the target"
        )
    splits = split_dataset(dataset, cfg.data)
    reference = build_reference(task, splits["train"], cfg.data.reference_rows, cfg.data.split_seed)
    manifest = build_manifest(dataset, splits, cfg, reference_rows=len(reference))
    store = SnapshotStore(str(cfg.paths.snapshots))
    snapshot, reused = store.write(splits, manifest, reference)
    return PrepareResult(snapshot=snapshot, reused=reused)


def split_dataset(dataset: Dataset, data_cfg: DictConfig) -> dict[str, Split]:
    """Fixed train/val/test splits: seeded, stratified by class where every class allows it."""
    from sklearn.model_selection import train_test_split

    val, test = float(data_cfg.val_fraction), float(data_cfg.test_fraction)
    if not (0 < val < 1 and 0 < test < 1 and val + test < 1):
        raise ConfigError(
            f"data.val_fraction and data.test_fraction must be in (0, 1) and sum below 1, got {val} and {test}"
        )
    rows = len(dataset)
    if rows < MIN_ROWS:
        raise DataError(
            f"the source has {rows} usable rows: need at least {MIN_ROWS} to make train/val/test splits"
        )
    # Row counts of the whole source, rounded up like scikit-learn does; computed here
    # because val / (1 - test) of the rest drifts by a row (0.15 / 0.85 * 170 > 30).
    test_rows, val_rows = _split_rows(test, rows), _split_rows(val, rows)
    if rows - test_rows - val_rows < 1:
        raise DataError(
            f"the source has {rows} rows: too few to keep any for training after {val_rows} "
            f"validation and {test_rows} test rows (lower data.val_fraction / data.test_fraction)"
        )
    seed = int(data_cfg.split_seed)
    index = np.arange(rows)
    stratify = _stratify(dataset, val, test)
    rest, test_index = train_test_split(
        index, test_size=test_rows, random_state=seed, stratify=stratify
    )
    rest_stratify = stratify[rest] if stratify is not None else None
    train_index, val_index = train_test_split(
        rest, test_size=val_rows, random_state=seed, stratify=rest_stratify
    )
    return {
        name: _take(dataset, np.sort(part))
        for name, part in (("train", train_index), ("val", val_index), ("test", test_index))
    }


def _split_rows(fraction: float, rows: int) -> int:
    return max(1, math.ceil(round(fraction * rows, 6)))


def _stratify(dataset: Dataset, val: float, test: float) -> np.ndarray | None:
    if dataset.output_kind is not OutputKind.CLASSES:
        return None
    counts = np.bincount(dataset.target)
    smallest = min(val, test) * (1 - max(val, test))
    # Stratify only when every class can appear in every split.
    return dataset.target if counts.min() * smallest >= 1 else None


def _take(dataset: Dataset, rows: np.ndarray) -> Split:
    if dataset.kind is DataKind.IMAGE:
        features = np.ascontiguousarray(dataset.features[rows])
    else:
        features = dataset.features.iloc[rows].reset_index(drop=True)
    return Split(features=features, target=dataset.target[rows])


def build_reference(task: Task, train: Split, max_rows: int, seed: int) -> Any:
    """Monitor features of a seeded sample of the training split, plus the target."""
    rows = len(train)
    picked = np.arange(rows)
    if rows > max_rows:
        picked = np.sort(np.random.default_rng(seed).choice(rows, size=max_rows, replace=False))
    if isinstance(train.features, np.ndarray):
        sample: Any = train.features[picked]
    else:
        sample = train.features.iloc[picked]
    reference = task.monitor_features(sample)
    reference["target"] = train.target[picked]
    return reference


def build_manifest(
    dataset: Dataset, splits: dict[str, Split], cfg: DictConfig, *, reference_rows: int
) -> dict[str, Any]:
    """Everything a later stage needs to know about the snapshot, hashed over the data."""
    target_schema: dict[str, Any] = {
        "name": dataset.target_name,
        "kind": dataset.output_kind.value,
        "labels": dataset.labels,
    }
    if dataset.kind is DataKind.IMAGE:
        height, width, channels = (int(n) for n in dataset.features.shape[1:])
        features_schema: dict[str, Any] = {
            "kind": "image",
            "height": height,
            "width": width,
            "channels": channels,
            "dtype": "uint8",
        }
    elif dataset.kind is DataKind.TEXT:
        features_schema = {"kind": "text", "column": "text", "dtype": "str"}
    else:
        features_schema = {
            "kind": "table",
            "columns": [{"name": str(c), "dtype": "float64"} for c in dataset.features.columns],
        }
    schema = {"features": features_schema, "target": target_schema}
    # The drift reference is part of the snapshot, so what shapes it (the task's monitor
    # features, the sample size) is part of the id: changing either must not reuse a
    # snapshot whose reference was built differently.
    meaning = {
        "kind": dataset.kind.value,
        "schema": schema,
        "task": str(cfg.task.name),
        "reference_rows": int(cfg.data.reference_rows),
    }
    digest = content_hash(splits, meaning)
    data_cfg = to_container(cfg)["data"]
    return {
        "id": digest[:ID_LENGTH],
        "hash": f"sha256:{digest}",
        "created_at": now_iso(),
        "created_by": creator(),
        "task": cfg.task.name,
        "kind": dataset.kind.value,
        "source": dataset.source,
        "data_config": data_cfg,
        "schema": schema,
        "rows": len(dataset),
        "splits": {name: _split_info(split, dataset) for name, split in splits.items()},
        "split": {
            "val_fraction": float(cfg.data.val_fraction),
            "test_fraction": float(cfg.data.test_fraction),
            "seed": int(cfg.data.split_seed),
        },
        "skipped": {"count": len(dataset.skipped), "files": dataset.skipped[:MAX_SKIPPED_LISTED]},
        "reference": {"rows": reference_rows, "path": "reference/features.parquet"},
    }


def _split_info(split: Split, dataset: Dataset) -> dict[str, Any]:
    info: dict[str, Any] = {"rows": len(split)}
    if dataset.labels is not None:
        info["class_balance"] = class_balance(split.target, dataset.labels)
    elif dataset.output_kind is OutputKind.TEXT:
        words = np.array([len(str(t).split()) for t in split.target], dtype=np.float64)
        info["target_words"] = {
            "mean_words": round(float(words.mean()), 1),
            "min_words": int(words.min()),
            "max_words": int(words.max()),
        }
    else:
        values = split.target.astype(np.float64)
        info["target_stats"] = {
            "mean": float(values.mean()),
            "std": float(values.std()),
            "min": float(values.min()),
            "max": float(values.max()),
        }
    return info
