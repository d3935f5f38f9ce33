"""``shipyard pipeline``: the stages that exist, chained — data -> train -> evaluate.

Each stage reads only what the previous one wrote (a snapshot id, a run id).
"""

from __future__ import annotations

import time
from typing import Any

from omegaconf import DictConfig, OmegaConf


def run_pipeline(cfg: DictConfig) -> dict[str, Any]:
    from shipyard.data.prepare import prepare
    from shipyard.train.evaluate import evaluate_run
    from shipyard.train.run import train

    stages: list[dict[str, Any]] = []
    started = time.perf_counter()
    prepared = prepare(cfg)
    stages.append(
        _stage(
            "data",
            f"snapshot {prepared.snapshot.id} ({'reused' if prepared.reused else 'new'})",
            started,
        )
    )

    started = time.perf_counter()
    train_cfg = OmegaConf.merge(cfg, {"snapshot": prepared.snapshot.id})
    assert isinstance(train_cfg, DictConfig)
    trained = train(train_cfg)
    stages.append(_stage("train", f"run {trained.run_id} ({trained.epochs} epochs)", started))

    started = time.perf_counter()
    evaluated = evaluate_run(cfg, trained.run_id)
    stages.append(_stage("evaluate", "test metrics recorded on the run", started))
    return {
        "snapshot_id": prepared.snapshot.id,
        "run_id": trained.run_id,
        "metrics": evaluated.metrics,
        "stages": stages,
        "tracking_uri": trained.tracking_uri,
    }


def _stage(name: str, result: str, started: float) -> dict[str, Any]:
    return {"stage": name, "result": result, "seconds": round(time.perf_counter() - started, 2)}
