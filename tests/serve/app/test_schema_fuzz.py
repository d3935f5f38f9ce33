"""Schemathesis over the server's own OpenAPI schema: ~1,700 generated requests, no 5xx.

Every operation of ``/openapi.json`` is fuzzed with schemathesis' examples, coverage
(boundary values, wrong types, undeclared methods) and fuzzing phases, valid and invalid
data: in-process against the ASGI app with its lifespan (the real package in ONNX Runtime,
the batcher and the prediction log running), once serving the digits CNN (images) and once
the wine MLP (table rows), ~600 requests each; then ~500 against a real ``shipyard serve``
on a loopback port (the schema checked equal to the one it serves). Half of the generated
``model_name`` and ``model_version`` path values are the served ones, so the V2 routes are
fuzzed past their 404; the admin routes get the bearer token, and schemathesis'
``ignored_auth`` check replays them without it and with a wrong one, expecting a refusal.

Every response must be below 500 and pass schemathesis' checks: status code, content type,
headers and body as documented; schema-invalid requests refused with a 4xx; auth enforced.
One check is off, ``positive_data_acceptance`` (a schema-valid request must get a 2xx):
the schema is the same for every model, so it cannot say that digits wants 8x8 pixels in
0..255 or which columns wine has, and such requests rightly get a 422 naming the problem.

The schema is read from an app at import (it does not depend on the model) so that
schemathesis' pytest plugin makes one test per operation; a fixed seed keeps the cases the
same from run to run. Requests are counted across those tests and the last test of this
file asserts the totals.
"""

from __future__ import annotations

import json
import secrets
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from schemathesis.python import asgi

from shipyard.serve.app import create_app
from shipyard.serve.reload import package_version
from shipyard.serve.settings import ServeSettings

TOKEN = secrets.token_hex(16)  # made per run: no credential lives in the repo
#: generated cases per operation and generation mode in the fuzzing phase (hypothesis'
#: max_examples); the examples and coverage phases add their own
FUZZ_EXAMPLES = 12
SERVER_FUZZ_EXAMPLES = 3
#: in the path, replaced by the served model's version (unknown until the packages exist)
SERVED_VERSION = "served-version"
MIN_REQUESTS = {"digits": 250, "wine": 250, "server": 100}
SEED = 20240501


def fuzz_schema(model_name: str, max_examples: int) -> Any:
    config = schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "auth": {"openapi": {"HTTPBearer": {"bearer": TOKEN}}},
            "dictionaries": {
                "name": {"values": [model_name]},
                "version": {"values": [SERVED_VERSION]},
            },
            "parameters": {
                "path.model_name": {"dictionary": "name", "probability": 0.5},
                "path.model_version": {"dictionary": "version", "probability": 0.5},
            },
            "generation": {"mode": "all", "max-examples": max_examples, "database": "none"},
            "checks": {"positive_data_acceptance": {"enabled": False}},
            "phases": {"stateful": {"enabled": False}},
            "request-timeout": 20,
        }
    )
    # The schema does not depend on the model: any package path builds the same one.
    openapi = create_app(ServeSettings(package="unused")).openapi()
    return schemathesis.openapi.from_dict(openapi, config=config)


class AppSlot:
    """An ASGI app that forwards to the one the fixture puts in: the schema (and so the
    test items) exists at import, the app only once the session's packages are built.
    Schemathesis sends every request to ``schema.app`` in-process, its own probes too."""

    def __init__(self) -> None:
        self.app: Any = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        assert self.app is not None, "the apps fixture fills the slot"
        await self.app(scope, receive, send)


DIGITS_APP, WINE_APP = AppSlot(), AppSlot()
digits_schema = fuzz_schema("digits", FUZZ_EXAMPLES)
digits_schema.app = DIGITS_APP
wine_schema = fuzz_schema("wine", FUZZ_EXAMPLES)
wine_schema.app = WINE_APP
server_schema = fuzz_schema("digits", SERVER_FUZZ_EXAMPLES)
OPERATIONS = sum(1 for _ in digits_schema.get_all_operations())

#: requests and statuses per target (digits, wine, server); operations run per target
REQUESTS: dict[str, Counter[int]] = {target: Counter() for target in MIN_REQUESTS}
RAN: dict[str, set[str]] = {target: set() for target in MIN_REQUESTS}


def settings_for(package: Any, tmp: Path) -> ServeSettings:
    return ServeSettings.model_validate(
        {
            "package": str(package.path),
            "home": str(tmp),
            "prediction_log_url": f"sqlite:///{tmp}/predictions.db",
            "max_instances": 16,
            "max_body_bytes": 256 * 1024,
            "prediction_log_flush_interval_s": 0.05,
            "SHIPYARD_ADMIN_TOKEN": TOKEN,
        }
    )


@pytest.fixture(scope="module")
def apps(packages: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The two apps in their slots. Schemathesis' pytest plugin runs an app's lifespan
    around each operation's test — started at its first request (model loaded, batcher and
    prediction log started), ended after it (batcher drained, log flushed) — so every
    operation meets a freshly started server."""
    for slot, package in ((DIGITS_APP, packages.digits), (WINE_APP, packages.wine)):
        folder = tmp_path_factory.mktemp(f"fuzz-{package.manifest.task}")
        slot.app = create_app(settings_for(package, folder))
    yield
    asgi.shutdown_lifespans()
    DIGITS_APP.app = WINE_APP.app = None


@pytest.fixture(scope="module")
def digits_server(packages: Any, servers: Any) -> Any:
    server = servers(
        packages.home,
        "--package",
        str(packages.digits.path),
        "serve.max_instances=16",
        "serve.prediction_log_url=sqlite:///" + str(packages.home.parent / "fuzz-server.db"),
        env={"SHIPYARD_ADMIN_TOKEN": TOKEN},
    )
    served = httpx.get(f"{server.url}/openapi.json", timeout=20).json()
    assert served == json.loads(json.dumps(server_schema.raw_schema)), (
        "the fuzzed schema is not the served one"
    )
    return server


def call(target: str, case: Any, version: str, **transport: Any) -> None:
    if case.path_parameters and case.path_parameters.get("model_version") == SERVED_VERSION:
        case.path_parameters["model_version"] = version
    response = case.call_and_validate(**transport)
    REQUESTS[target][response.status_code] += 1
    RAN[target].add(case.operation.label)
    assert response.status_code < 500, (case.operation.label, response.status_code, response.text)


@digits_schema.parametrize()
def test_fuzz_digits_app(case: Any, apps: None, packages: Any) -> None:
    call("digits", case, package_version(packages.digits.path))


@wine_schema.parametrize()
def test_fuzz_wine_app(case: Any, apps: None, packages: Any) -> None:
    call("wine", case, package_version(packages.wine.path))


@server_schema.parametrize()
def test_fuzz_real_server(case: Any, digits_server: Any, packages: Any) -> None:
    call("server", case, package_version(packages.digits.path), base_url=digits_server.url)


def test_fuzzing_made_enough_requests_and_no_5xx() -> None:
    """Runs after the fuzz tests above (file order); alone, it has nothing to count."""
    complete = [t for t in MIN_REQUESTS if len(RAN[t]) == OPERATIONS]
    if not complete:
        pytest.skip("run with the fuzz tests of this file: it counts their requests")
    for target in complete:
        statuses = REQUESTS[target]
        total = sum(statuses.values())
        print(f"schemathesis, {target}: {total} requests, statuses {sorted(statuses.items())}")
        assert total >= MIN_REQUESTS[target], (target, statuses)
        assert not [s for s in statuses if s >= 500], (target, statuses)
    in_process = sum(sum(REQUESTS[t].values()) for t in ("digits", "wine"))
    if {"digits", "wine"} <= set(complete):
        assert in_process >= 500
