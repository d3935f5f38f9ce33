"""Graphs that hold the same weights store them once (shared_weights), and still answer
exactly as before in ONNX Runtime: two small graphs made with onnx.helper, one weight
matrix in common, one of their own each."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from shipyard.export.shared_weights import ALIGNMENT, graph_bytes, share_weights


def _graph(path: Path, shared: np.ndarray, own: np.ndarray, small: np.ndarray) -> None:
    """y = (x @ shared) @ own + small."""
    nodes = [
        helper.make_node("MatMul", ["x", "shared"], ["h"]),
        helper.make_node("MatMul", ["h", "own"], ["o"]),
        helper.make_node("Add", ["o", "small"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        path.stem,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, shared.shape[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, own.shape[1]])],
        initializer=[
            numpy_helper.from_array(shared, "shared"),
            numpy_helper.from_array(own, "own"),
            numpy_helper.from_array(small, "small"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]  # type: ignore[no-any-return]


def test_a_weight_two_graphs_hold_is_written_once_and_both_answer_as_before(
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(0)
    shared = rng.normal(size=(64, 64)).astype(np.float32)  # 16 KB, in both graphs
    own_a, own_b = (rng.normal(size=(64, 8)).astype(np.float32) for _ in range(2))  # 2 KB
    small = np.ones(8, dtype=np.float32)  # 32 bytes: stays inline
    _graph(tmp_path / "a.onnx", shared, own_a, small)
    _graph(tmp_path / "b.onnx", shared, own_b, small)
    x = rng.normal(size=(3, 64)).astype(np.float32)
    expected = {name: _run(tmp_path / name, x) for name in ("a.onnx", "b.onnx")}
    inline = {name: (tmp_path / name).stat().st_size for name in expected}

    sizes = share_weights(tmp_path, ["a.onnx", "b.onnx"], "weights.bin")

    for name, want in expected.items():
        np.testing.assert_array_equal(_run(tmp_path / name, x), want)
    weights = (tmp_path / "weights.bin").stat().st_size
    # shared once (16 KB, 4 pages), then own_a padded to a page, then own_b
    assert weights == shared.nbytes + ALIGNMENT + own_b.nbytes
    assert sizes["weights"] == weights
    assert sizes["after"] < sizes["before"] == sum(inline.values())
    for name in expected:
        model = onnx.load(str(tmp_path / name), load_external_data=False)
        where = {t.name: t.data_location for t in model.graph.initializer}
        assert where == {
            "shared": TensorProto.EXTERNAL,
            "own": TensorProto.EXTERNAL,
            "small": TensorProto.DEFAULT,
        }
        # as loaded: the graph plus what it reads from the weights file
        assert graph_bytes(tmp_path / name) == (
            (tmp_path / name).stat().st_size + shared.nbytes + own_a.nbytes
        )
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_copied_package_folder_still_loads(tmp_path: Path) -> None:
    """External data is found relative to the graph: the registry and the image copy the
    folder, not the paths."""
    import shutil

    rng = np.random.default_rng(1)
    shared = rng.normal(size=(32, 32)).astype(np.float32)
    own = rng.normal(size=(32, 4)).astype(np.float32)
    source = tmp_path / "export"
    source.mkdir()
    _graph(source / "a.onnx", shared, own, np.zeros(4, dtype=np.float32))
    x = rng.normal(size=(2, 32)).astype(np.float32)
    want = _run(source / "a.onnx", x)
    share_weights(source, ["a.onnx"], "weights.bin")
    copy = tmp_path / "registry" / "v1"
    shutil.copytree(source, copy)
    shutil.rmtree(source)
    np.testing.assert_array_equal(_run(copy / "a.onnx", x), want)
