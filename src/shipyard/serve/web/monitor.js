/* "Monitoring": scrape /metrics every few seconds and do the arithmetic in the browser
 * (rates between scrapes, PromQL-style quantiles), and show the monitor's drift and live
 * accuracy from /monitoring/summary — or say that there is none yet. */

import * as Prom from "./prom.js";
import {
  $, api, bar, duration, el, number, percent, setModel, setStatus, show, when,
} from "./common.js";

const query = new URLSearchParams(location.search);
/** Refresh period; `?refresh=2` for 2 s (1..60). */
const REFRESH_MS = 1000 * Math.min(60, Math.max(1, Number(query.get("refresh")) || 5));
/** Latency quantiles over this window of scrapes. */
const WINDOW_MS = 60000;
/** Routes that compute predictions (the middleware's route templates). */
const PREDICT_ROUTES = new Set([
  "/predict",
  "/predict/upload",
  "/v2/models/{model_name}/infer",
  "/v2/models/{model_name}/versions/{model_version}/infer",
]);
const isPredictRoute = (labels) => PREDICT_ROUTES.has(labels.route);

export function startMonitor() {
  $("pause").addEventListener("click", () => {
    paused = !paused;
    $("pause").textContent = paused ? "Resume" : "Pause";
    if (paused) clearTimeout(timer);
    else scrape();
  });
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && !paused) scrape();
  });
  fetch("/v2", { cache: "no-store" })
    .then((r) => (r.ok ? r.json() : null))
    .then((server) => {
      if (server) $("fact-server").textContent = server.name + " " + server.version;
    })
    .catch(() => {});
  scrape();
}

/** Scrapes kept for rates and windows: {t (ms), samples}. */
const scrapes = [];
const rates = [];
let timer = null;
let paused = false;
let summaryMissingUntil = 0;
let scraping = false;

async function scrape() {
  clearTimeout(timer);
  if (!paused) timer = setTimeout(scrape, REFRESH_MS);
  if (document.hidden || scraping) return;
  scraping = true;
  try {
    await scrapeOnce();
  } finally {
    scraping = false;
  }
}

async function scrapeOnce() {
  const t = performance.now();
  const [metrics, ready] = await Promise.allSettled([
    fetch("/metrics", { cache: "no-store" }).then((r) => (r.ok ? r.text() : Promise.reject(r))),
    fetch("/v2/health/ready", { cache: "no-store" }),
  ]);
  if (metrics.status === "rejected") {
    setStatus("bad", "Unreachable");
    $("updated").textContent =
      "The server cannot be reached; retrying every " + REFRESH_MS / 1000 + " s.";
    return;
  }
  const readyOk = ready.status === "fulfilled" && ready.value.ok;
  if (ready.status === "fulfilled" && ready.value.headers.get("x-model-name")) {
    setModel(ready.value.headers.get("x-model-name"), ready.value.headers.get("x-model-version"));
  }
  setStatus(readyOk ? "ok" : "wait", readyOk ? "Ready" : "Not ready");
  const samples = Prom.parse(metrics.value);
  scrapes.push({ t, samples });
  while (scrapes.length > 2 && t - scrapes[1].t > WINDOW_MS) scrapes.shift();
  renderMetrics(samples, readyOk);
  $("updated").textContent =
    "Updated " + new Date().toLocaleTimeString() + " · every " + REFRESH_MS / 1000 + " s";
  if (Date.now() >= summaryMissingUntil) await loadSummary();
}

function renderMetrics(samples, readyOk) {
  const total = Prom.sum(samples, "shipyard_requests_total", isPredictRoute);
  $("kpi-total").textContent = number(total);

  // request rate: the last two scrapes
  const previous = scrapes.length > 1 ? scrapes[scrapes.length - 2] : null;
  const latest = scrapes[scrapes.length - 1];
  if (previous) {
    const seconds = (latest.t - previous.t) / 1000;
    const before = Prom.sum(previous.samples, "shipyard_requests_total", isPredictRoute);
    const r = Prom.rate(total, before, seconds);
    $("kpi-rate").textContent = number(r, r < 10 ? 2 : 0);
    $("kpi-rate-note").textContent = "prediction routes";
    rates.push(r);
    if (rates.length > 120) rates.shift();
    drawSpark();
  } else {
    $("kpi-rate").textContent = "–";
    $("kpi-rate-note").textContent = "prediction routes · next refresh";
  }

  // latency quantiles over the window; since start when the window saw no request
  const oldest = scrapes[0];
  const now = Prom.buckets(samples, "shipyard_request_duration_seconds", isPredictRoute);
  let recent = now;
  let note = "since start";
  if (oldest !== latest) {
    const before = Prom.buckets(oldest.samples, "shipyard_request_duration_seconds", isPredictRoute);
    recent = Prom.subtract(now, before);
    note = "last " + Math.round((latest.t - oldest.t) / 1000) + " s";
  }
  if (!recent.length || !(recent[recent.length - 1].count > 0)) {
    recent = now;
    note = "since start";
  }
  $("kpi-p50").textContent = duration(Prom.quantile(0.5, recent));
  $("kpi-p99").textContent = duration(Prom.quantile(0.99, recent));
  $("kpi-p50-note").textContent = note;
  $("kpi-p99-note").textContent = note;

  // errors: share of prediction requests that were not 2xx
  const failed = (labels) => isPredictRoute(labels) && !String(labels.status).startsWith("2");
  const bad = Prom.sum(samples, "shipyard_requests_total", failed);
  $("kpi-errors").textContent = total > 0 ? percent(bad / total) : "–";
  $("kpi-errors-note").textContent = number(bad) + " of " + number(total) + " prediction requests";
  const kinds = Prom.sumBy(samples, "shipyard_errors_total", "kind");
  const errorRows = Object.entries(kinds).filter(([, n]) => n > 0).sort((a, b) => b[1] - a[1]);
  $("error-rows").replaceChildren(
    ...errorRows.map(([kind, n]) =>
      el("tr", {}, el("td", { class: "mono", text: kind }), el("td", { class: "num", text: number(n) }))
    )
  );
  show($("error-empty"), errorRows.length === 0);

  // queue, in flight, model
  $("kpi-queue").textContent = number(Prom.sum(samples, "shipyard_queue_rows"));
  const capacity = Prom.select(samples, "shipyard_queue_capacity_rows");
  $("kpi-queue-note").textContent = capacity.length
    ? "rows waiting, of " + number(Prom.sum(samples, "shipyard_queue_capacity_rows"))
    : "rows waiting";
  $("fact-inflight").textContent = number(Prom.sum(samples, "shipyard_in_flight_requests"));
  const info = Prom.select(samples, "shipyard_model_info").find((s) => s.value === 1);
  $("kpi-ready").textContent = readyOk ? "Ready" : "Not ready";
  $("kpi-ready").className = "kpi-value " + (readyOk ? "good" : "bad");
  $("kpi-ready-note").textContent = info
    ? info.labels.name + " · " + info.labels.version
    : "no model loaded";
  $("fact-precision").textContent = info ? info.labels.precision : "–";
  const logUp = Prom.select(samples, "shipyard_prediction_log_database_up");
  const logState = logUp.length && logUp[0].value === 1 ? "database up" : "database down (spooling)";
  $("fact-log").textContent = logUp.length ? logState : "off";
  const logRows = Prom.sumBy(samples, "shipyard_prediction_log_rows", "state");
  $("fact-rows").textContent = logUp.length
    ? number(logRows.written || 0) +
      (logRows.spooled ? " · " + number(logRows.spooled) + " spooled" : "")
    : "–";
  const reloads = Prom.sumBy(samples, "shipyard_reloads_total", "result");
  const reloadText = Object.entries(reloads).map(([result, n]) => number(n) + " " + result).join(" · ");
  $("fact-reloads").textContent = reloadText || "none";

  // predictions per class
  const perClass = Prom.sumBy(samples, "shipyard_predictions_total", "label");
  const classes = Object.entries(perClass).filter(([, n]) => n > 0);
  const classTotal = classes.reduce((s, [, n]) => s + n, 0);
  const natural = (a, b) => a[0].localeCompare(b[0], undefined, { numeric: true });
  const shown =
    classes.length > 12 ? classes.sort((a, b) => b[1] - a[1]).slice(0, 12) : classes.sort(natural);
  const max = Math.max(1, ...shown.map(([, n]) => n));
  $("class-bars").replaceChildren(
    ...shown.map(([label, n]) =>
      bar(label, n, max, number(n) + " · " + percent(n / classTotal, 0), false)
    )
  );
  show($("class-empty"), classes.length === 0);
}

function drawSpark() {
  const line = $("spark-line");
  const n = rates.length;
  const max = Math.max(1e-9, ...rates.filter(Number.isFinite));
  const points = rates.map((r, i) => {
    const x = n > 1 ? (300 * i) / (n - 1) : 300;
    const y = 76 - (72 * (Number.isFinite(r) ? r : 0)) / max;
    return x.toFixed(1) + "," + y.toFixed(1);
  });
  line.setAttribute("points", points.join(" "));
  $("spark-caption").textContent =
    "Requests per second over the last " + n + " refreshes (peak " +
    number(max, max < 10 ? 2 : 0) + "/s).";
}

async function loadSummary() {
  let summary;
  try {
    summary = (await api("/monitoring/summary")).body;
  } catch (err) {
    // Not there (an older server, or monitoring off): say so, and ask again later.
    const missing = err.status === 404;
    summaryMissingUntil = Date.now() + (missing ? 30000 : REFRESH_MS);
    const text = missing ? "" : " (" + err.message + ")";
    renderDrift(null, text);
    renderAccuracy(null, text);
    return;
  }
  summaryMissingUntil = 0;
  renderDrift(summary && summary.drift, "");
  renderAccuracy(summary && summary.accuracy, "");
}

function badge(node, text, kind) {
  node.textContent = text;
  node.className = "badge badge-" + kind;
}

function renderDrift(drift, why) {
  const has = Boolean(drift && Array.isArray(drift.features));
  show($("drift-empty"), !has);
  show($("drift-body"), has);
  show($("drift-link"), has);
  if (!has) {
    $("drift-empty").textContent =
      "No drift report yet" + why + ". Run shipyard monitor drift, or wait for the scheduled check.";
    return;
  }
  const flagged = Boolean(drift.dataset_drift);
  badge($("drift-verdict"), flagged ? "Dataset drift" : "No dataset drift", flagged ? "bad" : "good");
  const drifted = drift.features.filter((f) => f.drifted).length;
  const limit = Number.isFinite(drift.drift_share_threshold)
    ? "; dataset drift from " + percent(drift.drift_share_threshold, 0)
    : "";
  $("drift-share").textContent =
    drifted + " of " + drift.features.length + " columns drifted (" +
    percent(drift.drift_share, 0) + limit + ")";
  const win = drift.window || {};
  const tested = drift.model && drift.model.version ? " · model version " + drift.model.version : "";
  const skipped =
    Array.isArray(drift.skipped) && drift.skipped.length
      ? " · not compared: " + drift.skipped.join(", ")
      : "";
  $("drift-window").textContent =
    "Window: " + number(win.rows) + " predictions" +
    (win.start ? ", " + when(win.start) + " – " + when(win.end) : "") +
    " · checked " + when(drift.created_at) + tested + skipped;
  const rows = [...drift.features].sort((a, b) => Number(b.drifted) - Number(a.drifted));
  $("drift-rows").replaceChildren(
    ...rows.map((f) => {
      const status = el("span");
      badge(status, f.drifted ? "drifted" : "ok", f.drifted ? "bad" : "good");
      return el(
        "tr",
        {},
        el("th", { scope: "row", class: "mono", text: f.name }),
        el("td", { text: f.method + (f.kind ? " · " + f.kind : "") }),
        el("td", { class: "num", text: statistic(f.score) }),
        el("td", { class: "num", text: statistic(f.threshold) }),
        el("td", {}, status)
      );
    })
  );
}

/** A drift score or threshold: tiny p-values in scientific notation, never a bare 0. */
function statistic(x) {
  if (typeof x !== "number" || !Number.isFinite(x)) return "–";
  return x !== 0 && Math.abs(x) < 0.001 ? x.toExponential(1) : number(x, 4);
}

function renderAccuracy(accuracy, why) {
  const has = Boolean(accuracy && accuracy.samples > 0);
  show($("accuracy-empty"), !has);
  show($("accuracy-body"), has);
  if (!has) {
    $("accuracy-empty").textContent =
      "No feedback yet" + why +
      ". Send true labels to POST /feedback (or with the form under a prediction).";
    return;
  }
  const mae = accuracy.metric === "mae";
  const fmt = (v) => (v === null || v === undefined ? "–" : mae ? number(v, 3) : percent(v));
  $("accuracy-metric").textContent = accuracy.metric;
  $("accuracy-live").textContent = fmt(accuracy.value);
  $("accuracy-test").textContent = fmt(accuracy.test_value);
  const drop = accuracy.drop;
  $("accuracy-drop").textContent =
    drop === null || drop === undefined ? "–" : mae ? number(drop, 3) : (100 * drop).toFixed(1) + " pts";
  const alarmed = Boolean(accuracy.alert);
  const verdict = alarmed ? "Alert: below the allowed margin" : "Within margin";
  badge($("accuracy-alert"), verdict, alarmed ? "bad" : "good");
  const margin = Number.isFinite(accuracy.margin)
    ? "; alert when it drops by more than " +
      (mae ? number(accuracy.margin, 3) : (100 * accuracy.margin).toFixed(1) + " pts")
    : "";
  $("accuracy-samples").textContent =
    "over the last " + number(accuracy.samples) + " labelled predictions" + margin;
}
