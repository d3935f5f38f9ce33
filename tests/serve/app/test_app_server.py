"""The service end to end: ``shipyard serve`` in a subprocess, a real uvicorn on a loopback
port, real packages, httpx as the client.

Answers are compared with :meth:`ServedModel.run` on the same rows in this process, so
"the server predicts what the model predicts" is checked, not assumed.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from shipyard.serve import schemas
from shipyard.serve.predlog import PredictionLog, decode_embedding
from shipyard.serve.reload import package_version
from shipyard.serve.runtime import ServedModel

ADMIN = "test-admin-token"
AUTH = {"Authorization": f"Bearer {ADMIN}"}


def log_url(packages: Any, name: str) -> str:
    return f"sqlite:///{packages.home.parent / name}.db"


@pytest.fixture(scope="module")
def digits_server(packages: Any, servers: Callable[..., Any]) -> Any:
    return servers(
        packages.home,
        "--package",
        str(packages.digits.path),
        f"serve.prediction_log_url={log_url(packages, 'digits-log')}",
        "serve.prediction_log_flush_interval_s=0.05",
        env={"SHIPYARD_ADMIN_TOKEN": ADMIN},
    )


@pytest.fixture(scope="module")
def digits_model(packages: Any) -> ServedModel:
    return ServedModel.load(packages.digits, name="digits", version="x")


def test_cli_prints_one_json_line_and_logs_the_ready_line(
    digits_server: Any, packages: Any
) -> None:
    summary = digits_server.summary
    assert summary["name"] == "digits"
    assert summary["version"] == package_version(packages.digits.path)
    assert summary["url"] == digits_server.url
    assert summary["workers"] == 1
    assert re.search(
        r"serving digits v\S+ \(image, fp32\) at http://127\.0\.0\.1:\d+", digits_server.stderr()
    )


def test_predict_digits_equals_the_model_and_names_the_version(
    digits_server: Any, packages: Any, digits_model: ServedModel
) -> None:
    images = packages.digits_test[:32]
    response = digits_server.client().post("/predict", json={"instances": images[..., 0].tolist()})
    assert response.status_code == 200, response.text
    body = schemas.PredictResponse.model_validate(response.json())
    expected = digits_model.run(images.astype(np.float32))["probabilities"]
    labels = digits_model.manifest.labels
    assert labels is not None
    assert [p.label for p in body.predictions] == [labels[i] for i in expected.argmax(axis=1)]  # type: ignore[union-attr]
    first = body.predictions[0]
    assert isinstance(first, schemas.ClassPrediction)
    assert [first.probabilities[label] for label in labels] == pytest.approx(
        expected[0].tolist(), abs=1e-6
    )
    assert len({p.id for p in body.predictions}) == 32
    version = package_version(packages.digits.path)
    assert response.headers["x-model-name"] == "digits"
    assert response.headers["x-model-version"] == version
    assert body.model == schemas.ModelRef(name="digits", version=version)
    # a single instance, and an error: both carry the model headers
    single = digits_server.client().post("/predict", json={"instance": images[0].tolist()})
    assert single.json()["predictions"][0]["label"] == body.predictions[0].label  # type: ignore[union-attr]
    refused = digits_server.client().post("/predict", json={"instances": []})
    assert refused.status_code == 422
    assert refused.headers["x-model-version"] == version


def test_png_upload_gives_the_json_label(
    digits_server: Any, packages: Any, png: Callable[[np.ndarray], bytes]
) -> None:
    images = packages.digits_test[:4]
    client = digits_server.client()
    by_json = client.post("/predict", json={"instances": images.tolist()}).json()
    files = [("file", (f"digit{i}.png", png(image), "image/png")) for i, image in enumerate(images)]
    by_upload = client.post("/predict/upload", files=files)
    assert by_upload.status_code == 200, by_upload.text
    assert [p["label"] for p in by_upload.json()["predictions"]] == [
        p["label"] for p in by_json["predictions"]
    ]
    assert by_upload.json()["predictions"][0]["probabilities"] == pytest.approx(
        by_json["predictions"][0]["probabilities"], abs=1e-6
    )
    raw = client.post(
        "/predict/upload", content=png(images[0]), headers={"content-type": "image/png"}
    )
    assert raw.status_code == 200, raw.text
    assert raw.json()["predictions"][0]["label"] == by_json["predictions"][0]["label"]


def test_open_inference_protocol(
    digits_server: Any, packages: Any, digits_model: ServedModel
) -> None:
    client = digits_server.client()
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    metadata = schemas.ModelMetadata.model_validate(client.get("/v2/models/digits").json())
    assert metadata.inputs == [
        schemas.MetadataTensor(name="features", datatype="FP32", shape=[-1, 8, 8, 1])
    ]
    assert [(o.name, o.datatype, o.shape[0]) for o in metadata.outputs] == [
        ("probabilities", "FP32", -1),
        ("embedding", "FP32", -1),
    ]
    assert client.get("/v2/models/digits/ready").json() == {"name": "digits", "ready": True}
    assert client.get("/v2/models/nope").status_code == 404

    images = packages.digits_test[:3].astype(np.float32)
    request = {
        "id": "r1",
        "inputs": [
            {
                "name": "features",
                "shape": [3, 8, 8, 1],
                "datatype": "FP32",
                "data": images.ravel().tolist(),
            }
        ],
    }
    response = client.post("/v2/models/digits/infer", json=request)
    assert response.status_code == 200, response.text
    body = schemas.InferResponse.model_validate(response.json())
    assert body.id == "r1"
    assert body.model_name == "digits"
    outputs = {o.name: o for o in body.outputs}
    expected = digits_model.run(images)
    assert outputs["probabilities"].shape == [3, 10]
    assert np.allclose(
        np.reshape(outputs["probabilities"].data, (3, 10)), expected["probabilities"], atol=1e-6
    )
    assert outputs["embedding"].shape == list(expected["embedding"].shape)
    assert body.parameters is not None
    assert len(body.parameters["prediction_ids"]) == 3
    only = client.post(
        "/v2/models/digits/infer", json={**request, "outputs": [{"name": "probabilities"}]}
    )
    assert [o["name"] for o in only.json()["outputs"]] == ["probabilities"]


def test_feedback_and_predictions_reach_the_log(
    digits_server: Any, packages: Any, tmp_path: Path
) -> None:
    client = digits_server.client()
    image = packages.digits_test[5]
    prediction = client.post("/predict", json={"instance": image.tolist()}).json()["predictions"][0]
    feedback = client.post("/feedback", json={"prediction_id": prediction["id"], "label": 7})
    assert feedback.status_code == 202, feedback.text
    log = PredictionLog(log_url(packages, "digits-log"), tmp_path / "spool")
    try:
        deadline = time.monotonic() + 10
        row: dict[str, Any] = {}
        while time.monotonic() < deadline:
            found = [r for r in log.recent(limit=500) if r["id"] == prediction["id"]]
            if found and found[0]["label"] is not None:
                row = found[0]
                break
            time.sleep(0.1)
    finally:
        log.close()
    assert row, "the prediction and its feedback were not written within 10 s"
    assert row["label"] == "7"
    assert row["model_name"] == "digits"
    assert row["output"] == {"label": prediction["label"]}
    assert row["input"]["shape"] == [8, 8, 1]
    assert len(row["input"]["sha256"]) == 64
    assert set(row["monitor_features"]) >= {"brightness", "contrast", "dark_share", "bright_share"}
    assert row["monitor_features"]["brightness"] == pytest.approx(image.mean() / 255, abs=1e-6)
    assert len(decode_embedding(row["embedding"]) or []) == 128
    assert row["probabilities"] == pytest.approx(
        [prediction["probabilities"][str(d)] for d in range(10)], abs=1e-6
    )
    assert row["latency_ms"] > 0


def test_metrics_expose_every_family(digits_server: Any) -> None:
    client = digits_server.client()
    client.post("/predict", json={"instances": [[[0] * 8] * 8]})
    client.post("/predict", json={"instances": [[[0] * 7] * 8]})
    text = client.get("/metrics").text
    for family in (
        'shipyard_requests_total{method="POST",route="/predict",status="200"}',
        'shipyard_requests_total{method="POST",route="/predict",status="422"}',
        'shipyard_request_duration_seconds_bucket{le="0.005",route="/predict"}',
        "shipyard_batch_size_bucket",
        "shipyard_batch_duration_seconds_bucket",
        "shipyard_queue_rows ",
        "shipyard_in_flight_requests ",
        'shipyard_model_info{name="digits",precision="fp32",version="pkg-',
        'shipyard_predictions_total{label="',
        'shipyard_errors_total{kind="bad_shape"}',
        'shipyard_prediction_log_rows{state="written"}',
        "shipyard_prediction_log_database_up 1.0",
    ):
        assert family in text, family


def test_admin_needs_the_bearer_token(digits_server: Any, packages: Any) -> None:
    client = digits_server.client()
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {ADMIN}"}):
        response = client.post("/admin/reload", headers=headers)
        assert response.status_code == 401, response.text
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert response.json()["kind"] == "unauthorized"
    ok = client.post("/admin/reload", headers=AUTH)
    assert ok.status_code == 200, ok.text
    assert ok.json()["reloaded"] is False
    assert ok.json()["model"]["version"] == package_version(packages.digits.path)
    rollback = client.post("/admin/rollback", headers=AUTH)
    assert rollback.status_code == 409
    assert "package folder" in rollback.json()["error"]


def test_reload_refuses_a_corrupt_package_and_keeps_serving(
    packages: Any, servers: Callable[..., Any], tmp_path: Path
) -> None:
    folder = tmp_path / "digits-package"
    shutil.copytree(packages.digits.path, folder)
    server = servers(
        packages.home,
        "--package",
        str(folder),
        "serve.prediction_log=false",
        env={"SHIPYARD_ADMIN_TOKEN": ADMIN},
    )
    client = server.client()
    version = client.get("/v2/health/ready").headers["x-model-version"]
    graph = folder / "model.onnx"
    blob = bytearray(graph.read_bytes())
    blob[len(blob) // 2 : len(blob) // 2 + 8] = b"\xff" * 8
    graph.write_bytes(bytes(blob))
    refused = client.post("/admin/reload", headers=AUTH)
    assert refused.status_code == 409, refused.text
    assert refused.json()["kind"] == "reload_refused"
    assert "model.onnx does not match its checksum" in refused.json()["error"]
    assert f"still serving digits v{version}" in refused.json()["error"]
    still = client.post("/predict", json={"instance": packages.digits_test[0].tolist()})
    assert still.status_code == 200
    assert still.headers["x-model-version"] == version
    assert client.get("/v2/health/ready").status_code == 200
    assert 'shipyard_reloads_total{result="refused"} 1.0' in client.get("/metrics").text


# -- registry: wine@champion, polling, rollback ----------------------------------------------------


def test_registry_model_polling_and_admin_rollback(
    packages: Any, servers: Callable[..., Any], wine_rows: Callable[..., list[Any]]
) -> None:
    from shipyard.track.registry import promote

    server = servers(
        packages.home,
        "wine@champion",
        "serve.reload_interval_s=0.3",
        "serve.prediction_log=false",
        env={"SHIPYARD_ADMIN_TOKEN": ADMIN},
    )
    assert server.summary["version"] == "1"
    client = server.client()
    rows = wine_rows(packages.wine_test.head(5))
    first = client.post("/predict", json={"instances": rows})
    assert first.status_code == 200, first.text
    assert first.headers["x-model-version"] == "1"

    promote(packages.wine_cfg, "wine", 2, force=True, reason="test: a new champion")
    deadline = time.monotonic() + 20
    version = "1"
    while time.monotonic() < deadline and version != "2":
        time.sleep(0.2)
        version = client.post("/predict", json={"instances": rows}).headers["x-model-version"]
    assert version == "2", server.stderr()
    assert client.get("/v2/models/wine").json()["versions"] == ["2"]

    rolled = client.post("/admin/rollback", headers=AUTH, params={"reason": "test rollback"})
    assert rolled.status_code == 200, rolled.text
    assert rolled.json()["model"] == {"name": "wine", "version": "1"}
    assert rolled.json()["previous"] == {"name": "wine", "version": "2"}
    assert client.post("/predict", json={"instances": rows}).headers["x-model-version"] == "1"


# -- load shedding, SIGTERM, workers ---------------------------------------------------------------


def test_a_full_queue_sheds_with_503_and_retry_after(
    packages: Any, servers: Callable[..., Any]
) -> None:
    """One row may wait, batches want two rows and wait 300 ms for the second: of 20
    concurrent requests, the first waits and the others find the queue full."""
    server = servers(
        packages.home,
        "--package",
        str(packages.digits.path),
        "serve.max_queue_rows=1",
        "serve.max_batch_size=2",
        "serve.max_wait_ms=300",
        "serve.max_instances=1",
        "serve.prediction_log=false",
    )
    body = {"instance": packages.digits_test[0].tolist()}

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=20) as client:
            return await asyncio.gather(*(client.post("/predict", json=body) for _ in range(20)))

    responses = asyncio.run(burst())
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 503}, statuses
    assert 200 in statuses, statuses
    assert 503 in statuses, statuses
    shed = next(r for r in responses if r.status_code == 503)
    assert int(shed.headers["retry-after"]) >= 1
    assert shed.json()["kind"] == "queue_full"
    assert "queue is full" in shed.json()["error"]


def test_sigterm_answers_in_flight_requests_and_exits_cleanly(
    packages: Any, servers: Callable[..., Any]
) -> None:
    server = servers(
        packages.home,
        "--package",
        str(packages.digits.path),
        "serve.max_batch_size=64",
        "serve.max_wait_ms=500",
        "serve.prediction_log=false",
    )
    body = {"instance": packages.digits_test[0].tolist()}

    async def during_shutdown() -> list[int]:
        async with httpx.AsyncClient(base_url=server.url, timeout=20) as client:
            pending = [asyncio.ensure_future(client.post("/predict", json=body)) for _ in range(5)]
            await asyncio.sleep(0.2)  # in the batcher, waiting out max_wait_ms
            server.process.send_signal(15)
            return [(await p).status_code for p in pending]

    assert asyncio.run(during_shutdown()) == [200] * 5
    # uvicorn re-raises the signal once it has shut down cleanly: -15 is a graceful exit
    assert server.process.wait(20) in (0, -15)
    assert "stopped (pid" in server.stderr()
    assert "Application shutdown complete" in server.stderr()


def test_the_serving_process_imports_no_torch(packages: Any, tmp_path: Path) -> None:
    """Load, predict (JSON, upload, V2), log with monitor features and reach the registry in
    a fresh interpreter: torch and Lightning stay out of ``sys.modules``."""
    script = f"""
import io, sys
import numpy as np
from fastapi.testclient import TestClient
from shipyard.serve.app import create_app
from shipyard.serve.settings import ServeSettings
from PIL import Image

for source in ({{"package": {str(packages.digits.path)!r}}}, {{"model": "wine@champion"}}):
    settings = ServeSettings(home={str(packages.home)!r},
        prediction_log_url="sqlite:///{tmp_path}/log.db", prediction_log_spool="{tmp_path}/spool", **source)
    with TestClient(create_app(settings)) as client:
        if "package" in source:
            assert client.post("/predict", json={{"instance": [[0] * 8] * 8}}).status_code == 200
            buffer = io.BytesIO(); Image.new("L", (8, 8)).save(buffer, "PNG")
            assert client.post("/predict/upload", files={{"file": ("a.png", buffer.getvalue())}}).status_code == 200
            data = {{"inputs": [{{"name": "features", "shape": [1, 8, 8, 1], "datatype": "FP32", "data": [0] * 64}}]}}
            assert client.post("/v2/models/digits/infer", json=data).status_code == 200
        else:
            row = [1.0] * 13
            assert client.post("/predict", json={{"instance": row}}).status_code == 200
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "lightning", "pytorch_lightning", "torchvision"))
print("HEAVY", heavy)
assert not heavy, heavy
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "HEAVY []" in result.stdout


@pytest.mark.slow
def test_two_workers_answer_and_metrics_aggregate(
    packages: Any, servers: Callable[..., Any]
) -> None:
    server = servers(
        packages.home,
        "--package",
        str(packages.digits.path),
        "--workers",
        "2",
        "serve.prediction_log=false",
    )
    body = {"instance": packages.digits_test[0].tolist()}
    for _ in range(30):  # a new connection each time, so both workers take some
        response = httpx.post(f"{server.url}/predict", json=body, timeout=20)
        assert response.status_code == 200
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        text = httpx.get(f"{server.url}/metrics", timeout=20).text
        match = re.search(
            r'shipyard_requests_total\{method="POST",route="/predict",status="200"\} (\S+)', text
        )
        if match and float(match.group(1)) == 30.0:
            break
        time.sleep(0.2)
    assert match, text
    assert float(match.group(1)) == 30.0, text
    assert 'shipyard_model_info{name="digits"' in text
    assert server.stop() in (0, -15)


def test_a_reload_to_another_tokenizer_is_refused(packages: Any) -> None:
    """Requests are tokenised before they are batched, so a version whose tokenizer.json
    differs cannot be swapped in under them; an identical one can."""
    from types import SimpleNamespace

    from shipyard.errors import UserError
    from shipyard.export.package import TOKENIZER_FILE
    from shipyard.serve.reload import check_compatible

    served = packages.digits.manifest.model_copy(update={"files": {TOKENIZER_FILE: "a" * 64}})
    previous = SimpleNamespace(version="1")
    same = served.model_copy()
    check_compatible(served, same, "digits v2", previous)  # type: ignore[arg-type]
    other = served.model_copy(update={"files": {TOKENIZER_FILE: "b" * 64}})
    with pytest.raises(
        UserError, match=r"tokenises texts differently from v1 \(another tokenizer.json\)"
    ):
        check_compatible(served, other, "digits v2", previous)  # type: ignore[arg-type]
