"""A text model served for real: trained (tiny), exported, registered as champion, served
by ``shipyard serve bbc@champion`` in a subprocess; /predict and the Open Inference
Protocol with BYTES tensors (JSON and binary), every refusal a 4xx that names the field,
the prediction log holding the texts, and the drift monitor comparing the embeddings."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa

from shipyard.config import compose
from shipyard.export.package import ModelPackage
from shipyard.serve.predlog import predictions_table

pytestmark = pytest.mark.slow  # trains and exports MiniLM once (~1 min on two busy cores)

TINY = (
    "task=text",
    "data.limit=8",
    "model.max_length=32",
    "trainer.max_epochs=1",
    "quantize=null",
    "export.latency.repeats=1",
    "export.latency.batch_sizes=[1]",
)
NAME = "bbc"


@dataclass
class TextModel:
    home: Path
    package: ModelPackage
    test_texts: list[str]


@pytest.fixture(scope="module")
def text_model(tmp_path_factory: pytest.TempPathFactory) -> TextModel:
    from shipyard.export.build import export_run
    from shipyard.track.registry import promote, register
    from shipyard.train.run import resolve_snapshot, train

    home = tmp_path_factory.mktemp("serve-text") / "home"
    cfg = compose([f"paths.home={home}", *TINY])
    run_id = train(cfg).run_id
    package = export_run(cfg, run_id).package
    assert register(cfg, run_id, name=NAME).version == 1
    promote(cfg, NAME, 1)
    texts = resolve_snapshot(cfg).load("test").features["text"].tolist()
    return TextModel(home, package, texts)


@pytest.fixture(scope="module")
def server(text_model: TextModel, servers: Callable[..., Any]) -> Any:
    return servers(text_model.home, f"{NAME}@champion", "serve.max_instances=8")


def test_predict_and_v2_answer_alike(
    text_model: TextModel, server: Any, binary_texts: Callable[..., Any]
) -> None:
    client = server.client()
    texts = ["Shares in the carmaker rose after strong sales.", "The striker scored twice."]
    predicted = client.post("/predict", json={"instances": [texts[0], {"text": texts[1]}]})
    assert predicted.status_code == 200, predicted.text
    body = predicted.json()
    assert body["model"] == {"name": NAME, "version": "1"}
    labels = ["business", "entertainment", "politics", "sports", "tech"]
    probabilities = [[p["probabilities"][label] for label in labels] for p in body["predictions"]]
    assert all(p["label"] in labels for p in body["predictions"])
    np.testing.assert_allclose(np.sum(probabilities, axis=1), 1.0, atol=1e-5)

    metadata = client.get(f"/v2/models/{NAME}").json()
    assert metadata["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert metadata["parameters"]["max_length"] == 32
    assert [o["name"] for o in metadata["outputs"]] == ["probabilities", "embedding"]

    as_json = client.post(
        f"/v2/models/{NAME}/infer",
        json={"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": texts}]},
    )
    assert as_json.status_code == 200, as_json.text
    outputs = {o["name"]: o for o in as_json.json()["outputs"]}
    assert outputs["embedding"]["shape"] == [2, 384]
    np.testing.assert_allclose(
        np.reshape(outputs["probabilities"]["data"], (2, 5)), probabilities, atol=1e-6
    )

    binary = binary_texts(
        client,
        NAME,
        texts,
        outputs=["probabilities"],
        headers={"Content-Type": "application/octet-stream"},
    )
    assert binary.status_code == 200, binary.text
    [only] = binary.json()["outputs"]
    np.testing.assert_allclose(np.reshape(only["data"], (2, 5)), probabilities, atol=1e-6)


def test_a_long_text_is_truncated_like_training(server: Any) -> None:
    """serve.text_truncate=true (the default): the first 32 tokens decide, as in training."""
    client = server.client()
    head = "The government announced new election plans today"
    long_text = head + " and more words" * 200
    answers = client.post("/predict", json={"instances": [long_text, long_text + " extra tail"]})
    assert answers.status_code == 200, answers.text
    first, second = (p["probabilities"] for p in answers.json()["predictions"])
    assert first == pytest.approx(second, abs=1e-6)


@pytest.mark.parametrize(
    ("body", "status", "kind", "words"),
    [
        ({"instances": ["fine", ""]}, 422, "empty", "instance 1 is an empty text"),
        ({"instances": ["fine", 42]}, 422, "bad_type", "instance 1 is a JSON number"),
        ({"instances": [{"txt": "typo"}]}, 422, "bad_type", "instance 0 has 'txt'"),
        ({"instance": None}, 422, "bad_type", "instance 0 is a JSON null"),
        ({"instances": ["a"] * 9}, 413, "too_many", "9 instances in one request; at most 8"),
        ({"instances": []}, 422, "empty", "instances is empty"),
    ],
)
def test_bad_text_requests_are_4xx_naming_the_field(
    server: Any, body: dict[str, Any], status: int, kind: str, words: str
) -> None:
    response = server.client().post("/predict", json=body)
    assert response.status_code == status, response.text
    assert response.json()["kind"] == kind
    assert words in response.json()["error"]


@pytest.mark.parametrize(
    ("tensor", "kind", "words"),
    [
        ({"name": "text", "shape": [1], "datatype": "FP32", "data": [1.0]}, "bad_type", "BYTES"),
        (
            {"name": "text", "shape": [2], "datatype": "BYTES", "data": ["a"]},
            "bad_shape",
            "needs 2",
        ),
        ({"name": "text", "shape": [1], "datatype": "BYTES", "data": [""]}, "empty", "element 0"),
        ({"name": "text", "shape": [1], "datatype": "BYTES"}, "missing_data", "has no data"),
        (
            {"name": "ids", "shape": [1], "datatype": "BYTES", "data": ["a"]},
            "bad_input_name",
            "'text'",
        ),
    ],
)
def test_bad_v2_text_tensors_are_422(
    server: Any, tensor: dict[str, Any], kind: str, words: str
) -> None:
    response = server.client().post(f"/v2/models/{NAME}/infer", json={"inputs": [tensor]})
    assert response.status_code == 422, response.text
    assert response.json()["kind"] == kind
    assert words in response.json()["error"]


def test_uploads_are_refused_for_a_text_model(server: Any) -> None:
    response = server.client().post(
        "/predict/upload", content=b"\x89PNG", headers={"Content-Type": "image/png"}
    )
    assert response.status_code == 415
    assert "this model takes texts" in response.json()["error"]


def test_without_truncation_a_long_text_is_413_naming_the_limit(
    text_model: TextModel, servers: Callable[..., Any], binary_texts: Callable[..., Any]
) -> None:
    strict = servers(text_model.home, f"{NAME}@champion", "serve.text_truncate=false")
    client = strict.client()
    assert client.post("/predict", json={"instances": ["short enough"]}).status_code == 200
    response = client.post("/predict", json={"instances": ["ok", "word " * 100]})
    assert response.status_code == 413, response.text
    body = response.json()
    assert body["kind"] == "text_too_long"
    assert "instance 1 is 102 tokens long" in body["error"]
    assert "at most 32 tokens" in body["error"]
    assert "serve.text_truncate=true" in body["error"]
    v2 = binary_texts(client, NAME, ["word " * 40], shape=[1])
    assert v2.status_code == 413
    assert "element 0 is 42 tokens long" in v2.json()["error"]


def test_the_log_keeps_texts_and_drift_compares_the_embedding(
    text_model: TextModel, server: Any
) -> None:
    """Texts and their statistics reach the prediction log; ``shipyard monitor drift`` runs
    the package's graph on the training split for the reference embeddings and compares
    them with the logged ones (the monitor's detector, nothing special for text)."""
    from typer.testing import CliRunner

    from shipyard.cli import app

    client = server.client()
    sent = (text_model.test_texts * 4)[:24]
    for start in range(0, len(sent), 8):
        assert (
            client.post("/predict", json={"instances": sent[start : start + 8]}).status_code == 200
        )
    engine = sa.create_engine(f"sqlite:///{text_model.home / 'predictions.db'}")
    table = predictions_table
    deadline = time.monotonic() + 20
    rows: list[Any] = []
    while time.monotonic() < deadline:
        with engine.connect() as connection:
            rows = list(connection.execute(sa.select(table.c.input, table.c.monitor_features)))
        if sum(1 for r in rows if r.input in sent) >= len(sent):
            break
        time.sleep(0.2)
    logged = [r.input for r in rows]
    assert all(text in logged for text in sent)
    features = rows[-1].monitor_features
    assert set(features) >= {"characters", "words", "upper_share", "non_ascii_share"}

    args = ["monitor", "drift", "--package", str(text_model.package.path), "--name", NAME]
    args += ["--window", "24", "monitor.min_rows=20", "--json"]
    result = CliRunner().invoke(app, args, env={"SHIPYARD_HOME": str(text_model.home)})
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    kinds = {c["kind"] for c in summary["features"]}
    assert kinds == {"feature", "output", "embedding"}
    names = {c["name"] for c in summary["features"] if c["kind"] == "feature"}
    assert {"characters", "words"} <= names
    assert summary["window"]["rows"] == 24


def test_serving_a_text_model_imports_no_torch_or_transformers(
    text_model: TextModel, tmp_path: Path
) -> None:
    """Load, tokenise, predict (JSON and V2 BYTES) and log in a fresh interpreter: torch,
    Lightning and transformers stay out of ``sys.modules``; tokenizers is all it needs."""
    import subprocess
    import sys

    script = f"""
import sys
from fastapi.testclient import TestClient
from shipyard.serve.app import create_app
from shipyard.serve.settings import ServeSettings

settings = ServeSettings(home={str(text_model.home)!r}, package={str(text_model.package.path)!r},
    prediction_log_url="sqlite:///{tmp_path}/log.db", prediction_log_spool="{tmp_path}/spool")
with TestClient(create_app(settings)) as client:
    assert client.post("/predict", json={{"instances": ["a text", {{"text": "another"}}]}}).status_code == 200
    data = {{"inputs": [{{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a text"]}}]}}
    assert client.post("/v2/models/bbc_news/infer", json=data).status_code == 200
roots = ("torch", "lightning", "pytorch_lightning", "transformers")
heavy = sorted(m for m in sys.modules if m.split(".")[0] in roots)
print("HEAVY", heavy, "TOKENIZERS", "tokenizers" in sys.modules)
assert not heavy, heavy
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "HEAVY [] TOKENIZERS True" in result.stdout


def test_simulate_sends_shifted_texts_and_feedback(text_model: TextModel, server: Any) -> None:
    """``shipyard simulate`` against a text server: texts from the snapshot's test split,
    shifted by a scenario, to /predict, with feedback labels; every request answered."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "SHIPYARD_HOME": str(text_model.home)}
    args = ["simulate", "--url", server.url, "--scenario", "feature-shift", "--requests", "6"]
    args += ["--batch", "2", "--feedback-share", "1.0", "--json", "task=text", "data.limit=8"]
    done = subprocess.run(
        [sys.executable, "-m", "shipyard", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert (summary["sent"], summary["ok"], summary["errors"]) == (6, 6, {})
    assert summary["predictions"] == 12
    assert (summary["feedback_sent"], summary["feedback_ok"]) == (12, 12)
