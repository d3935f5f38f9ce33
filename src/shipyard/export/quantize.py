"""int8 graphs with ONNX Runtime's quantisation tools.

Every graph gets **static** QDQ quantisation: activation ranges are calibrated on
training rows, so the int8 graph is a fixed function of each row. Dynamic quantisation
(activation ranges computed per call) was measured too and refused:

* it makes a row's answer depend on the other rows in its batch: the range of a
  DynamicQuantizeLinear covers the whole batch, so under the server's batcher one
  request with large values changed the labels of the other requests batched with it
  (found while testing the batcher; ``serve/runtime.py`` still detects such graphs and
  runs their requests one by one);
* digits CNN: it turns each Conv into ConvInteger, which has no fast CPU kernel: 3.4x
  (batch 1) to 7.1x (batch 128) *slower* than fp32. Static QDQ runs as QLinearConv:
  0.86x of fp32 at batch 128, 2.7x smaller;
* wine MLP: static and dynamic are within a microsecond of each other (0.91x of fp32 at
  batch 128), with the same test accuracy.

Measured with ``benchmarks/bench_quantization.py`` (AMD EPYC, 1 ORT thread;
``docs/benchmarks.md``, "int8 vs fp32").

uint8 activations with int8 weights (U8S8) were faster than S8S8 on this x86 CPU, and
per-channel weight scales cost ~1% here but protect accuracy on larger convolutional
networks, so static uses both.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from shipyard.errors import ConfigError

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from shipyard.tasks.base import Task

#: values of the root ``quantize`` key besides null
QUANTIZE_CHOICES = ("int8",)
Method = Literal["static", "dynamic"]
METHODS: tuple[Method, ...] = ("static", "dynamic")
#: ONNX ops whose presence makes a graph "convolutional"
# What static quantisation may turn into int8: the network's compute and the ops between
# them that ORT fuses into int8 chains (QLinearConv -> MaxPool -> QLinearGlobalAveragePool).
# Not the preprocessing (IsNaN/Where/Sub/Div/Transpose/Resize): one int8 scale over raw
# columns as different as wine's proline (~1000) and hue (~1) erases the small ones — the
# wine MLP fell from 1.00 to 0.70 test accuracy when they were quantised. Not Softmax,
# Add or Mul either, so probabilities and regression values (Rescale) stay float.
STATIC_OPS = [
    "Conv",
    "ConvTranspose",
    "MatMul",
    "Gemm",
    "Relu",
    "Clip",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "Flatten",
]
CALIBRATION_BATCH = 32


def check_quantize(value: Any) -> str | None:
    """The root ``quantize`` value, or a one-line :class:`ConfigError` listing the choices."""
    if value is None or value in QUANTIZE_CHOICES:
        return None if value is None else str(value)
    choices = ", ".join([*QUANTIZE_CHOICES, "null"])
    raise ConfigError(f"unknown quantize {value!r}: choose one of {choices} (quantize=int8)")


def quantize_int8(
    fp32: Path,
    out: Path,
    calibration: np.ndarray,
    method: Method = "static",
    input_name: str = "features",
) -> Method:
    """Write the int8 version of the graph at ``fp32`` to ``out``; returns the method used.

    ``calibration`` holds model-input rows (training split) for static quantisation; the
    graph is first run through ``quant_pre_process`` (shape inference and ORT's graph
    optimisations, e.g. folding batch norm into the convolutions), as ORT recommends.
    """
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if method not in METHODS:
        raise ConfigError(f"unknown quantisation method {method!r}: choose one of {METHODS}")
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".quant-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        # ORT's symbolic shape inference gives up on a transformer's dynamic sequence axis
        # (capped at its position limit) and then drops its partial model into the working
        # directory; ONNX's own shape inference is enough for the quantiser there.
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=_dynamic_beyond_batch(fp32))
        if method == "static":
            quantize_static(
                str(prepared),
                str(out),
                _Rows(calibration, input_name),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                op_types_to_quantize=STATIC_OPS,
            )
        else:
            quantize_dynamic(str(prepared), str(out), weight_type=QuantType.QInt8)
    return method


def _dynamic_beyond_batch(path: Path) -> bool:
    """Whether a graph input has a dynamic axis besides the batch (token ids' sequence)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return any(
        dim.dim_param or not dim.HasField("dim_value")
        for graph_input in model.graph.input
        for dim in list(graph_input.type.tensor_type.shape.dim)[1:]
    )


class _Rows(CalibrationDataReader):
    """Calibration rows in batches of ``CALIBRATION_BATCH``."""

    def __init__(self, rows: np.ndarray, input_name: str) -> None:
        dtype = np.int64 if rows.dtype.kind in "iu" else np.float32
        self._batches = [
            {input_name: np.ascontiguousarray(rows[i : i + CALIBRATION_BATCH], dtype=dtype)}
            for i in range(0, len(rows), CALIBRATION_BATCH)
        ]
        self._iter: Iterator[dict[str, np.ndarray]] = iter(self._batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._iter, None)

    def rewind(self) -> None:
        self._iter = iter(self._batches)


def calibration_rows(cfg: DictConfig, task: Task, train: Any, schema: dict[str, Any]) -> np.ndarray:
    """``export.calibration_rows`` training rows (a seeded sample): static int8 quantisation
    sets its activation ranges from them, so they must come from the data the model saw."""
    wanted = int(cfg.export.calibration_rows)
    if wanted < 1:
        raise ConfigError(f"export.calibration_rows must be at least 1, got {wanted}")
    rows = task.model_input(train.features, schema)
    order = np.random.default_rng(int(cfg.seed)).permutation(len(rows))[:wanted]
    return np.asarray(rows[np.sort(order)])
