/* "Try the model": discover the served model, build its input (a drawing pad for images,
 * a form for tables, a text box for texts), predict through the public API, show the
 * answer (a label, a value or a generated text) and take feedback. */

import { $, ApiError, api, bar, el, number, percent, setModel, setStatus, show } from "./common.js";

/** The model's input: {kind: "image", height, width, channels}, {kind: "table", columns}
 * or {kind: "text"}. */
let layout = null;
/** The id of the prediction on show, for feedback. */
let lastId = null;

export function startTry() {
  $("feedback").addEventListener("submit", sendFeedback);
  discover();
}

/** The model's name from `/v2/health/ready` (every response names it in X-Model-Name),
 * then its metadata; retried until the server is ready. */
async function discover() {
  try {
    const ready = await fetch("/v2/health/ready", { cache: "no-store" });
    const name = ready.headers.get("x-model-name");
    if (!ready.ok || !name) {
      setStatus("wait", "Not ready");
      $("input-waiting").textContent = "The server has no model loaded yet; retrying…";
      setTimeout(discover, 2000);
      return;
    }
    setModel(name, ready.headers.get("x-model-version"));
    const meta = await api("/v2/models/" + encodeURIComponent(name));
    setModel(meta.body.name, meta.headers.get("x-model-version") || meta.body.versions[0]);
    const params = meta.body.parameters || {};
    $("model-task").textContent = params.task || "–";
    setStatus("ok", "Ready");
    buildInput(meta.body);
  } catch (err) {
    setStatus("bad", "Unreachable");
    $("input-waiting").textContent = "Cannot read the model's metadata (" + err.message + "); retrying…";
    setTimeout(discover, 3000);
  }
}

function buildInput(meta) {
  const params = meta.parameters || {};
  const input = meta.inputs[0];
  const shape = input.shape;
  show($("input-waiting"), false);
  if (Array.isArray(params.columns) && params.columns.length) {
    layout = { kind: "table", columns: params.columns };
    buildTable(params.columns, params.example || null);
  } else if (input.datatype === "BYTES") {
    layout = { kind: "text" };
    buildText(params.output_kind === "text");
  } else if (shape.length === 4 || shape.length === 3) {
    const channels = shape.length === 4 ? shape[3] : 1;
    layout = { kind: "image", height: shape[1], width: shape[2], channels };
    buildImage();
  } else {
    const unsupported = $("input-unsupported");
    unsupported.textContent =
      "This page has no input form for the task “" + (params.task || "?") +
      "” (input " + input.name + " " + JSON.stringify(shape) +
      "). POST JSON instances to /predict; GET /docs describes the API.";
    show(unsupported, true);
  }
}

// -- text input ---------------------------------------------------------------------

function buildText(generates) {
  const field = $("text-field");
  $("text-label").textContent = generates ? "Document to summarise" : "Text";
  show($("text-input"), true);
  $("text-input").addEventListener("submit", (event) => {
    event.preventDefault();
    if (!field.value.trim()) {
      showError(new ApiError("Type a text first.", "form", 0));
      field.focus();
      return;
    }
    predictJson({ instances: [field.value] });
  });
  $("clear-text").addEventListener("click", () => {
    field.value = "";
    field.focus();
  });
}

// -- tabular input ------------------------------------------------------------------

function buildTable(columns, example) {
  const fields = $("fields");
  fields.replaceChildren();
  columns.forEach((column, i) => {
    const id = "field-" + i;
    const inputNode = el("input", {
      id,
      type: "number",
      step: "any",
      inputmode: "decimal",
      placeholder: "training mean",
      "data-column": column,
    });
    if (example && Number.isFinite(example[column])) inputNode.value = String(example[column]);
    inputNode.defaultValue = inputNode.value;
    fields.append(el("div", { class: "field" }, el("label", { for: id, text: column }), inputNode));
  });
  show($("table-input"), true);
  $("table-input").addEventListener("submit", (event) => {
    event.preventDefault();
    const row = {};
    for (const node of fields.querySelectorAll("input")) {
      const text = node.value.trim();
      row[node.dataset.column] = text === "" ? null : Number(text);
      if (node.validity.badInput || (text !== "" && !Number.isFinite(row[node.dataset.column]))) {
        showError(new ApiError("“" + node.dataset.column + "” is not a number.", "form", 0));
        node.focus();
        return;
      }
    }
    predictJson({ instances: [row] });
  });
  $("reset-fields").addEventListener("click", () => $("table-input").reset());
}

// -- image input: the drawing pad ----------------------------------------------------

const pad = $("pad");
const ctx = pad.getContext("2d", { willReadFrequently: true });
let drawing = false;
let inked = false;
let last = null;

function clearPad() {
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, pad.width, pad.height);
  inked = false;
  drawPreview(null);
  $("preview-caption").textContent = "What the model sees";
}

function point(event) {
  const box = pad.getBoundingClientRect();
  return {
    x: ((event.clientX - box.left) * pad.width) / box.width,
    y: ((event.clientY - box.top) * pad.height) / box.height,
  };
}

function stroke(from, to) {
  ctx.strokeStyle = "#fff";
  ctx.fillStyle = "#fff";
  ctx.lineWidth = Math.round(pad.width * 0.12);
  ctx.lineCap = "round";
  ctx.lineJoin = "round";
  ctx.beginPath();
  ctx.moveTo(from.x, from.y);
  ctx.lineTo(to.x, to.y);
  ctx.stroke();
  inked = true;
}

function buildImage() {
  show($("image-input"), true);
  clearPad();
  pad.addEventListener("pointerdown", (event) => {
    event.preventDefault();
    pad.setPointerCapture(event.pointerId);
    drawing = true;
    last = point(event);
    stroke(last, last);
  });
  pad.addEventListener("pointermove", (event) => {
    if (!drawing) return;
    const next = point(event);
    stroke(last, next);
    last = next;
  });
  const end = () => {
    if (!drawing) return;
    drawing = false;
    predictPad();
  };
  pad.addEventListener("pointerup", end);
  pad.addEventListener("pointercancel", end);
  $("clear").addEventListener("click", clearPad);
  $("predict-image").addEventListener("click", predictPad);
  $("upload").addEventListener("change", (event) => {
    const file = event.target.files && event.target.files[0];
    if (file) upload(file);
    event.target.value = "";
  });
  pad.addEventListener("dragover", (event) => event.preventDefault());
  pad.addEventListener("drop", (event) => {
    event.preventDefault();
    const file = event.dataTransfer.files && event.dataTransfer.files[0];
    if (file) upload(file);
  });
}

/** The pad as the model's input: the ink's bounding box scaled to fill the height (or
 * 3/4 of the width), centred, area-averaged down to H x W grey levels 0..255 — how
 * scikit-learn's digits were made (bright ink on a dark background, digit filling the
 * frame). null when nothing is drawn. */
function padPixels() {
  const { height: H, width: W } = layout;
  const size = pad.width;
  const data = ctx.getImageData(0, 0, size, pad.height).data;
  let top = Infinity, bottom = -1, left = Infinity, right = -1;
  for (let y = 0; y < pad.height; y++) {
    for (let x = 0; x < size; x++) {
      if (data[4 * (y * size + x)] > 24) {
        if (y < top) top = y;
        if (y > bottom) bottom = y;
        if (x < left) left = x;
        if (x > right) right = x;
      }
    }
  }
  if (bottom < 0) return null;
  const boxH = bottom - top + 1;
  const boxW = right - left + 1;
  const cell = Math.max(1, boxH / H, boxW / (W * 0.75));
  const y0 = (top + bottom + 1) / 2 - (cell * H) / 2;
  const x0 = (left + right + 1) / 2 - (cell * W) / 2;
  const sums = new Float64Array(H * W);
  for (let y = 0; y < pad.height; y++) {
    const ty = Math.floor((y + 0.5 - y0) / cell);
    if (ty < 0 || ty >= H) continue;
    for (let x = 0; x < size; x++) {
      const v = data[4 * (y * size + x)];
      if (!v) continue;
      const tx = Math.floor((x + 0.5 - x0) / cell);
      if (tx >= 0 && tx < W) sums[ty * W + tx] += v;
    }
  }
  const rows = [];
  for (let ty = 0; ty < H; ty++) {
    const row = [];
    for (let tx = 0; tx < W; tx++) {
      row.push(Math.min(255, Math.round(sums[ty * W + tx] / (cell * cell))));
    }
    rows.push(row);
  }
  return rows;
}

function drawPreview(rows) {
  const preview = $("preview");
  const p = preview.getContext("2d");
  p.fillStyle = "#000";
  p.fillRect(0, 0, preview.width, preview.height);
  if (!rows) return;
  const H = rows.length;
  const W = rows[0].length;
  const cw = preview.width / W;
  const ch = preview.height / H;
  rows.forEach((row, y) =>
    row.forEach((v, x) => {
      p.fillStyle = "rgb(" + v + "," + v + "," + v + ")";
      p.fillRect(x * cw, y * ch, Math.ceil(cw), Math.ceil(ch));
    })
  );
}

function predictPad() {
  if (!layout || layout.kind !== "image") return;
  const rows = inked ? padPixels() : null;
  if (!rows) {
    showError(new ApiError("Draw something on the pad first, or upload an image.", "empty", 0));
    return;
  }
  drawPreview(rows);
  $("preview-caption").textContent =
    "What the model sees (" + layout.height + "×" + layout.width + ")";
  const channels = layout.channels;
  const instance = channels === 1 ? rows : rows.map((row) => row.map((v) => Array(channels).fill(v)));
  predictJson({ instances: [instance] });
}

async function upload(file) {
  // Show the file on the pad; the server decodes and resizes the original itself.
  try {
    const bitmap = await createImageBitmap(file);
    clearPad();
    const scale = Math.min(pad.width / bitmap.width, pad.height / bitmap.height);
    const w = bitmap.width * scale;
    const h = bitmap.height * scale;
    ctx.imageSmoothingEnabled = bitmap.width > pad.width;
    ctx.drawImage(bitmap, (pad.width - w) / 2, (pad.height - h) / 2, w, h);
    ctx.imageSmoothingEnabled = true;
    $("preview-caption").textContent = "Uploaded: " + file.name;
  } catch (err) {
    // Not an image the browser can show: the server will say what is wrong with it.
  }
  const form = new FormData();
  form.append("file", file, file.name);
  runPrediction(() => api("/predict/upload", { method: "POST", body: form }));
}

// -- predicting and showing the answer ------------------------------------------------

function predictJson(body) {
  runPrediction(() =>
    api("/predict", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    })
  );
}

let pending = 0;

async function runPrediction(call) {
  const ticket = ++pending;
  document.body.classList.add("busy");
  try {
    const answer = await call();
    if (ticket !== pending) return; // a newer request is on its way
    hideError();
    showPrediction(answer);
  } catch (err) {
    if (ticket === pending) showError(err);
  } finally {
    if (ticket === pending) document.body.classList.remove("busy");
  }
}

function showPrediction(answer) {
  const body = answer.body;
  const prediction = body.predictions[0];
  const version = answer.headers.get("x-model-version") || body.model.version;
  setModel(answer.headers.get("x-model-name") || body.model.name, version);
  lastId = prediction.id;
  $("result-model").textContent = body.model.name;
  $("result-version").textContent = version;
  $("result-latency").textContent = answer.ms.toFixed(0) + " ms round trip";
  $("result-id").textContent = prediction.id;
  const bars = $("bars");
  bars.replaceChildren();
  $("answer").classList.toggle("long", typeof prediction.summary === "string");
  if (typeof prediction.summary === "string") {
    $("answer-kind").textContent = "Summary";
    $("answer").textContent = prediction.summary || "(an empty text)";
    $("answer-confidence").textContent = "";
    show($("bars-title"), false);
    show($("feedback"), false);
  } else if (prediction.probabilities) {
    $("answer-kind").textContent = "Label";
    $("answer").textContent = prediction.label;
    const probabilities = prediction.probabilities;
    $("answer-confidence").textContent = percent(probabilities[prediction.label]) + " probability";
    let entries = Object.entries(probabilities);
    if (entries.length > 12) entries = entries.sort((a, b) => b[1] - a[1]).slice(0, 10);
    for (const [label, p] of entries) {
      bars.append(bar(label, p, 1, percent(p), label === prediction.label));
    }
    show($("bars-title"), true);
    buildFeedback(Object.keys(probabilities), prediction.label);
  } else {
    $("answer-kind").textContent = "Value";
    $("answer").textContent = number(prediction.value, 4);
    $("answer-confidence").textContent = "";
    show($("bars-title"), false);
    show($("feedback"), false);
  }
  show($("result-empty"), false);
  show($("result-body"), true);
}

function buildFeedback(labels, predicted) {
  const select = $("feedback-label");
  select.replaceChildren(...labels.map((label) => el("option", { value: label, text: label })));
  select.value = predicted;
  $("feedback-status").textContent = "";
  show($("feedback"), true);
}

async function sendFeedback(event) {
  event.preventDefault();
  const status = $("feedback-status");
  try {
    await api("/feedback", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ prediction_id: lastId, label: $("feedback-label").value }),
    });
    status.textContent = "Recorded, thank you.";
  } catch (err) {
    status.textContent = "";
    showError(err);
  }
}

function showError(err) {
  const kind = err.kind || "error";
  let title;
  if (err.status) title = "The server refused the request (HTTP " + err.status + ", " + kind + ")";
  else if (kind === "network") title = "No answer from the server";
  else title = "Cannot predict";
  $("error-title").textContent = title;
  $("error-message").textContent = err.message;
  show($("error"), true);
}

function hideError() {
  show($("error"), false);
}

