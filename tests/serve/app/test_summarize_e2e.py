"""A summariser served for real: a randomly initialised tiny BART trained for two epochs by
``shipyard pipeline task=summarize`` (registered and promoted as ``aclsum``), served by
``shipyard serve aclsum@champion`` in a subprocess. /predict answers a summary per
document, equal to the package's decoding session run directly; the Open Inference
Protocol adds a BYTES ``summary`` output; refusals are 4xx naming the field; the log keeps
the summaries; feedback with reference summaries gives a live ROUGE-L; drift compares the
documents' statistics and the encoder embedding. Nothing of Shipyard's is mocked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa

from shipyard.export.package import ModelPackage, load_package
from shipyard.serve.predlog import predictions_table

pytestmark = pytest.mark.slow  # builds a tiny BART and runs the whole pipeline (~40 s)

NAME = "aclsum"
MAX_INSTANCES = 4
MAX_BODY = 100_000
PIPELINE = (
    "task=summarize",
    "model.family=seq2seq",
    "data.limit=20",
    "trainer.max_epochs=2",
    "model.max_source_length=64",
    "model.max_target_length=24",
    "model.lr=1e-3",
    "export.latency.repeats=1",
    "export.latency.batch_sizes=[1]",
)


@dataclass
class Summarizer:
    home: Path
    package: ModelPackage
    documents: list[str]
    references: list[str]


@pytest.fixture(scope="module")
def summarizer(tmp_path_factory: pytest.TempPathFactory, tiny_bart: Path) -> Summarizer:
    from shipyard.data.snapshot import SnapshotStore

    root = tmp_path_factory.mktemp("serve-summarize")
    home, backbone = root / "home", tiny_bart  # the shared tiny BART (tests/conftest.py)
    env = {**os.environ, "SHIPYARD_HOME": str(home)}
    done = subprocess.run(
        [sys.executable, "-m", "shipyard", "pipeline", *PIPELINE, f"model.backbone={backbone}"],
        capture_output=True,
        text=True,
        env=env,
        cwd=root,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    package = load_package(home / "registry" / NAME / "1")
    assert package.manifest.output_kind == "text"
    snapshot = SnapshotStore(home / "snapshots").get(package.manifest.lineage.snapshot_id)
    test = snapshot.load("test")
    documents = [str(t) for t in test.features["text"].tolist()]
    references = [str(t) for t in np.asarray(test.target).tolist()]
    return Summarizer(home, package, documents, references)


@pytest.fixture(scope="module")
def server(summarizer: Summarizer, servers: Callable[..., Any]) -> Any:
    return servers(
        summarizer.home,
        f"{NAME}@champion",
        f"serve.max_instances={MAX_INSTANCES}",
        f"serve.max_body_bytes={MAX_BODY}",
        "serve.monitor_interval_s=1",
    )


def direct(package: ModelPackage, texts: list[str]) -> list[str]:
    """The package's decoding session run directly on the tokenizer's ids."""
    from shipyard.tasks.summarize.session import GenerationSession
    from shipyard.tasks.text.tokenizer import TextTokenizer

    assert package.manifest.tokenizer is not None
    ids = TextTokenizer.from_file(package.path / package.manifest.tokenizer.file).encode(texts).ids
    session = GenerationSession(package.path)
    sequences, _ = session.run(None, {"input_ids": ids})
    return session.decode(sequences)


def test_predict_summaries_equal_the_session_and_batching_changes_nothing(
    summarizer: Summarizer, server: Any
) -> None:
    from shipyard.serve.schemas import PredictResponse

    client = server.client()
    documents = summarizer.documents[:MAX_INSTANCES]
    batched = client.post("/predict", json={"instances": documents})
    assert batched.status_code == 200, batched.text
    assert batched.headers["x-model-name"] == NAME
    body = batched.json()
    PredictResponse.model_validate(body)
    assert body["model"] == {"name": NAME, "version": "1"}
    assert [set(p) for p in body["predictions"]] == [{"id", "summary"}] * len(documents)
    summaries = [p["summary"] for p in body["predictions"]]
    assert summaries == direct(summarizer.package, documents)
    for document, summary in zip(documents, summaries, strict=True):
        alone = client.post("/predict", json={"instance": {"text": document}})
        assert alone.status_code == 200, alone.text
        assert alone.json()["predictions"][0]["summary"] == summary


def test_v2_answers_a_bytes_summary_in_json_and_for_binary_input(
    summarizer: Summarizer, server: Any, binary_texts: Callable[..., Any]
) -> None:
    from shipyard.serve.schemas import InferResponse, ModelMetadata

    client = server.client()
    meta = client.get(f"/v2/models/{NAME}").json()
    ModelMetadata.model_validate(meta)
    assert meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert meta["outputs"][0] == {"name": "summary", "datatype": "BYTES", "shape": [-1]}
    assert meta["parameters"]["output_kind"] == "text"
    documents = summarizer.documents[:2]
    expected = direct(summarizer.package, documents)
    tensor = {"name": "text", "shape": [2], "datatype": "BYTES", "data": documents}
    answer = client.post(f"/v2/models/{NAME}/infer", json={"id": "r1", "inputs": [tensor]})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    InferResponse.model_validate(body)
    outputs = {o["name"]: o for o in body["outputs"]}
    assert list(outputs) == ["summary", "sequences", "embedding"]
    assert outputs["summary"] == {
        "name": "summary",
        "shape": [2],
        "datatype": "BYTES",
        "data": expected,
    }
    assert outputs["embedding"]["shape"] == [2, 32]
    assert len(body["parameters"]["prediction_ids"]) == 2

    binary = binary_texts(client, NAME, documents, outputs=["summary"])
    assert binary.status_code == 200, binary.text
    [only] = binary.json()["outputs"]
    assert (only["name"], only["datatype"], only["data"]) == ("summary", "BYTES", expected)


@pytest.mark.parametrize(
    ("path", "body", "status", "kind", "words"),
    [
        ("/predict", {"instances": []}, 422, "empty", "instances is empty"),
        ("/predict", {"instances": ["fine", 42]}, 422, "bad_type", "instance 1 is a JSON number"),
        ("/predict", {"instances": ["fine", "  "]}, 422, "empty", "instance 1 is an empty text"),
        ("/predict", {"instances": ["a"] * 5}, 413, "too_many", "5 instances in one request"),
        ("/predict", {"instances": ["word " * 40_000]}, 413, "too_large", "serve.max_body_bytes"),
        (
            f"/v2/models/{NAME}/infer",
            {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [7]}]},
            422,
            "bad_type",
            "element 0 of the input is a JSON number",
        ),
        (
            f"/v2/models/{NAME}/infer",
            {
                "inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a"]}],
                "outputs": [{"name": "label"}],
            },
            422,
            "bad_output_name",
            "'summary'",
        ),
        ("/feedback", {"prediction_id": "x", "label": 3}, 422, "bad_label", "reference text"),
        ("/feedback", {"prediction_id": "x", "label": " "}, 422, "bad_label", "an empty text"),
    ],
)
def test_bad_requests_are_4xx_naming_the_field(
    server: Any, path: str, body: dict[str, Any], status: int, kind: str, words: str
) -> None:
    response = server.client().post(path, json=body)
    assert response.status_code == status, response.text
    assert response.json()["kind"] == kind
    assert words in response.json()["error"]


def _logged(home: Path, ids: list[str], timeout: float = 20) -> dict[str, Any]:
    engine = sa.create_engine(f"sqlite:///{home / 'predictions.db'}")
    table = predictions_table
    query = sa.select(table).where(table.c.id.in_(ids))
    deadline = time.monotonic() + timeout
    rows: dict[str, Any] = {}
    while time.monotonic() < deadline:
        with engine.connect() as connection:
            rows = {r.id: r for r in connection.execute(query)}
        if len(rows) == len(ids):
            break
        time.sleep(0.2)
    engine.dispose()
    return rows


def test_the_log_metrics_feedback_and_live_rouge(summarizer: Summarizer, server: Any) -> None:
    """Rows carry the document, its statistics, the summary and the embedding; feedback
    with reference summaries is stored and scored as live ROUGE-L against the package's
    test ROUGE-L, by the server's monitor and by ``shipyard monitor accuracy``."""
    from typer.testing import CliRunner

    from shipyard.cli import app
    from shipyard.tasks.summarize.metrics import rouge

    client = server.client()
    documents = summarizer.documents[:3]
    answer = client.post("/predict", json={"instances": documents}).json()["predictions"]
    ids = [p["id"] for p in answer]
    rows = _logged(summarizer.home, ids)
    assert len(rows) == 3
    for prediction, document in zip(answer, documents, strict=True):
        row = rows[prediction["id"]]
        assert row.input == document
        assert row.output == {"summary": prediction["summary"]}
        assert row.probabilities is None
        assert row.embedding is not None
        assert {"characters", "words"} <= set(row.monitor_features)
    metrics = client.get("/metrics").text
    assert 'shipyard_predictions_total{label="summary",model="aclsum"}' in metrics

    # the second reference is the model's own summary (ROUGE-L 1), unless the tiny random
    # model wrote an empty one, which /feedback refuses as a label
    own = answer[1]["summary"] if answer[1]["summary"].strip() else summarizer.references[1]
    references = [summarizer.references[0], own, "an unrelated reference"]
    for prediction_id, reference in zip(ids, references, strict=True):
        sent = client.post("/feedback", json={"prediction_id": prediction_id, "label": reference})
        assert sent.status_code == 202, sent.text
    live = rouge([p["summary"] for p in answer], references)["rougeL"]
    test_value = float(summarizer.package.manifest.metrics["test_rougeL"])

    deadline = time.monotonic() + 20
    accuracy: dict[str, Any] = {}
    while time.monotonic() < deadline:
        accuracy = client.get("/monitoring/summary").json().get("accuracy") or {}
        if accuracy.get("samples") == 3:
            break
        time.sleep(0.3)
    assert accuracy["metric"] == "rougeL"
    assert accuracy["value"] == pytest.approx(live)
    assert accuracy["test_value"] == pytest.approx(test_value)
    assert accuracy["drop"] == pytest.approx(test_value - live)

    args = ["monitor", "accuracy", "--model", f"{NAME}@champion", "--json"]
    result = CliRunner().invoke(app, args, env={"SHIPYARD_HOME": str(summarizer.home)})
    assert result.exit_code == 0, result.output
    cli = json.loads(result.stdout)
    assert (cli["metric"], cli["samples"]) == ("rougeL", 3)
    assert cli["value"] == pytest.approx(live)
    assert 'shipyard_live_metric{metric="rougeL",model="aclsum"}' in client.get("/metrics").text


def test_drift_compares_the_documents_and_the_encoder_embedding(
    summarizer: Summarizer, server: Any
) -> None:
    from typer.testing import CliRunner

    from shipyard.cli import app

    client = server.client()
    sent = (summarizer.documents * 8)[:24]
    ids: list[str] = []
    for start in range(0, len(sent), MAX_INSTANCES):
        answer = client.post("/predict", json={"instances": sent[start : start + MAX_INSTANCES]})
        assert answer.status_code == 200, answer.text
        ids += [p["id"] for p in answer.json()["predictions"]]
    assert len(_logged(summarizer.home, ids)) == len(sent)
    args = ["monitor", "drift", "--package", str(summarizer.package.path), "--name", NAME]
    args += ["--window", "24", "monitor.min_rows=20", "--json"]
    result = CliRunner().invoke(app, args, env={"SHIPYARD_HOME": str(summarizer.home)})
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert {c["kind"] for c in summary["features"]} == {"feature", "embedding"}
    assert {"characters", "words"} <= {c["name"] for c in summary["features"]}
    assert summary["window"]["rows"] == 24


def test_simulate_sends_documents_and_reference_summaries(
    summarizer: Summarizer, server: Any
) -> None:
    env = {**os.environ, "SHIPYARD_HOME": str(summarizer.home)}
    args = ["simulate", "--url", server.url, "--scenario", "noise", "--requests", "3"]
    args += ["--batch", "2", "--feedback-share", "1.0", "--json", "task=summarize"]
    args += ["--snapshot", summarizer.package.manifest.lineage.snapshot_id]
    done = subprocess.run(
        [sys.executable, "-m", "shipyard", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert (summary["sent"], summary["ok"], summary["errors"]) == (3, 3, {})
    assert (summary["feedback_sent"], summary["feedback_ok"]) == (6, 6)
