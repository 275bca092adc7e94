// Win-Train dashboard: plain JavaScript, no build step, no external assets.
// Task list (polls GET /api/train/tasks), a live loss chart of the selected task (SSE from
// GET /api/train/watch/{id}), and a chat box streaming POST /api/inference/chat/stream.
"use strict";

const TASK_POLL_MS = 2000;
const HEALTH_POLL_MS = 5000;
const TERMINAL = new Set(["completed", "failed", "cancelled", "interrupted"]);

const $ = (sel) => document.querySelector(sel);

// ---------------------------------------------------------------------------------------------
// HTTP helpers

function apiKey() { return localStorage.getItem("wintrain.apiKey") || ""; }

function headers(extra) {
  const h = Object.assign({}, extra || {});
  const key = apiKey();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

// The gateway's error body: {success:false, message, code, details:[{field, description}]}.
function errorText(body, status) {
  if (!body || typeof body !== "object") return "HTTP " + status;
  const err = body.error && typeof body.error === "object" ? body.error : body;
  let text = (err.code ? err.code + ": " : "") + (err.message || ("HTTP " + status));
  const fields = (err.details || []).filter((d) => d.field && text.indexOf(d.field) < 0)
    .map((d) => d.field + ": " + d.description);
  if (fields.length) text += " [" + fields.join("; ") + "]";
  return text;
}

async function api(path, options) {
  const opts = Object.assign({}, options || {});
  opts.headers = headers(opts.body ? { "Content-Type": "application/json" } : {});
  const resp = await fetch(path, opts);
  let body = null;
  try { body = await resp.json(); } catch (e) { body = null; }
  if (!resp.ok) throw new Error(errorText(body, resp.status));
  return body;
}

// Reads a text/event-stream body: calls onEvent(obj) per `data:` JSON event until [DONE].
async function readSse(resp, onEvent) {
  const reader = resp.body.getReader();
  const decoder = new TextDecoder("utf-8");
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const data = block.split("\n").filter((l) => l.startsWith("data:"))
        .map((l) => l.slice(5).replace(/^ /, "")).join("\n");
      if (!data) continue;
      if (data === "[DONE]") return true;
      onEvent(JSON.parse(data));
    }
  }
  return false;
}

function fmt(x, digits) {
  if (x === undefined || x === null || x === "" || Number.isNaN(Number(x))) return "-";
  const v = Number(x);
  if (v === 0) return "0";
  if (Math.abs(v) < 1e-3 || Math.abs(v) >= 1e5) return v.toExponential(2);
  return v.toPrecision(digits || 4).replace(/\.?0+$/, "");
}

function fmtSeconds(s) {
  s = Math.round(Number(s) || 0);
  if (s <= 0) return "-";
  const m = Math.floor(s / 60), sec = s % 60, h = Math.floor(m / 60);
  return h ? `${h}:${String(m % 60).padStart(2, "0")}:${String(sec).padStart(2, "0")}` : `${m}:${String(sec).padStart(2, "0")}`;
}

function el(tag, attrs, children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v; else if (k === "text") node.textContent = v; else node.setAttribute(k, v);
  }
  for (const child of children || []) node.append(child);
  return node;
}

// ---------------------------------------------------------------------------------------------
// Health

async function pollHealth() {
  const badge = $("#health");
  try {
    // 503 still carries {"status": "unhealthy", "services": {name: state}}.
    const resp = await fetch("/health", { headers: headers() });
    const body = await resp.json();
    const ok = resp.ok && body.status === "healthy";
    const down = Object.entries(body.services || {}).filter(([, s]) => s !== "SERVING").map(([n, s]) => `${n}: ${s}`);
    badge.textContent = ok ? "healthy" : String(body.status || "unhealthy") + (down.length ? ` (${down.length} down)` : "");
    badge.title = down.length ? down.join("\n") : "every service SERVING";
    badge.className = "badge " + (ok ? "ok" : "bad");
  } catch (e) {
    badge.textContent = "unreachable";
    badge.className = "badge bad";
  }
}

// ---------------------------------------------------------------------------------------------
// Task list

const state = { tasks: [], selected: null };

async function pollTasks() {
  try {
    const body = await api("/api/train/tasks");
    state.tasks = Array.isArray(body.data) ? body.data : [];
    $("#tasks-error").hidden = true;
    renderTasks();
    $("#tasks-updated").textContent = "updated " + new Date().toLocaleTimeString();
  } catch (e) {
    $("#tasks-error").hidden = false;
    $("#tasks-error").textContent = "Cannot list tasks: " + e.message;
  }
}

function renderTasks() {
  const tbody = $("#task-list tbody");
  const rows = state.tasks.map((t) => {
    const pct = Math.max(0, Math.min(100, Number(t.progress) || 0));
    const tr = el("tr", { "data-task-id": t.task_id, "data-status": t.status, class: t.task_id === state.selected ? "selected" : "" }, [
      el("td", { class: "id", text: t.task_id.length > 12 ? t.task_id.slice(0, 8) + "…" : t.task_id,
                 title: `${t.task_id}\n${t.dataset_path || ""} → ${t.output_dir || ""}` }),
      el("td", {}, [el("span", { class: "badge status-" + t.status, text: t.status })]),
      el("td", { text: t.strategy || "" }),
      el("td", {}, [el("span", { class: "bar" }, [el("span", { style: `width:${pct}%` })]), " " + pct.toFixed(0) + "%"]),
      el("td", { text: `${t.current_step || 0}/${t.total_steps || 0}` }),
      el("td", { text: t.loss ? fmt(t.loss) : "-" }),
      el("td", { text: (t.created_at || "").replace("T", " ").slice(5, 19), title: t.created_at || "" }),
    ]);
    tr.addEventListener("click", () => selectTask(t.task_id));
    return tr;
  });
  tbody.replaceChildren(...rows);
  $("#tasks-empty").hidden = state.tasks.length > 0;
  // The selected task's watch may have ended with the page closed; the list stays authoritative.
  if (state.selected) {
    const t = state.tasks.find((x) => x.task_id === state.selected);
    if (t && !chart.watching && !chart.streamDone && !TERMINAL.has(t.status)) openWatch(state.selected);
  }
}

// ---------------------------------------------------------------------------------------------
// Loss chart (canvas, drawn by hand)

const chart = { taskId: null, train: [], evals: [], margins: [], lastSeq: 0, source: null, watching: false, streamDone: false,
                retry: null, abort: null, status: "", latest: {} };

function resetChart(taskId) {
  closeWatch();
  Object.assign(chart, { taskId, train: [], evals: [], margins: [], lastSeq: 0, streamDone: false, status: "", latest: {} });
  updateChart();
}

function addPoint(series, step, value) {
  if (!(step >= 0) || !Number.isFinite(value)) return;
  const existing = series.findIndex((p) => p.step === step);
  if (existing >= 0) series[existing].value = value; else series.push({ step, value });
  series.sort((a, b) => a.step - b.step);
}

function onTrainingEvent(ev) {
  if (ev.task_id && ev.task_id !== chart.taskId) return;
  const seq = Number(ev.sequence || 0);
  if (seq > 0) {
    if (seq <= chart.lastSeq) return;  // already seen (a replay after a reconnect)
    chart.lastSeq = seq;
  }
  const step = Number(ev.current_step || 0);
  const evalLoss = ev.metrics ? ev.metrics.eval_loss : undefined;
  if (ev.kind === "progress" && ev.loss) addPoint(chart.train, step, Number(ev.loss));
  if (ev.kind === "snapshot" && ev.loss && step > 0 && !chart.train.length) addPoint(chart.train, step, Number(ev.loss));
  if (ev.kind === "eval" && evalLoss !== undefined) addPoint(chart.evals, step, Number(evalLoss));
  // DPO runs log TRL's rewards/*: the reward margin is drawn beside the losses.
  const dpo = ev.metrics && ev.metrics["rewards/margins"] !== undefined;
  if (ev.kind === "progress" && dpo) addPoint(chart.margins, step, Number(ev.metrics["rewards/margins"]));
  chart.status = ev.status || chart.status;
  // A status event carries no numbers: keep showing the last known ones.
  const last = chart.latest;
  for (const k of ["loss", "learning_rate", "tokens_per_second", "eta_seconds", "total_steps", "current_step"]) {
    if (ev[k]) last[k] = ev[k];
  }
  if (evalLoss !== undefined) last.eval_loss = evalLoss;
  if (dpo) {
    last.reward_margin = ev.metrics["rewards/margins"];
    last.reward_accuracy = ev.metrics["rewards/accuracies"];
  }
  if (TERMINAL.has(ev.status)) last.eta_seconds = 0;
  const parts = [
    `<span class="badge status-${ev.status}">${ev.status}</span>`,
    `step ${last.current_step || 0}/${last.total_steps || 0}`,
    `loss ${last.loss ? fmt(last.loss) : "-"}`,
    `lr ${last.learning_rate ? fmt(last.learning_rate, 3) : "-"}`,
    `${last.tokens_per_second ? Math.round(last.tokens_per_second) : "-"} tok/s`,
    `ETA ${fmtSeconds(last.eta_seconds)}`,
  ];
  if (last.eval_loss !== undefined) parts.push(`eval_loss ${fmt(last.eval_loss)}`);
  if (last.reward_margin !== undefined) {
    parts.push(`reward margin ${fmt(last.reward_margin)}`);
    if (last.reward_accuracy !== undefined) parts.push(`reward acc ${fmt(last.reward_accuracy, 2)}`);
  }
  const detail = $("#task-detail");
  detail.innerHTML = parts.join(" · ");
  if (ev.message) detail.append(el("div", { class: ev.status === "failed" ? "error" : "muted", text: ev.message }));
  updateChart();
}

function updateChart() {
  const canvas = $("#loss-chart");
  canvas.dataset.trainPoints = String(chart.train.length);
  canvas.dataset.evalPoints = String(chart.evals.length);
  $("#train-count").textContent = `(${chart.train.length})`;
  $("#eval-count").textContent = `(${chart.evals.length})`;
  canvas.dataset.marginPoints = String(chart.margins.length);
  $("#margin-count").textContent = `(${chart.margins.length})`;
  $("#margin-legend").hidden = !chart.margins.length;
  drawChart(canvas, chart.train, chart.evals, chart.margins);
}

function niceTicks(lo, hi, count) {
  if (!(hi > lo)) { hi = lo + 1; }
  const raw = (hi - lo) / count;
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) || raw;
  const ticks = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) ticks.push(Number(v.toFixed(10)));
  return ticks;
}

function drawChart(canvas, train, evals, margins = []) {
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth || 600, h = canvas.clientHeight || 280;
  if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
    canvas.width = Math.round(w * dpr);
    canvas.height = Math.round(h * dpr);
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, h);
  const css = getComputedStyle(document.documentElement);
  const colTrain = css.getPropertyValue("--train").trim() || "#2563eb";
  const colEval = css.getPropertyValue("--eval").trim() || "#ea580c";
  const pad = { l: 52, r: 14, t: 10, b: 30 };
  const colMargin = css.getPropertyValue("--margin").trim() || "#7c3aed";
  const all = train.concat(evals, margins);
  ctx.font = "11px system-ui, sans-serif";
  ctx.fillStyle = "#6b7280";
  if (!all.length) {
    ctx.textAlign = "center";
    ctx.fillText(chart.taskId ? "waiting for the first logged step…" : "no task selected", w / 2, h / 2);
    return;
  }
  let xMax = Math.max(...all.map((p) => p.step), 1);
  let yMin = Math.min(...all.map((p) => p.value)), yMax = Math.max(...all.map((p) => p.value));
  const span = yMax - yMin || Math.abs(yMax) * 0.1 || 1;
  yMin -= span * 0.08; yMax += span * 0.08;
  const X = (s) => pad.l + (s / xMax) * (w - pad.l - pad.r);
  const Y = (v) => pad.t + (1 - (v - yMin) / (yMax - yMin)) * (h - pad.t - pad.b);
  // grid and axes
  ctx.strokeStyle = "#e5e7eb";
  ctx.lineWidth = 1;
  ctx.textAlign = "right";
  ctx.textBaseline = "middle";
  for (const v of niceTicks(yMin, yMax, 5)) {
    ctx.beginPath(); ctx.moveTo(pad.l, Y(v)); ctx.lineTo(w - pad.r, Y(v)); ctx.stroke();
    ctx.fillText(fmt(v, 3), pad.l - 6, Y(v));
  }
  ctx.textAlign = "center";
  ctx.textBaseline = "top";
  for (const s of niceTicks(0, xMax, 6).filter((s) => Number.isInteger(s) || xMax < 6)) {
    ctx.fillText(String(s), X(s), h - pad.b + 6);
  }
  ctx.fillText("step", w - pad.r - 12, h - 14);
  ctx.strokeStyle = "#9ca3af";
  ctx.beginPath(); ctx.moveTo(pad.l, pad.t); ctx.lineTo(pad.l, h - pad.b); ctx.lineTo(w - pad.r, h - pad.b); ctx.stroke();
  // series
  const drawSeries = (points, color, square) => {
    if (!points.length) return;
    ctx.strokeStyle = color; ctx.fillStyle = color; ctx.lineWidth = 2;
    ctx.beginPath();
    points.forEach((p, i) => (i ? ctx.lineTo(X(p.step), Y(p.value)) : ctx.moveTo(X(p.step), Y(p.value))));
    ctx.stroke();
    for (const p of points) {
      if (square) ctx.fillRect(X(p.step) - 3.5, Y(p.value) - 3.5, 7, 7);
      else { ctx.beginPath(); ctx.arc(X(p.step), Y(p.value), 2.5, 0, 2 * Math.PI); ctx.fill(); }
    }
  };
  drawSeries(train, colTrain, false);
  drawSeries(evals, colEval, true);
  drawSeries(margins, colMargin, false);
}

// ---------------------------------------------------------------------------------------------
// Watching a task (EventSource; with an API key, fetch + reader, as EventSource sends no headers)

function watchUrl(taskId) {
  // Opening a task replays its whole history into the chart; a reconnect resumes after the
  // last event drawn.
  const query = chart.lastSeq > 0 ? `from_sequence=${chart.lastSeq}` : "replay=true";
  return `/api/train/watch/${encodeURIComponent(taskId)}?${query}`;
}

function closeWatch() {
  if (chart.source) { chart.source.close(); chart.source = null; }
  if (chart.abort) { chart.abort.abort(); chart.abort = null; }
  if (chart.retry) { clearTimeout(chart.retry); chart.retry = null; }
  chart.watching = false;
}

function watchEnded(text) {
  closeWatch();
  chart.streamDone = true;
  $("#watch-state").textContent = text;
}

function scheduleReconnect(taskId) {
  closeWatch();
  $("#watch-state").textContent = "reconnecting…";
  chart.retry = setTimeout(() => { if (chart.taskId === taskId && !chart.streamDone) openWatch(taskId); }, 1500);
}

function handleWatchData(taskId, data) {
  if (data === "[DONE]") { watchEnded("stream ended (" + (chart.status || "done") + ")"); return; }
  let ev;
  try { ev = JSON.parse(data); } catch (e) { return; }
  if (ev.error) { watchEnded("error: " + errorText(ev.error, "")); return; }
  onTrainingEvent(ev);
}

function openWatch(taskId) {
  closeWatch();
  chart.watching = true;
  $("#watch-state").textContent = "live";
  const url = watchUrl(taskId);
  if (!apiKey() && window.EventSource) {
    const source = new EventSource(url);
    chart.source = source;
    source.onmessage = (msg) => { if (chart.source === source) handleWatchData(taskId, msg.data); };
    // EventSource would reconnect to the same URL; we reconnect from the last sequence instead.
    source.onerror = () => { if (chart.source === source && !chart.streamDone) scheduleReconnect(taskId); };
    return;
  }
  const abort = new AbortController();
  chart.abort = abort;
  fetch(url, { headers: headers(), signal: abort.signal }).then(async (resp) => {
    if (!resp.ok) {
      let body = null;
      try { body = await resp.json(); } catch (e) { body = null; }
      watchEnded("error: " + errorText(body, resp.status));
      return;
    }
    let ended = false;
    const done = await readSse(resp, (ev) => {
      if (ev.error) { ended = true; watchEnded("error: " + errorText(ev.error, "")); } else onTrainingEvent(ev);
    });
    if (ended) return;
    if (done) watchEnded("stream ended (" + (chart.status || "done") + ")"); else scheduleReconnect(taskId);
  }).catch((e) => { if (e.name !== "AbortError") scheduleReconnect(taskId); });
}

function selectTask(taskId) {
  state.selected = taskId;
  renderTasks();
  $("#chart-title").textContent = taskId;
  const known = state.tasks.find((t) => t.task_id === taskId);
  $("#task-detail").textContent = known ? `${known.status}${known.message ? " · " + known.message : ""}` : "connecting…";
  resetChart(taskId);
  openWatch(taskId);
}

// ---------------------------------------------------------------------------------------------
// Start form

// Live progress comes from logged steps, so the form logs often enough for the chart to get
// at least CHART_POINTS points whatever max_steps is (30 steps: every step).
const CHART_POINTS = 20;

function loggingSteps(maxSteps) {
  return Math.max(1, Math.floor((Number(maxSteps) || 0) / CHART_POINTS));
}

function syncLoggingSteps(form) {
  const input = form.elements.logging_steps;
  if (input.dataset.edited) return;
  input.value = String(loggingSteps(form.elements.max_steps.value));
}

async function startTraining(form) {
  const f = new FormData(form);
  const config = {};
  if (f.get("max_steps")) config.max_steps = Number(f.get("max_steps"));
  config.logging_steps = Number(f.get("logging_steps")) || loggingSteps(config.max_steps);
  if (f.get("learning_rate")) config.learning_rate = Number(f.get("learning_rate"));
  const body = { strategy: f.get("strategy"), dataset_path: f.get("dataset_path"), output_dir: f.get("output_dir"), config };
  if (f.get("eval_dataset_path")) body.eval_dataset_path = f.get("eval_dataset_path");
  const out = $("#train-form-result");
  try {
    const r = await api("/api/train/start", { method: "POST", body: JSON.stringify(body) });
    out.className = "muted";
    out.textContent = `task ${r.task_id} ${r.status}`;
    await pollTasks();
    selectTask(r.task_id);
  } catch (e) {
    out.className = "error";
    out.textContent = e.message;
  }
}

// ---------------------------------------------------------------------------------------------
// Chat

const chat = { messages: [], abort: null };

function addMessage(role, text) {
  const who = role === "user" ? "you" : role === "assistant" ? "model" : role;
  const node = el("div", { class: "msg " + role }, [el("span", { class: "who", text: who }), el("span", { class: "text", text: text || "" })]);
  $("#chat-log").append(node);
  $("#chat-log").scrollTop = $("#chat-log").scrollHeight;
  return node;
}

// How many messages make up the oldest turn that can go (0: only the newest question is
// left, nothing to drop). A system message is kept.
function oldestTurn(messages) {
  const first = messages.length && messages[0].role === "system" ? 1 : 0;
  const rest = messages.slice(first);
  if (rest.length <= 1) return 0;
  let n = 1;
  while (n < rest.length - 1 && rest[n].role !== "user") n++;
  return n;
}

async function sendChat(text) {
  const modelPath = $("#chat-model").value.trim();
  chat.messages.push({ role: "user", content: text });
  addMessage("user", text);
  const node = addMessage("assistant", "");
  node.classList.add("streaming");
  const textNode = node.querySelector(".text");
  const body = { messages: chat.messages.slice(), max_tokens: Number($("#chat-max-tokens").value) || 128,
                 temperature: Number($("#chat-temperature").value) };
  if (modelPath) body.model_path = modelPath;
  const abort = new AbortController();
  chat.abort = abort;
  $("#chat-send").disabled = true;
  $("#chat-stop").disabled = false;
  const started = performance.now();
  let tokens = 0, finish = "", failed = "";
  try {
    let resp, dropped = 0, context = "";
    for (;;) {
      resp = await fetch("/api/inference/chat/stream", {
        method: "POST", headers: headers({ "Content-Type": "application/json" }), body: JSON.stringify(body), signal: abort.signal,
      });
      if (resp.ok) break;
      let err = null;
      try { err = await resp.json(); } catch (e) { err = null; }
      const text = errorText(err, resp.status);
      // The conversation no longer fits the model's context: drop the oldest turn (a user
      // message and its answer; a system message stays) and ask again.
      const full = resp.status === 400 && /fills the model's context/.test(text);
      const cut = full ? oldestTurn(body.messages) : 0;
      if (!cut) throw new Error(text);
      body.messages.splice(body.messages[0].role === "system" ? 1 : 0, cut);
      dropped += cut;
      context = (text.match(/context of (\d+) tokens/) || [])[1] || context;
    }
    if (dropped) {
      chat.messages = body.messages.slice();
      const note = addMessage("notice", `Dropped the ${dropped} oldest message${dropped > 1 ? "s" : ""} of this chat `
        + `to fit the model's context${context ? " of " + context + " tokens" : ""}; the model no longer sees them.`);
      note.dataset.trimmed = String(dropped);
      $("#chat-log").insertBefore(note, node.previousSibling);
    }
    await readSse(resp, (ev) => {
      if (ev.error) { failed = errorText(ev.error, ""); return; }
      if (ev.token) { textNode.textContent += ev.token; tokens += 1; $("#chat-log").scrollTop = $("#chat-log").scrollHeight; }
      if (ev.finish_reason) finish = ev.finish_reason;
    });
  } catch (e) {
    failed = e.name === "AbortError" ? "" : e.message;
    if (e.name === "AbortError") finish = "stopped";
  }
  node.classList.remove("streaming");
  chat.abort = null;
  $("#chat-send").disabled = false;
  $("#chat-stop").disabled = true;
  if (failed) {
    node.classList.add("error");
    textNode.textContent += (textNode.textContent ? "\n" : "") + failed;
    chat.messages.pop();  // the failed turn is not part of the conversation
    node.dataset.done = "error";
    return;
  }
  if (textNode.textContent) chat.messages.push({ role: "assistant", content: textNode.textContent });
  else chat.messages.pop();
  const secs = (performance.now() - started) / 1000;
  const blank = textNode.textContent && !textNode.textContent.trim() ? " · the answer is only whitespace" : "";
  node.append(el("span", { class: "meta", text: `${finish || "done"} · ${tokens} pieces · ${secs.toFixed(1)}s${blank}` }));
  node.dataset.pieces = String(tokens);
  node.dataset.done = finish || "done";
}

// ---------------------------------------------------------------------------------------------

function init() {
  const keyInput = $("#api-key");
  keyInput.value = apiKey();
  keyInput.addEventListener("change", () => {
    localStorage.setItem("wintrain.apiKey", keyInput.value.trim());
    pollTasks();
    if (state.selected) selectTask(state.selected);
  });
  const trainForm = $("#train-form");
  trainForm.addEventListener("submit", (e) => { e.preventDefault(); startTraining(e.target); });
  trainForm.elements.max_steps.addEventListener("input", () => syncLoggingSteps(trainForm));
  trainForm.elements.logging_steps.addEventListener("input", (e) => { e.target.dataset.edited = "1"; });
  syncLoggingSteps(trainForm);
  $("#chat-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const input = $("#chat-input");
    const text = input.value.trim();
    if (!text || chat.abort) return;
    input.value = "";
    sendChat(text);
  });
  $("#chat-input").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("#chat-form").requestSubmit(); }
  });
  $("#chat-stop").addEventListener("click", () => { if (chat.abort) chat.abort.abort(); });
  $("#chat-reset").addEventListener("click", () => {
    if (chat.abort) chat.abort.abort();
    chat.messages = [];
    $("#chat-log").replaceChildren();
  });
  window.addEventListener("resize", updateChart);
  const wanted = new URLSearchParams(location.search).get("task");
  pollHealth();
  pollTasks().then(() => { if (wanted) selectTask(wanted); });
  setInterval(pollHealth, HEALTH_POLL_MS);
  setInterval(pollTasks, TASK_POLL_MS);
  updateChart();
}

document.addEventListener("DOMContentLoaded", init);
