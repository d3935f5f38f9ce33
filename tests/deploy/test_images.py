"""The serve image, proven by running it: ``shipyard image build digits@champion`` builds a
torch-free image with the registered package inside; the container starts with a read-only
root filesystem as a non-root user, its HEALTHCHECK passes, and ``/predict`` answers exactly
what a local ``shipyard serve digits@champion`` answers for the same images.

Marked ``container``: skipped, with the reason, where podman cannot run (not Linux, not
root, podman/runc missing); the base image is made locally once (scripts/base-image.sh).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.container]

_SERVE_CONFTEST = Path(__file__).resolve().parents[1] / "serve" / "app" / "conftest.py"
_spec = importlib.util.spec_from_file_location("_shipyard_serve_app_helpers", _SERVE_CONFTEST)
assert _spec is not None
assert _spec.loader is not None
serve_helpers = sys.modules.setdefault(_spec.name, importlib.util.module_from_spec(_spec))
if not hasattr(serve_helpers, "start_server"):
    _spec.loader.exec_module(serve_helpers)


@pytest.fixture(scope="module")
def registered(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """A home with digits v1 registered and promoted; the digits test images."""
    from shipyard.config import compose
    from shipyard.export.build import export_run
    from shipyard.track.registry import promote, register
    from shipyard.train.run import resolve_snapshot, train

    home = tmp_path_factory.mktemp("image") / "home"
    cfg = compose([f"paths.home={home}", "task=image", *serve_helpers.QUICK])
    run_id = train(cfg).run_id
    export_run(cfg, run_id)
    assert register(cfg, run_id, name="digits").version == 1
    promote(cfg, "digits", 1)
    images = np.asarray(resolve_snapshot(cfg).load("test").features)[:32]
    return home, images


@pytest.fixture(scope="module")
def built(podman: Any, registered: tuple[Path, np.ndarray]) -> Iterator[dict[str, Any]]:
    """The real CLI builds the image; removed after the module."""
    home, _ = registered
    command = [sys.executable, "-m", "shipyard", "image", "build", "digits@champion"]
    command += ["--base", podman.base, "--json"]
    if podman.ca_bundle:
        command += ["--ca-bundle", str(podman.ca_bundle)]
    done = subprocess.run(
        command,
        env={**podman.env, "SHIPYARD_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=900,
        cwd=home.parent,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout)
    yield result
    podman.run("rmi", "-f", result["tag"], check=False)


@pytest.fixture
def container(podman: Any, built: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """The image running as production runs it: read-only root, /tmp a tmpfs, one port."""
    port = serve_helpers.free_port()
    container_id = podman.run(
        "run",
        "-d",
        "--read-only",
        "--tmpfs",
        "/tmp",
        "-p",
        f"127.0.0.1:{port}:8000",
        built["tag"],
    )
    try:
        yield container_id, f"http://127.0.0.1:{port}"
    finally:
        podman.run("rm", "-f", container_id, check=False)


def test_image_is_tagged_torch_free_and_non_root(podman: Any, built: dict[str, Any]) -> None:
    assert built["tag"] == "shipyard-serve:digits-1"
    assert (built["name"], built["version"]) == ("digits", 1)
    inspected = json.loads(podman.run("image", "inspect", built["tag"]))[0]
    config = inspected["Config"]
    assert config["User"] == "10001:10001"
    assert config["Labels"]["ai.shipyard.model"] == "digits/1"
    health = inspected.get("Healthcheck") or config.get("Healthcheck")
    assert "/v2/health/ready" in " ".join(health["Test"])
    probe = podman.run(
        "run", "--rm", "--entrypoint", "python3", built["tag"], "-c",
        "import importlib.util as u; print(u.find_spec('torch') is None, u.find_spec('onnxruntime') is not None)",
    )  # fmt: skip
    assert probe == "True True"
    # far below a torch install (~1 GB); the size is reported in docs/deployment.md
    assert built["size_bytes"] < 900 * 2**20


def test_container_is_healthy_and_answers_like_the_local_server(
    podman: Any, container: tuple[str, str], registered: tuple[Path, np.ndarray]
) -> None:
    container_id, url = container
    podman.wait_healthy(container_id)
    assert podman.run("exec", container_id, "id", "-u") == "10001"
    home, images = registered
    body = {"instances": images[..., 0].astype(int).tolist()}
    with httpx.Client(base_url=url, timeout=30) as client:
        from_image = client.post("/predict", json=body)
        ready = client.get("/v2/health/ready")
        metadata = client.get("/v2/models/digits").json()
    assert ready.status_code == 200
    assert from_image.status_code == 200, from_image.text
    # the baked package reports its registry identity, not a bare folder's pkg-<sha>
    assert from_image.headers["x-model-version"] == "1"
    assert metadata["versions"] == ["1"]

    local = serve_helpers.start_server(home, "digits@champion")
    try:
        with local.client() as client:
            from_local = client.post("/predict", json=body)
    finally:
        local.stop()
    assert from_local.status_code == 200
    image_predictions = from_image.json()["predictions"]
    local_predictions = from_local.json()["predictions"]
    assert [p["label"] for p in image_predictions] == [p["label"] for p in local_predictions]
    labels = sorted(image_predictions[0]["probabilities"])
    assert labels == sorted(local_predictions[0]["probabilities"])
    np.testing.assert_allclose(
        [[p["probabilities"][k] for k in labels] for p in image_predictions],
        [[p["probabilities"][k] for k in labels] for p in local_predictions],
        atol=1e-6,
    )


def test_a_package_mounted_over_the_baked_one_reports_its_own_version(
    podman: Any, built: dict[str, Any], registered: tuple[Path, np.ndarray], tmp_path: Path
) -> None:
    """The image's recorded version belongs to its manifest's digest: another package gets
    the bare folder's pkg-<sha> version instead of a false 'digits v1'."""
    home, _ = registered
    source = next((home / "packages").iterdir())
    other = tmp_path / "other"
    other.mkdir()
    for item in source.iterdir():
        if item.is_file():
            (other / item.name).write_bytes(item.read_bytes())
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["created_at"] = "2000-01-01T00:00:00Z"  # a different manifest, same graph
    (other / "manifest.json").write_text(json.dumps(manifest))
    other.chmod(0o755)
    port = serve_helpers.free_port()
    container_id = podman.run(
        "run", "-d", "--read-only", "--tmpfs", "/tmp", "-p", f"127.0.0.1:{port}:8000",
        "-v", f"{other}:/srv/model:ro", built["tag"],
    )  # fmt: skip
    try:
        podman.wait_healthy(container_id)
        answer = httpx.get(f"http://127.0.0.1:{port}/v2/models/digits", timeout=10).json()
    finally:
        podman.run("rm", "-f", container_id, check=False)
    assert answer["versions"][0].startswith("pkg-")
