"""The page's Prometheus arithmetic (``prom.js``) in the browser, against the server's own
metrics and prometheus_client's parser.

The monitoring view parses ``/metrics`` in JavaScript: request rates from two scrapes and
latency quantiles from the histogram buckets, as PromQL's ``histogram_quantile`` does. A
wrong parse or quantile would show plausible-looking wrong numbers, so it is checked
here on the text of a real :class:`~shipyard.serve.metrics.Metrics` registry.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from shipyard.serve.metrics import LATENCY_BUCKETS, Metrics
from shipyard.serve.web import STATIC_DIR

ORIGIN = "http://prom.test"


@pytest.fixture(scope="module")
def prom(browser: Any) -> Iterator[Any]:
    """A page with the module prom.js imported as ``window.ShipyardProm`` (both served
    by the browser itself: no server needed)."""
    context = browser.new_context()
    tab = context.new_page()
    files = {
        "/": ("text/html", "<!doctype html><title>prom.js</title>"),
        "/prom.js": ("text/javascript", (STATIC_DIR / "prom.js").read_text()),
    }

    def serve(route: Any) -> None:
        media_type, body = files[route.request.url.removeprefix(ORIGIN)]
        route.fulfill(status=200, content_type=media_type, body=body)

    tab.route(f"{ORIGIN}/**", serve)
    tab.goto(f"{ORIGIN}/")
    tab.evaluate("async () => { window.ShipyardProm = await import('/prom.js'); }")
    yield tab
    context.close()


def scrape(metrics: Metrics) -> str:
    return metrics.render().decode()


def test_parse_reads_every_sample_as_prometheus_client_does(prom: Any) -> None:
    metrics = Metrics()
    metrics.requests.labels("/predict", "POST", "200").inc(7)
    metrics.requests.labels("/predict", "POST", "422").inc(2)
    metrics.requests.labels("/v2/models/{model_name}", "GET", "200").inc()
    metrics.errors.labels("bad_shape").inc(2)
    metrics.set_model("digits", "pkg-123", "fp32")
    for seconds in (0.0004, 0.003, 0.003, 0.04, 3.0, 9.0):
        metrics.latency.labels("/predict").observe(seconds)
    text = scrape(metrics)

    parsed = prom.evaluate("(text) => ShipyardProm.parse(text)", text)
    want = [
        (s.name, s.labels, s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]
    got = [(s["name"], s["labels"], s["value"]) for s in parsed]
    assert got == want
    total = prom.evaluate(
        """(text) => ShipyardProm.sum(ShipyardProm.parse(text), "shipyard_requests_total",
                                      (l) => l.route === "/predict")""",
        text,
    )
    assert total == 9


def test_parse_unescapes_label_values_and_reads_special_values(prom: Any) -> None:
    text = (
        "# HELP x a metric\n# TYPE x gauge\n"
        'x{a="q\\"uote",b="back\\\\slash",c="new\\nline"} 1.5\n'
        "y NaN\nz +Inf\nw -Inf 1700000000000\n"
    )
    parsed = prom.evaluate(
        """(text) => ShipyardProm.parse(text).map((s) =>
             [s.name, s.labels, Number.isNaN(s.value) ? "NaN" : String(s.value)])""",
        text,
    )
    assert parsed == [
        ["x", {"a": 'q"uote', "b": "back\\slash", "c": "new\nline"}, "1.5"],
        ["y", {}, "NaN"],
        ["z", {}, "Infinity"],
        ["w", {}, "-Infinity"],
    ]


QUANTILE = """([text, q, route]) => {
  const s = ShipyardProm.parse(text);
  const b = ShipyardProm.buckets(s, "shipyard_request_duration_seconds",
                                 route ? (l) => l.route === route : undefined);
  return ShipyardProm.quantile(q, b);
}"""


def test_quantiles_interpolate_inside_the_bucket_like_promql(prom: Any) -> None:
    metrics = Metrics()
    for _ in range(10):
        metrics.latency.labels("/predict").observe(0.0015)  # bucket (0.001, 0.002]
    text = scrape(metrics)
    # histogram_quantile: 0.001 + (0.002 - 0.001) * (rank / count)
    assert prom.evaluate(QUANTILE, [text, 0.5, None]) == pytest.approx(0.0015)
    assert prom.evaluate(QUANTILE, [text, 0.9, None]) == pytest.approx(0.0019)
    # above the highest finite bucket: its upper bound, as PromQL answers
    metrics.latency.labels("/predict/upload").observe(60.0)
    assert prom.evaluate(QUANTILE, [scrape(metrics), 0.99, "/predict/upload"]) == 5.0
    # no observations: NaN (rendered as a dash), never a number
    assert prom.evaluate(
        "(t) => Number.isNaN(ShipyardProm.quantile(0.5, ShipyardProm.buckets("
        "ShipyardProm.parse(t), 'shipyard_request_duration_seconds')))",
        scrape(Metrics()),
    )


def test_quantiles_of_many_latencies_fall_in_the_true_quantiles_bucket(prom: Any) -> None:
    rng = np.random.default_rng(0)
    observed = rng.lognormal(np.log(0.004), 0.8, size=2000)
    metrics = Metrics()
    for seconds in observed:
        metrics.latency.labels("/predict").observe(float(seconds))
    text = scrape(metrics)
    bounds = (0.0, *LATENCY_BUCKETS)
    for q in (0.5, 0.9, 0.99):
        got = prom.evaluate(QUANTILE, [text, q, "/predict"])
        true = float(np.quantile(observed, q))
        upper = next(i for i, b in enumerate(bounds) if b >= true)
        assert bounds[upper - 1] <= got <= bounds[upper], (q, got, true)


def test_window_and_rate_between_two_scrapes(prom: Any) -> None:
    metrics = Metrics()
    for _ in range(4):
        metrics.latency.labels("/predict").observe(0.0003)
    metrics.requests.labels("/predict", "POST", "200").inc(4)
    before = scrape(metrics)
    for _ in range(6):
        metrics.latency.labels("/predict").observe(0.03)
    metrics.requests.labels("/predict", "POST", "200").inc(6)
    after = scrape(metrics)
    got = prom.evaluate(
        """([a, b]) => {
          const P = ShipyardProm, name = "shipyard_request_duration_seconds";
          const recent = P.subtract(P.buckets(P.parse(b), name), P.buckets(P.parse(a), name));
          const reset = P.subtract(P.buckets(P.parse(a), name), P.buckets(P.parse(b), name));
          return {
            p50: P.quantile(0.5, recent),
            count: recent[recent.length - 1].count,
            resetCount: reset[reset.length - 1].count,
            rate: P.rate(P.sum(P.parse(b), "shipyard_requests_total"),
                         P.sum(P.parse(a), "shipyard_requests_total"), 2),
            rateAfterRestart: P.rate(3, 10, 2),
          };
        }""",
        [before, after],
    )
    assert got["count"] == 6  # only what happened between the scrapes
    assert 0.02 <= got["p50"] <= 0.05  # the window holds only the 30 ms requests
    assert got["resetCount"] == 4  # a counter that went down: a restart, start over
    assert got["rate"] == 3.0
    assert got["rateAfterRestart"] == 1.5
