"""``shipyard export``: a tracked run becomes a verified model package.

The run's model is rebuilt from its own artifacts (config and best checkpoint) and its
snapshot, exported to ONNX with the preprocessing inside, and proven equal to PyTorch on
the whole test split before anything is written. The package then gets an optional int8
graph, test metrics of every graph under ONNX Runtime (the numbers the promotion gate
compares), latency per batch size, lineage and an HTML report. It is assembled in a
hidden staging folder inside ``paths.packages`` and renamed into place, so a failed
export leaves no half-package, and it is logged to the run as ``package/`` so that the registry
finds it through the run, not through a path on this machine.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from shipyard.config import local_folder, to_container
from shipyard.export import seq2seq
from shipyard.export.latency import measure_latency
from shipyard.export.onnx_export import ParityError, check_parity, export_onnx, run_onnx
from shipyard.export.package import (
    MANIFEST,
    GraphSpec,
    Manifest,
    ModelPackage,
    ParityReport,
    TensorSpec,
    checksums,
    describe_graph,
    input_schema,
    save_package,
    sha256_file,
)
from shipyard.export.parts import (
    finite,
    input_files,
    input_spec,
    lineage,
    tokenizer_spec,
    version,
)
from shipyard.export.quantize import Method, calibration_rows, check_quantize, quantize_int8
from shipyard.export.report import CONFUSION_MATRIX, REPORT, render_report
from shipyard.export.scoring import score_onnx
from shipyard.tasks import get_task
from shipyard.tasks.base import OutputKind, primary_metric
from shipyard.track import tracking
from shipyard.track.lineage import export_fingerprint
from shipyard.train.evaluate import RunModel, load_run_model

__all__ = ["ExportResult", "export_fingerprint", "export_run", "resolve_run_id"]

FP32_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
ARTIFACT_DIR = "package"
# paths.packages is the local, staged copy (renamed into place, which object stores cannot
# do); the copy that the registry and every server use is the run's artifact, which lives
# wherever tracking.artifacts says -- so that is the key that puts packages in a bucket.
PACKAGES_HINT = (
    ": a package reaches a bucket as its run's `package/` artifact, so set "
    "tracking.artifacts=s3://BUCKET/PREFIX (or gs://...) and keep paths.packages local"
)


@dataclass(frozen=True)
class ExportResult:
    package: ModelPackage
    run_id: str
    #: how the int8 graph was made ("static" or "dynamic"); None without one
    quantization: Method | None = None

    def summary(self) -> dict[str, Any]:
        """What ``shipyard export --json`` prints: where the package is and what it holds."""
        manifest = self.package.manifest
        report = self.package.path / REPORT
        return {
            "run_id": self.run_id,
            "task": manifest.task,
            "package": str(self.package.path),
            "report": str(report) if report.is_file() else None,
            "manifest_sha256": sha256_file(self.package.path / MANIFEST),
            "primary_metric": primary_metric(OutputKind(manifest.output_kind))[0],
            "metrics": manifest.metrics,
            "parity": manifest.parity.model_dump(),
            "quantization": self.quantization,
            "graphs": [g.model_dump(mode="json", exclude={"sha256"}) for g in manifest.graphs],
        }


def resolve_run_id(cfg: DictConfig, run_id: str | None = None) -> str:
    """The argument, else ``run=``, else the newest finished run of ``task`` with a checkpoint."""
    chosen = run_id or cfg.get("run")
    if chosen:
        return str(chosen)
    return str(tracking.latest_run(cfg, str(cfg.task.name)).info.run_id)


def export_run(cfg: DictConfig, run_id: str | None = None) -> ExportResult:
    """Export a tracked run into ``paths.packages/<run id>`` and log it to the run.

    Raises :class:`ParityError` (nothing written) when ONNX Runtime does not reproduce
    PyTorch within ``export.parity_tolerance`` on the whole test split.
    """
    # Checked first, before anything is loaded: a bucket URL here is a misunderstanding,
    # not a place to write (the package reaches the bucket as the run's artifact).
    packages = local_folder(cfg.paths.packages, "paths.packages", PACKAGES_HINT)
    quantize = check_quantize(cfg.get("quantize"))
    run_id = resolve_run_id(cfg, run_id)
    loaded = load_run_model(cfg, run_id)
    generates_text = OutputKind(loaded.schema["target"]["kind"]) is OutputKind.TEXT
    if generates_text:
        seq2seq.check_quantize(quantize)
    packages.mkdir(parents=True, exist_ok=True)
    # Inside the packages folder, so the final rename never crosses a filesystem; the
    # leading dot keeps it out of listings of packages.
    staging = Path(tempfile.mkdtemp(prefix=f".{run_id}.", suffix=".partial", dir=packages))
    staging.chmod(0o755)  # mkdtemp's 0700 would hide the package from a server's user
    try:
        if generates_text:
            package = seq2seq.assemble_seq2seq(cfg, loaded, run_id, staging, packages / run_id)
            method: Method | None = None
        else:
            package, method = _assemble(cfg, loaded, run_id, staging, packages / run_id, quantize)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    mlflow_client = _log_package(cfg, run_id, package.path)
    mlflow_client.set_tag(run_id, tracking.TAG_PACKAGE_SHA, sha256_file(package.path / MANIFEST))
    mlflow_client.set_tag(run_id, tracking.TAG_EXPORT, export_fingerprint(cfg))
    return ExportResult(package, run_id, method)


def _log_package(cfg: DictConfig, run_id: str, folder: Path) -> Any:
    """Replace the run's ``package/`` artifacts with ``folder``: a re-export with
    ``quantize=null`` must not leave the previous int8 graph beside the new manifest."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    mlflow_client = tracking.client(cfg)
    repository = get_artifact_repository(mlflow_client.get_run(run_id).info.artifact_uri)
    repository.delete_artifacts(ARTIFACT_DIR)  # a no-op for stores that cannot delete
    mlflow_client.log_artifacts(run_id, str(folder), ARTIFACT_DIR)
    return mlflow_client


def _assemble(
    cfg: DictConfig,
    loaded: RunModel,
    run_id: str,
    staging: Path,
    destination: Path,
    quantize: str | None,
) -> tuple[ModelPackage, Method | None]:
    task = get_task(str(loaded.run_cfg.task.name))
    # Files the torch-free input needs (text: the tokenizer) go in first, so that every
    # model input below is built by the package's own files, as the server will build it.
    extra_files = input_files(loaded, staging)
    schema = input_schema(staging, loaded.schema)
    kind = OutputKind(schema["target"]["kind"])
    test = loaded.snapshot.load("test")
    train = loaded.snapshot.load("train")
    rows = task.model_input(test.features, schema)
    probe = rows if len(rows) else task.model_input(train.features, schema)
    latency_cfg = cfg.export.latency
    threads = int(latency_cfg.threads)

    fp32 = staging / FP32_FILE
    export_onnx(
        loaded.model,
        torch.from_numpy(probe[:2]),
        fp32,
        kind,
        with_embedding=task.exports_embedding,
        input_name=task.input_name,
        dynamic_axes=task.dynamic_axes,
    )
    parity = check_parity(
        loaded.model, fp32, torch.from_numpy(rows), kind, float(cfg.export.parity_tolerance)
    )
    if not parity.passed:
        raise ParityError(
            f"the ONNX graph of run {run_id} does not reproduce PyTorch on the test split: "
            f"max |difference| {parity.max_abs_diff:.2e} over {parity.rows} rows "
            f"(export.parity_tolerance={parity.tolerance:g}), predicted labels "
            f"{'agree' if parity.labels_equal else 'differ'}; nothing was written. Check the "
            "model for layers the ONNX exporter does not trace faithfully (custom or "
            "data-dependent ops), or raise export.parity_tolerance if it is float noise"
        )

    def graph(path: Path, precision: str) -> GraphSpec:
        metrics = score_onnx(path, task.name, test, schema, threads)
        sizes = list(latency_cfg.batch_sizes)
        return describe_graph(
            path,
            precision=precision,
            metrics={k: float(v) for k, v in metrics.items() if finite(v)},
            latency=measure_latency(path, probe, sizes, int(latency_cfg.repeats), threads),
            threads=threads,
        )

    graphs = [graph(fp32, "fp32")]
    method: Method | None = None
    if quantize == "int8":
        int8 = staging / INT8_FILE
        method = quantize_int8(
            fp32, int8, calibration_rows(cfg, task, train, schema), input_name=task.input_name
        )
        graphs.append(graph(int8, "int8"))

    extra = _copy_confusion_matrix(cfg, run_id, staging)
    manifest = Manifest(
        task=task.name,
        output_kind=kind.value,
        labels=schema["target"].get("labels"),
        input=input_spec(task, schema),
        outputs=_output_specs(fp32, probe[:2], schema),
        tokenizer=tokenizer_spec(staging, extra_files),
        graphs=graphs,
        metrics={k: float(v) for k, v in loaded.run.data.metrics.items() if k.startswith("test_")},
        parity=ParityReport(**parity.as_dict()),
        lineage=lineage(cfg, loaded, run_id),
        config=to_container(loaded.run_cfg),
        shipyard_version=version(),
    )
    # The report shows the manifest, so it is rendered first; its checksum then joins it.
    (staging / REPORT).write_text(render_report(manifest, staging), encoding="utf-8")
    files = checksums(staging, [*extra_files, *extra, REPORT])
    manifest = manifest.model_copy(update={"files": files})
    return save_package(staging, manifest, destination), method


def _copy_confusion_matrix(cfg: DictConfig, run_id: str, staging: Path) -> list[str]:
    """The run's test confusion matrix, when it has one (classes), for the report."""
    names = {item.path for item in tracking.client(cfg).list_artifacts(run_id)}
    if CONFUSION_MATRIX not in names:
        return []
    shutil.copyfile(tracking.download(cfg, run_id, CONFUSION_MATRIX), staging / CONFUSION_MATRIX)
    return [CONFUSION_MATRIX]


def _output_specs(fp32: Path, sample: np.ndarray, schema: dict[str, Any]) -> list[TensorSpec]:
    """The graph's outputs as ONNX Runtime returns them (shapes read from a real call)."""
    target = schema["target"]
    meaning = {
        "probabilities": "class probabilities (softmax), in the order of labels",
        "value": f"predicted {target.get('name', 'value')}",
        "embedding": "penultimate representation, compared by the drift monitor",
    }
    return [
        TensorSpec(
            name=name,
            dtype=str(value.dtype),
            shape=[None, *(int(d) for d in value.shape[1:])],
            description=meaning.get(name, ""),
        )
        for name, value in run_onnx(fp32, sample).items()
    ]
