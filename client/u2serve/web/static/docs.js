// Renders /openapi.json as a plain page: served by the app, so it works offline (no CDN, unlike Swagger UI).

function cell(row, text, tag = "td") {
  const c = document.createElement(tag);
  c.textContent = text ?? "";
  row.append(c);
}

function table(rows) {
  const t = document.createElement("table");
  const head = t.insertRow();
  for (const h of ["name", "in", "type", "description"]) cell(head, h, "th");
  for (const r of rows) {
    const tr = t.insertRow();
    for (const v of r) cell(tr, v);
  }
  return t;
}

function operation(path, method, op) {
  const box = document.createElement("section");
  box.className = "op";
  const h = document.createElement("h3");
  const m = document.createElement("span");
  m.className = "method";
  m.textContent = method.toUpperCase();
  h.append(m, path);
  const p = document.createElement("p");
  p.textContent = op.summary || "";
  box.append(h, p);
  const rows = (op.parameters || []).map((x) => [x.name, x.in, x.schema?.type, x.description]);
  const form = op.requestBody?.content?.["multipart/form-data"]?.schema?.properties || {};
  for (const [name, s] of Object.entries(form)) {
    rows.push([name, "form", s.enum ? s.enum.join(" | ") : s.format || s.type, s.description]);
  }
  if (rows.length) box.append(table(rows));
  return box;
}

const spec = await (await fetch("/openapi.json")).json();
const main = document.getElementById("docs");
const intro = document.createElement("p");
intro.textContent = `${spec.info.title} ${spec.info.version}: ${spec.info.description} Send TorchServe's inference key as ` +
  "`Authorization: Bearer <key>` or `X-Api-Key: <key>`. Errors are JSON {code, type, message}.";
main.replaceChildren(intro);
for (const [path, ops] of Object.entries(spec.paths)) {
  for (const [method, op] of Object.entries(ops)) main.append(operation(path, method, op));
}
