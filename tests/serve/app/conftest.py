"""Real packages and real servers for the HTTP service's tests.

Digits (CNN) and wine (MLP) are trained for two epochs and exported once per session in
one home, and wine is registered twice (v1 champion, v2 a second seed) so the registry
paths — ``shipyard serve wine@champion``, polling, rollback — run for real. Servers are
real: ``python -m shipyard serve ...`` in a subprocess on a free loopback port, reached
with httpx. Nothing of Shipyard's is mocked.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from omegaconf import DictConfig

from shipyard.config import compose
from shipyard.export.package import ModelPackage

QUICK = (
    "trainer.max_epochs=2",
    "trainer.early_stopping_patience=null",
    "quantize=null",
    "export.latency.repeats=1",
    "export.latency.batch_sizes=[1]",
)
ADMIN_TOKEN = secrets.token_hex(16)  # made per run: no credential lives in the repo


@dataclass
class Packages:
    home: Path
    digits: ModelPackage
    wine: ModelPackage
    #: digits test images, uint8 (rows, 8, 8, 1)
    digits_test: np.ndarray
    #: wine test rows, named columns
    wine_test: pd.DataFrame
    wine_cfg: DictConfig
    #: registered wine versions: 1 (champion), 2 (not promoted)
    wine_versions: tuple[int, int] = (1, 2)

    def cfg(self, *overrides: str) -> DictConfig:
        return compose([f"paths.home={self.home}", *overrides])


@pytest.fixture(scope="session")
def packages(tmp_path_factory: pytest.TempPathFactory) -> Packages:
    from shipyard.export.build import export_run
    from shipyard.track.registry import promote, register
    from shipyard.train.run import resolve_snapshot, train

    home = tmp_path_factory.mktemp("serve-app") / "home"

    def build(*overrides: str) -> tuple[DictConfig, ModelPackage, str]:
        cfg = compose([f"paths.home={home}", *QUICK, *overrides])
        run_id = train(cfg).run_id
        return cfg, export_run(cfg, run_id).package, run_id

    digits_cfg, digits, _ = build("task=image")
    wine_cfg, wine, wine_run = build("task=tabular")
    _, _, wine_run_2 = build("task=tabular", "seed=7")
    assert register(wine_cfg, wine_run, name="wine").version == 1
    promote(wine_cfg, "wine", 1)
    assert register(wine_cfg, wine_run_2, name="wine").version == 2
    return Packages(
        home=home,
        digits=digits,
        wine=wine,
        digits_test=np.asarray(resolve_snapshot(digits_cfg).load("test").features),
        wine_test=resolve_snapshot(wine_cfg).load("test").features.reset_index(drop=True),
        wine_cfg=wine_cfg,
    )


# -- real servers ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Server:
    """A ``shipyard serve`` subprocess on a loopback port."""

    process: subprocess.Popen[bytes]
    url: str
    log: Path
    summary: dict[str, Any]
    clients: list[httpx.Client] = field(default_factory=list)

    def client(self, **kwargs: Any) -> httpx.Client:
        client = httpx.Client(base_url=self.url, timeout=20, **kwargs)
        self.clients.append(client)
        return client

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, timeout: float = 20) -> int:
        """SIGTERM, as an orchestrator would; the exit code."""
        for client in self.clients:
            client.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        return int(self.process.returncode)


def start_server(
    home: Path,
    *args: str,
    env: dict[str, str] | None = None,
    ready_timeout: float = 60,
) -> Server:
    """``python -m shipyard serve ARGS --port FREE --json``, waiting for /v2/health/ready."""
    port = free_port()
    log = home.parent / f"serve-{port}.log"
    environment = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SHIPYARD_SERVE_")},
        "SHIPYARD_HOME": str(home),
        **(env or {}),
    }
    environment.pop("PROMETHEUS_MULTIPROC_DIR", None)
    with log.open("wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "shipyard", "serve", *args, "--port", str(port), "--json"],
            stdout=subprocess.PIPE,
            stderr=err,
            env=environment,
            cwd=home.parent,
        )
    assert process.stdout is not None
    first = process.stdout.readline().decode()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited {process.returncode}: {log.read_text()}")
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                return Server(process, url, log, json.loads(first))
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    process.kill()
    raise AssertionError(f"server not ready within {ready_timeout}s: {log.read_text()}")


@pytest.fixture(scope="module")
def servers() -> Iterator[Callable[..., Server]]:
    """Start servers; every one still running is stopped (SIGTERM) after the module."""
    started: list[Server] = []

    def start(home: Path, *args: str, **kwargs: Any) -> Server:
        server = start_server(home, *args, **kwargs)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


# -- requests --------------------------------------------------------------------------------


def png_bytes(image: np.ndarray) -> bytes:
    """A grey PNG of one (H, W, 1) uint8 image."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)[..., 0], mode="L").save(buffer, "PNG")
    return buffer.getvalue()


def wine_instances(frame: pd.DataFrame) -> list[dict[str, float | None]]:
    return [
        {k: (None if pd.isna(v) else float(v)) for k, v in row.items()}
        for row in frame.to_dict("records")
    ]


def post_binary_texts(
    client: httpx.Client,
    name: str,
    texts: list[str],
    *,
    shape: list[int] | None = None,
    outputs: list[str] | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    """``POST /v2/models/NAME/infer`` with ``texts`` as a BYTES tensor in the binary data
    extension: the JSON header, then each text as <uint32 LE length><UTF-8 bytes>."""
    blob = b"".join(struct.pack("<I", len(t.encode())) + t.encode() for t in texts)
    tensor = {
        "name": "text",
        "shape": shape or [len(texts), 1],
        "datatype": "BYTES",
        "parameters": {"binary_data_size": len(blob)},
    }
    request: dict[str, Any] = {"inputs": [tensor]}
    if outputs:
        request["outputs"] = [{"name": output} for output in outputs]
    header = json.dumps(request).encode()
    return client.post(
        f"/v2/models/{name}/infer",
        content=header + blob,
        headers={"Inference-Header-Content-Length": str(len(header)), **(headers or {})},
    )


@pytest.fixture(scope="session")
def binary_texts() -> Callable[..., httpx.Response]:
    return post_binary_texts


@pytest.fixture(scope="session")
def png() -> Callable[[np.ndarray], bytes]:
    return png_bytes


@pytest.fixture(scope="session")
def wine_rows() -> Callable[[pd.DataFrame], list[dict[str, float | None]]]:
    return wine_instances
