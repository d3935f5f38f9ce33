"""int8 graphs with ONNX Runtime's quantisation tools.

Which kind of quantisation a graph gets follows from what it computes, not from which
task it is:

* graphs with convolutions get **static** QDQ quantisation: activation ranges are
  calibrated on training rows, so every convolution runs as an int8 kernel end to end;
* graphs without (the tabular MLP) get **dynamic** quantisation: int8 weights, activation
  ranges computed per call, no calibration data needed.

Both were measured on both bundled models (``benchmarks/bench_quantization.py``; AMD
EPYC, 1 ORT thread; ``docs/benchmarks.md``, "int8 vs fp32"). Test accuracy was the same
for every variant (1.00); what decided was latency:

* digits CNN: dynamic quantisation turns each Conv into ConvInteger, which has no fast
  CPU kernel: 3.4x (batch 1) to 7.1x (batch 128) *slower* than fp32. Static QDQ runs as
  QLinearConv: 0.86x of fp32 at batch 128, 2.7x smaller.
* wine MLP: static and dynamic are within a microsecond of each other (0.90x of fp32 at
  batch 128, 1.2-1.3x at batch 1, where fp32 takes 9 µs); dynamic needs no calibration
  sample and keeps its loss closest to fp32's, so the MLP gets dynamic.

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
CONV_OPS = frozenset({"Conv", "ConvTranspose"})
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


def default_method(fp32: Path) -> Method:
    """Static for graphs with convolutions, dynamic otherwise (see the module docstring)."""
    import onnx

    ops = {node.op_type for node in onnx.load(str(fp32), load_external_data=False).graph.node}
    return "static" if ops & CONV_OPS else "dynamic"


def quantize_int8(
    fp32: Path, out: Path, calibration: np.ndarray, method: Method | None = None
) -> Method:
    """Write the int8 version of the graph at ``fp32`` to ``out``; returns the method used.

    ``calibration`` holds model-input rows (training split) for static quantisation; the
    graph is first run through ``quant_pre_process`` (shape inference and ORT's graph
    optimisations, e.g. folding batch norm into the convolutions), as ORT recommends.
    """
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    method = method or default_method(fp32)
    if method not in METHODS:
        raise ConfigError(f"unknown quantisation method {method!r}: choose one of {METHODS}")
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".quant-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32), str(prepared))
        if method == "static":
            quantize_static(
                str(prepared),
                str(out),
                _Rows(calibration),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                op_types_to_quantize=STATIC_OPS,
            )
        else:
            quantize_dynamic(str(prepared), str(out), weight_type=QuantType.QInt8)
    return method


class _Rows(CalibrationDataReader):
    """Calibration rows in batches of ``CALIBRATION_BATCH``."""

    def __init__(self, rows: np.ndarray, input_name: str = "features") -> None:
        self._batches = [
            {input_name: np.ascontiguousarray(rows[i : i + CALIBRATION_BATCH], dtype=np.float32)}
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
