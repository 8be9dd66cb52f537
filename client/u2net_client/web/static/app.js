// u2serve's page: controls built from GET /v1/options, images sent concurrently to /v1, results compared.
// The token lives in an HttpOnly cookie set by /?token=...; fetch sends it (same origin) and never sees it.

const $ = (id) => document.getElementById(id);
const state = { options: null, items: [], next: 0 };

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

// ---- controls, from the option table the server sends ----

function control(field) {
  const wrap = document.createElement("div");
  const id = `opt-${field.name}`;
  wrap.className = "row";
  const label = document.createElement("label");
  label.htmlFor = id;
  label.textContent = field.label;
  let input;
  if (field.kind === "choice") {
    input = document.createElement("select");
    for (const value of ["", ...field.choices]) input.add(new Option(value || "(none)", value));
  } else if (field.kind === "bool") {
    input = document.createElement("input");
    input.type = "checkbox";
    wrap.className = "row inline";
  } else if (field.kind === "color") {
    input = document.createElement("input");
    input.type = "text";
    input.placeholder = `none (e.g. ${field.placeholder})`;
    input.pattern = "^$|^#?[0-9a-fA-F]{6}$|^\\d{1,3},\\d{1,3},\\d{1,3}$";
  } else if (field.kind === "image") {
    input = document.createElement("input");
    input.type = "file";
    input.accept = "image/*";
  } else {
    input = document.createElement("input");
    input.type = "number";
    if (field.minimum !== null) input.min = field.minimum;
    if (field.maximum !== null) input.max = field.maximum;
    input.step = field.step ?? (field.kind === "integer" ? 1 : "any");
    input.placeholder = field.placeholder || "default";
  }
  input.id = id;
  input.name = field.name;
  input.dataset.testid = `option-${field.name}`;
  const help = document.createElement("p");
  help.className = "help";
  help.id = `${id}-help`;
  help.textContent = field.help;
  input.setAttribute("aria-describedby", help.id);
  if (field.kind === "bool") wrap.append(input, label, help);
  else wrap.append(label, input, help);
  return wrap;
}

function task() {
  return document.querySelector('input[name="task"]:checked').value;
}

function renderOptions() {
  const box = $("options");
  const previous = collect();
  box.replaceChildren(...state.options.tasks[task()].map(control));
  for (const [name, value] of previous) {
    const input = $(`opt-${name}`);
    if (!input || value instanceof File) continue;
    if (input.type === "checkbox") input.checked = value === "true";
    else input.value = value;
  }
}

function collect() {
  const values = [];
  for (const input of $("options").querySelectorAll("input, select")) {
    if (input.type === "checkbox") values.push([input.name, input.checked ? "true" : "false"]);
    else if (input.type === "file") { if (input.files[0]) values.push([input.name, input.files[0]]); }
    else if (input.value.trim() !== "") values.push([input.name, input.value.trim()]);
  }
  return values;
}

// ---- one image ----

function serverTiming(header) {
  const out = [];
  for (const part of (header || "").split(",")) {
    const [name, ...attrs] = part.trim().split(";");
    const dur = attrs.find((a) => a.trim().startsWith("dur="));
    if (name && dur) out.push(`${name} ${Math.round(parseFloat(dur.split("=")[1]))} ms`);
  }
  return out.join(" · ");
}

function extension(type) {
  return { "image/jpeg": "jpg", "image/webp": "webp" }[type] || "png";
}

function newItem(file) {
  const n = state.next++;
  const li = document.createElement("li");
  li.dataset.testid = `item-${n}`;
  li.innerHTML = `<p class="name"></p>
    <div class="compare"><img class="before" alt=""><img class="after" alt="" hidden>
      <input type="range" min="0" max="100" value="50" hidden></div>
    <p class="meta" role="status">Waiting…</p><p class="item-error" hidden></p>
    <a class="download" hidden>Download</a>`;
  li.querySelector(".name").textContent = file.name;
  const before = li.querySelector(".before");
  before.src = URL.createObjectURL(file);
  before.alt = `${file.name}, original`;
  const after = li.querySelector(".after");
  after.dataset.testid = `result-${n}`;
  const slider = li.querySelector("input");
  slider.setAttribute("aria-label", `Before/after position for ${file.name}`);
  slider.addEventListener("input", () => li.querySelector(".compare").style.setProperty("--cut", `${slider.value}%`));
  li.querySelector(".download").dataset.testid = `download-${n}`;
  $("results").append(li);
  const item = { n, file, li, url: null, name: null };
  state.items.push(item);
  return item;
}

async function run(item) {
  const { li, file } = item;
  const meta = li.querySelector(".meta");
  const itemError = li.querySelector(".item-error");
  itemError.hidden = true;
  li.removeAttribute("data-state");
  meta.textContent = "Working…";
  const limit = state.options.max_body_bytes;
  if (file.size > limit) {
    fail(item, `${file.name}: too large (${file.size} bytes; the limit is ${limit} bytes)`);
    return;
  }
  const body = new FormData();
  body.append("file", file, file.name);
  for (const [name, value] of collect()) body.append(name, value);
  const model = $("model").value;
  const started = performance.now();
  let response;
  try {
    response = await fetch(`/v1/models/${encodeURIComponent(model)}/${task()}`, { method: "POST", body });
  } catch (err) {
    fail(item, `${file.name}: cannot reach the u2serve app (${err.message}); is it running?`);
    setStatus("The app does not answer", true);
    return;
  }
  if (!response.ok) {
    fail(item, `${file.name}: ${explain(response.status, await messageOf(response))}`);
    return;
  }
  const blob = await response.blob();
  const roundTrip = Math.round(performance.now() - started);
  const previous = item.url;
  item.url = URL.createObjectURL(blob);
  item.name = `${file.name.replace(/\.[^.]*$/, "")}.${task()}.${extension(blob.type)}`;
  const after = li.querySelector(".after");
  after.alt = `${file.name}, ${task()}`;
  await new Promise((resolve) => { after.onload = resolve; after.onerror = resolve; after.src = item.url; });
  if (previous) URL.revokeObjectURL(previous);
  const before = li.querySelector(".before");
  const cropped = after.naturalWidth !== before.naturalWidth || after.naturalHeight !== before.naturalHeight;
  after.classList.toggle("cropped", cropped);
  before.hidden = cropped;
  after.hidden = false;
  li.querySelector("input[type=range]").hidden = cropped;
  const batch = response.headers.get("X-U2Serve-Batch-Size");
  meta.replaceChildren();
  meta.append(`${response.headers.get("X-U2Serve-Model")} · ${after.naturalWidth}×${after.naturalHeight} · `);
  const b = document.createElement("span");
  b.dataset.testid = `batch-${item.n}`;
  b.textContent = `batch ${batch}`;
  meta.append(b, ` · ${serverTiming(response.headers.get("Server-Timing"))} · round trip ${roundTrip} ms`);
  const link = li.querySelector(".download");
  link.href = item.url;
  link.download = item.name;
  link.textContent = `Download ${item.name}`;
  link.hidden = false;
  li.dataset.state = "done";
  $("download-all").disabled = false;
}

function fail(item, text) {
  const el = item.li.querySelector(".item-error");
  el.textContent = text;
  el.hidden = false;
  item.li.querySelector(".meta").textContent = "Refused";
  item.li.dataset.state = "error";
  appendError(text);
}

function add(files) {
  if (!state.options) return;
  showError("");
  const items = [...files].map(newItem);
  return Promise.all(items.map(run)); // all at once: the server batches them
}

// ---- download all: one uncompressed zip (results are compressed images already) ----

const CRC = new Uint32Array(256).map((_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c;
});

function crc32(bytes) {
  let c = 0xffffffff;
  for (const b of bytes) c = CRC[(c ^ b) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

async function zip(entries) {
  const parts = [], central = [];
  let offset = 0;
  for (const { name, blob } of entries) {
    const data = new Uint8Array(await blob.arrayBuffer());
    const nameBytes = new TextEncoder().encode(name);
    const crc = crc32(data);
    const header = (sig, extra) => {
      const h = new DataView(new ArrayBuffer(extra ? 46 : 30));
      h.setUint32(0, sig, true);
      let p = 4;
      if (extra) { h.setUint16(p, 20, true); p += 2; }
      h.setUint16(p, 20, true); h.setUint16(p + 2, 0x0800, true); h.setUint16(p + 4, 0, true);
      h.setUint32(p + 6, 0, true); h.setUint32(p + 10, crc, true);
      h.setUint32(p + 14, data.length, true); h.setUint32(p + 18, data.length, true);
      h.setUint16(p + 22, nameBytes.length, true);
      if (extra) h.setUint32(42, offset, true);
      return new Uint8Array(h.buffer);
    };
    const local = header(0x04034b50, false);
    parts.push(local, nameBytes, data);
    central.push(header(0x02014b50, true), nameBytes);
    offset += local.length + nameBytes.length + data.length;
  }
  const size = central.reduce((s, c) => s + c.length, 0);
  const end = new DataView(new ArrayBuffer(22));
  end.setUint32(0, 0x06054b50, true);
  end.setUint16(8, entries.length, true); end.setUint16(10, entries.length, true);
  end.setUint32(12, size, true); end.setUint32(16, offset, true);
  return new Blob([...parts, ...central, end.buffer], { type: "application/zip" });
}

async function downloadAll() {
  const done = state.items.filter((i) => i.url);
  const entries = await Promise.all(done.map(async (i) => ({ name: `${i.n}-${i.name}`, blob: await (await fetch(i.url)).blob() })));
  const a = document.createElement("a");
  a.href = URL.createObjectURL(await zip(entries));
  a.download = "u2serve-results.zip";
  a.click();
}

// ---- start ----

function wireDrop() {
  const drop = $("drop");
  const picker = $("file-input");
  drop.addEventListener("click", () => picker.click());
  drop.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") { e.preventDefault(); picker.click(); }
  });
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    add(e.dataTransfer.files);
  });
  picker.addEventListener("change", () => { add(picker.files); picker.value = ""; });
}

async function start() {
  if (location.hash === "#token-refused") {
    history.replaceState(null, "", "/");
    showError("Token refused: it is not the server's current key. Open the address `make serve` printed again.");
  }
  wireDrop();
  for (const radio of document.querySelectorAll('input[name="task"]')) radio.addEventListener("change", renderOptions);
  $("rerun").addEventListener("click", () => Promise.all(state.items.map(run)));
  $("download-all").addEventListener("click", downloadAll);
  $("clear").addEventListener("click", () => {
    for (const i of state.items) if (i.url) URL.revokeObjectURL(i.url);
    state.items = [];
    $("results").replaceChildren();
    $("download-all").disabled = true;
    showError("");
  });
  try {
    const response = await fetch("/v1/options");
    state.options = await response.json();
  } catch (err) {
    setStatus("The app does not answer", true);
    showError(`Cannot reach the u2serve app (${err.message}); is it running?`);
    return;
  }
  for (const m of state.options.models) {
    const label = state.options.model_labels[m] || m;
    $("model").add(new Option(label, m, false, m === state.options.default_model));
  }
  renderOptions();
  document.body.dataset.ready = "true";
  try {
    const ping = await fetch("/v1/ping");
    if (ping.ok && (await ping.json()).healthy) setStatus("Ready: TorchServe answers");
    else if (ping.ok) {
      setStatus("TorchServe is down", true);
      appendError("The model server (TorchServe) does not answer: images will fail until it is back (`make serve`).");
    } else {
      const message = explain(ping.status, await messageOf(ping));
      setStatus(ping.status === 503 ? "TorchServe is down" : "Not signed in", true);
      appendError(message);
    }
  } catch (err) {
    setStatus("The app does not answer", true);
  }
}

start();
