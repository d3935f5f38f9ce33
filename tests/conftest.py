"""Fixtures: a real, temporary Shipyard home per test; nothing of Shipyard's is mocked."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import DictConfig

# No test may reach a model hub: fail fast instead of waiting for the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

# Small, quick training for tests; the slow tests train at full size.
FAST = ("trainer.max_epochs=3", "trainer.early_stopping_patience=null")


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty SHIPYARD_HOME for this test."""
    path = tmp_path / "home"
    monkeypatch.setenv("SHIPYARD_HOME", str(path))
    return path


@pytest.fixture
def compose(home: Path) -> Callable[..., DictConfig]:
    """Compose the real packaged config with overrides, against the test's home."""
    from shipyard.config import compose as shipyard_compose

    def _compose(*overrides: str) -> DictConfig:
        return shipyard_compose(list(overrides))

    return _compose


def run_cli(
    *args: str, home: Path, cwd: Path | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """Run the installed ``shipyard`` command in a subprocess, as a user would."""
    env = {**os.environ, "SHIPYARD_HOME": str(home), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "shipyard", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd or home.parent,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def cli(home: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    def _cli(*args: str) -> subprocess.CompletedProcess[str]:
        return run_cli(*args, home=home)

    return _cli


@pytest.fixture
def regression_csv(tmp_path: Path) -> Path:
    """A CSV where y = 3*x1 - 2*x2 + noise (200 rows), with a few missing feature values."""
    rng = np.random.default_rng(0)
    rows = 200
    x1, x2 = rng.normal(5.0, 2.0, rows), rng.normal(-1.0, 0.5, rows)
    frame = pd.DataFrame({"x1": x1, "x2": x2, "y": 3 * x1 - 2 * x2 + rng.normal(0, 0.1, rows)})
    frame.loc[[3, 50, 120], "x1"] = np.nan
    frame.loc[[7, 90], "x2"] = np.nan
    path = tmp_path / "regression.csv"
    frame.to_csv(path, index=False)
    return path


@pytest.fixture(scope="session")
def tiny_bart(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BART folder with the bundled MiniLM tokenizer, loadable by from_pretrained."""
    from transformers import AutoTokenizer, BartConfig, BartForConditionalGeneration

    from shipyard.tasks.text.training import backbone_path

    folder = tmp_path_factory.mktemp("tiny-bart")
    tokenizer = AutoTokenizer.from_pretrained(backbone_path(None))
    config = BartConfig(
        vocab_size=tokenizer.vocab_size,
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=128,
        pad_token_id=0,
        bos_token_id=101,
        eos_token_id=102,
        decoder_start_token_id=102,
        forced_eos_token_id=None,
    )
    BartForConditionalGeneration(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
