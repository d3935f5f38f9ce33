/* What both views share: the API call, small DOM and number helpers, the header's model
 * and status. Server text only ever enters the page through textContent, never as HTML. */

export const $ = (id) => document.getElementById(id);

/** What the page knows about the served model (the header shows name and version). */
const state = { name: null, version: null };

export class ApiError extends Error {
  constructor(message, kind, status) {
    super(message);
    this.kind = kind;
    this.status = status;
  }
}

/** fetch + JSON; an answer that is not 2xx throws ApiError with the server's message. */
export async function api(path, options) {
  const started = performance.now();
  let response;
  try {
    response = await fetch(path, { cache: "no-store", ...options });
  } catch (err) {
    throw new ApiError("The server cannot be reached (" + err.message + ").", "network", 0);
  }
  const ms = performance.now() - started;
  const type = response.headers.get("content-type") || "";
  let body = null;
  try {
    body = type.includes("json") ? await response.json() : await response.text();
  } catch (err) {
    body = null;
  }
  if (!response.ok) {
    const message =
      body && typeof body === "object" && body.error
        ? String(body.error)
        : "HTTP " + response.status + " " + response.statusText;
    const kind = body && typeof body === "object" && body.kind ? String(body.kind) : "http";
    throw new ApiError(message, kind, response.status);
  }
  return { body, ms, headers: response.headers, status: response.status };
}

export function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

export function show(node, visible) {
  node.hidden = !visible;
}

export function percent(x, digits) {
  return Number.isFinite(x) ? (100 * x).toFixed(digits === undefined ? 1 : digits) + " %" : "–";
}

export function duration(seconds) {
  if (!Number.isFinite(seconds)) return "–";
  if (seconds < 0.001) return (seconds * 1e6).toFixed(0) + " µs";
  if (seconds < 1) return (seconds * 1000).toFixed(seconds < 0.01 ? 2 : 1) + " ms";
  return seconds.toFixed(2) + " s";
}

export function number(x, digits) {
  if (x === null || x === undefined || !Number.isFinite(x)) return "–";
  return x.toLocaleString("en-US", { maximumFractionDigits: digits === undefined ? 0 : digits });
}

export function when(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? String(iso) : date.toLocaleString();
}

export function setStatus(kind, text) {
  const pill = $("status");
  pill.className = "pill pill-" + kind;
  pill.textContent = text;
}

export function setModel(name, version) {
  if (name) state.name = name;
  if (version) state.version = version;
  $("model-name").textContent = state.name || "–";
  $("model-version").textContent = state.version || "–";
}

export function bar(label, value, max, text, highlight) {
  const fill = el("span", { class: "bar-fill" });
  fill.style.width = Math.max(0, Math.min(100, (100 * value) / (max || 1))).toFixed(2) + "%";
  return el(
    "li",
    { class: highlight ? "bar top" : "bar" },
    el("span", { class: "bar-label", text: label }),
    el("span", { class: "bar-track" }, fill),
    el("span", { class: "bar-value", text })
  );
}

