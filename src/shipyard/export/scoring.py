"""Scoring an ONNX graph on a snapshot split under ONNX Runtime.

The int8 graph's metrics and the promotion gate's re-scoring of a champion on a
candidate's test split both go through here, with the same metric code as training
(:func:`shipyard.train.metrics.score`), so every number compared is computed one way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from shipyard.export.package import input_schema
from shipyard.tasks import get_task
from shipyard.tasks.base import OutputKind, Split

BATCH = 512


def onnx_session(path: Path, threads: int = 1) -> Any:
    """A CPU ONNX Runtime session with ``threads`` intra-op threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3  # ORT's warnings about unused initialisers are not the user's
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def predict_onnx(path: Path, features: np.ndarray, threads: int = 1) -> np.ndarray:
    """The first output (probabilities or value) for every row, in batches."""
    session = onnx_session(path, threads)
    input_name = session.get_inputs()[0].name
    output_name = session.get_outputs()[0].name
    parts = [
        session.run([output_name], {input_name: features[i : i + BATCH]})[0]
        for i in range(0, len(features), BATCH)
    ]
    return np.concatenate(parts) if parts else np.zeros((0,), dtype=np.float32)


def score_onnx(
    path: Path, task_name: str, split: Split, schema: dict[str, Any], threads: int = 1
) -> dict[str, Any]:
    """Metrics of the graph at ``path`` on ``split`` (same keys as training's ``score``)."""
    import torch

    from shipyard.train.metrics import score

    kind = OutputKind(schema["target"]["kind"])
    labels = schema["target"].get("labels")
    # What the package carries for its input (a tokenizer) lies beside the graph.
    features = get_task(task_name).model_input(split.features, input_schema(path.parent, schema))
    outputs = torch.from_numpy(predict_onnx(path, features, threads))
    target = torch.as_tensor(split.target)
    if kind is OutputKind.CLASSES:
        # ``score`` computes a cross-entropy loss from logits; log-probabilities are
        # logits of the same softmax, so the loss equals the PyTorch model's.
        outputs = torch.log(outputs.clamp_min(1e-12))
        target = target.long()
    return score(kind, outputs, target, len(labels) if labels else None)
