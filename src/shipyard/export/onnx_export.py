"""Write a task model as ONNX (preprocessing inside, dynamic batch) and prove it matches PyTorch.

The exported graph takes the same raw features the task's training half produces (image
pixels 0..255 NHWC, table columns in schema order, token ids for text) and returns ``probabilities`` (classes,
softmax inside the graph) or ``value`` (numbers), plus ``embedding`` — the penultimate
vector that the drift monitor compares — for tasks that declare it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from shipyard.errors import UserError
from shipyard.tasks.base import OutputKind

INPUT = "features"
OPSET = 17


class ParityError(UserError):
    """The ONNX graph does not reproduce the PyTorch model within tolerance."""


class ExportGraph(nn.Module):
    """What the served graph computes: a model's head output made final, plus its embedding."""

    def __init__(self, model: nn.Module, kind: OutputKind, with_embedding: bool) -> None:
        super().__init__()
        self.model = model
        self.kind = kind
        self.with_embedding = with_embedding

    def forward(self, features: Tensor) -> tuple[Tensor, ...]:
        embedding = self.model.embed(features)  # type: ignore[operator]
        out = self.model.head(embedding)  # type: ignore[operator]
        final = torch.softmax(out, dim=1) if self.kind is OutputKind.CLASSES else out
        return (final, embedding) if self.with_embedding else (final,)


def output_names(kind: OutputKind, with_embedding: bool) -> list[str]:
    first = "probabilities" if kind is OutputKind.CLASSES else "value"
    return [first, "embedding"] if with_embedding else [first]


def export_onnx(
    model: nn.Module,
    sample: Tensor,
    path: Path,
    kind: OutputKind,
    *,
    with_embedding: bool,
    input_name: str = INPUT,
    dynamic_axes: tuple[int, ...] = (0,),
) -> list[str]:
    """Trace ``model`` on ``sample`` into ``path``; returns the output names.

    The input's ``dynamic_axes`` (the task's: the batch, and for token ids the sequence)
    stay dynamic in the graph; every output's batch axis does.
    """
    graph = ExportGraph(model, kind, with_embedding).eval()
    names = output_names(kind, with_embedding)
    axis_names = {0: "batch", 1: "sequence"}
    axes = {input_name: {a: axis_names.get(a, f"axis{a}") for a in dynamic_axes}}
    path.parent.mkdir(parents=True, exist_ok=True)
    staged = path.with_name(f".{path.name}.partial")
    with torch.no_grad():
        torch.onnx.export(
            graph,
            (sample,),
            str(staged),
            input_names=[input_name],
            output_names=names,
            dynamic_axes=axes | {name: {0: "batch"} for name in names},
            opset_version=OPSET,
            dynamo=False,  # the TorchScript exporter: parity ~1e-6 on these models, no onnxscript needed
        )
    staged.replace(path)
    return names


def run_onnx(path: Path, features: np.ndarray, threads: int = 1) -> dict[str, np.ndarray]:
    """Run the graph under ONNX Runtime on CPU; returns every output by name."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    graph_input = session.get_inputs()[0]
    dtype = np.int64 if graph_input.type == "tensor(int64)" else np.float32
    values = session.run(names, {graph_input.name: np.ascontiguousarray(features, dtype=dtype)})
    return dict(zip(names, values, strict=True))


@dataclass(frozen=True)
class Parity:
    """How far the ONNX outputs are from PyTorch's over a whole split."""

    rows: int
    max_abs_diff: float
    labels_equal: bool
    tolerance: float

    @property
    def passed(self) -> bool:
        return self.labels_equal and self.max_abs_diff <= self.tolerance

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"passed": self.passed}


@torch.no_grad()
def check_parity(
    model: nn.Module, path: Path, features: Tensor, kind: OutputKind, tolerance: float
) -> Parity:
    """Compare PyTorch and ONNX Runtime on every row of ``features`` (e.g. the test split)."""
    expected = ExportGraph(model, kind, with_embedding=False).eval()(features)[0].numpy()
    got = run_onnx(path, features.numpy())[output_names(kind, False)[0]]
    diff = float(np.max(np.abs(expected - got))) if len(expected) else 0.0
    labels_equal = (
        bool(np.array_equal(expected.argmax(1), got.argmax(1)))
        if kind is OutputKind.CLASSES
        else True
    )
    return Parity(
        rows=len(expected), max_abs_diff=diff, labels_equal=labels_equal, tolerance=tolerance
    )
