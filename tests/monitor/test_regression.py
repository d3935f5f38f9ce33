"""A model that predicts numbers: its output column is the value, its live metric the MAE."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shipyard.monitor.accuracy import live_metric
from shipyard.monitor.drift import run_drift


@pytest.mark.slow  # trains a third model: about 11 s
def test_value_drift_and_live_mae(
    regression: Any,
    traffic: Callable[..., str],
    feedback_traffic: Callable[..., Any],
    tmp_path: Path,
) -> None:
    rows = len(regression.test_target)  # 60: the whole test split, each row once
    cfg = regression.cfg("monitor.min_rows=20")
    for scenario, drifted in (("clean", False), ("feature-shift", True)):
        url = traffic(regression, scenario, rows)
        summary = run_drift(
            cfg, package=regression.package, window=rows, model_name="line", log_url=url
        )
        kinds = {c.name: c.kind for c in summary.features}
        assert kinds == {"x1": "feature", "x2": "feature", "value": "output"}
        assert summary.dataset_drift is drifted, summary.to_dict()["features"]

    logged = feedback_traffic(regression, f"sqlite:///{tmp_path / 'feedback.db'}")
    errors = np.abs(np.asarray(logged.predicted, float) - np.asarray(logged.truth, float))
    test_mae = regression.package.manifest.graph("fp32").metrics["mae"]
    got = live_metric(
        logged.url, "line", "1", window=1000, test_metric=test_mae, metric="mae", margin=0.0
    )
    assert got.samples == rows
    assert got.value == pytest.approx(errors.mean(), rel=1e-6)
    assert got.drop == pytest.approx(errors.mean() - test_mae, rel=1e-6, abs=1e-9)
