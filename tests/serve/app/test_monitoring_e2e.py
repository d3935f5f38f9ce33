"""The server's own monitoring, end to end on a real server: the scheduled drift check (a
child process running Evidently) flags shifted traffic, the live metric follows /feedback,
and both reach /monitoring/summary, /monitoring/drift and the Prometheus gauges."""

from __future__ import annotations

import re
import time
from typing import Any

import httpx
import numpy as np
import pytest

pytestmark = pytest.mark.slow


def gauge(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        if not line.startswith(name + "{") and line.split(" ")[0] != name:
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_shifted_traffic_is_flagged_by_the_servers_scheduled_drift_check(
    packages: Any, servers: Any
) -> None:
    server = servers(
        packages.home,
        "--package",
        str(packages.digits.path),
        "serve.monitor_interval_s=0.5",
        "monitor.drift_interval_s=1",
        "monitor.min_rows=30",
        "monitor.accuracy_min_samples=10",
    )
    client = server.client()
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (60, 8, 8, 1)).tolist()  # no digit looks like this
    answers = client.post("/predict", json={"instances": noise}).json()["predictions"]
    wrong = [next(lbl for lbl in "0123456789" if lbl != a["label"]) for a in answers]
    for answer, label in zip(answers[:20], wrong, strict=False):  # every label says "wrong"
        assert (
            client.post(
                "/feedback", json={"prediction_id": answer["id"], "label": label}
            ).status_code
            == 202
        )

    summary: dict[str, Any] = {}
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        summary = client.get("/monitoring/summary").json()
        accuracy = summary.get("accuracy") or {}
        if summary.get("drift") and accuracy.get("samples", 0) >= 20:
            break
        time.sleep(0.5)
    assert summary.get("drift"), f"no drift summary within 90 s: {summary}"
    assert summary["drift"]["dataset_drift"] is True
    assert summary["drift"]["window"]["rows"] == 60
    assert summary["accuracy"]["value"] == 0.0
    assert summary["accuracy"]["alert"] is True

    metrics = client.get("/metrics").text
    assert gauge(metrics, "shipyard_dataset_drift", model="digits") == 1.0
    assert gauge(metrics, "shipyard_live_metric", model="digits", metric="accuracy") == 0.0
    assert gauge(metrics, "shipyard_live_metric_alert", model="digits") == 1.0
    assert gauge(metrics, "shipyard_model_ready") == 1.0
    assert re.search(r'shipyard_drift_detected\{.*feature="brightness".*\} 1\.0', metrics)

    report = client.get("/monitoring/drift")
    assert report.status_code == 200
    assert report.headers["content-type"].startswith("text/html")
    assert "Dataset Drift" in report.text


def test_no_drift_report_yet_is_a_404_that_says_how(packages: Any, servers: Any) -> None:
    server = servers(packages.home, "--package", str(packages.wine.path))
    response = httpx.get(f"{server.url}/monitoring/drift", timeout=20)
    assert response.status_code == 404
    assert "monitor.drift_interval_s" in response.json()["error"]
