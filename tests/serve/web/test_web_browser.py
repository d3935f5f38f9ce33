"""The page in a real browser against a real server: predict through it, watch it.

``shipyard serve --package ...`` runs in a subprocess (digits, and wine for the form);
Debian's headless chromium opens ``/`` and is driven like a person would: draw on the
canvas with the mouse, upload a PNG, fill the form, switch tabs with the keyboard. What
the page shows is compared with what the API answers for the same input, so "the page
shows the model's answer" is checked, not assumed.

Screenshots for the docs: ``SHIPYARD_WEB_SCREENSHOTS=1 pytest tests/serve/web -m slow -k
screenshots`` writes ``docs/images/web-try.png`` and ``docs/images/web-monitoring.png``
(a server of its own that checks drift every 10 s, fed 16 s of traffic whose second half
is noisy, so the drift and accuracy panels show a real detection).
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).parents[3]
SCREENSHOTS = os.environ.get("SHIPYARD_WEB_SCREENSHOTS") == "1"
#: a summary in the shape GET /monitoring/summary answers: ``drift`` as the drift run's
#: ``latest.json`` (shipyard.monitor.drift.DriftSummary.to_dict), ``accuracy`` as
#: shipyard.monitor.accuracy.LiveMetric.to_dict
SAMPLE_SUMMARY: dict[str, Any] = {
    "model": {"name": "digits", "version": "3"},
    "drift": {
        "created_at": "2026-01-05T10:00:00+00:00",
        "model": {"name": "digits", "version": "3", "versions": ["3"]},
        "window": {
            "rows": 500,
            "start": "2026-01-05T09:00:00+00:00",
            "end": "2026-01-05T10:00:00+00:00",
        },
        "dataset_drift": True,
        "drift_share": 0.5,
        "drift_share_threshold": 0.5,
        "features": [
            {
                "name": "brightness",
                "kind": "feature",
                "method": "wasserstein",
                "score": 0.31,
                "threshold": 0.1,
                "drifted": True,
            },
            {
                "name": "contrast",
                "kind": "feature",
                "method": "wasserstein",
                "score": 0.04,
                "threshold": 0.1,
                "drifted": False,
            },
            {
                "name": "label",
                "kind": "output",
                "method": "chisquare",
                "score": 0.0007,
                "threshold": 0.05,
                "drifted": True,
            },
            {
                "name": "embedding",
                "kind": "embedding",
                "method": "model",
                "score": None,
                "threshold": 0.55,
                "drifted": False,
            },
        ],
        "skipped": [],
        "reference": {"snapshot_id": "abc123", "rows": 1257},
        "seconds": 4.2,
        "report_html": "/home/monitoring/drift/drift-20260105T100000Z.html",
        "report_json": "/home/monitoring/drift/drift-20260105T100000Z.json",
    },
    "accuracy": {
        "metric": "accuracy",
        "value": 0.87,
        "samples": 120,
        "test_value": 0.95,
        "drop": 0.08,
        "alert": True,
        "window": 500,
        "margin": 0.05,
    },
}
EMPTY_SUMMARY: dict[str, Any] = {
    "model": {"name": "digits", "version": "3"},
    "drift": None,
    "accuracy": None,
}


# -- helpers ----------------------------------------------------------------------------------


def draw(page: Any, *strokes: list[tuple[float, float]]) -> None:
    """Draw on the pad with the mouse; each stroke is a list of (x, y) fractions of its size."""
    box = page.locator("#pad").bounding_box()
    for points in strokes:
        x, y = points[0]
        page.mouse.move(box["x"] + x * box["width"], box["y"] + y * box["height"])
        page.mouse.down()
        for x, y in points[1:]:
            page.mouse.move(box["x"] + x * box["width"], box["y"] + y * box["height"], steps=6)
        page.mouse.up()


def shown_number(page: Any, selector: str) -> float:
    return float(page.inner_text(selector).replace(",", ""))


def bars(page: Any, selector: str = "#bars") -> list[tuple[str, str]]:
    return [
        (item.locator(".bar-label").inner_text(), item.locator(".bar-value").inner_text())
        for item in page.locator(f"{selector} > li").all()
    ]


def wait_until(page: Any, script: str, arg: Any = None, timeout: float = 15.0) -> None:
    """Poll ``script`` (a JS function of ``arg``) until it is truthy. Playwright's own
    ``wait_for_function`` compiles its predicate inside the page, which the page's CSP
    (no eval) rightly refuses; ``evaluate`` goes through the DevTools protocol."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(script, arg):
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g} s: {script}")
        page.wait_for_timeout(100)


def wait_text(page: Any, selector: str, pattern: str) -> None:
    """Until the text of ``selector`` matches the regular expression ``pattern``."""
    wait_until(
        page,
        "([s, p]) => new RegExp(p).test(document.querySelector(s).textContent)",
        [selector, pattern],
    )


def wait_number_at_least(page: Any, selector: str, value: float) -> None:
    wait_until(
        page,
        """([selector, value]) => {
          const n = Number(document.querySelector(selector).textContent.replace(/,/g, ""));
          return Number.isFinite(n) && n >= value;
        }""",
        [selector, value],
    )


def open_page(page: Any, server: Any, view: str = "try", refresh: int = 1) -> None:
    page.goto(f"{server.url}/?refresh={refresh}#{view}")
    page.wait_for_selector(
        "#image-input:not([hidden]), #table-input:not([hidden])", state="attached"
    )


def server_version(server: Any) -> str:
    return str(server.summary["version"])


def first_correct_digit(server: Any, trained: Any, png: Callable[[np.ndarray], bytes]) -> int:
    """The index of a test digit the served model labels correctly (through /predict/upload)."""
    with httpx.Client(base_url=server.url, timeout=20) as client:
        for index in range(len(trained.target)):
            answer = client.post(
                "/predict/upload", files={"file": ("d.png", png(trained.features[index]))}
            )
            if answer.json()["predictions"][0]["label"] == str(trained.target[index]):
                return index
    raise AssertionError("the model labels no test digit correctly")


# -- try the model ----------------------------------------------------------------------------


def test_the_page_loads_names_the_model_and_logs_no_error(
    page: tuple[Any, Any], digits_server: Any
) -> None:
    tab, console = page
    raw = httpx.get(f"{digits_server.url}/", timeout=20)
    assert raw.status_code == 200
    assert raw.headers["content-security-policy"].startswith("default-src 'self'")
    ready = httpx.get(f"{digits_server.url}/v2/health/ready", timeout=20)

    open_page(tab, digits_server)
    assert tab.title() == "Shipyard model server"
    assert tab.inner_text("#model-name") == "digits" == ready.headers["x-model-name"]
    assert tab.inner_text("#model-version") == server_version(digits_server)
    assert tab.inner_text("#model-task") == "image"
    tab.wait_for_selector("#status.pill-ok")
    wait_text(tab, "#updated", "^Updated")
    tab.wait_for_timeout(500)  # let the first monitoring round finish
    assert console.errors() == []


def test_draw_a_digit_and_the_page_shows_the_models_answer(
    page: tuple[Any, Any], digits_server: Any
) -> None:
    tab, console = page
    open_page(tab, digits_server)
    with tab.expect_request("**/predict") as sent:
        draw(tab, [(0.5, 0.15), (0.5, 0.5), (0.5, 0.85)])  # a "1"; lifting the pen predicts
    body = json.loads(sent.value.post_data or "")
    pixels = np.asarray(body["instances"][0])
    # the model's input: 8x8 grey levels 0..255, bright ink on a dark background, the
    # stroke scaled to fill the height and centred, like scikit-learn's digits
    assert pixels.shape == (8, 8)
    assert pixels.min() >= 0
    assert pixels.max() <= 255
    assert pixels.max() >= 128
    assert (pixels[:, 0] == 0).all()
    assert (pixels[:, -1] == 0).all()
    assert (pixels.max(axis=1) > 0).all(), "the stroke fills the height"
    assert pixels[:, 3:5].sum() > 0.9 * pixels.sum(), "the stroke is centred"

    tab.wait_for_selector("#result-body:not([hidden])")
    api = httpx.post(f"{digits_server.url}/predict", json=body, timeout=20).json()
    want = api["predictions"][0]
    assert tab.inner_text("#answer") == want["label"]
    shown = bars(tab)
    assert [label for label, _ in shown] == [str(d) for d in range(10)]
    for label, value in shown:
        assert float(value.rstrip(" %")) == pytest.approx(
            100 * want["probabilities"][label], abs=0.051
        )
    assert tab.inner_text("#bars li.top .bar-label") == want["label"]
    assert tab.inner_text("#result-version") == server_version(digits_server)
    assert tab.inner_text("#result-model") == "digits"
    assert re.fullmatch(r"\d+ ms round trip", tab.inner_text("#result-latency"))
    assert len(tab.inner_text("#result-id")) == 32
    assert tab.is_visible("#preview")

    tab.click("#clear")
    with tab.expect_response("**/predict") as again:
        tab.click("#predict-image")  # an empty pad: said so, nothing sent ... until drawn
        tab.wait_for_selector("#error:not([hidden])")
        assert "Draw something" in tab.inner_text("#error")
        draw(tab, [(0.5, 0.2), (0.5, 0.8)])
    assert again.value.status == 200
    tab.wait_for_selector("#error", state="hidden")
    assert console.errors() == []


def test_upload_a_png_of_a_test_digit(
    page: tuple[Any, Any],
    digits_server: Any,
    web_packages: Any,
    png: Callable[[np.ndarray], bytes],
) -> None:
    tab, console = page
    digits = web_packages.get("image")
    index = first_correct_digit(digits_server, digits, png)
    open_page(tab, digits_server)
    with tab.expect_response("**/predict/upload") as answered:
        tab.set_input_files(
            "#upload",
            files=[
                {
                    "name": "digit.png",
                    "mimeType": "image/png",
                    "buffer": png(digits.features[index]),
                }
            ],
        )
    assert answered.value.status == 200
    tab.wait_for_selector("#result-body:not([hidden])")
    assert tab.inner_text("#answer") == str(digits.target[index])
    assert tab.inner_text("#result-version") == server_version(digits_server)
    assert len(bars(tab)) == 10
    assert tab.inner_text("#preview-caption") == "Uploaded: digit.png"
    assert console.errors() == []


def test_api_errors_are_shown_in_the_page(page: tuple[Any, Any], digits_server: Any) -> None:
    tab, console = page
    open_page(tab, digits_server)
    tab.set_input_files(
        "#upload",
        files=[{"name": "notes.png", "mimeType": "image/png", "buffer": b"not an image at all"}],
    )
    tab.wait_for_selector("#error:not([hidden])")
    assert "HTTP 415, not_an_image" in tab.inner_text("#error-title")
    assert "file 'notes.png' is not an image" in tab.inner_text("#error-message")
    assert tab.locator("#error").get_attribute("role") == "alert"
    assert console.errors("/predict/upload") == []  # the browser logs the 415 itself


def test_the_feedback_form_sends_the_true_label(page: tuple[Any, Any], digits_server: Any) -> None:
    tab, console = page
    open_page(tab, digits_server)
    draw(tab, [(0.5, 0.15), (0.5, 0.85)])
    tab.wait_for_selector("#feedback:not([hidden])")
    tab.select_option("#feedback-label", "1")
    with tab.expect_request("**/feedback") as sent:
        tab.click("#feedback button[type=submit]")
    sent_body = json.loads(sent.value.post_data or "")
    assert sent_body == {"prediction_id": tab.inner_text("#result-id"), "label": "1"}
    wait_text(tab, "#feedback-status", "Recorded")
    assert console.errors() == []


def test_the_form_of_a_table_model(
    page: tuple[Any, Any], wine_server: Any, web_packages: Any
) -> None:
    tab, console = page
    wine = web_packages.get("tabular")
    open_page(tab, wine_server)
    assert tab.inner_text("#model-name") == "wine"
    meta = httpx.get(f"{wine_server.url}/v2/models/wine", timeout=20).json()
    columns = meta["parameters"]["columns"]
    labels = [tab.inner_text(f"label[for=field-{i}]") for i in range(len(columns))]
    assert labels == columns
    row = {c: (None if np.isnan(v) else float(v)) for c, v in wine.features.iloc[0].items()}
    row[columns[1]] = None  # an empty field: missing, the model fills in the mean
    for i, column in enumerate(columns):
        tab.fill(f"#field-{i}", "" if row[column] is None else repr(row[column]))
    with tab.expect_request("**/predict") as sent:
        tab.click("#table-input button[type=submit]")
    assert json.loads(sent.value.post_data or "") == {"instances": [row]}
    tab.wait_for_selector("#result-body:not([hidden])")
    want = httpx.post(f"{wine_server.url}/predict", json={"instances": [row]}, timeout=20).json()
    assert tab.inner_text("#answer") == want["predictions"][0]["label"]
    assert [label for label, _ in bars(tab)] == meta["parameters"]["labels"]
    assert tab.inner_text("#result-version") == server_version(wine_server)
    assert not tab.is_visible("#image-input")
    assert console.errors() == []


def test_keyboard_tabs_labels_and_a_small_screen(page: tuple[Any, Any], digits_server: Any) -> None:
    tab, console = page
    open_page(tab, digits_server)
    tab.focus("#tab-try")
    tab.keyboard.press("ArrowRight")
    assert tab.get_attribute("#tab-monitoring", "aria-selected") == "true"
    assert tab.evaluate("document.activeElement.id") == "tab-monitoring"
    assert tab.is_visible("#view-monitoring")
    assert not tab.is_visible("#view-try")
    assert tab.evaluate("location.hash") == "#monitoring"
    tab.keyboard.press("Home")
    assert tab.get_attribute("#tab-try", "aria-selected") == "true"
    assert tab.is_visible("#view-try")
    unlabelled = tab.evaluate(
        """() => [...document.querySelectorAll("input, select, canvas#pad, button")]
              .filter((e) => !(e.labels && e.labels.length) && !e.getAttribute("aria-label")
                             && !e.textContent.trim())
              .map((e) => e.id || e.outerHTML)"""
    )
    assert unlabelled == []
    tab.set_viewport_size({"width": 375, "height": 740})
    for view in ("#tab-try", "#tab-monitoring"):
        tab.click(view)
        tab.wait_for_timeout(200)
        width = tab.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
        assert width[0] <= width[1], f"{view}: the page scrolls sideways on a phone ({width})"
    assert console.errors() == []


# -- monitoring -----------------------------------------------------------------------------------


def test_monitoring_counts_requests_and_shows_placeholders(
    page: tuple[Any, Any], digits_server: Any, web_packages: Any
) -> None:
    tab, console = page
    digits = web_packages.get("image")
    open_page(tab, digits_server, "monitoring")
    wait_text(tab, "#updated", "^Updated")
    before = shown_number(tab, "#kpi-total")
    with httpx.Client(base_url=digits_server.url, timeout=20) as client:
        for image in digits.features[:6]:
            assert client.post("/predict", json={"instance": image.tolist()}).status_code == 200
        assert client.post("/predict", json={"instance": [[1, 2]]}).status_code == 422
        summary = client.get("/monitoring/summary")
    wait_number_at_least(tab, "#kpi-total", before + 7)
    wait_text(tab, "#kpi-rate", "^[0-9.]+$")
    assert re.fullmatch(r"[\d.]+ (µs|ms|s)", tab.inner_text("#kpi-p50"))
    assert re.fullmatch(r"[\d.]+ (µs|ms|s)", tab.inner_text("#kpi-p99"))
    assert tab.inner_text("#kpi-ready") == "Ready"
    assert server_version(digits_server) in tab.inner_text("#kpi-ready-note")
    assert tab.inner_text("#kpi-queue") == "0"
    assert "bad_shape" in tab.inner_text("#error-rows")
    assert "%" in tab.inner_text("#kpi-errors")
    assert len(bars(tab, "#class-bars")) >= 1

    if summary.status_code == 404:  # no monitoring endpoints on this server (yet)
        assert "No drift report yet" in tab.inner_text("#drift-empty")
        assert "No feedback yet" in tab.inner_text("#accuracy-empty")
        assert not tab.is_visible("#drift-link")
    else:  # the server's own summary (it changes as its monitor refreshes: shape only)
        assert summary.status_code == 200, summary.text
        tab.wait_for_timeout(2500)  # a refresh with the summary
        if tab.is_visible("#drift-body"):
            assert tab.locator("#drift-rows tr").count() >= 1
            assert tab.is_visible("#drift-link")
        else:
            assert "No drift report yet" in tab.inner_text("#drift-empty")
        if tab.is_visible("#accuracy-body"):
            assert tab.text_content("#accuracy-metric") in ("accuracy", "mae")
        else:
            assert "No feedback yet" in tab.inner_text("#accuracy-empty")
    assert console.errors() == []


def test_monitoring_renders_a_drift_and_accuracy_summary(
    page: tuple[Any, Any], digits_server: Any
) -> None:
    """Whatever /monitoring/summary answers — a report, nulls, an error — is shown, and
    the page never breaks (the summary is served here by the browser, in its documented
    shape, so this does not depend on a drift run)."""
    tab, console = page
    current: dict[str, Any] = {"status": 200, "body": SAMPLE_SUMMARY}

    def answer(route: Any) -> None:
        route.fulfill(
            status=current["status"],
            content_type="application/json",
            body=json.dumps(current["body"]),
        )

    tab.route("**/monitoring/summary", answer)
    open_page(tab, digits_server, "monitoring")
    tab.wait_for_selector("#drift-body:not([hidden])")
    assert tab.inner_text("#drift-verdict") == "Dataset drift"
    assert "2 of 4 columns drifted (50 %" in tab.inner_text("#drift-share")
    rows = [r.inner_text().split("\t") for r in tab.locator("#drift-rows tr").all()]
    assert [r[0] for r in rows] == ["brightness", "label", "contrast", "embedding"]
    assert [r[-1].strip() for r in rows] == ["drifted", "drifted", "ok", "ok"]
    assert rows[3][2] == "\u2013"  # no score: a dash, not "null"
    assert "500 predictions" in tab.inner_text("#drift-window")
    assert tab.get_attribute("#drift-link", "href") == "/monitoring/drift"
    assert tab.is_visible("#drift-link")
    assert tab.inner_text("#accuracy-live") == "87.0 %"
    assert tab.inner_text("#accuracy-test") == "95.0 %"
    assert tab.inner_text("#accuracy-drop") == "8.0 pts"
    assert "Alert" in tab.inner_text("#accuracy-alert")
    assert "120 labelled predictions" in tab.inner_text("#accuracy-samples")

    current["body"] = EMPTY_SUMMARY
    tab.wait_for_selector("#drift-empty:not([hidden])")
    assert "No drift report yet" in tab.inner_text("#drift-empty")
    tab.wait_for_selector("#accuracy-empty:not([hidden])")
    assert not tab.is_visible("#drift-link")

    current.update(status=500, body={"error": "the drift job failed", "kind": "internal"})
    wait_text(tab, "#drift-empty", "the drift job failed")
    regression = {
        "metric": "mae",
        "value": 0.42,
        "samples": 30,
        "test_value": 0.3,
        "drop": 0.12,
        "alert": False,
    }
    current.update(status=200, body={**EMPTY_SUMMARY, "accuracy": regression})
    tab.wait_for_selector("#accuracy-body:not([hidden])")
    assert tab.inner_text("#accuracy-live") == "0.42"
    assert tab.text_content("#accuracy-metric") == "mae"
    assert "Within margin" in tab.inner_text("#accuracy-alert")
    assert console.errors("/monitoring/summary") == []


# -- screenshots for the docs -----------------------------------------------------------------------


def send_traffic(url: str, digits: Any, seconds: float, stop: threading.Event) -> None:
    """Realistic traffic: for ``seconds``, a rising and falling rate of test digits (the
    second half with noise added, as from a camera going bad), a few malformed requests,
    and the true label for a third of the predictions; then a trickle until ``stop``."""
    rng = np.random.default_rng(0)
    started = time.monotonic()

    def predict(client: httpx.Client, noisy: bool) -> None:
        index = int(rng.integers(len(digits.target)))
        image = digits.features[index].astype(float)
        if noisy:
            image = np.clip(image + rng.normal(0, 70, image.shape), 0, 255).round()
        answer = client.post("/predict", json={"instance": image.tolist()})
        if rng.random() < 0.3:
            prediction = answer.json()["predictions"][0]["id"]
            label = str(digits.target[index])
            client.post("/feedback", json={"prediction_id": prediction, "label": label})

    with httpx.Client(base_url=url, timeout=20) as client:
        while (elapsed := time.monotonic() - started) < seconds and not stop.is_set():
            for _ in range(int(4 + 12 * np.sin(np.pi * elapsed / seconds) ** 2)):
                predict(client, noisy=elapsed > seconds / 2)
            if rng.random() < 0.1:
                client.post("/predict", json={"instance": [[0] * 7] * 8})
            time.sleep(0.1)
        while not stop.wait(0.25):
            predict(client, noisy=True)


@pytest.mark.skipif(
    not SCREENSHOTS, reason="set SHIPYARD_WEB_SCREENSHOTS=1 to write docs/images/web-*.png"
)
def test_screenshots(page: tuple[Any, Any], web_packages: Any, serve: Callable[..., Any]) -> None:
    """A fresh server that checks drift every 10 s and refreshes live accuracy every
    second, 16 s of traffic, then both views as a person would see them."""
    tab, console = page
    out = ROOT / "docs" / "images"
    out.mkdir(parents=True, exist_ok=True)
    digits = web_packages.get("image")
    home = web_packages.home
    server = serve(
        home,
        "--package",
        str(digits.package.path),
        f"serve.prediction_log_url=sqlite:///{home.parent / 'screenshots-log'}.db",
        "serve.prediction_log_flush_interval_s=0.05",
        "serve.monitor_interval_s=1",
        "monitor.drift_interval_s=10",
        "monitor.min_rows=100",
        ready_timeout=120,
    )
    stop = threading.Event()
    sender = threading.Thread(
        target=send_traffic, args=(server.url, digits, 16.0, stop), daemon=True
    )
    try:
        open_page(tab, server)
        draw(
            tab,
            [
                (0.3, 0.2),
                (0.6, 0.18),
                (0.68, 0.3),
                (0.5, 0.48),
                (0.7, 0.62),
                (0.62, 0.8),
                (0.3, 0.82),
            ],
        )  # a "3"
        tab.wait_for_selector("#result-body:not([hidden])")
        tab.wait_for_timeout(400)  # the bars' transition
        tab.screenshot(path=str(out / "web-try.png"), full_page=True)

        tab.click("#tab-monitoring")
        sender.start()
        time.sleep(16.0)
        ended = time.time()
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:  # a drift run after the noisy half
            summary = httpx.get(f"{server.url}/monitoring/summary", timeout=20)
            drift = summary.json().get("drift") if summary.status_code == 200 else None
            checked = drift and drift.get("created_at")
            if checked and datetime.fromisoformat(checked).timestamp() >= ended:
                break
            time.sleep(1)
        else:
            print(
                "screenshots: no drift run over the traffic within 90 s; the panel shows what there is"
            )
        tab.wait_for_timeout(2500)  # the page's next refreshes
        tab.screenshot(path=str(out / "web-monitoring.png"), full_page=True)
        assert console.errors() == []
    finally:
        stop.set()
        sender.join(30)
        server.stop()
