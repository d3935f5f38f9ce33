"""The README's `mlflow ui` command, run for real against a store Shipyard wrote."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from omegaconf import DictConfig

from shipyard.train.run import train


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow
def test_mlflow_ui_shows_the_run_with_params_metrics_and_artifacts(
    compose: Callable[..., DictConfig], home: Path
) -> None:
    cfg = compose("task=tabular", "trainer.max_epochs=2", "trainer.early_stopping_patience=null")
    run_id = train(cfg).run_id
    port = _free_port()
    mlflow = Path(sys.executable).with_name("mlflow")
    server = subprocess.Popen(
        [
            str(mlflow),
            "ui",
            "--backend-store-uri",
            f"sqlite:///{home}/mlflow.db",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "MLFLOW_SERVER_ALLOWED_HOSTS": f"127.0.0.1:{port},localhost:{port}"},
    )
    try:
        payload = _get_json(
            f"http://127.0.0.1:{port}/api/2.0/mlflow/runs/get?run_id={run_id}", deadline=90
        )
        data = payload["run"]["data"]
        params = {p["key"]: p["value"] for p in data["params"]}
        metrics = {m["key"] for m in data["metrics"]}
        tags = {t["key"]: t["value"] for t in data["tags"]}
        assert params["task.name"] == "tabular"
        assert {"test_accuracy", "val_loss", "train_loss"} <= metrics
        assert tags["shipyard.snapshot_id"]
        artifacts = _get_json(
            f"http://127.0.0.1:{port}/api/2.0/mlflow/artifacts/list?run_id={run_id}", deadline=10
        )
        assert {"config.yaml", "confusion_matrix.png"} <= {f["path"] for f in artifacts["files"]}
    finally:
        server.terminate()
        server.wait(timeout=30)


def _get_json(url: str, deadline: float) -> dict:  # type: ignore[type-arg]
    until = time.monotonic() + deadline
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return json.loads(response.read())  # type: ignore[no-any-return]
        except OSError:
            if time.monotonic() > until:
                raise
            time.sleep(0.5)
