"""``shipyard pipeline``: six stages end in a champion, and an unchanged re-run reuses them all."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable

from omegaconf import DictConfig

from shipyard.pipeline import STAGES, run_pipeline
from shipyard.track import tracking

QUICK = ("task=tabular", "trainer.max_epochs=3", "trainer.early_stopping_patience=null")


def reused(result: dict[str, object]) -> dict[str, bool]:
    return {s["stage"]: s["reused"] for s in result["stages"]}  # type: ignore[attr-defined]


def test_pipeline_ends_with_a_champion_and_reuses_every_stage(
    compose: Callable[..., DictConfig],
) -> None:
    cfg = compose(*QUICK)
    first = run_pipeline(cfg)

    assert [s["stage"] for s in first["stages"]] == list(STAGES)
    assert not any(reused(first).values())
    name, version = first["champion"]["name"], first["champion"]["version"]
    assert name == "wine"
    champion = tracking.client(cfg).get_model_version_by_alias(name, "champion")
    assert str(champion.version) == str(version)
    assert champion.run_id == first["run_id"]
    assert first["metrics"]["test_accuracy"] > 0.5
    assert first["parity_max_abs_diff"] < 1e-4

    second = run_pipeline(cfg)
    assert all(reused(second).values()), second["stages"]
    for key in ("snapshot_id", "run_id", "champion", "package", "metrics"):
        assert second[key] == first[key], key


def test_changing_only_the_export_config_keeps_the_training(
    compose: Callable[..., DictConfig],
) -> None:
    first = run_pipeline(compose(*QUICK), until="export")
    fp32_only = run_pipeline(compose(*QUICK, "quantize=null"), until="export")

    assert reused(fp32_only) == {"data": True, "train": True, "evaluate": True, "export": False}
    assert fp32_only["run_id"] == first["run_id"]


def test_a_changed_training_config_trains_again(compose: Callable[..., DictConfig]) -> None:
    first = run_pipeline(compose(*QUICK), until="train")
    other = run_pipeline(compose(*QUICK, "model.lr=0.01"), until="train")

    assert reused(other) == {"data": True, "train": False}
    assert other["run_id"] != first["run_id"]


def test_pipeline_cli_stops_after_the_named_stage(
    cli: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    done = cli("pipeline", *QUICK, "--until", "evaluate", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert [s["stage"] for s in result["stages"]] == ["data", "train", "evaluate"]
    assert "model" not in result

    wrong = cli("pipeline", *QUICK, "--until", "deploy")
    assert wrong.returncode == 2
    assert wrong.stderr.strip().count("\n") == 0
    assert "unknown stage 'deploy'" in wrong.stderr


def test_a_refused_promotion_shows_the_stages_and_the_gate_then_exits_2(
    cli: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    done = cli("pipeline", *QUICK, "registry.gate.max_latency_ms=1e-9")

    assert done.returncode == 2
    assert "refused by the gate" in done.stdout  # the stage table
    assert "Promotion gate" in done.stdout
    assert "latency" in done.stdout
    assert "registered (not promoted)" in done.stdout
    assert done.stderr.strip().startswith("error:")
    assert done.stderr.strip().count("\n") == 0
