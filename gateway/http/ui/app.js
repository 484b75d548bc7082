// vram-gateway's page: polls /ui/state about once a second and draws the memory map and the
// models table; admins also get load/unload, reload and the plan preview.
//
// Every piece of data (model names, aliases, error texts, GPU names) is written with
// textContent or as an attribute value, never parsed as HTML. The API key lives in this tab's
// sessionStorage and is sent only in the Authorization header.
"use strict";

const POLL_MS = 1000;
const KEY_STORAGE = "vram-gateway-api-key";
const MIB = 1024 * 1024;
const GIB = 1024 * MIB;

const $ = (id) => document.getElementById(id);

// ------------------------------------------------------------------ helpers

function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("data-")) node.dataset[key.slice(5).replace(/-([a-z])/g, (_, c) => c.toUpperCase())] = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function mib(bytes) {
  if (bytes === null || bytes === undefined) return "–";
  // Small parts (a tiny model's weights, a KV cache of a few cells) keep one decimal.
  if (bytes > 0 && bytes < 10 * MIB) return `${(bytes / MIB).toFixed(1)} MiB`;
  return `${Math.round(bytes / MIB).toLocaleString("en-US")} MiB`;
}

// Rounded up, as the planner words a shortfall ("short by 1,429 MiB"): never less than it is.
function mibUp(bytes) {
  return `${Math.ceil(bytes / MIB).toLocaleString("en-US")} MiB`;
}

function size(bytes) {
  if (bytes >= 10 * GIB) return `${(bytes / GIB).toLocaleString("en-US", { maximumFractionDigits: 1 })} GiB`;
  return mib(bytes);
}

function pct(part, whole) {
  return whole > 0 ? `${(100 * part) / whole}%` : "0%";
}

function apiKey() {
  return sessionStorage.getItem(KEY_STORAGE) || "";
}

// The token /ui/state gives an admin; every admin action sends it back (the gateway refuses a
// browser's admin action without it).
let adminToken = "";

async function call(method, path, body) {
  const headers = { Accept: "application/json" };
  const key = apiKey();
  if (key) headers.Authorization = `Bearer ${key}`;
  if (method !== "GET" && adminToken) headers["X-Gateway-UI-Token"] = adminToken;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: "no-store",
    credentials: "omit",
  });
  let data = null;
  try {
    data = await response.json();
  } catch (_) {
    data = null;
  }
  return { status: response.status, ok: response.ok, data };
}

function errorText(result) {
  const message = result.data && result.data.error && result.data.error.message;
  return message ? `${result.status}: ${message}` : `HTTP ${result.status}`;
}

function say(text, isError) {
  const node = $("message");
  node.textContent = text || "";
  node.classList.toggle("error", Boolean(isError));
}

// Each path segment escaped on its own: a model name may contain "/", which the route keeps.
function modelPath(name, action) {
  return `/admin/models/${name.split("/").map(encodeURIComponent).join("/")}/${action}`;
}

// ------------------------------------------------------------------ memory map

const selected = new Map(); // detail panel -> "model@gpu" of the block it shows

function blockKey(block) {
  return `${block.model}@${block.gpu === null ? "host" : block.gpu}`;
}

function showDetail(block, detail) {
  const where = block.gpu === null ? "host memory" : `GPU ${block.gpu}`;
  const rows = [["planned", mib(block.planned_bytes)]];
  if (block.gpu !== null) {
    rows.push(
      ["weights", mib(block.weights_bytes)],
      ["KV cache", mib(block.kv_bytes)],
      ["compute buffers", mib(block.compute_bytes)],
      ["CUDA context + growth", mib(block.overhead_bytes)],
      ["layers", block.layers === null ? "–" : String(block.layers)],
    );
  } else {
    rows.push(["(weights kept in host memory, repacked CPU weights, CPU KV cache and compute)", ""]);
  }
  rows.push(["allocated by llama.cpp", mib(block.allocated_bytes)]);
  if (block.gpu !== null) rows.push(["process on the GPU (NVML)", mib(block.process_bytes)]);
  const list = el("dl");
  for (const [term, value] of rows) list.append(el("dt", { text: term }), el("dd", { text: value }));
  detail.replaceChildren(el("strong", { text: block.model }), ` on ${where} (${block.state})`, list);
}

function shortText(short) {
  return `${short.model} · short by ${mibUp(short.short_bytes)}`;
}

function shortTitle(short) {
  const layers = short.placed_layers ? ` (its last ${short.gpu_layers - short.placed_layers} of ${short.gpu_layers} GPU layers)` : "";
  return `${short.model} does not fit: it would need ${mibUp(short.need_bytes)} here${layers}, ${mib(short.room_bytes)} left: short by ${mibUp(short.short_bytes)}`;
}

// A model that does not fit, drawn where it would go: from the end of what is in use, as wide
// as it needs, past the room left (its hatched end is what it is short by).
function shortRow(short, start, scale) {
  const row = el("div", { class: "bar ghost", "data-short": short.model });
  const spacer = el("div", { class: "seg" });
  spacer.style.width = pct(start, scale);
  const node = el(
    "div",
    { class: "block short", role: "img", "aria-label": shortTitle(short), title: shortTitle(short) },
    el("span", { class: "block-name", text: shortText(short) }),
  );
  node.style.width = pct(short.need_bytes, scale);
  const over = el("span", { class: "short-part" });
  over.style.width = pct(Math.min(short.short_bytes, short.need_bytes), short.need_bytes);
  node.append(over);
  row.append(spacer, node);
  return row;
}

function bar(label, sub, total, figures, blocks, segments, detail, shorts = []) {
  const used = blocks.reduce((sum, b) => sum + b.planned_bytes, 0);
  // To scale: the bar is the device's total, unless the plan overcommits it; a model that does
  // not fit widens the scale so that it shows past the GPU's end, and the bar ends where the GPU does.
  const start = used + segments.other;
  const base = Math.max(total, start);
  const scale = shorts.reduce((most, s) => Math.max(most, start + s.need_bytes), base);
  const track = el("div", { class: "bar" });
  if (scale > base) track.style.width = pct(base, scale);
  for (const block of blocks) {
    const key = blockKey(block);
    const node = el(
      "button",
      {
        type: "button",
        class: `block ${block.state}${key === selected.get(detail) ? " selected" : ""}`,
        "data-model": block.model,
        "aria-label": `${block.model}: ${mib(block.planned_bytes)} planned`,
        title: `${block.model}: ${mib(block.planned_bytes)} planned`,
      },
      el("span", { class: "block-name", text: `${block.model} · ${mib(block.planned_bytes)}` }),
    );
    node.style.width = pct(block.planned_bytes, scale);
    for (const [cls, value] of [["alloc", block.allocated_bytes], ["nvml", block.process_bytes]]) {
      if (value === null || value === undefined) continue;
      const overlay = el("span", { class: `ov ${cls}${value > block.planned_bytes ? " over" : ""}` });
      overlay.style.width = pct(Math.min(value, block.planned_bytes), block.planned_bytes);
      node.append(overlay);
    }
    const pick = () => {
      selected.set(detail, key);
      const map = node.closest(".map") || document;
      for (const other of map.querySelectorAll(".block.selected")) other.classList.remove("selected");
      node.classList.add("selected");
      showDetail(block, detail);
    };
    node.addEventListener("mouseenter", pick);
    node.addEventListener("focus", pick);
    node.addEventListener("click", pick);
    track.append(node);
    if (key === selected.get(detail)) showDetail(block, detail);
  }
  if (segments.other > 0) {
    const other = el("div", { class: "seg other", title: `in use, not by these models: ${mib(segments.other)}` });
    other.style.width = pct(segments.other, scale);
    track.append(other);
  }
  track.append(el("div", { class: "seg free", title: `free: ${mib(segments.free)}` }));
  if (segments.reserve > 0) {
    const reserve = el("div", { class: "seg reserve", title: `reserve: ${mib(segments.reserve)}` });
    reserve.style.width = pct(segments.reserve, scale);
    track.append(reserve);
  }
  // A narrow block cuts its label: the whole names are listed under the bar.
  const names = el("ul", { class: "bar-models" });
  for (const block of blocks) {
    names.append(el("li", { "data-model": block.model }, el("span", { class: `swatch ${block.state}` }), `${block.model} · ${mib(block.planned_bytes)}`));
  }
  for (const short of shorts) {
    names.append(el("li", { "data-short": short.model }, el("span", { class: "swatch short" }), shortTitle(short)));
  }
  return el(
    "div",
    { class: "bar-row" },
    el("div", { class: "bar-label" }, el("strong", { text: label }), el("span", { class: "muted", text: sub }), el("span", { class: "figures", text: figures })),
    track,
    ...shorts.map((short) => shortRow(short, start, scale)),
    blocks.length || shorts.length ? names : null,
  );
}

function renderMap(container, map, detail) {
  const rows = [];
  const shortfalls = map.shortfalls || []; // the plan preview's only
  for (const gpu of map.gpus) {
    const blocks = map.blocks.filter((b) => b.gpu === gpu.index);
    const shorts = shortfalls.filter((s) => s.gpu === gpu.index);
    const planned = blocks.reduce((sum, b) => sum + b.planned_bytes, 0);
    const figures =
      `${mib(planned)} planned · ${mib(gpu.free_bytes)} free (${mib(gpu.reserve_bytes)} of it reserve) · ${size(gpu.total_bytes)} total` +
      (gpu.other_bytes ? ` · ${mib(gpu.other_bytes)} used by others` : "") +
      (gpu.note ? ` · ${gpu.note}` : "");
    const row = bar(`GPU ${gpu.index}`, gpu.name, gpu.total_bytes, figures, blocks, {
      other: gpu.other_bytes, free: gpu.free_bytes, reserve: gpu.reserve_bytes,
    }, detail, shorts);
    row.dataset.bar = `gpu-${gpu.index}`;
    rows.push(row);
  }
  if (map.host) {
    const blocks = map.blocks.filter((b) => b.gpu === null);
    const planned = blocks.reduce((sum, b) => sum + b.planned_bytes, 0);
    const figures = `${mib(planned)} planned · ${mib(map.host.free_bytes)} available · ${size(map.host.total_bytes)} total`;
    const row = bar("host", "memory (RAM)", map.host.total_bytes, figures, blocks, {
      other: map.host.other_bytes, free: map.host.free_bytes, reserve: 0,
    }, detail);
    row.dataset.bar = "host";
    rows.push(row);
  }
  for (const short of shortfalls.filter((s) => s.gpu === null)) {
    const text = `${short.model} does not fit: it needs ${mibUp(short.need_bytes)}, over its max_vram_mib (${mib(short.room_bytes)}) by ${mibUp(short.short_bytes)}`;
    rows.push(el("p", { class: "short-note", "data-short": short.model, text }));
  }
  if (!map.gpus.length) rows.unshift(el("p", { class: "muted", text: "No GPU in the inventory: every model runs on the CPU." }));
  container.replaceChildren(...rows);
}

// ------------------------------------------------------------------ models table

const COLUMNS = 12;

// m:ss (or h:mm:ss) for a countdown; seconds ago as "12 s ago", "3 min ago", "2 h ago".
function clock(seconds) {
  const s = Math.max(0, Math.round(seconds));
  const two = (n) => String(n).padStart(2, "0");
  return s >= 3600 ? `${Math.floor(s / 3600)}:${two(Math.floor(s / 60) % 60)}:${two(s % 60)}` : `${Math.floor(s / 60)}:${two(s % 60)}`;
}

function ago(seconds) {
  if (seconds < 90) return `${Math.round(seconds)} s ago`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min ago`;
  return `${Math.round(seconds / 3600)} h ago`;
}

function countdownText(model) {
  return model.unload_in_s === null || model.unload_in_s === undefined ? "" : `unloads in ${clock(model.unload_in_s)} if idle`;
}

// The Last error cell: the worker's or the last load's error, else the last failed request's.
function lastErrorText(model) {
  if (model.error) return model.error;
  const last = model.last_request_error;
  return last ? `${last.status} · ${ago(last.age_s)}: ${last.message}` : "";
}

function stateCell(model) {
  const cell = el("td", {}, el("span", { class: `state state-${model.state}`, text: model.state === "starting" ? "loading" : model.state }));
  if (model.state === "starting") {
    const fill = el("span");
    fill.style.width = `${Math.max(0, Math.min(100, model.progress))}%`;
    cell.append(" ", el("span", { class: "muted", text: `${model.progress}%` }), el("span", { class: "progress" }, fill));
  }
  if (model.idle_ttl_s !== null && model.idle_ttl_s !== undefined) {
    cell.append(el("span", { class: "countdown muted", "data-countdown": model.name, text: countdownText(model), title: `idle TTL ${clock(model.idle_ttl_s)}` }));
  }
  return cell;
}

// "GPU 0", "GPUs 0, 1", "CPU": a bare "0" under "GPUs" read as none.
function whereText(model) {
  if (!model.placed) return "–";
  if (!model.gpus.length) return "CPU";
  return `${model.gpus.length === 1 ? "GPU" : "GPUs"} ${model.gpus.join(", ")}`;
}

// What its placement planned (GPUs and host together); greyed while its worker does not hold it.
function memoryCell(model) {
  if (model.planned_bytes === null || model.planned_bytes === undefined) {
    if (model.needs_bytes !== null && model.needs_bytes !== undefined) {
      const from = model.needs_from === "estimate" ? "the planner's estimate from its header" : "its last placement's plan";
      return el("td", { class: "num muted", text: `~${mib(model.needs_bytes)}`, title: `needs when loaded: ${from}` });
    }
    const unknown = model.load === "on_demand" ? "planned when loaded" : "–";
    return el("td", { class: "num muted", text: "–", title: unknown });
  }
  if (model.holds_memory) return el("td", { class: "num", text: mib(model.planned_bytes), title: "planned, GPUs and host together" });
  return el("td", { class: "num muted", text: mib(model.planned_bytes), title: "planned, not held now" });
}

function errorsCell(model) {
  const text = model.errors_1m ? `${model.errors_1m} (${Math.round(100 * model.error_rate_1m)}%)` : "0";
  return el("td", { class: `num${model.errors_1m ? " bad" : ""}`, text, title: "requests answered 5xx" });
}

function actionsCell(model) {
  const cell = el("td", { class: "actions" });
  if (model.load !== "on_demand") return cell;
  const act = (action) => async (event) => {
    const button = event.currentTarget;
    button.disabled = true;
    say(`${action === "load" ? "Loading" : "Unloading"} ${model.name}…`);
    const result = await call("POST", modelPath(model.name, action));
    button.disabled = false;
    if (result.ok) say(`${model.name}: ${result.data.state}`);
    else say(`${action} ${model.name}: ${errorText(result)}`, true);
    refresh();
  };
  if (model.state === "stopped" || model.state === "failed") {
    cell.append(el("button", { type: "button", "data-action": "load", onclick: act("load") }, "Load"));
  } else if (model.state === "ready") {
    cell.append(el("button", { type: "button", "data-action": "unload", onclick: act("unload") }, "Unload"));
  }
  return cell;
}

function renderModels(state) {
  const rows = [];
  for (const model of state.models) {
    const name = el("td", {}, el("strong", { text: model.name }));
    if (model.aliases.length) name.append(el("span", { class: "aliases", text: model.aliases.join(", ") }));
    const cells = [
      name,
      stateCell(model),
      el("td", { class: "where", text: whereText(model), title: (model.placement || []).join("; ") }),
      memoryCell(model),
      el("td", { class: "num", text: model.n_ctx.toLocaleString("en-US") }),
      el("td", { class: "num", text: `${model.running} / ${model.max_concurrency}` }),
      el("td", { class: "num", text: `${model.waiting} / ${model.queue_size}` }),
      el("td", { class: "num", text: String(model.requests_1m) }),
      errorsCell(model),
      el("td", { class: "num", text: model.tokens_per_s_1m.toFixed(1) }),
      el("td", { class: "error", "data-last-error": model.name, text: lastErrorText(model), title: lastErrorText(model) || null }),
    ];
    if (state.admin) cells.push(actionsCell(model));
    rows.push(el("tr", { "data-model": model.name }, ...cells));
    // Why: a failed model, or one whose last load was refused, gets the whole explanation.
    const span = String(state.admin ? COLUMNS : COLUMNS - 1);
    if (model.error && model.state !== "ready") {
      rows.push(el("tr", { class: "why", "data-why": model.name }, el("td", { colspan: span }, `why: ${model.error}`)));
    } else if (model.errors_1m && model.last_request_error) {
      // Ready, but its requests fail: the last failure's whole text.
      const last = model.last_request_error;
      rows.push(el("tr", { class: "why", "data-why": model.name }, el("td", { colspan: span }, `last failed request (${last.status}): ${last.message}`)));
    }
  }
  document.querySelector("#models-table tbody").replaceChildren(...rows);
  $("window-note").textContent = `Requests, errors (answered 5xx) and tokens/s over the last ${state.window_s} s. Memory: ${
    state.inventory === "declared" ? "a declared GPU inventory ([planner] gpus)" : "NVML, read at each update"
  }.`;
}

// ------------------------------------------------------------------ polling

let lastBody = "";

// The fields that change every second by themselves: they update in place (updateClocks), so a
// countdown alone does not redraw the page under the pointer.
const TICKING = new Set(["unload_in_s", "age_s"]);

function stableBody(data) {
  return JSON.stringify(data, (key, value) => (TICKING.has(key) ? undefined : value));
}

function updateClocks(state) {
  for (const model of state.models) {
    for (const node of document.querySelectorAll("[data-countdown]")) {
      if (node.dataset.countdown === model.name) node.textContent = countdownText(model);
    }
    for (const node of document.querySelectorAll("[data-last-error]")) {
      if (node.dataset.lastError === model.name) node.textContent = lastErrorText(model);
    }
  }
}
let timer = null;
let polling = false;
let pollAgain = false; // asked for while a poll was in flight
let pollFailed = false; // the message line shows a polling problem

function showAdmin(admin, reloadable) {
  for (const node of document.querySelectorAll(".admin")) node.hidden = !admin;
  $("reload").hidden = !(admin && reloadable);
}

function render(state) {
  adminToken = state.admin_token || "";
  const status = $("status");
  status.textContent = state.status;
  status.className = `badge ${state.status}`;
  showAdmin(state.admin, state.reloadable);
  renderMap($("map"), state.map, $("detail"));
  renderModels(state);
}

async function refresh() {
  if (polling) {
    pollAgain = true;
    return;
  }
  polling = true;
  clearTimeout(timer);
  try {
    const result = await call("GET", "/ui/state");
    if (result.status === 401 || result.status === 403) {
      lastBody = "";
      adminToken = "";
      showAdmin(false, false);
      $("status").textContent = "key needed";
      $("status").className = "badge unavailable";
      say(apiKey() ? `The API key was refused (${errorText(result)}).` : "This gateway needs an API key: enter it above.", true);
      pollFailed = true;
      $("map").replaceChildren();
      document.querySelector("#models-table tbody").replaceChildren();
    } else if (!result.ok || !result.data) {
      say(`Could not read the gateway's state: ${errorText(result)}`, true);
      pollFailed = true;
    } else {
      const body = stableBody(result.data);
      // Redraw only what changed: a button under the pointer stays put between polls.
      if (body !== lastBody) {
        lastBody = body;
        render(result.data);
      } else {
        updateClocks(result.data);
      }
      if (pollFailed) {
        pollFailed = false;
        say("");
      }
      $("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
    }
  } catch (err) {
    say(`The gateway does not answer (${err.message}); retrying.`, true);
    pollFailed = true;
  } finally {
    polling = false;
    if (pollAgain) {
      pollAgain = false;
      refresh();
    } else {
      timer = setTimeout(refresh, POLL_MS);
    }
  }
}

// ------------------------------------------------------------------ admin actions

async function reloadConfig() {
  const button = $("reload");
  button.disabled = true;
  say("Reloading models.toml…");
  const result = await call("POST", "/admin/reload");
  button.disabled = false;
  const data = result.data || {};
  if (result.ok && data.reloaded) {
    const parts = ["added", "changed", "removed", "unchanged"].filter((k) => data[k] && data[k].length).map((k) => `${k}: ${data[k].join(", ")}`);
    say(`Reloaded. ${parts.join("; ")}`);
  } else if (Array.isArray(data.problems)) {
    say(`Reload refused, nothing changed: ${data.problems.join(" | ")}`, true);
  } else {
    say(`Reload: ${errorText(result)}`, true);
  }
  refresh();
}

async function runPreview() {
  const button = $("preview-run");
  const gpus = $("preview-gpus").value.split(",").map((s) => s.trim()).filter(Boolean);
  const body = { config: $("preview-text").value };
  if (gpus.length) body.gpus = gpus;
  button.disabled = true;
  const result = await call("POST", "/admin/plan", body);
  button.disabled = false;
  const box = $("preview-result");
  box.hidden = false;
  const summary = $("preview-summary");
  const problems = $("preview-problems");
  const previewMap = $("preview-map");
  if (!result.ok || !result.data) {
    summary.textContent = `Preview: ${errorText(result)}`;
    summary.className = "unfit";
    problems.replaceChildren();
    previewMap.replaceChildren();
    return;
  }
  const data = result.data;
  summary.textContent = data.fits
    ? `Fits (${data.inventory === "declared" ? "declared inventory" : "this machine's GPUs"}).`
    : data.valid
      ? `Does not fit: ${data.problems.length} problem(s).`
      : `Invalid: ${data.problems.length} problem(s).`;
  summary.className = data.fits ? "fits" : "unfit";
  problems.replaceChildren(...data.problems.map((p) => el("li", { text: p })));
  if (data.map) renderMap(previewMap, data.map, $("preview-detail"));
  else previewMap.replaceChildren();
  $("preview-ondemand").textContent = data.on_demand.length
    ? `On demand (placed when first asked for, not on this map): ${data.on_demand.join(", ")}`
    : "";
}

// ------------------------------------------------------------------ start

document.addEventListener("DOMContentLoaded", () => {
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = $("key").value.trim();
    if (key) sessionStorage.setItem(KEY_STORAGE, key);
    $("key").value = "";
    say(key ? "Using the key for this tab." : "");
    lastBody = "";
    refresh();
  });
  $("forget-key").addEventListener("click", () => {
    sessionStorage.removeItem(KEY_STORAGE);
    say("Key forgotten.");
    lastBody = "";
    refresh();
  });
  $("reload").addEventListener("click", reloadConfig);
  $("preview-run").addEventListener("click", runPreview);
  $("preview-file").addEventListener("change", async (event) => {
    const file = event.target.files && event.target.files[0];
    if (file) $("preview-text").value = await file.text();
  });
  refresh();
});
