"""``shipyard export`` on real runs: real training, real MLflow (SQLite), real ONNX Runtime.

One digits run and one wine run are trained once for the module and exported with the
defaults (int8 included); the other tests export them again with other settings into
their own package folders.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from omegaconf import DictConfig

from shipyard.config import compose as shipyard_compose
from shipyard.errors import ConfigError, NotFoundError
from shipyard.export.build import ExportResult, export_fingerprint, export_run
from shipyard.export.onnx_export import ParityError
from shipyard.export.package import MANIFEST, load_package, sha256_file
from shipyard.track import tracking
from shipyard.train.run import resolve_snapshot, train

QUICK = ("trainer.max_epochs=2", "trainer.early_stopping_patience=null")
LATENCY = ("export.latency.repeats=3",)
TASKS = ("image", "tabular")


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One SHIPYARD_HOME for the module (it overrides conftest's per-test ``home``), so the
    trained runs are shared; tests that export again write to their own ``paths.packages``."""
    path = tmp_path_factory.mktemp("export") / "home"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SHIPYARD_HOME", str(path))
        yield path


@pytest.fixture(scope="module")
def exported(home: Path) -> dict[str, tuple[DictConfig, ExportResult]]:
    """Train digits and wine briefly and export each one's newest run (no run id given)."""
    results = {}
    for task in TASKS:
        cfg = shipyard_compose([f"task={task}", *QUICK, *LATENCY])
        train(cfg)
        results[task] = (cfg, export_run(cfg))
    return results


@pytest.mark.parametrize("task", TASKS)
def test_package_holds_both_graphs_with_parity_metrics_and_latency(
    exported: dict[str, tuple[DictConfig, ExportResult]], task: str
) -> None:
    cfg, result = exported[task]
    manifest = load_package(result.package.path).manifest  # verifies every checksum
    test_rows = len(resolve_snapshot(cfg).load("test"))

    assert manifest.task == task
    assert manifest.parity.passed
    assert manifest.parity.rows == test_rows  # the whole test split
    assert manifest.parity.max_abs_diff < 1e-4
    assert [g.file for g in manifest.graphs] == ["model.onnx", "model.int8.onnx"]
    assert [g.precision for g in manifest.graphs] == ["fp32", "int8"]
    fp32, int8 = manifest.graphs
    assert int8.bytes < fp32.bytes
    for graph in manifest.graphs:
        assert (result.package.path / graph.file).is_file()
        assert sorted(graph.latency) == [1, 8, 32, 128]
        assert all(0 < lat.p50_ms <= lat.p95_ms for lat in graph.latency.values())
    # fp32 under ONNX Runtime scores what PyTorch scored; int8 stays close.
    assert fp32.metrics["accuracy"] == pytest.approx(manifest.metrics["test_accuracy"], abs=1e-6)
    assert fp32.metrics["loss"] == pytest.approx(manifest.metrics["test_loss"], abs=1e-4)
    margin = 0.05 if task == "image" else 0.15  # wine has 27 test rows: one row is 0.037
    assert int8.metrics["accuracy"] >= fp32.metrics["accuracy"] - margin
    assert result.quantization == "static"
    # A row's int8 answer must not depend on the rows batched with it (the server batches
    # requests together): an outlier row beside it changes nothing.
    rows = load_package(result.package.path).manifest.input.shape[1:]
    from shipyard.export.scoring import onnx_session

    session = onnx_session(result.package.graph_path("int8"))
    row = np.full([1, *rows], 3.0, dtype=np.float32)
    alone = session.run(None, {"features": row})[0]
    beside = session.run(None, {"features": np.concatenate([row, row * 1e6])})[0][:1]
    np.testing.assert_array_equal(alone, beside)

    assert manifest.input.name == "features"
    assert manifest.input.dtype == "float32"
    outputs = {o.name: o.shape for o in manifest.outputs}
    assert outputs["probabilities"] == [None, len(manifest.labels or [])]
    if task == "image":
        assert manifest.input.shape == [None, 8, 8, 1]
        assert "NHWC" in manifest.input.description
        assert set(outputs) == {"probabilities", "embedding"}
    else:
        assert manifest.input.columns
        assert manifest.input.shape == [None, 13]
        assert set(outputs) == {"probabilities"}
    assert set(manifest.files) == {"report.html", "confusion_matrix.png"}
    assert manifest.lineage.run_id == result.run_id
    assert manifest.lineage.snapshot_id == resolve_snapshot(cfg).id
    assert manifest.lineage.config_fingerprint
    assert manifest.lineage.git_commit
    assert manifest.config["task"]["name"] == task


def test_export_is_logged_to_the_run_and_tagged(
    exported: dict[str, tuple[DictConfig, ExportResult]],
) -> None:
    cfg, result = exported["image"]
    run = tracking.get_run(cfg, result.run_id)
    manifest_sha = sha256_file(result.package.path / MANIFEST)

    assert run.data.tags[tracking.TAG_PACKAGE_SHA] == manifest_sha
    assert run.data.tags[tracking.TAG_EXPORT] == export_fingerprint(cfg)
    logged = {a.path for a in tracking.client(cfg).list_artifacts(result.run_id, "package")}
    assert {f"package/{name}" for name in ("manifest.json", "model.onnx", "report.html")} <= logged
    assert result.summary()["manifest_sha256"] == manifest_sha
    html = (result.package.path / "report.html").read_text()
    assert result.run_id in html
    assert "data:image/png;base64," in html


def test_impossible_parity_tolerance_fails_in_one_line_and_writes_nothing(
    exported: dict[str, tuple[DictConfig, ExportResult]], tmp_path: Path
) -> None:
    cfg, result = exported["tabular"]
    packages = tmp_path / "packages"
    strict = shipyard_compose(
        ["task=tabular", "export.parity_tolerance=-1", f"paths.packages={packages}"]
    )
    before = tracking.get_run(cfg, result.run_id).data.tags[tracking.TAG_PACKAGE_SHA]

    with pytest.raises(ParityError) as raised:
        export_run(strict, result.run_id)

    message = str(raised.value)
    assert "\n" not in message
    assert "export.parity_tolerance=-1" in message
    assert "labels agree" in message
    assert list(packages.iterdir()) == []  # no package, no staging folder left behind
    assert tracking.get_run(cfg, result.run_id).data.tags[tracking.TAG_PACKAGE_SHA] == before


def test_quantize_null_writes_only_fp32_and_unknown_values_are_refused(
    exported: dict[str, tuple[DictConfig, ExportResult]], tmp_path: Path
) -> None:
    _, result = exported["tabular"]
    packages = tmp_path / "packages"
    cfg = shipyard_compose(
        ["task=tabular", "quantize=null", *LATENCY, f"paths.packages={packages}"]
    )

    fp32_only = export_run(cfg, result.run_id)

    assert fp32_only.package.path == packages / result.run_id
    assert [g.file for g in fp32_only.package.manifest.graphs] == ["model.onnx"]
    assert not (fp32_only.package.path / "model.int8.onnx").exists()
    logged = tracking.client(cfg).list_artifacts(result.run_id, "package")
    assert "package/model.int8.onnx" not in {a.path for a in logged}  # replaced, not merged
    with pytest.raises(ConfigError, match=r"unknown quantize 'int4': choose one of int8, null"):
        export_run(shipyard_compose(["task=tabular", "quantize=int4"]), result.run_id)


def test_no_run_to_export_says_to_train_first(
    exported: dict[str, tuple[DictConfig, ExportResult]],
) -> None:
    cfg = shipyard_compose(["task=tabular", "tracking.experiment=nothing-here"])
    with pytest.raises(NotFoundError, match=r"run `shipyard train task=tabular` first"):
        export_run(cfg)


def test_cli_export_json(
    exported: dict[str, tuple[DictConfig, ExportResult]],
    cli: Callable[..., subprocess.CompletedProcess[str]],
    tmp_path: Path,
) -> None:
    _, result = exported["tabular"]
    packages = tmp_path / "packages"

    done = cli("export", f"run={result.run_id}", *LATENCY, f"paths.packages={packages}", "--json")

    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["run_id"] == result.run_id
    assert summary["package"] == str(packages / result.run_id)
    assert [g["precision"] for g in summary["graphs"]] == ["fp32", "int8"]
    assert sorted(summary["graphs"][0]["latency"], key=int) == ["1", "8", "32", "128"]
    assert summary["parity"]["passed"] is True
    load_package(summary["package"])


def test_cli_unknown_run_is_one_line_and_exit_2(
    cli: Callable[..., subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    unknown = cli("export", "run=0123456789abcdef", f"paths.packages={tmp_path}")
    assert unknown.returncode == 2
    assert unknown.stderr.strip().count("\n") == 0
    assert "no run '0123456789abcdef'" in unknown.stderr
