"""The web page of a model that generates text, in a real browser: a text box for the
document, the summary as the answer (what /predict answers), no probabilities, no feedback
select. The package is the tiny BART summariser of ``tests/serve/app/test_summarize_e2e.py``
(built by the real pipeline), served by a ``shipyard serve`` subprocess."""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from shipyard.export.package import load_package

pytestmark = pytest.mark.slow  # the pipeline run (~40 s) and a browser


def _load(path: Path, name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


e2e = _load(Path(__file__).parents[1] / "app" / "test_summarize_e2e.py", "_shipyard_summarize_e2e")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, tiny_bart: Path) -> Iterator[Any]:
    import os
    import subprocess

    helpers = sys.modules["_shipyard_serve_app_helpers"]
    root = tmp_path_factory.mktemp("web-summarize")
    home, backbone = root / "home", tiny_bart  # the shared tiny BART (tests/conftest.py)
    done = subprocess.run(
        [sys.executable, "-m", "shipyard", "pipeline", *e2e.PIPELINE, f"model.backbone={backbone}"],
        capture_output=True,
        text=True,
        env={**os.environ, "SHIPYARD_HOME": str(home)},
        cwd=root,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    load_package(home / "registry" / e2e.NAME / "1")
    server = helpers.start_server(home, f"{e2e.NAME}@champion")
    yield server
    server.stop()


def test_a_document_in_the_text_box_gets_its_summary(page: tuple[Any, Any], served: Any) -> None:
    tab, console = page
    tab.goto(f"{served.url}/?refresh=1#try")
    tab.wait_for_selector("#text-input:not([hidden])", state="attached")
    assert tab.inner_text("#model-name") == e2e.NAME
    assert tab.inner_text("#text-label") == "Document to summarise"
    document = "We present a method for summarising papers. It writes the abstract."
    tab.fill("#text-field", document)
    with tab.expect_request("**/predict") as sent:
        tab.click("#text-input button[type=submit]")
    assert json.loads(sent.value.post_data or "") == {"instances": [document]}
    tab.wait_for_selector("#result-body:not([hidden])")
    want = httpx.post(f"{served.url}/predict", json={"instance": document}, timeout=20).json()
    summary = want["predictions"][0]["summary"]
    assert tab.inner_text("#answer-kind").lower() == "summary"
    assert tab.inner_text("#answer") == (summary or "(an empty text)")
    assert not tab.is_visible("#bars-title")
    assert not tab.is_visible("#feedback")
    assert not tab.is_visible("#image-input")
    assert not tab.is_visible("#table-input")
    assert console.errors() == []
