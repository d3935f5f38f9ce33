"""``task=summarize`` through the spine: snapshot with a text target -> teacher-forced
training scored by ROUGE beside lead-3 -> a three-graph package with greedy parity ->
the registry's gate -> ``ServedModel`` (torch-free decoding)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from omegaconf import DictConfig

from shipyard.data.prepare import prepare
from shipyard.errors import ConfigError, DataError

# A randomly initialised two-layer BART on MiniLM's vocabulary (no pretrained summariser
# installs offline): the whole spine in seconds. The default MiniLM pair is the slow run.
TINY = (
    "task=summarize",
    "model.family=seq2seq",
    "data.limit=12",
    "trainer.max_epochs=2",
    "trainer.early_stopping_patience=null",
    "model.max_source_length=48",
    "model.max_target_length=16",
    "model.lr=1e-3",
)


# -- data: a text target -------------------------------------------------------------------------


def test_aclsum_snapshot_stores_summaries_as_text_without_pickle(
    compose: Callable[..., DictConfig],
) -> None:
    snapshot = prepare(compose("task=summarize", "data.limit=10")).snapshot
    manifest = snapshot.manifest
    assert manifest["schema"]["target"] == {"name": "summary", "kind": "text", "labels": None}
    assert manifest["rows"] == 30  # ten papers from each published split
    assert manifest["source"]["origin"].startswith("aclsum==")
    words = manifest["splits"]["train"]["target_words"]
    assert 20 < words["mean_words"] < 200
    test = snapshot.load("test")  # np.load(allow_pickle=False) inside
    assert test.target.dtype.kind == "U"
    assert all(len(str(t).split()) > 5 for t in test.target)
    assert list(test.features.columns) == ["text"]
    assert "target" in snapshot.reference().columns


def test_a_table_of_documents_and_summaries_is_a_summarize_source(
    compose: Callable[..., DictConfig], tmp_path: Path
) -> None:
    path = tmp_path / "pairs.csv"
    frame = pd.DataFrame(
        {
            "article": [f"Document {i}. It says {i} things. Then it ends." for i in range(20)],
            "highlights": [f"It says {i} things." for i in range(20)],
        }
    )
    frame.to_csv(path, index=False)
    overrides = (
        "task=summarize",
        "data=text_csv",
        f"data.path={path}",
        "data.text_column=article",
        "data.target=highlights",
        "data.target_type=text",
    )
    snapshot = prepare(compose(*overrides)).snapshot
    assert snapshot.manifest["schema"]["target"]["kind"] == "text"
    train = snapshot.load("train")
    assert set(train.target) <= set(frame["highlights"])

    frame.loc[3, "highlights"] = " "
    frame.to_csv(path, index=False)
    with pytest.raises(DataError, match="1 empty texts: a text target needs a reference"):
        prepare(compose(*overrides))


def test_a_task_that_predicts_classes_refuses_a_text_target(
    compose: Callable[..., DictConfig],
) -> None:
    with pytest.raises(DataError) as caught:
        prepare(compose("task=text", "data=aclsum", "data.limit=5"))
    assert "task 'text' predicts classes, not a text target" in str(caught.value)


def test_int8_is_refused_before_any_training(compose: Callable[..., DictConfig]) -> None:
    from shipyard.pipeline import run_pipeline

    with pytest.raises(ConfigError, match="quantize=int8 is not available for models that"):
        run_pipeline(compose("task=summarize", "quantize=int8"))


# -- the whole spine -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def piped(tmp_path_factory: pytest.TempPathFactory, tiny_bart: Path) -> tuple[DictConfig, Any]:
    from shipyard.config import compose
    from shipyard.pipeline import run_pipeline

    home = tmp_path_factory.mktemp("summarize") / "home"
    cfg = compose([f"paths.home={home}", *TINY, f"model.backbone={tiny_bart}"])
    return cfg, run_pipeline(cfg)


@pytest.mark.slow  # trains, exports, registers a tiny BART: ~20 s
def test_pipeline_scores_rouge_beside_lead3_and_registers_a_champion(piped: Any) -> None:
    _, result = piped
    metrics, baseline = result["metrics"], result["baseline"]
    for name in ("rouge1", "rouge2", "rougeL"):
        assert 0.0 <= metrics[f"test_{name}"] <= 1.0
        assert 0.0 < baseline[f"test_{name}"] <= 1.0  # lead-3 shares words with any summary
    assert 0 <= metrics["test_summary_words"] <= 16  # words <= tokens <= max_target_length
    assert result["champion"]["name"] == "aclsum"
    assert result["parity_sequences_equal"] == 1.0


@pytest.mark.slow  # uses the pipeline above
def test_the_package_is_three_graphs_a_spec_and_a_tokenizer(piped: Any) -> None:
    from shipyard.export.package import load_package

    _, result = piped
    package = load_package(result["package"])
    manifest = package.manifest
    assert (manifest.task, manifest.output_kind, manifest.labels) == ("summarize", "text", None)
    assert [g.role for g in manifest.graphs] == ["encoder", "decoder", "decoder_with_past"]
    assert manifest.graph().role == "encoder"  # the entry: metrics and latency of summaries
    assert set(manifest.graph().metrics) >= {"rouge1", "rouge2", "rougeL"}
    assert set(manifest.graph().latency) == {1, 8}
    assert [o.name for o in manifest.outputs] == ["sequences", "embedding"]
    assert manifest.outputs[1].shape == [None, 32]
    assert {"tokenizer.json", "generation.json", "weights.bin", "report.html"} <= set(
        manifest.files
    )
    assert manifest.tokenizer is not None
    assert manifest.tokenizer.max_length == 48
    spec = json.loads((package.path / "generation.json").read_text())
    assert spec["decoding"] == {
        "num_beams": 1,
        "no_repeat_ngram_size": 3,
        "length_penalty": 1.0,
        "max_length": 16,
    }
    assert manifest.parity.passed
    assert manifest.parity.sequences_equal == 1.0
    assert not any(p.suffix in (".pkl", ".pickle", ".pt", ".ckpt") for p in package.path.iterdir())
    report = (package.path / "report.html").read_text()
    assert "100.0%</b> of the" in report


@pytest.mark.slow  # uses the pipeline above
def test_served_model_decodes_the_same_summaries_as_the_session(piped: Any) -> None:
    from shipyard.data.snapshot import SnapshotStore
    from shipyard.export.package import input_schema, load_package
    from shipyard.serve.runtime import ServedModel
    from shipyard.tasks import get_task
    from shipyard.tasks.summarize.session import GenerationSession

    cfg, result = piped
    package = load_package(result["package"])
    served = ServedModel.load(package, name="aclsum", version="1")
    snapshot = SnapshotStore(str(cfg.paths.snapshots)).get(result["snapshot_id"])
    test = snapshot.load("test")
    ids = get_task("summarize").model_input(test.features, input_schema(package.path, {}))
    answers = served.run(ids)
    session = GenerationSession(package.path)
    sequences, embedding = session.run(None, {"input_ids": ids})
    assert np.array_equal(answers["sequences"], sequences)
    np.testing.assert_allclose(answers["embedding"], embedding, atol=1e-6)
    assert embedding.shape == (len(test), 32)
    (only,) = session.run(["embedding"], {"input_ids": ids})  # the encoder alone
    np.testing.assert_allclose(only, embedding, atol=1e-6)
    summaries = session.decode(sequences)
    assert len(summaries) == len(test)
    assert all(isinstance(s, str) for s in summaries)


@pytest.mark.slow  # trains a second model on other splits: ~15 s
def test_the_gate_rescores_the_champion_summariser_on_a_new_test_split(
    piped: Any, tiny_bart: Path
) -> None:
    from shipyard.config import compose
    from shipyard.pipeline import run_pipeline
    from shipyard.track.gate import GateRefused
    from shipyard.track.registry import promote

    cfg, first = piped
    other = compose(
        [f"paths.home={cfg.paths.home}", *TINY, f"model.backbone={tiny_bart}", "data.split_seed=1"]
    )
    second = run_pipeline(other, until="register")
    assert second["snapshot_id"] != first["snapshot_id"]
    try:  # the gate may pass or refuse the newcomer; either way it must have compared
        found = promote(other, "aclsum", second["model"]["version"]).checks
    except GateRefused as refused:
        found = refused.checks
    checks = {c.name: c for c in found}
    assert "re-scored on it" in checks["metric"].detail, checks["metric"].detail
    assert checks["parity"].passed
    assert checks["latency"].passed


@pytest.mark.slow  # uses the pipeline above
def test_promote_judges_a_version_by_its_own_tasks_settings(piped: Any) -> None:
    """`shipyard promote aclsum 1` (no task=) uses the summarize task's gate budget, made
    for whole summaries, not the default task's 50 ms; a task= on the command line wins."""
    from shipyard.track.registry import config_for_version

    cfg, _ = piped
    home = f"paths.home={cfg.paths.home}"
    judged = config_for_version([home], "aclsum", "1")
    assert judged.task.name == "summarize"
    assert judged.registry.gate.max_latency_ms == 10000.0
    assert judged.quantize is None
    assert config_for_version([home, "task=image"], "aclsum", "1").task.name == "image"
