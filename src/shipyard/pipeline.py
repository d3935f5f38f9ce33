"""``shipyard pipeline``: data -> train -> evaluate -> export -> register -> promote.

Each stage reads only what the previous one wrote (a snapshot id, a run id, a package, a
model version), and each is cached by content, the way DVC caches a stage on its
dependencies:

* data: snapshots are content-addressed; an unchanged source gives the same snapshot.
* train: a FINISHED run of the same snapshot whose training fingerprint (the training
  config sections and Shipyard's code, see :mod:`shipyard.track.lineage`) matches.
* evaluate: the run already carries this code's evaluation.
* export: the run's package was written with the same export config and code, and it
  still verifies against its checksums.
* register / promote: the registry already holds this package as a version / as champion.

The cache lives in the tracking store and the registry themselves, not in a side file,
so it is right even when another machine trained the run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf

from shipyard.errors import ConfigError

STAGES = ("data", "train", "evaluate", "export", "register", "promote")
TAG_EVALUATED = "shipyard.evaluated_code"


@dataclass
class PipelineResult:
    stages: list[dict[str, Any]] = field(default_factory=list)
    values: dict[str, Any] = field(default_factory=dict)

    def stage(self, name: str, started: float, result: str, *, reused: bool) -> None:
        seconds = round(time.perf_counter() - started, 2)
        self.stages.append({"stage": name, "result": result, "seconds": seconds, "reused": reused})

    def summary(self) -> dict[str, Any]:
        return {**self.values, "stages": self.stages}


def run_pipeline(cfg: DictConfig, until: str = "promote") -> dict[str, Any]:
    """Run the stages up to and including ``until``; returns ids, metrics and a stage table."""
    if until not in STAGES:
        raise ConfigError(f"unknown stage {until!r}: choose one of {', '.join(STAGES)}")
    steps: list[Callable[[DictConfig, PipelineResult], DictConfig]] = [
        _data,
        _train,
        _evaluate,
        _export,
        _register,
        _promote,
    ]
    _refuse_before_training(cfg)
    if not cfg.pipeline.promote and until == "promote":
        until = "register"
    result = PipelineResult()
    for name, step in zip(STAGES, steps, strict=True):
        cfg = step(cfg, result)
        if name == until:
            break
    return result.summary()


def _with(cfg: DictConfig, **values: Any) -> DictConfig:
    merged = OmegaConf.merge(cfg, values)
    assert isinstance(merged, DictConfig)
    return merged


def _refuse_before_training(cfg: DictConfig) -> None:
    """Settings the export stage would refuse, refused before the training they would waste:
    ``quantize=int8`` for a task that only generates text (no int8 decoding loop yet)."""
    from shipyard.tasks import get_task
    from shipyard.tasks.base import OutputKind

    if get_task(str(cfg.task.name)).output_kinds == (OutputKind.TEXT,) and cfg.get("quantize"):
        from shipyard.export.seq2seq import check_quantize

        check_quantize(cfg.get("quantize"))


def _data(cfg: DictConfig, result: PipelineResult) -> DictConfig:
    from shipyard.data.prepare import prepare

    started = time.perf_counter()
    if cfg.get("snapshot"):
        from shipyard.data.snapshot import SnapshotStore

        snapshot_id = SnapshotStore(str(cfg.paths.snapshots)).get(str(cfg.snapshot)).id
        reused = True
    else:
        prepared = prepare(cfg)
        snapshot_id, reused = prepared.snapshot.id, prepared.reused
    result.values["snapshot_id"] = snapshot_id
    result.stage("data", started, f"snapshot {snapshot_id}", reused=reused)
    return _with(cfg, snapshot=snapshot_id)


def _train(cfg: DictConfig, result: PipelineResult) -> DictConfig:
    from shipyard.track import tracking
    from shipyard.track.lineage import training_fingerprint

    started = time.perf_counter()
    cached = None
    if cfg.pipeline.cache:
        cached = tracking.find_finished_run(
            cfg,
            {
                tracking.TAG_SNAPSHOT: str(cfg.snapshot),
                tracking.TAG_TRAINING: training_fingerprint(cfg),
            },
        )
    if cached is not None:
        run_id = str(cached.info.run_id)
        metrics = dict(cached.data.metrics)
        detail = f"run {run_id}"
    else:
        from shipyard.train.run import train

        trained = train(cfg)
        run_id, metrics = trained.run_id, trained.metrics
        detail = f"run {run_id} ({trained.epochs} epochs)"
    result.values |= {
        "run_id": run_id,
        "metrics": {k: v for k, v in metrics.items() if k.startswith("test_")},
        # a task's yardstick on the same test split (text: TF-IDF; summarize: lead-3)
        "baseline": {
            k.removeprefix("baseline_"): v
            for k, v in metrics.items()
            if k.startswith("baseline_test_")
        },
        "tracking_uri": tracking.tracking_uri(cfg),
    }
    result.stage("train", started, detail, reused=cached is not None)
    return _with(cfg, run=run_id)


def _evaluate(cfg: DictConfig, result: PipelineResult) -> DictConfig:
    from shipyard.track import tracking
    from shipyard.track.lineage import code_fingerprint

    started = time.perf_counter()
    run = tracking.get_run(cfg, str(cfg.run))
    reused = bool(cfg.pipeline.cache) and run.data.tags.get(TAG_EVALUATED) == code_fingerprint()
    if not reused:
        from shipyard.train.evaluate import evaluate_run

        evaluated = evaluate_run(cfg, str(cfg.run))
        result.values["metrics"] = evaluated.metrics
        tracking.client(cfg).set_tag(str(cfg.run), TAG_EVALUATED, code_fingerprint())
    result.stage("evaluate", started, "test metrics recorded on the run", reused=reused)
    return cfg


def _export(cfg: DictConfig, result: PipelineResult) -> DictConfig:
    from pathlib import Path

    from shipyard.export.package import PackageError, load_package
    from shipyard.track import tracking
    from shipyard.track.lineage import export_fingerprint

    started = time.perf_counter()
    run_id = str(cfg.run)
    folder = Path(str(cfg.paths.packages)) / run_id
    package = None
    if cfg.pipeline.cache:
        tags = tracking.get_run(cfg, run_id).data.tags
        if tags.get("shipyard.export_fingerprint") == export_fingerprint(cfg):
            try:
                package = load_package(folder)
            except PackageError:
                package = None  # gone or altered locally: export again
    reused = package is not None
    if package is None:
        from shipyard.export.build import export_run

        package = export_run(cfg, run_id).package
    parity = package.manifest.parity
    result.values |= {
        "package": str(package.path),
        "report": str(package.path / "report.html"),
        "parity_max_abs_diff": parity.max_abs_diff,
    }
    graphs = ", ".join(g.file for g in package.manifest.graphs)
    detail = f"parity {parity.max_abs_diff:.1e}"
    if parity.sequences_equal is not None:
        result.values["parity_sequences_equal"] = parity.sequences_equal
        detail = f"{parity.sequences_equal:.0%} of greedy summaries equal; embeddings {detail}"
    result.stage("export", started, f"{graphs} ({detail})", reused=reused)
    return cfg


def _register(cfg: DictConfig, result: PipelineResult) -> DictConfig:
    from shipyard.track.registry import register

    started = time.perf_counter()
    version = register(cfg, str(cfg.run))
    result.values["model"] = {"name": version.name, "version": version.version}
    result.stage("register", started, f"{version.name} v{version.version}", reused=version.reused)
    return cfg


def _promote(cfg: DictConfig, result: PipelineResult) -> DictConfig:
    """Promote through the gate. A refusal ends the pipeline with the gate's checks in the
    result (``refused``) instead of an exception, so the stages before it are still shown."""
    from shipyard.track.gate import GateRefused
    from shipyard.track.registry import promote

    started = time.perf_counter()
    model = result.values["model"]
    try:
        outcome = promote(cfg, model["name"], model["version"])
    except GateRefused as refused:
        result.values["refused"] = {
            "message": str(refused),
            "checks": [check.summary() for check in refused.checks],
        }
        result.stage("promote", started, "refused by the gate", reused=False)
        return cfg
    result.values["champion"] = {"name": model["name"], "version": model["version"]}
    detail = f"{model['name']}@champion = v{model['version']}"
    result.stage("promote", started, detail, reused=outcome.reused)
    return cfg
