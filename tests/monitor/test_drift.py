"""Drift on real models and real prediction logs.

Stated in docs/monitoring.md and checked here with fixed seeds: every shifted scenario
that applies to the data is flagged (dataset drift) within digits' 200 rows and wine's 27
(its whole test split, each row once), and clean traffic of the same length is not.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from shipyard.errors import UserError
from shipyard.monitor.drift import run_drift
from shipyard.monitor.scenarios import scenarios_for
from shipyard.tasks.base import DataKind

#: rows of traffic per check (docs/monitoring.md): digits draws 200 of its 270 test images;
#: wine sends its whole test split once (27 rows) -- more would repeat rows, which a p-value
#: test rightly sees as a different distribution from the training split
STATED_ROWS = {"image": 200, "tabular": 27}
WINE = ("monitor.min_rows=20",)
Trained = Any  # conftest.Trained (test modules cannot import conftest)
TrafficWriter = Callable[..., str]


@pytest.mark.parametrize("scenario", scenarios_for(DataKind.TABLE))
def test_wine_shifts_are_flagged_and_clean_is_not(
    wine: Trained, traffic: TrafficWriter, scenario: str
) -> None:
    rows = STATED_ROWS["tabular"]
    url = traffic(wine, scenario, rows)
    summary = run_drift(
        wine.cfg(*WINE), package=wine.package, window=rows, model_name="wine", log_url=url
    )
    verdict = summary.to_dict()
    print(f"wine {scenario}: drift share {summary.drift_share:.2f} in {summary.seconds:.1f} s")
    assert verdict["dataset_drift"] is (scenario != "clean"), verdict["features"]
    assert verdict["window"]["rows"] == rows
    kinds = {c["name"]: c["kind"] for c in verdict["features"]}
    assert kinds["alcohol"] == "feature"
    assert kinds["label"] == kinds["confidence"] == "output"
    assert "embedding" not in kinds  # the tabular graph exports none


def test_the_summary_and_reports_on_disk(wine: Trained, traffic: TrafficWriter) -> None:
    url = traffic(wine, "feature-shift", 27)
    cfg = wine.cfg(*WINE, "monitor.keep_reports=2")
    for _ in range(3):
        summary = run_drift(cfg, package=wine.package, model_name="wine", log_url=url)
    folder = wine.home / "monitoring" / "drift"
    latest = json.loads((folder / "latest.json").read_text())
    assert latest == json.loads(json.dumps(summary.to_dict()))
    assert set(latest) >= {
        "created_at",
        "model",
        "window",
        "dataset_drift",
        "drift_share",
        "features",
        "report_html",
    }
    assert latest["model"] == {"name": "wine", "version": None, "versions": ["1"]}
    assert set(latest["window"]) == {"rows", "start", "end"}
    assert latest["window"]["start"] <= latest["window"]["end"]
    for column in latest["features"]:
        assert set(column) == {"name", "kind", "method", "score", "threshold", "drifted"}
        assert column["kind"] in ("feature", "output", "embedding")
    drifted = sum(c["drifted"] for c in latest["features"])
    assert latest["drift_share"] == pytest.approx(drifted / len(latest["features"]))
    html = Path(latest["report_html"])
    assert html.is_file()
    assert html.read_bytes() == (folder / "latest.html").read_bytes()
    assert "<html" in html.read_text()[:2000].lower()
    assert Path(latest["report_json"]).read_text() == (folder / "latest.json").read_text()
    # keep_reports=2: the newest two runs' pairs beside latest.*
    assert len(list(folder.glob("drift-*.html"))) == 2
    assert len(list(folder.glob("drift-*.json"))) == 2
    assert not list(folder.glob(".*"))  # no temporary files left behind
    cached = list((wine.home / "monitoring" / "reference").glob("*.npz"))
    assert len(cached) == 1  # outputs of the reference rows: computed once per package


def test_too_few_rows_is_one_line_and_overwrites_nothing(
    wine: Trained, traffic: TrafficWriter
) -> None:
    url = traffic(wine, "clean", 27)
    cfg = wine.cfg(*WINE)
    run_drift(cfg, package=wine.package, model_name="wine", log_url=url)
    latest = wine.home / "monitoring" / "drift" / "latest.json"
    before = latest.read_bytes()
    with pytest.raises(UserError, match=r"needs at least 20 \(monitor.min_rows\)") as error:
        run_drift(cfg, package=wine.package, window=10, model_name="wine", log_url=url)
    assert "\n" not in str(error.value)
    with pytest.raises(UserError, match="holds 0 predictions of merlot"):
        run_drift(cfg, package=wine.package, model_name="merlot", log_url=url)
    assert latest.read_bytes() == before


def test_settings_mistakes_are_user_errors(wine: Trained, traffic: TrafficWriter) -> None:
    url = traffic(wine, "clean", 27)
    for override, message in [
        ("monitor.embedding_method=tsne", "choose one of model, mmd, distance, ratio"),
        ("monitor.drift_share=0", r"drift_share must be in \(0, 1\]"),
        ("+monitor.columns={colour: {method: psi}}", "choose from alcohol"),
        ("monitor.num_method=nonsense", "Evidently refused the drift settings"),
    ]:
        with pytest.raises(UserError, match=message):
            run_drift(
                wine.cfg(*WINE, override), package=wine.package, model_name="wine", log_url=url
            )


def test_per_column_method_and_threshold(wine: Trained, traffic: TrafficWriter) -> None:
    url = traffic(wine, "clean", 27)
    cfg = wine.cfg(*WINE, "+monitor.columns={alcohol: {method: psi, threshold: 0.3}}")
    summary = run_drift(cfg, package=wine.package, model_name="wine", log_url=url)
    alcohol = next(c for c in summary.features if c.name == "alcohol")
    assert (alcohol.method, alcohol.threshold) == ("psi", 0.3)


@pytest.mark.slow
@pytest.mark.parametrize("scenario", scenarios_for(DataKind.IMAGE))
def test_digits_shifts_are_flagged_and_clean_is_not(
    digits: Trained, traffic: TrafficWriter, scenario: str
) -> None:
    rows = STATED_ROWS["image"]
    url = traffic(digits, scenario, rows)
    summary = run_drift(
        digits.cfg(), package=digits.package, window=rows, model_name="digits", log_url=url
    )
    print(f"digits {scenario}: drift share {summary.drift_share:.2f} in {summary.seconds:.1f} s")
    assert summary.dataset_drift is (scenario != "clean"), summary.to_dict()["features"]
    embedding = [c for c in summary.features if c.kind == "embedding"]
    assert [c.name for c in embedding] == ["embedding"]
    assert embedding[0].method == "model"
    assert embedding[0].drifted is (scenario != "clean")
