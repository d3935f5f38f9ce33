"""The drift reference of a model package: what "normal" looked like at training time.

Three parts, all from the training split of the package's snapshot (found through the
manifest's lineage, so the monitor never guesses which data a model saw):

* **monitor features** — the snapshot's own reference (:meth:`Snapshot.reference`), built
  at prepare time by the same ``Task.monitor_features`` that describes live traffic;
* **outputs** — the package's ONNX graph run on a seeded sample of the training rows:
  the predicted label and its confidence (classes) or the predicted value (numbers); a
  model that generates text has none (a text is not a column a drift test can compare,
  and decoding the whole sample would take minutes), so only its embedding is computed —
  the decoding session then runs the encoder alone;
* **embeddings** — the graph's ``embedding`` output on those same rows, when it has one.

Outputs and embeddings need the model, so they are computed here, once per package
(keyed by the manifest's SHA-256, the graph's precision, the sample size and seed), and
cached as ``<home>/monitoring/reference/<key>.npz``: written to a temporary file and
renamed, so concurrent drift runs never read half a file.

Both parts hold the same number of rows (the smaller of the sample size asked for, the
snapshot reference and the training split): the drift tests are univariate per column,
so the rows need not be the same ones, only drawn from the same split.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from shipyard.data.snapshot import Snapshot, SnapshotStore
from shipyard.errors import NotFoundError, UserError
from shipyard.export.package import MANIFEST, ModelPackage, input_schema, sha256_file
from shipyard.tasks import get_task
from shipyard.tasks.base import OutputKind

#: rows per ONNX Runtime call when scoring the reference sample
BATCH = 256
#: the snapshot reference's target column (prepare adds it beside the monitor features)
TARGET_COLUMN = "target"
#: the graph output the embedding drift compares
EMBEDDING = "embedding"


@dataclass(frozen=True)
class Reference:
    """The reference sample: monitor features, model outputs and (maybe) embeddings."""

    features: pd.DataFrame
    outputs: pd.DataFrame  # label + confidence, or value (the same columns as the log's)
    embeddings: np.ndarray | None
    snapshot_id: str
    rows: int
    cache: Path


def find_snapshot(cfg: DictConfig, package: ModelPackage) -> Snapshot:
    """The package's snapshot: in the store its lineage names, else in ``paths.snapshots``
    (a package copied to another machine, whose store path no longer exists)."""
    lineage = package.manifest.lineage
    stores = [lineage.snapshot_store, str(cfg.paths.snapshots)]
    for store in dict.fromkeys(stores):
        with contextlib.suppress(NotFoundError, OSError, ValueError):
            return SnapshotStore(store).get(lineage.snapshot_id)
    raise UserError(
        f"the snapshot {lineage.snapshot_id} that package {package.path} was trained on is in "
        f"neither {lineage.snapshot_store} nor {cfg.paths.snapshots}: the drift reference "
        "needs it (copy the snapshot folder there, or set paths.snapshots)"
    )


def load_reference(
    cfg: DictConfig,
    package: ModelPackage,
    *,
    precision: str = "fp32",
    rows: int = 1000,
    seed: int = 0,
) -> Reference:
    """The reference for ``package`` (outputs and embeddings from the cache when present)."""
    if rows < 1:
        raise UserError(f"monitor.reference_rows must be at least 1, got {rows}")
    snapshot = find_snapshot(cfg, package)
    features = snapshot.reference().drop(columns=[TARGET_COLUMN], errors="ignore")
    train = snapshot.load("train")
    size = min(rows, len(features), len(train))
    if size < 1:
        raise UserError(f"snapshot {snapshot.id} has an empty training split or reference")
    rng = np.random.default_rng(seed)
    feature_rows = np.sort(rng.choice(len(features), size=size, replace=False))
    features = features.iloc[feature_rows].reset_index(drop=True)

    key = f"{sha256_file(package.path / MANIFEST)[:16]}-{precision}-{size}-{seed}"
    cache = Path(str(cfg.paths.home)) / "monitoring" / "reference" / f"{key}.npz"
    arrays = _read_cache(cache)
    if arrays is None:
        train_rows = np.sort(np.random.default_rng(seed + 1).choice(len(train), size, False))
        arrays = _score(package, snapshot, train.features, train_rows, precision)
        _write_cache(cache, arrays)
    outputs = _outputs_frame(package, arrays)
    embeddings = arrays.get("embedding")
    return Reference(features, outputs, embeddings, snapshot.id, size, cache)


def _score(
    package: ModelPackage, snapshot: Snapshot, features: Any, rows: np.ndarray, precision: str
) -> dict[str, np.ndarray]:
    """The graph's outputs on the sampled training rows, as the server computes them."""
    from shipyard.serve.runtime import ServedModel

    task = get_task(package.manifest.task)
    if isinstance(features, pd.DataFrame):
        sample: Any = features.iloc[rows].reset_index(drop=True)
    else:
        sample = np.asarray(features)[rows]
    model = ServedModel.load(package, name="reference", version="0", precision=precision)
    inputs = task.model_input(sample, input_schema(package.path, snapshot.manifest["schema"]))
    # A model that generates text: ask for the embedding only (the encoder), not the texts.
    generates = OutputKind(package.manifest.output_kind) is OutputKind.TEXT
    wanted = [EMBEDDING] if generates and EMBEDDING in model.output_names else None
    if generates and wanted is None:
        return {}
    parts: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(inputs), BATCH):
        answers = model.run(inputs[start : start + BATCH], wanted)
        for name, value in answers.items():
            parts.setdefault(name, []).append(np.asarray(value))
    outputs = {name: np.concatenate(chunks) for name, chunks in parts.items()}
    arrays: dict[str, np.ndarray] = {}
    if "probabilities" in outputs:
        probabilities = outputs["probabilities"].astype(np.float64)
        arrays["label_index"] = probabilities.argmax(axis=1).astype(np.int64)
        arrays["confidence"] = probabilities.max(axis=1)
    if "value" in outputs:
        arrays["value"] = outputs["value"].astype(np.float64).reshape(len(inputs), -1)[:, 0]
    if "embedding" in outputs:
        arrays["embedding"] = outputs["embedding"].astype(np.float64)
    return arrays


def _outputs_frame(package: ModelPackage, arrays: dict[str, np.ndarray]) -> pd.DataFrame:
    manifest = package.manifest
    kind = OutputKind(manifest.output_kind)
    if kind is OutputKind.TEXT or not arrays.keys() & {"label_index", "value"}:
        # no output column to compare (generated text): the frame has the sample's rows only
        rows = len(arrays[EMBEDDING]) if EMBEDDING in arrays else 0
        return pd.DataFrame(index=pd.RangeIndex(rows))
    if kind is OutputKind.CLASSES and "label_index" in arrays:
        labels = manifest.labels or []
        return pd.DataFrame(
            {
                "label": [labels[i] for i in arrays["label_index"].tolist()],
                "confidence": arrays["confidence"],
            }
        )
    return pd.DataFrame({"value": arrays["value"]})


def _read_cache(path: Path) -> dict[str, np.ndarray] | None:
    """The cached arrays, or None when absent or unreadable (then they are recomputed)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}
    except (OSError, ValueError, KeyError):
        return None


def _write_cache(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write to a temporary file in the same folder, then rename: atomic on one filesystem."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".npz", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            np.savez(file, **arrays)  # type: ignore[arg-type]
        Path(staging).replace(path)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise
