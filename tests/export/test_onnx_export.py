"""ONNX export of real trained models, checked under the real ONNX Runtime."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import DictConfig

from shipyard.export.onnx_export import check_parity, export_onnx, run_onnx
from shipyard.tasks import get_task
from shipyard.tasks.base import OutputKind
from shipyard.train.evaluate import load_weights, rebuild_model
from shipyard.train.run import resolve_snapshot, train


@pytest.mark.parametrize(("task", "embedding"), [("image", True), ("tabular", False)])
def test_export_matches_pytorch_on_the_whole_test_split(
    compose: Callable[..., DictConfig], tmp_path: Path, task: str, embedding: bool
) -> None:
    cfg = compose(f"task={task}", "trainer.max_epochs=2", "trainer.early_stopping_patience=null")
    result = train(cfg)
    snapshot = resolve_snapshot(cfg)
    half = get_task(task).training()
    schema = snapshot.manifest["schema"]
    model = load_weights(
        rebuild_model(cfg, half, schema, snapshot.load("train")), Path(result.checkpoint)
    ).eval()
    features, _ = half.to_tensors(snapshot.load("test"), schema)

    path = tmp_path / "model.onnx"
    names = export_onnx(model, features[:2], path, OutputKind.CLASSES, with_embedding=embedding)
    assert names == (["probabilities", "embedding"] if embedding else ["probabilities"])

    parity = check_parity(model, path, features, OutputKind.CLASSES, tolerance=1e-4)
    assert parity.passed, parity
    assert parity.rows == len(features)
    assert parity.max_abs_diff < 1e-4

    outputs = run_onnx(path, features.numpy())  # dynamic batch: the whole split at once
    assert outputs["probabilities"].shape == (len(features), len(schema["target"]["labels"]))
    assert np.allclose(outputs["probabilities"].sum(axis=1), 1.0, atol=1e-5)
    if embedding:
        with torch.no_grad():
            expected = model.embed(features).numpy()
        assert np.allclose(outputs["embedding"], expected, atol=1e-4)


def test_parity_fails_when_the_graph_differs(
    compose: Callable[..., DictConfig], tmp_path: Path
) -> None:
    cfg = compose("task=tabular", "trainer.max_epochs=1", "trainer.early_stopping_patience=null")
    snapshot = resolve_snapshot(cfg)
    half = get_task("tabular").training()
    schema = snapshot.manifest["schema"]
    torch.manual_seed(0)
    exported = half.build_model(cfg.model, schema, snapshot.load("train")).eval()
    torch.manual_seed(1)
    other = half.build_model(cfg.model, schema, snapshot.load("train")).eval()
    features, _ = half.to_tensors(snapshot.load("test"), schema)
    path = tmp_path / "model.onnx"
    export_onnx(exported, features[:2], path, OutputKind.CLASSES, with_embedding=False)
    assert not check_parity(other, path, features, OutputKind.CLASSES, tolerance=1e-4).passed
