"""Trained and exported runs shared by the registry tests: training is the slow part, so
three small wine runs are made once per session in one home, and each test registers them
under its own model name (a registry is per name, so tests do not see each other's
champions)."""

from __future__ import annotations

import shutil
import tempfile
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from omegaconf import DictConfig

from shipyard.config import compose
from shipyard.track import tracking

# Two epochs reach a good accuracy on wine; export quickly (no int8 graph, few timings).
QUICK = (
    "task=tabular",
    "trainer.early_stopping_patience=null",
    "quantize=null",
    "export.latency.repeats=3",
)


@dataclass(frozen=True)
class Trained:
    home: Path
    #: accuracy 1.0-ish on the default wine snapshot
    good: str
    #: one epoch at lr=1e-6 on the same snapshot: a deliberately worse model
    bad: str
    #: a good model on another snapshot (data.split_seed=1)
    other: str
    accuracy: dict[str, float]
    snapshot: dict[str, str]

    def cfg(self, *overrides: str) -> DictConfig:
        return compose([f"paths.home={self.home}", *QUICK, *overrides])

    @staticmethod
    def artifact_folder(cfg: DictConfig, run_id: str) -> Path:
        """The run's artifact folder on disk (the default store is a local folder)."""
        uri = str(tracking.client(cfg).get_run(run_id).info.artifact_uri)
        return Path(urllib.request.url2pathname(urllib.parse.urlparse(uri).path))

    @staticmethod
    def clone_run(cfg: DictConfig, run_id: str) -> str:
        """A new run carrying a copy of ``run_id``'s package and tags: something to damage
        without touching the shared runs."""
        client = tracking.client(cfg)
        source = client.get_run(run_id)
        tags = {k: v for k, v in source.data.tags.items() if k.startswith("shipyard.")}
        clone = client.create_run(source.info.experiment_id, tags=tags)
        scratch = Path(tempfile.mkdtemp(prefix="shipyard-clone-"))
        try:
            local = client.download_artifacts(run_id, "package", str(scratch))
            client.log_artifacts(clone.info.run_id, local, "package")
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        client.set_terminated(clone.info.run_id)
        return str(clone.info.run_id)

    @staticmethod
    def damage(path: Path) -> None:
        """Flip the bytes in the middle of a file, keeping its size."""
        blob = bytearray(path.read_bytes())
        middle = len(blob) // 2
        blob[middle : middle + 8] = bytes(b ^ 0xFF for b in blob[middle : middle + 8])
        path.write_bytes(bytes(blob))


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    from shipyard.export.build import export_run
    from shipyard.train.run import train

    home = tmp_path_factory.mktemp("registry") / "home"
    runs: dict[str, Any] = {}
    for key, overrides in {
        "good": ("trainer.max_epochs=2",),
        "bad": ("trainer.max_epochs=1", "model.lr=1e-6"),
        "other": ("trainer.max_epochs=2", "data.split_seed=1"),
    }.items():
        cfg = compose([f"paths.home={home}", *QUICK, *overrides])
        runs[key] = train(cfg)
        export_run(cfg, runs[key].run_id)
    accuracy = {k: float(r.metrics["test_accuracy"]) for k, r in runs.items()}
    # The gate tests rely on these being honest: "bad" really is worse on the same split.
    assert accuracy["bad"] < accuracy["good"], accuracy
    assert runs["other"].snapshot_id != runs["good"].snapshot_id
    return Trained(
        home=home,
        good=runs["good"].run_id,
        bad=runs["bad"].run_id,
        other=runs["other"].run_id,
        accuracy=accuracy,
        snapshot={k: r.snapshot_id for k, r in runs.items()},
    )
