"""The parts of a package's manifest that do not depend on what the model computes: the
files its input needs (a tokenizer), the input spec, lineage and version. ``build.py``
(one graph) and ``seq2seq.py`` (a decoding loop) assemble manifests from them, one way."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from shipyard.export.package import TOKENIZER_FILE, Lineage, TensorSpec, TokenizerSpec
from shipyard.tasks import Task
from shipyard.track import tracking
from shipyard.train.evaluate import RunModel


def input_files(loaded: RunModel, staging: Path) -> list[str]:
    """Write what the training half says the package needs for its input (text: the
    ``tokenizer.json`` of the model's tokenizer); their names, for the checksums."""
    write = getattr(loaded.half, "package_files", None)
    return list(write(staging)) if write is not None else []


def tokenizer_spec(staging: Path, files: list[str]) -> TokenizerSpec | None:
    """The manifest's view of the package's tokenizer: its file and the limits written in it."""

    if TOKENIZER_FILE not in files:
        return None
    data = json.loads((staging / TOKENIZER_FILE).read_text(encoding="utf-8"))
    return TokenizerSpec(
        file=TOKENIZER_FILE,
        max_length=int(data["truncation"]["max_length"]),
        pad_id=int(data["padding"]["pad_id"]),
    )


def input_spec(task: Task, schema: dict[str, Any]) -> TensorSpec:
    features = schema["features"]
    if features.get("kind") == "text":
        return TensorSpec(
            name=task.input_name,
            dtype=task.input_dtype,
            shape=[None, None],
            description="token ids (rows, tokens) from the package's tokenizer.json, padded "
            "with its pad id to the longest text (the graph masks the padding)",
        )
    if features.get("kind") == "image":
        shape = [None, int(features["height"]), int(features["width"]), int(features["channels"])]
        return TensorSpec(
            name="features",
            dtype="float32",
            shape=shape,
            description="pixels 0..255, NHWC (the graph scales, normalises and resizes)",
        )
    columns = [str(c["name"]) for c in features["columns"]]
    return TensorSpec(
        name="features",
        dtype="float32",
        shape=[None, len(columns)],
        columns=columns,
        description="feature columns in this order; NaN is filled with the training mean",
    )


def lineage(cfg: DictConfig, loaded: RunModel, run_id: str) -> Lineage:
    tags = loaded.run.data.tags
    return Lineage(
        run_id=run_id,
        snapshot_id=loaded.snapshot.id,
        snapshot_store=tags.get(tracking.TAG_SNAPSHOT_STORE) or loaded.snapshot.store.url,
        experiment_id=str(loaded.run.info.experiment_id),
        tracking_uri=tracking.tracking_uri(cfg),
        git_commit=tags.get(tracking.TAG_COMMIT),
        config_fingerprint=tags.get(tracking.TAG_FINGERPRINT),
    )


def finite(value: Any) -> bool:
    """A scalar metric JSON can carry (r2 of a single row is NaN)."""
    return isinstance(value, float | int) and math.isfinite(value)


def version() -> str:
    from shipyard import __version__

    return __version__
