"""``ServedModel.load`` on real packages: real training, real export, real ONNX Runtime.

Wine (classes; fp32 and int8 graphs), a regression CSV (numbers; fp32 only) and digits
(images; fp32 only) are trained for one epoch and exported once for the module. Broken
packages are made from them: a manifest of another model over a graph, a graph file
that is not ONNX, labels that do not match the graph.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from shipyard.config import compose
from shipyard.export.build import export_run
from shipyard.export.package import ModelPackage
from shipyard.serve.runtime import ModelLoadError, ServedModel, smoke_rows
from shipyard.train.run import train

ONE_EPOCH = ("trainer.max_epochs=1", "trainer.early_stopping_patience=null")
QUICK_EXPORT = ("export.latency.repeats=1", "export.latency.batch_sizes=[1]")


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One SHIPYARD_HOME for the module (overrides conftest's per-test ``home``)."""
    path = tmp_path_factory.mktemp("runtime") / "home"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SHIPYARD_HOME", str(path))
        yield path


def build(*overrides: str) -> ModelPackage:
    cfg = compose([*overrides, *ONE_EPOCH, *QUICK_EXPORT])
    return export_run(cfg, train(cfg).run_id).package


@pytest.fixture(scope="module")
def wine(home: Path) -> ModelPackage:
    return build("task=tabular", "quantize=int8")


@pytest.fixture(scope="module")
def regression(home: Path) -> ModelPackage:
    rng = np.random.default_rng(0)
    x1, x2 = rng.normal(5.0, 2.0, 120), rng.normal(-1.0, 0.5, 120)
    csv = home.parent / "regression.csv"
    pd.DataFrame({"x1": x1, "x2": x2, "y": 3 * x1 - 2 * x2}).to_csv(csv, index=False)
    return build(
        "task=tabular",
        "data=csv",
        f"data.path={csv}",
        "data.target=y",
        "data.target_type=number",
        "quantize=null",
    )


@pytest.fixture(scope="module")
def digits(home: Path) -> ModelPackage:
    return build("task=image", "quantize=null")


def load(package: ModelPackage, precision: str = "fp32") -> ServedModel:
    return ServedModel.load(package, name="m", version="1", precision=precision)


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_wine_loads_in_both_precisions_and_answers_probabilities(
    wine: ModelPackage, precision: str
) -> None:
    model = load(wine, precision)

    assert (model.name, model.version, model.precision) == ("m", "1", precision)
    assert model.manifest is wine.manifest
    assert model.input_name == "features"
    assert model.output_names == ["probabilities"]
    # export quantises statically: an int8 row's answer does not depend on its batch
    assert model.rows_independent
    rows = np.random.default_rng(1).normal(size=(5, 13)).astype(np.float32)
    out = model.run(rows)
    assert set(out) == {"probabilities"}
    assert out["probabilities"].shape == (5, 3)
    np.testing.assert_allclose(out["probabilities"].sum(axis=1), 1.0, atol=1e-5)


def test_digits_and_regression_load(digits: ModelPackage, regression: ModelPackage) -> None:
    images = load(digits)
    assert images.output_names == ["probabilities", "embedding"]
    assert images.rows_independent
    pixels = smoke_rows(digits.manifest.input)
    assert pixels.shape == (3, 8, 8, 1)
    assert pixels.min() >= 0
    assert pixels.max() <= 255
    out = images.run(pixels)
    assert out["probabilities"].shape == (3, 10)
    assert out["embedding"].shape[0] == 3

    numbers = load(regression)
    value = numbers.run(np.array([[5.0, -1.0], [7.0, 0.0]], dtype=np.float32))["value"]
    assert value.shape == (2,)
    assert np.isfinite(value).all()


def test_a_manifest_of_another_model_is_refused_in_one_line(
    wine: ModelPackage, regression: ModelPackage
) -> None:
    swapped = ModelPackage(wine.path, regression.manifest)  # a 13-column graph, a 2-column spec

    with pytest.raises(ModelLoadError) as raised:
        ServedModel.load(swapped, name="wine", version="7")

    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith("cannot serve wine v7 (fp32, ")
    assert "input 'features' has shape [None, 13] in the graph, [None, 2] in the manifest" in (
        message
    )
    assert "shipyard export" in message

    with pytest.raises(ModelLoadError, match=r"outputs are \['value'\], the manifest's"):
        load(
            ModelPackage(
                regression.path,
                wine.manifest.model_copy(update={"input": regression.manifest.input}),
            )
        )


def test_labels_that_do_not_match_the_graph_fail_the_smoke_check(wine: ModelPackage) -> None:
    two_labels = wine.manifest.model_copy(update={"labels": ["a", "b"]})

    with pytest.raises(ModelLoadError, match="3 probabilities per row, the manifest has 2 labels"):
        load(ModelPackage(wine.path, two_labels))


def test_a_graph_that_is_not_onnx_is_refused(wine: ModelPackage, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(wine.path, broken)
    (broken / "model.onnx").write_bytes(b"not a protobuf")

    with pytest.raises(ModelLoadError) as raised:
        load(ModelPackage(broken, wine.manifest))  # unverified: the checksum would catch it

    assert "ONNX Runtime cannot open model.onnx" in str(raised.value)
    assert "\n" not in str(raised.value)


def test_missing_precision_and_bad_settings_are_refused(regression: ModelPackage) -> None:
    with pytest.raises(ModelLoadError, match=r"no model graph in int8.*quantize=int8"):
        load(regression, "int8")
    with pytest.raises(ModelLoadError, match="unknown precision 'fp16'"):
        load(regression, "fp16")
    with pytest.raises(ModelLoadError, match="threads must be at least 1"):
        ServedModel.load(regression, name="m", version="1", intra_op_threads=0)


def test_serving_modules_never_import_torch(wine: ModelPackage) -> None:
    """The serve install has no torch: loading and running a package must not need it."""
    code = (
        "import sys\n"
        "import numpy as np\n"
        "from shipyard.export.package import load_package\n"
        "from shipyard.serve.batcher import Batcher\n"
        "from shipyard.serve.runtime import ServedModel\n"
        f"model = ServedModel.load(load_package({str(wine.path)!r}), name='w', version='1')\n"
        "model.run(np.zeros((2, 13), dtype=np.float32))\n"
        "leaked = sorted(m for m in sys.modules if m.split('.')[0] in {'torch', 'lightning'})\n"
        "assert not leaked, leaked\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False
    )
    assert done.returncode == 0, done.stderr


def test_auto_threads_give_a_heavy_graph_the_cores(wine: ModelPackage) -> None:
    """serve.intra_op_threads=0: one thread for a light graph (wine: microseconds a row),
    the usable cores shared by the workers for one the export measured as heavy."""
    from shipyard.export.package import Latency
    from shipyard.serve.runtime import HEAVY_GRAPH_MS, auto_threads

    assert wine.manifest.graph("fp32").latency[1].p50_ms < HEAVY_GRAPH_MS
    assert auto_threads(wine, "fp32") == 1
    slow = Latency(p50_ms=HEAVY_GRAPH_MS * 4, p95_ms=HEAVY_GRAPH_MS * 5, rows_per_s=50.0)
    graph = wine.manifest.graph("fp32").model_copy(update={"latency": {1: slow}})
    heavy = ModelPackage(wine.path, wine.manifest.model_copy(update={"graphs": [graph]}))
    cores = len(os.sched_getaffinity(0))
    assert auto_threads(heavy, "fp32") == cores
    assert auto_threads(heavy, "fp32", workers=cores * 2) == 1
    assert auto_threads(heavy, "int8") == 1  # no such graph: nothing measured, one thread
