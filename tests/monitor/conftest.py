"""Real models and real prediction logs for the monitor's tests.

Wine (MLP) and digits (CNN) are trained for two epochs and exported once per session, as
in ``tests/serve/app/conftest.py``; digits only when a (slow) test asks for it. Traffic is
the test split, shifted by :func:`shipyard.monitor.scenarios.apply_scenario`, run through
the real ONNX graph (``ServedModel``) and described by the task's ``monitor_features``,
built into rows exactly as the server's log writer does (``serve/logwriter.py``,
``RowBuilder``) and written by the real ``PredictionLog``. Nothing of Shipyard's is mocked.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from omegaconf import DictConfig

from shipyard.config import compose
from shipyard.data.snapshot import Snapshot
from shipyard.export.package import ModelPackage
from shipyard.monitor.scenarios import apply_scenario
from shipyard.serve.predlog import FeedbackRow, PredictionLog, PredictionRow
from shipyard.serve.runtime import ServedModel

QUICK = (
    "trainer.max_epochs=2",
    "trainer.early_stopping_patience=null",
    "quantize=null",
    "export.latency.repeats=1",
    "export.latency.batch_sizes=[1]",
)


@dataclass
class Trained:
    """A trained, exported model in its own home, and its snapshot's test split."""

    home: Path
    name: str  # the model name its traffic is logged under
    package: ModelPackage
    snapshot: Snapshot
    test_features: Any
    test_target: np.ndarray

    def cfg(self, *overrides: str) -> DictConfig:
        return compose([f"paths.home={self.home}", *overrides])


def _train(home: Path, task: str, name: str, *, register: bool = False) -> Trained:
    """Train and export; with ``register``, also register it as ``name`` v1, champion."""
    from shipyard.export.build import export_run
    from shipyard.train.run import resolve_snapshot, train

    cfg = compose([f"paths.home={home}", *QUICK, f"task={task}"])
    run_id = train(cfg).run_id
    package = export_run(cfg, run_id).package
    if register:
        from shipyard.track.registry import promote
        from shipyard.track.registry import register as register_run

        assert register_run(cfg, run_id, name=name).version == 1
        promote(cfg, name, 1)
    snapshot = resolve_snapshot(cfg)
    test = snapshot.load("test")
    return Trained(home, name, package, snapshot, test.features, np.asarray(test.target))


@pytest.fixture(scope="session")
def wine(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """Wine, also registered as ``wine`` v1 (champion), for ``--model wine@champion``."""
    return _train(
        tmp_path_factory.mktemp("monitor-wine") / "home", "tabular", "wine", register=True
    )


@pytest.fixture(scope="session")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    return _train(tmp_path_factory.mktemp("monitor-digits") / "home", "image", "digits")


def prediction_rows(
    package: ModelPackage, features: Any, *, name: str, version: str, start: datetime
) -> tuple[list[PredictionRow], list[Any]]:
    """Rows for ``features`` one millisecond apart from ``start``, built by the server's own
    code: the recorder's frame (:func:`shipyard.serve.recorder.frames`) read back and turned
    into rows by the log writer's :class:`~shipyard.serve.logwriter.RowBuilder`; and each
    row's predicted label (or value)."""
    import io

    from shipyard.serve.logwriter import RowBuilder, read_frame
    from shipyard.serve.recorder import Answered, frames

    manifest = package.manifest
    columns = manifest.input.columns
    if columns is not None:  # tables: the float32 model input, as the server batches it
        inputs = np.asarray(features[columns].to_numpy(dtype=np.float32))
    else:
        inputs = np.asarray(features, dtype=np.float32)
    outputs = ServedModel.load(package, name=name, version=version).run(inputs)
    answered = [
        Answered(
            ids=[uuid.uuid4().hex],
            model_name=name,
            model_version=version,
            task=manifest.task,
            labels=manifest.labels,
            columns=tuple(columns) if columns is not None else None,
            features=inputs[i : i + 1],
            raw=None,
            outputs={k: v[i : i + 1] for k, v in outputs.items()},
            latency_ms=1.0,
            created_at=(start + timedelta(milliseconds=i)).timestamp(),
        )
        for i in range(len(inputs))
    ]
    builder, rows = RowBuilder(), []
    for frame in frames(answered):
        decoded = read_frame(io.BytesIO(frame))
        assert decoded is not None
        rows.extend(builder.rows(*decoded))
    predicted = [next(iter(row.output.values())) for row in rows]
    return rows, predicted


def write_log(
    url: str, spool: Path, rows: list[PredictionRow], feedback: list[FeedbackRow] | None = None
) -> None:
    """Write rows (and feedback) through the real prediction log; all must be committed."""
    log = PredictionLog(url, spool)
    log.start()
    try:
        log.record_many(rows)
        for row in feedback or []:
            log.feedback(row)
    finally:
        log.close(timeout_s=60)
    stats = log.stats()
    assert stats["spooled"] == 0, stats
    assert stats["dropped"] == 0, stats


def draw(trained: Trained, rows: int, seed: int) -> tuple[Any, np.ndarray]:
    """``rows`` rows of the test split: each row once (shuffled) before any repeats."""
    rng = np.random.default_rng(seed)
    size = len(trained.test_target)
    index = np.concatenate([rng.permutation(size) for _ in range(-(-rows // size))])[:rows]
    if isinstance(trained.test_features, pd.DataFrame):
        features: Any = trained.test_features.iloc[index].reset_index(drop=True)
    else:
        features = trained.test_features[index]
    return features, trained.test_target[index]


TrafficWriter = Callable[..., str]


@pytest.fixture
def traffic(tmp_path: Path) -> TrafficWriter:
    """``traffic(trained, scenario, rows, seed=0)``: a fresh SQLite log holding that traffic
    under the model's name, version "1"; returns the log's URL."""

    def write(trained: Trained, scenario: str, rows: int, seed: int = 0) -> str:
        features, target = draw(trained, rows, seed)
        features, _ = apply_scenario(
            scenario,
            features,
            target,
            kind=trained.snapshot.kind,
            rng=np.random.default_rng(seed + 1000),
        )
        url = f"sqlite:///{tmp_path / f'{scenario}-{rows}-{seed}-{uuid.uuid4().hex[:6]}.db'}"
        start = datetime.now(UTC) - timedelta(minutes=10)
        log_rows, _ = prediction_rows(
            trained.package, features, name=trained.name, version="1", start=start
        )
        write_log(url, tmp_path / "spool", log_rows)
        return url

    return write


@dataclass
class Logged:
    """A log written by :func:`feedback_traffic`: its URL, each row's prediction and truth."""

    url: str
    predicted: list[Any]
    truth: list[Any]


@pytest.fixture
def feedback_traffic(tmp_path: Path) -> Callable[..., Logged]:
    """``feedback_traffic(trained, url)``: the clean test split logged under the model's name
    (version "1") at ``url``, with a true label sent as feedback for every prediction."""

    def write(trained: Trained, url: str) -> Logged:
        features, target = draw(trained, len(trained.test_target), 0)
        start = datetime.now(UTC) - timedelta(minutes=10)
        rows, predicted = prediction_rows(
            trained.package, features, name=trained.name, version="1", start=start
        )
        labels = trained.package.manifest.labels
        truth = [labels[int(t)] if labels else float(t) for t in target]
        feedback = [
            FeedbackRow(prediction_id=row.id, label=label, created_at=start + timedelta(minutes=1))
            for row, label in zip(rows, truth, strict=True)
        ]
        write_log(url, tmp_path / "spool-feedback", rows, feedback)
        return Logged(url, predicted, truth)

    return write


@pytest.fixture(scope="session")
def regression(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """A tabular regression model (y = 3*x1 - 2*x2 + noise, 400 rows): outputs are values."""
    folder = tmp_path_factory.mktemp("monitor-regression")
    rng = np.random.default_rng(0)
    x1, x2 = rng.normal(5.0, 2.0, 400), rng.normal(-1.0, 0.5, 400)
    frame = pd.DataFrame({"x1": x1, "x2": x2, "y": 3 * x1 - 2 * x2 + rng.normal(0, 0.1, 400)})
    frame.to_csv(folder / "line.csv", index=False)
    data = ("task=tabular", "data=csv", f"data.path={folder / 'line.csv'}", "data.target=y")
    from shipyard.export.build import export_run
    from shipyard.train.run import resolve_snapshot, train

    home = folder / "home"
    cfg = compose([f"paths.home={home}", *QUICK, *data])
    package = export_run(cfg, train(cfg).run_id).package
    snapshot = resolve_snapshot(cfg)
    test = snapshot.load("test")
    return Trained(home, "line", package, snapshot, test.features, np.asarray(test.target))
