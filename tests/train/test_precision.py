"""``trainer.precision=bf16-mixed`` on CPU: the CNN computes in bfloat16 under autocast, the
weights stay fp32, and the exported ONNX graph is fp32 and reproduces PyTorch."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import onnx
import torch
from omegaconf import DictConfig

from shipyard.export.build import export_run
from shipyard.train.run import train


class ForwardDtypes(L.Callback):
    """Records the dtype of the model's output on every training forward pass."""

    def __init__(self) -> None:
        self.dtypes: set[torch.dtype] = set()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        def hook(module: torch.nn.Module, args: Any, output: torch.Tensor) -> None:
            if module.training:
                self.dtypes.add(output.dtype)

        pl_module.model.register_forward_hook(hook)


def test_bf16_mixed_trains_on_cpu_and_exports_fp32(compose: Callable[..., DictConfig]) -> None:
    cfg = compose(
        "task=image", "trainer=fast", "trainer.max_epochs=1", "trainer.accelerator=cpu",
        "trainer.precision=bf16-mixed", "quantize=null",
    )  # fmt: skip
    seen = ForwardDtypes()
    result = train(cfg, callbacks=[seen])
    assert seen.dtypes == {torch.bfloat16}  # autocast ran the CNN in bfloat16
    assert result.metrics["test_accuracy"] > 0.2  # it learned (10 classes: chance is 0.1)

    state = torch.load(result.checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    floats = {v.dtype for v in state.values() if v.is_floating_point()}
    assert floats == {torch.float32}  # mixed precision keeps fp32 master weights

    package = export_run(cfg, result.run_id).package
    graph = onnx.load(str(package.graph_path("fp32")))
    float_types = {
        init.data_type
        for init in graph.graph.initializer
        if init.data_type
        in (onnx.TensorProto.FLOAT, onnx.TensorProto.BFLOAT16, onnx.TensorProto.FLOAT16)
    }
    assert float_types == {onnx.TensorProto.FLOAT}
    outputs = {o.name: o.type.tensor_type.elem_type for o in graph.graph.output}
    assert outputs["probabilities"] == onnx.TensorProto.FLOAT
    assert package.manifest.parity.passed
