"""Snapshots, MLflow artifacts and model packages in a bucket, end to end.

The slow test drives the real CLI (``data prepare``, ``train``, ``export``, ``pipeline``,
``serve``) against moto's S3 server on a loopback port -- the S3 API over HTTP, nothing of
Shipyard's mocked -- with the bucket reached the way a user reaches MinIO or any S3-compatible
store: credentials and ``AWS_ENDPOINT_URL`` in the environment, nothing else. Every local
copy is deleted before the stage that must read the bucket (checkpoints before ``export``,
packages and the registry's download cache before ``serve``), so a stage that silently read
a local file instead would fail here.

The quick tests pin the one-line errors for the routes that cannot run here: ``gs://`` without
gcsfs (snapshots) or google-cloud-storage (MLflow's artifacts), and a bucket URL given to
``paths.packages``, which only takes a local folder.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from omegaconf import DictConfig

from shipyard.config import local_folder
from shipyard.data.snapshot import SnapshotStore
from shipyard.errors import ConfigError
from shipyard.track import tracking, versions

Cli = Callable[..., subprocess.CompletedProcess[str]]
Compose = Callable[..., DictConfig]

# Small and fast: one epoch of the bundled digits CNN, a small int8 calibration, one latency
# sample per graph.
QUICK = (
    "task=image",
    "trainer=fast",
    "trainer.max_epochs=1",
    "export.calibration_rows=64",
    "export.latency.repeats=1",
    "export.latency.batch_sizes=[1]",
)
# Variables that would point a client somewhere else than the test's server, or configure the
# server from outside the test: the test proves that AWS_ENDPOINT_URL alone is enough.
FOREIGN = ("FSSPEC_S3_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def bucket(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Any]]:
    """A fresh bucket on moto's S3 server; the environment (inherited by every CLI subprocess)
    holds dummy credentials and the endpoint, as a user's shell would."""
    try:
        from moto.server import ThreadedMotoServer

        port = free_port()
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
    except Exception as exc:  # an unusable moto is the only reason to skip
        pytest.skip(f"moto's S3 server cannot start: {exc}")
    endpoint = f"http://127.0.0.1:{port}"
    for name in [*FOREIGN, *(n for n in os.environ if n.startswith("SHIPYARD_SERVE_"))]:
        monkeypatch.delenv(name, raising=False)
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
    }.items():
        monkeypatch.setenv(key, value)
    try:
        import boto3

        s3 = boto3.client("s3", endpoint_url=endpoint)
        name = f"shipyard-{os.urandom(6).hex()}"
        s3.create_bucket(Bucket=name)
        yield name, s3
    finally:
        server.stop()


def keys(s3: Any, bucket: str, prefix: str) -> set[str]:
    """Every object key under ``prefix`` (paginated: a listing stops at 1000)."""
    found: set[str] = set()
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        found.update(item["Key"] for item in page.get("Contents", []))
    return found


def body(s3: Any, bucket: str, key: str) -> bytes:
    data: bytes = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    return data


def ok(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def local_models(root: Path) -> list[Path]:
    return sorted(root.rglob("*.onnx"))


def start_server(
    home: Path, *args: str, timeout: float = 90
) -> tuple[subprocess.Popen[bytes], str]:
    """``shipyard serve ARGS`` (a real uvicorn) on a free loopback port, once ready."""
    port = free_port()
    log = (home.parent / f"serve-{port}.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "shipyard", "serve", *args, "--port", str(port), "--json"],
        stdout=subprocess.PIPE,
        stderr=log,
        env={**os.environ, "SHIPYARD_HOME": str(home)},
        cwd=home.parent,
    )
    log.close()
    assert process.stdout is not None
    summary = process.stdout.readline().decode()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                return process, summary
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.kill()
    process.wait(10)
    errors = (home.parent / f"serve-{port}.log").read_text(errors="replace")
    raise AssertionError(f"server not ready (exit {process.returncode}): {errors[-3000:]}")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


@pytest.mark.slow
def test_prepare_train_export_pipeline_serve_through_an_s3_bucket(
    bucket: tuple[str, Any], home: Path, cli: Cli, compose: Compose
) -> None:
    name, s3 = bucket
    stores = (f"paths.snapshots=s3://{name}/snapshots", f"tracking.artifacts=s3://{name}/mlflow")

    # data prepare: the snapshot is in the bucket, complete, with no staging left over.
    prepared = ok(cli("data", "prepare", *stores, *QUICK, "--json"))
    snapshot = prepared["snapshot_id"]
    assert prepared["store"] == f"s3://{name}/snapshots"
    splits = [f"{s}/{f}" for s in ("train", "val", "test") for f in ("features.npy", "target.npy")]
    expected = {"manifest.json", "reference/features.parquet", *splits}
    assert keys(s3, name, "snapshots/") == {f"snapshots/{snapshot}/{f}" for f in expected}
    assert not (home / "snapshots").exists()

    # train: the run's artifacts (config, best checkpoint) are in the bucket.
    trained = ok(cli("train", *stores, *QUICK, "--json"))
    run_id = trained["run_id"]
    assert trained["snapshot_id"] == snapshot
    checkpoint = [k for k in keys(s3, name, "mlflow/") if k.endswith("/checkpoints/best.ckpt")]
    assert len(checkpoint) == 1, checkpoint
    assert run_id in checkpoint[0]
    artifacts = checkpoint[0].removesuffix("/checkpoints/best.ckpt")  # mlflow/.../artifacts
    assert f"{artifacts}/config.yaml" in keys(s3, name, artifacts)

    # export, with every local checkpoint gone: it can only rebuild the model from the bucket.
    for checkpoints in (home / "checkpoints").rglob("*.ckpt"):
        checkpoints.unlink()
    exported = ok(cli("export", *stores, *QUICK, "--json"))
    assert exported["run_id"] == run_id
    package = f"{artifacts}/package"
    int8_package = keys(s3, name, f"{package}/")
    assert {f"{package}/model.onnx", f"{package}/model.int8.onnx"} <= int8_package

    # pipeline with a changed export: data and training reused from the bucket, the package
    # re-exported *replacing* the bucket's package/ (no stale int8 graph), registered, promoted.
    result = ok(cli("pipeline", *stores, *QUICK, "quantize=null", "--json"))
    reused = {stage["stage"]: stage["reused"] for stage in result["stages"]}
    assert reused == {
        "data": True,
        "train": True,
        "evaluate": False,
        "export": False,
        "register": False,
        "promote": False,
    }
    assert result["run_id"] == run_id
    assert result["champion"] == {"name": "digits", "version": 1}
    fp32_package = keys(s3, name, f"{package}/")
    assert f"{package}/model.onnx" in fp32_package
    assert f"{package}/model.int8.onnx" not in fp32_package

    champion = tracking.client(compose()).get_model_version_by_alias("digits", "champion")
    assert champion.source == f"s3://{name}/{package}"
    manifest = body(s3, name, f"{package}/manifest.json")
    assert hashlib.sha256(manifest).hexdigest() == champion.tags[tracking.TAG_PACKAGE_SHA]

    # serve: no package is left on this machine, so the server must fetch the champion from
    # the bucket through the registry (the command names no bucket: the version's source does).
    for leftover in ("packages", "registry"):
        shutil.rmtree(home / leftover)
    assert local_models(home.parent) == []
    process, summary = start_server(home, "digits@champion")
    try:
        served = json.loads(summary)
        assert (served["name"], served["version"]) == ("digits", "1")
        cache = home / "registry" / "digits" / "1"
        assert served["package"] == str(cache)
        images = np.load(
            io.BytesIO(body(s3, name, f"snapshots/{snapshot}/test/features.npy")),
            allow_pickle=False,
        )[:16]
        answer = httpx.post(
            f"{served['url']}/predict",
            json={"instances": images.tolist()},
            timeout=30,
        )
    finally:
        stop(process)
    assert answer.status_code == 200, answer.text
    reply = answer.json()
    assert reply["model"] == {"name": "digits", "version": "1"}
    assert answer.headers["x-model-version"] == "1"

    # What answered is the bucket's graph: the same probabilities from ONNX Runtime on the
    # model.onnx object read straight from the bucket.
    import onnxruntime as ort

    graph = body(s3, name, f"{package}/model.onnx")
    session = ort.InferenceSession(graph, providers=["CPUExecutionProvider"])
    output = [o.name for o in session.get_outputs()].index("probabilities")
    expected_probabilities = session.run(None, {"features": images.astype(np.float32)})[output]
    labels = json.loads(manifest)["labels"]
    served_probabilities = np.array(
        [[p["probabilities"][label] for label in labels] for p in reply["predictions"]]
    )
    np.testing.assert_allclose(served_probabilities, expected_probabilities, atol=1e-5)

    # The only model on this machine is the server's verified download of the bucket's
    # package; nothing went to a local packages or MLflow artifacts folder.
    assert (cache / "manifest.json").read_bytes() == manifest
    assert (cache / "model.onnx").read_bytes() == graph
    assert local_models(home.parent) == [cache / "model.onnx"]
    assert not (home / "packages").exists()
    assert not (home / "mlartifacts").exists()
    assert not (home.parent / "mlruns").exists()
    assert not [p for p in home.parent.iterdir() if p.name.endswith(":")]  # no "s3:" folder


# -- the routes that cannot run here: one line that says what to install or set ---------------


def test_a_gs_snapshot_store_without_gcsfs_says_to_install_it(cli: Cli, home: Path) -> None:
    if importlib.util.find_spec("gcsfs") is not None:
        pytest.skip("gcsfs is installed: the missing-library message cannot be shown")
    done = cli("data", "prepare", "paths.snapshots=gs://shipyard-test/snapshots")
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == (
        "error: the snapshot store gs://shipyard-test/snapshots needs the gcsfs package, "
        "which is not installed: pip install gcsfs"
    )
    assert not [p for p in home.parent.iterdir() if p.name.endswith(":")]  # no "gs:" folder


def test_an_unknown_snapshot_store_scheme_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="Protocol not known: nope"):
        SnapshotStore("nope://bucket/snapshots")


def test_gs_artifacts_without_google_cloud_storage_fail_before_anything_runs(
    compose: Compose, tmp_path: Path
) -> None:
    """MLflow reaches gs:// with google-cloud-storage (not fsspec), and imports it only when
    the first artifact is written -- for `train`, after the whole training. Shipyard checks
    when the experiment is resolved, before training, and wherever it downloads artifacts."""
    try:
        installed = importlib.util.find_spec("google.cloud.storage") is not None
    except ImportError:
        installed = False
    if installed:
        pytest.skip("google-cloud-storage is installed: the message cannot be shown")
    hint = "need the google-cloud-storage package, which is not installed: pip install"
    cfg = compose("tracking.artifacts=gs://shipyard-test/mlflow")
    with pytest.raises(ConfigError, match=hint):
        tracking.experiment_id(cfg)
    client = tracking.client(cfg)
    assert client.get_experiment_by_name("shipyard") is None  # nothing created

    # An experiment another machine created on gs:// (made here with MLflow directly).
    experiment = client.create_experiment("shipyard", artifact_location="gs://shipyard-test/x")
    with pytest.raises(ConfigError, match=hint):
        tracking.experiment_id(cfg)
    run = client.create_run(experiment)
    with pytest.raises(ConfigError, match=hint):
        tracking.download(cfg, run.info.run_id, tracking.ARTIFACT_CONFIG)
    with pytest.raises(ConfigError, match=hint):
        versions.download(cfg, f"{run.info.artifact_uri}/package", tmp_path)


def test_a_bucket_url_for_paths_packages_points_at_tracking_artifacts(
    compose: Compose, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``Path("s3://b/p")`` is the local folder ``s3:/b/p``: refused before any work, with the
    key that does put packages in a bucket."""
    from shipyard.export.build import export_run

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"set tracking\.artifacts=s3://BUCKET/PREFIX"):
        export_run(compose("paths.packages=s3://shipyard-test/packages"))
    assert not (tmp_path / "s3:").exists()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("/data/packages", Path("/data/packages")),
        ("file:///data/my%20packages", Path("/data/my packages")),
    ],
)
def test_local_folder_takes_paths_and_file_urls(value: str, expected: Path) -> None:
    assert local_folder(value, "paths.packages") == expected


def test_local_folder_refuses_other_urls() -> None:
    with pytest.raises(ConfigError, match=r"paths\.packages must be a folder on this machine"):
        local_folder("gs://bucket/packages", "paths.packages")
