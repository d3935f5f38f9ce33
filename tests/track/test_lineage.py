"""The fingerprints the pipeline's stage cache compares: what moves them and what does not."""

from __future__ import annotations

from collections.abc import Callable

from omegaconf import DictConfig

from shipyard.track.lineage import (
    EXPORT_CODE,
    TRAINING_CODE,
    code_fingerprint,
    export_fingerprint,
    training_fingerprint,
)


def test_code_fingerprint_covers_the_named_parts_only() -> None:
    assert code_fingerprint() == code_fingerprint(TRAINING_CODE)
    assert code_fingerprint(EXPORT_CODE) != code_fingerprint(TRAINING_CODE)
    assert code_fingerprint(("cli.py",)) != code_fingerprint(("pipeline.py",))
    assert len(code_fingerprint()) == 16


def test_training_fingerprint_follows_training_keys_only(
    compose: Callable[..., DictConfig],
) -> None:
    base = training_fingerprint(compose("task=tabular"))
    same = [
        ("task=tabular", "quantize=null"),
        ("task=tabular", "export.parity_tolerance=0.1"),
        ("task=tabular", "registry.gate.max_latency_ms=1"),
        ("task=tabular", "resume=true"),
        ("task=tabular", "snapshot=abcd"),
    ]
    for overrides in same:
        assert training_fingerprint(compose(*overrides)) == base, overrides
    for overrides in [
        ("task=tabular", "model.lr=0.5"),
        ("task=tabular", "seed=1"),
        ("task=image",),
    ]:
        assert training_fingerprint(compose(*overrides)) != base, overrides


def test_export_fingerprint_follows_export_keys(compose: Callable[..., DictConfig]) -> None:
    base = export_fingerprint(compose("task=tabular"))
    assert export_fingerprint(compose("task=tabular", "model.lr=0.5")) == base
    assert export_fingerprint(compose("task=tabular", "quantize=null")) != base
    assert export_fingerprint(compose("task=tabular", "export.latency.repeats=3")) != base
