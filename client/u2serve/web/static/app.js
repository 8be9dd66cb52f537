// u2serve's page: controls built from GET /v1/options, images sent concurrently to /v1, results compared.
// The token lives in an HttpOnly cookie set by /?token=...; fetch sends it (same origin) and never sees it.

import { zip } from "./zip.js";

// Concurrent requests become the server's batches; more than this wait on the page, shown as queued.
const MAX_IN_FLIGHT = 8;

const $ = (id) => document.getElementById(id);
const state = { options: null, items: [], next: 0, active: 0, waiting: [] };

function showError(text) {
  const box = $("error");
  box.textContent = text;
  box.hidden = !text;
}

function appendError(text) {
  const box = $("error");
  box.textContent = box.hidden || !box.textContent ? text : `${box.textContent}\n${text}`;
  box.hidden = false;
}

function setStatus(text, bad = false) {
  $("status").textContent = text;
  $("status").classList.toggle("bad", bad);
}

async function messageOf(response) {
  try {
    const body = await response.json();
    return body.message || `HTTP ${response.status}`;
  } catch {
    return `HTTP ${response.status} ${response.statusText}`;
  }
}

function explain(status, message) {
  if (status === 401) return `Not signed in: open the address \`make serve\` printed (it carries ?token=). ${message}`;
  if (status === 403) return `Token refused: open the address \`make serve\` printed again. ${message}`;
  if (status === 413) return `Too large: ${message}`;
  if (status === 503) return `The server is unavailable: ${message}`;
  if (status === 504) return `The server took too long: ${message}`;
  return message;
}

// ---- controls, from the option table the server sends: groups, defaults and when each applies ----

function input(field) {
  if (field.kind === "choice") {
    const select = document.createElement("select");
    // Left empty, the server uses its default: say which, and do not list it twice.
    select.add(new Option(`${field.default} (default)`, ""));
    for (const value of field.choices) if (value !== field.default) select.add(new Option(value, value));
    return select;
  }
  const el = document.createElement("input");
  if (field.kind === "bool") el.type = "checkbox";
  else if (field.kind === "image") Object.assign(el, { type: "file", accept: "image/*" });
  else if (field.kind === "color") Object.assign(el, { type: "text", pattern: "^#?[0-9a-fA-F]{6}$|^\\d{1,3},\\d{1,3},\\d{1,3}$" });
  else {
    el.type = "number";
    if (field.minimum !== null) el.min = field.minimum;
    if (field.maximum !== null) el.max = field.maximum;
    el.step = field.step ?? (field.kind === "integer" ? 1 : "any");
  }
  return el;
}

// A colour picker beside the text box; while the box is empty it shows a checkerboard, not a colour that looks set.
function swatch(text) {
  const pick = document.createElement("input");
  pick.type = "color";
  pick.className = "swatch";
  pick.setAttribute("aria-label", "Pick a background colour");
  pick.addEventListener("input", () => { text.value = pick.value; });
  return pick;
}

function followSwatches() {
  for (const pick of $("options").querySelectorAll(".swatch")) {
    const text = pick.previousElementSibling.value.trim();
    if (/^#[0-9a-f]{6}$/i.test(text)) pick.value = text.toLowerCase();
    pick.classList.toggle("empty", text === "");
  }
}

function control(field) {
  const id = `opt-${field.name}`;
  const wrap = document.createElement("div");
  wrap.className = field.kind === "bool" ? "row inline" : "row";
  wrap.dataset.testid = `row-${field.name}`;
  const label = document.createElement("label");
  label.htmlFor = id;
  label.textContent = field.label;
  const el = input(field);
  Object.assign(el, { id, name: field.name });
  el.dataset.testid = `option-${field.name}`;
  const help = document.createElement("p");
  help.className = "help";
  help.id = `${id}-help`;
  help.textContent = field.help;
  el.setAttribute("aria-describedby", help.id);
  if (field.kind === "bool") {
    wrap.append(el, label, help);
    return wrap;
  }
  const head = document.createElement("div");
  head.className = "label-line";
  head.append(label);
  // A default is said in words beside the label, never typed into the box where it would look set;
  // a list says it in its first entry.
  if (field.kind !== "choice") {
    const note = document.createElement("span");
    note.className = "default";
    note.id = `${id}-default`;
    note.textContent = `default: ${field.default}`;
    head.append(note);
    el.setAttribute("aria-describedby", `${help.id} ${note.id}`);
  }
  if (field.kind === "color") {
    const line = document.createElement("div");
    line.className = "with-swatch";
    line.append(el, swatch(el));
    wrap.append(head, line, help);
  } else wrap.append(head, el, help);
  return wrap;
}

function task() {
  return document.querySelector('input[name="task"]:checked').value;
}

function fields() {
  return state.options.tasks[task()];
}

function valueOf(el) {
  if (el.type === "checkbox") return el.checked ? "true" : "false";
  if (el.type === "file") return el.files.length ? "*" : "";
  return el.value.trim();
}

function applies(field, values) {
  const holds = ([name, allowed]) => {
    const value = values.get(name) ?? "";
    return allowed.includes(value) || (value !== "" && allowed.includes("*"));
  };
  return field.when.length === 0 || field.when.some((alternative) => Object.entries(alternative).every(holds));
}

// Shows the rows that apply to the values set now; a hidden row counts as left empty and is never sent.
function updateRows() {
  const values = new Map(fields().map((f) => [f.name, valueOf($(`opt-${f.name}`))]));
  for (const f of fields()) {
    const show = applies(f, values);
    if (!show) values.set(f.name, "");
    $(`opt-${f.name}`).closest(".row").hidden = !show;
  }
  for (const group of $("options").querySelectorAll("fieldset.group")) {
    group.hidden = !group.querySelector(".row:not([hidden])");
  }
  followSwatches();
}

function renderOptions() {
  const groups = state.options.groups.map(({ name, label }) => {
    const rows = fields().filter((f) => f.group === name).map(control);
    if (!rows.length) return null;
    const set = document.createElement("fieldset");
    set.className = "group";
    set.dataset.testid = `group-${name}`;
    const legend = document.createElement("legend");
    legend.textContent = label;
    set.append(legend, ...rows);
    return set;
  });
  const old = new Map([...$("options").querySelectorAll("[name]")].map((el) => [el.name, el]));
  $("options").replaceChildren(...groups.filter(Boolean));
  for (const [name, was] of old) {
    const now = $(`opt-${name}`);
    if (!now || was.type === "file") continue;
    if (now.type === "checkbox") now.checked = was.checked;
    else now.value = was.value;
  }
  updateRows();
}

// The options as sent: what applies and was set; empty means the server's default.
function collect() {
  const values = [];
  for (const f of fields()) {
    const el = $(`opt-${f.name}`);
    if (el.closest(".row").hidden) continue;
    if (el.type === "checkbox") { if (el.checked) values.push([f.name, "true"]); }
    else if (el.type === "file") { if (el.files[0]) values.push([f.name, el.files[0]]); }
    else if (el.value.trim() !== "") values.push([f.name, el.value.trim()]);
  }
  return values;
}

// ---- one image: a card that says where it is (queued, sending, done, failed) ----

const STAGES = ["decode", "preprocess", "inference", "postprocess", "encode"]; // the server's order

function serverTiming(header) {
  const stages = [];
  for (const part of (header || "").split(",")) {
    const [name, ...attrs] = part.trim().split(";");
    const dur = attrs.find((a) => a.trim().startsWith("dur="));
    if (name && dur) stages.push([name, Math.round(parseFloat(dur.split("=")[1]))]);
  }
  const rank = (name) => (STAGES.includes(name) ? STAGES.indexOf(name) : STAGES.length);
  stages.sort((a, b) => rank(a[0]) - rank(b[0]));
  return stages.map(([name, ms]) => `${name} ${ms} ms`).join(" · ");
}

function extension(type) {
  return { "image/jpeg": "jpg", "image/webp": "webp" }[type] || "png";
}

function size(bytes) {
  return bytes < 1e6 ? `${Math.max(1, Math.round(bytes / 1e3))} kB` : `${(bytes / 1e6).toFixed(1)} MB`;
}

function newItem(file) {
  const n = state.next++;
  const li = document.createElement("li");
  li.dataset.testid = `item-${n}`;
  li.innerHTML = `<div class="head"><p class="name"></p><span class="badge"></span></div>
    <div class="compare"><img class="before" alt=""><img class="after" alt="" hidden>
      <span class="tag left" aria-hidden="true">Original</span><span class="tag right" aria-hidden="true">Result</span>
      <span class="handle" aria-hidden="true"></span>
      <input type="range" min="0" max="100" step="1" value="50"></div>
    <p class="meta"></p><p class="item-error" hidden></p>
    <a class="download" hidden>Download</a>`;
  li.querySelector(".name").textContent = file.name;
  const badge = li.querySelector(".badge");
  badge.dataset.testid = `state-${n}`;
  badge.setAttribute("role", "status");
  const compare = li.querySelector(".compare");
  const before = li.querySelector(".before");
  before.onerror = () => { compare.hidden = true; };
  before.src = URL.createObjectURL(file);
  before.alt = `${file.name}, original`;
  li.querySelector(".after").dataset.testid = `result-${n}`;
  const slider = li.querySelector("input");
  slider.dataset.testid = `slider-${n}`;
  slider.setAttribute("aria-label", `Original left, result right: position of the divide for ${file.name}`);
  slider.addEventListener("input", () => compare.style.setProperty("--cut", `${slider.value}%`));
  li.querySelector(".meta").dataset.testid = `meta-${n}`;
  li.querySelector(".item-error").dataset.testid = `item-error-${n}`;
  li.querySelector(".download").dataset.testid = `download-${n}`;
  $("results").append(li);
  const item = { n, file, li, url: null, name: null, job: null };
  state.items.push(item);
  return item;
}

function setState(item, name, text, meta = "") {
  item.li.dataset.state = name;
  item.li.querySelector(".badge").textContent = text;
  item.li.querySelector(".meta").textContent = meta;
}

// Queues an item with the options set now; a newer job of the same item replaces an older one.
function schedule(item) {
  item.job = { model: $("model").value, task: task(), values: collect() };
  item.li.querySelector(".item-error").hidden = true;
  setState(item, "queued", "Queued", `${size(item.file.size)}, waiting for a free connection`);
  if (!state.waiting.includes(item)) state.waiting.push(item);
  pump();
}

function pump() {
  while (state.active < MAX_IN_FLIGHT && state.waiting.length) {
    const item = state.waiting.shift();
    state.active++;
    run(item, item.job).finally(() => { state.active--; pump(); });
  }
}

function current(item, job) {
  return item.job === job && state.items.includes(item);
}

async function run(item, job) {
  const { li, file } = item;
  const limit = state.options.max_body_bytes;
  if (file.size > limit) {
    fail(item, `${file.name}: too large (${file.size} bytes; the limit is ${limit} bytes)`);
    return;
  }
  setState(item, "sending", "Sending…", `${size(file.size)} to ${job.model}, ${job.task}`);
  const body = new FormData();
  body.append("file", file, file.name);
  for (const [name, value] of job.values) body.append(name, value);
  const started = performance.now();
  let response, blob;
  try {
    response = await fetch(`/v1/models/${encodeURIComponent(job.model)}/${job.task}`, { method: "POST", body });
    if (response.ok) blob = await response.blob();
  } catch (err) {
    if (!current(item, job)) return;
    fail(item, `${file.name}: cannot reach the u2serve app (${err.message}); is it running?`);
    setStatus("The app does not answer", true);
    return;
  }
  if (!current(item, job)) return;
  if (!response.ok) {
    fail(item, `${file.name}: ${explain(response.status, await messageOf(response))}`);
    return;
  }
  const roundTrip = Math.round(performance.now() - started);
  const previous = item.url;
  item.url = URL.createObjectURL(blob);
  item.name = `${file.name.replace(/\.[^.]*$/, "")}.${job.task}.${extension(blob.type)}`;
  const after = li.querySelector(".after");
  after.alt = `${file.name}, ${job.task}`;
  await new Promise((resolve) => { after.onload = resolve; after.onerror = resolve; after.src = item.url; });
  if (previous) URL.revokeObjectURL(previous);
  const before = li.querySelector(".before");
  // A cropped result has its own size: it is shown alone; otherwise it lies right of the divide.
  const cropped = after.naturalWidth !== before.naturalWidth || after.naturalHeight !== before.naturalHeight;
  li.querySelector(".compare").classList.toggle("cropped", cropped);
  li.querySelector(".compare").classList.add("has-result");
  after.hidden = false;
  showDone(item, response, after, roundTrip);
}

function showDone(item, response, after, roundTrip) {
  const { li, n } = item;
  setState(item, "done", "Done");
  const meta = li.querySelector(".meta");
  const batch = document.createElement("span");
  batch.dataset.testid = `batch-${n}`;
  batch.textContent = `batch ${response.headers.get("X-U2Serve-Batch-Size")}`;
  const timings = document.createElement("span");
  timings.className = "timings";
  timings.dataset.testid = `timings-${n}`;
  timings.textContent = `round trip ${roundTrip} ms; server: ${serverTiming(response.headers.get("Server-Timing"))}`;
  meta.append(`${response.headers.get("X-U2Serve-Model")} · ${after.naturalWidth}×${after.naturalHeight} · `, batch,
    document.createElement("br"), timings);
  const link = li.querySelector(".download");
  link.href = item.url;
  link.download = item.name;
  link.textContent = `Download ${item.name}`;
  link.hidden = false;
  $("download-all").disabled = false;
}

function fail(item, text) {
  const el = item.li.querySelector(".item-error");
  el.textContent = text;
  el.hidden = false;
  setState(item, "error", "Failed");
  appendError(text);
}

function add(files) {
  if (!state.options || !files.length) return;
  showError("");
  for (const file of files) schedule(newItem(file));
  updateApply();
}

function updateApply() {
  const n = state.items.length;
  $("rerun").disabled = n === 0;
  $("rerun").textContent = n === 0 ? "Apply to all images" : n === 1 ? "Apply to the image" : `Apply to ${n} images`;
}

async function downloadAll() {
  const done = state.items.filter((i) => i.url);
  const entries = await Promise.all(done.map(async (i) => ({ name: `${i.n}-${i.name}`, blob: await (await fetch(i.url)).blob() })));
  const a = document.createElement("a");
  a.href = URL.createObjectURL(await zip(entries));
  a.download = "u2serve-results.zip";
  a.click();
}

function clear() {
  for (const i of state.items) {
    if (i.url) URL.revokeObjectURL(i.url);
    URL.revokeObjectURL(i.li.querySelector(".before").src);
  }
  state.items = [];
  state.waiting = [];
  $("results").replaceChildren();
  $("download-all").disabled = true;
  showError("");
  updateApply();
}

// ---- start ----

function wireDrop() {
  const drop = $("drop");
  const picker = $("file-input");
  let depth = 0; // dragenter/dragleave also fire for the zone's children
  const over = (on) => drop.classList.toggle("over", on);
  drop.addEventListener("click", () => picker.click());
  drop.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") { e.preventDefault(); picker.click(); }
  });
  drop.addEventListener("dragenter", () => { depth++; over(true); });
  drop.addEventListener("dragleave", () => { depth = Math.max(0, depth - 1); over(depth > 0); });
  // A drop anywhere on the page adds the files, instead of the browser opening the first one.
  window.addEventListener("dragover", (e) => { e.preventDefault(); e.dataTransfer.dropEffect = "copy"; });
  window.addEventListener("drop", (e) => {
    e.preventDefault();
    depth = 0;
    over(false);
    add(e.dataTransfer.files);
  });
  picker.addEventListener("change", () => { add(picker.files); picker.value = ""; });
}

function wireControls() {
  for (const radio of document.querySelectorAll('input[name="task"]')) radio.addEventListener("change", renderOptions);
  $("controls").addEventListener("input", updateRows);
  $("controls").addEventListener("change", updateRows);
  $("controls").addEventListener("reset", () => setTimeout(renderOptions)); // after the form has reset
  $("rerun").addEventListener("click", () => state.items.forEach(schedule));
  $("download-all").addEventListener("click", downloadAll);
  $("clear").addEventListener("click", clear);
}

async function ping() {
  try {
    const response = await fetch("/v1/ping");
    if (response.ok && (await response.json()).healthy) setStatus("Ready: TorchServe answers");
    else if (response.ok) {
      setStatus("TorchServe is down", true);
      appendError("The model server (TorchServe) does not answer: images will fail until it is back (`make serve`).");
    } else {
      const message = explain(response.status, await messageOf(response));
      setStatus(response.status === 503 ? "TorchServe is down" : "Not signed in", true);
      appendError(message);
    }
  } catch {
    setStatus("The app does not answer", true);
  }
}

async function start() {
  if (location.hash === "#token-refused") {
    history.replaceState(null, "", "/");
    showError("Token refused: it is not the server's current key. Open the address `make serve` printed again.");
  }
  wireDrop();
  wireControls();
  try {
    const response = await fetch("/v1/options");
    state.options = await response.json();
  } catch (err) {
    setStatus("The app does not answer", true);
    showError(`Cannot reach the u2serve app (${err.message}); is it running?`);
    return;
  }
  for (const m of state.options.models) {
    const chosen = m === state.options.default_model; // also what Reset returns to
    $("model").add(new Option(state.options.model_labels[m] || m, m, chosen, chosen));
  }
  renderOptions();
  document.body.dataset.ready = "true";
  await ping();
}

start();
