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
#: documents per decoding call (a batch decodes until its longest summary ends)
GENERATION_BATCH = 16


#: beside a seq2seq package's encoder: the decoding loop's spec (tasks.summarize.onnx_export)
GENERATION_SPEC = "generation.json"


def is_generator(path: Path) -> bool:
    """Whether ``path`` is a seq2seq package's entry graph: its ``generation.json`` names it
    as the encoder of a decoding loop."""
    import json

    spec = path.parent / GENERATION_SPEC
    if not spec.is_file():
        return False
    graphs = json.loads(spec.read_text(encoding="utf-8")).get("graphs", {})
    return bool(graphs.get("encoder") == path.name)


def onnx_session(path: Path, threads: int = 1) -> Any:
    """A CPU ONNX Runtime session with ``threads`` intra-op threads; for a seq2seq
    package's entry graph, its decoding loop behind the same interface
    (:class:`~shipyard.tasks.summarize.session.GenerationSession`)."""
    if is_generator(path):
        from shipyard.tasks.summarize.session import GenerationSession

        return GenerationSession(path.parent, intra_op_threads=threads)
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3  # ORT's warnings about unused initialisers are not the user's
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def predict_onnx(
    path: Path, features: np.ndarray, threads: int = 1, *, session: Any = None
) -> np.ndarray:
    """The first output (probabilities, value, or generated ids) for every row, in batches."""
    session = session or onnx_session(path, threads)
    input_name = session.get_inputs()[0].name
    output_name = session.get_outputs()[0].name
    batch = GENERATION_BATCH if is_generator(path) else BATCH
    parts = [
        session.run([output_name], {input_name: features[i : i + batch]})[0]
        for i in range(0, len(features), batch)
    ]
    if parts and len({p.shape[1:] for p in parts}) > 1:  # generated ids: pad to the longest
        width = max(p.shape[1] for p in parts)
        pad = int(getattr(session, "pad_id", 0))
        parts = [np.pad(p, ((0, 0), (0, width - p.shape[1])), constant_values=pad) for p in parts]
    return np.concatenate(parts) if parts else np.zeros((0,), dtype=np.float32)


def score_generated(
    path: Path, features: np.ndarray, split: Split, threads: int = 1
) -> dict[str, Any]:
    """ROUGE of the summaries the package generates (its own decoding settings) against the
    split's references, and the mean words per summary: the keys of training's scores."""
    from shipyard.tasks.summarize.metrics import summary_scores

    session = onnx_session(path, threads)
    summaries = session.decode(predict_onnx(path, features, threads, session=session))
    return summary_scores(summaries, [str(t) for t in split.target])


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
    if kind is OutputKind.TEXT:
        return score_generated(path, features, split, threads)
    outputs = torch.from_numpy(predict_onnx(path, features, threads))
    target = torch.as_tensor(split.target)
    if kind is OutputKind.CLASSES:
        # ``score`` computes a cross-entropy loss from logits; log-probabilities are
        # logits of the same softmax, so the loss equals the PyTorch model's.
        outputs = torch.log(outputs.clamp_min(1e-12))
        target = target.long()
    return score(kind, outputs, target, len(labels) if labels else None)
