"""The web page's tests: real packages, real ``shipyard serve`` subprocesses, a real browser.

The server helpers are the serving tests' own (``tests/serve/app/conftest.py``: a
subprocess on a free loopback port, PNG bytes of a digit), loaded from that file rather
than copied. The browser is Debian's chromium (``/usr/bin/chromium``) driven by
Playwright's Python package — never a browser that Playwright downloads; without it the
browser tests are skipped, saying why. Chromium's sandbox is off (Playwright's default),
which root needs.

Digits and wine are trained here for two epochs and exported, each the first time a test
asks for it (only what the selected tests need is trained).
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pandas as pd
import pytest

CHROMIUM = Path("/usr/bin/chromium")
VIEWPORT = {"width": 1280, "height": 860}
#: a console error that is expected: the browser's line for a 404 of the monitoring summary
#: on a server that does not have that endpoint (the page shows a placeholder instead)
EXPECTED_MISSING = ("/monitoring/summary",)


def _load_serving_helpers() -> ModuleType:
    path = Path(__file__).parents[1] / "app" / "conftest.py"
    spec = importlib.util.spec_from_file_location("_shipyard_serve_app_helpers", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


helpers = _load_serving_helpers()
Server = helpers.Server
start_server = helpers.start_server
png_bytes = helpers.png_bytes
wine_instances = helpers.wine_instances


# -- packages ------------------------------------------------------------------------------


@dataclass
class Trained:
    """One exported package and its test split."""

    package: Any
    features: Any
    target: np.ndarray


@dataclass
class WebPackages:
    home: Path
    _built: dict[str, Trained] = field(default_factory=dict)

    def get(self, task: str) -> Trained:
        """The package of ``task`` (image: digits, tabular: wine), trained on first use."""
        if task not in self._built:
            from shipyard.config import compose
            from shipyard.export.build import export_run
            from shipyard.train.run import resolve_snapshot, train

            cfg = compose([f"paths.home={self.home}", *helpers.QUICK, f"task={task}"])
            package = export_run(cfg, train(cfg).run_id).package
            test = resolve_snapshot(cfg).load("test")
            features = test.features
            features = (
                np.asarray(features)
                if task == "image"
                else pd.DataFrame(features).reset_index(drop=True)
            )
            self._built[task] = Trained(package, features, np.asarray(test.target))
        return self._built[task]


@pytest.fixture(scope="session")
def web_packages(tmp_path_factory: pytest.TempPathFactory) -> WebPackages:
    return WebPackages(tmp_path_factory.mktemp("serve-web") / "home")


def _serve(packages: WebPackages, task: str, name: str) -> Iterator[Any]:
    trained = packages.get(task)
    server = start_server(
        packages.home,
        "--package",
        str(trained.package.path),
        f"serve.prediction_log_url=sqlite:///{packages.home.parent / name}.db",
        "serve.prediction_log_flush_interval_s=0.05",
    )
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def serve() -> Callable[..., Any]:
    """``start_server(home, *args)`` for a test that needs a server of its own (stop it)."""
    return start_server


@pytest.fixture(scope="session")
def digits_server(web_packages: WebPackages) -> Iterator[Any]:
    """``shipyard serve --package <digits>`` for the whole session."""
    yield from _serve(web_packages, "image", "digits-log")


@pytest.fixture(scope="session")
def wine_server(web_packages: WebPackages) -> Iterator[Any]:
    yield from _serve(web_packages, "tabular", "wine-log")


# -- the browser ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Debian chromium under Playwright; skipped (saying why) where it is missing.

    Per module, not per session: Playwright's sync API keeps an event loop running in this
    thread while it is open, and a later test's ``asyncio.run`` would fail under it."""
    if not CHROMIUM.exists():
        pytest.skip(f"no chromium at {CHROMIUM} (Debian: apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        pytest.skip(f"Playwright's Python package is not installed ({exc})")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, chromium_sandbox=False
        )
        try:
            yield launched
        finally:
            launched.close()


@dataclass
class Console:
    """What the page said: console messages (type, text, url) and uncaught exceptions."""

    messages: list[tuple[str, str, str]] = field(default_factory=list)
    exceptions: list[str] = field(default_factory=list)

    def errors(self, *allowed: str) -> list[str]:
        """Errors, less the browser's "Failed to load resource" lines for URLs ending in
        one of ``allowed`` (answers the test expects to be refused)."""
        ignored = (*EXPECTED_MISSING, *allowed)
        out = [f"uncaught: {text}" for text in self.exceptions]
        for kind, text, url in self.messages:
            if kind != "error":
                continue
            path = url.split("?", 1)[0]
            if text.startswith("Failed to load resource") and path.endswith(ignored):
                continue
            out.append(f"{text} ({url})")
        return out


@pytest.fixture
def page(browser: Any) -> Iterator[tuple[Any, Console]]:
    """A fresh browser context and page, its console recorded."""
    context = browser.new_context(viewport=VIEWPORT)
    tab = context.new_page()
    console = Console()
    tab.on(
        "console",
        lambda message: console.messages.append(
            (message.type, message.text, str(message.location.get("url", "")))
        ),
    )
    tab.on("pageerror", lambda error: console.exceptions.append(str(error)))
    tab.set_default_timeout(15_000)
    try:
        yield tab, console
    finally:
        context.close()


@pytest.fixture(scope="session")
def png() -> Callable[[np.ndarray], bytes]:
    return png_bytes
