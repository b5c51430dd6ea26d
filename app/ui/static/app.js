// simprune dashboard: fills the server-rendered pages from the public API (/v1/...).
// The API key lives in sessionStorage and is sent as "Authorization: Bearer"; it never goes into a URL.
"use strict";

const KEY = "simprune.apiKey";
const PAGE_SIZE = 20;
const $ = (sel) => document.querySelector(sel);
const $$ = (sel) => Array.from(document.querySelectorAll(sel));

// --- auth and requests -------------------------------------------------------------------------------

function apiKey() { return sessionStorage.getItem(KEY); }
function authHeaders() { const k = apiKey(); return k ? { Authorization: `Bearer ${k}` } : {}; }

class Problem extends Error {
  // an RFC 9457 problem+json body (or a stand-in for a network error)
  constructor(body) { super(body.detail || body.title || "error"); this.body = body; }
}

async function problemOf(resp) {
  let body;
  try { body = await resp.json(); } catch (e) { body = { detail: `HTTP ${resp.status}` }; }
  if (typeof body !== "object" || body === null) body = { detail: String(body) };
  body.status = body.status || resp.status;
  body.title = body.title || `HTTP ${resp.status}`;
  return new Problem(body);
}

async function api(method, path, body) {
  const opts = { method, headers: authHeaders() };
  if (body !== undefined) { opts.headers["Content-Type"] = "application/json"; opts.body = JSON.stringify(body); }
  let resp;
  try { resp = await fetch(path, opts); } catch (e) {
    throw new Problem({ title: "Network error", detail: String(e) });
  }
  if (!resp.ok) throw await problemOf(resp);
  return resp.status === 204 ? null : resp.json();
}

function showError(err) {
  // render a problem+json body (never a stack trace)
  const p = err instanceof Problem ? err.body : { title: "Error", detail: String(err && err.message || err) };
  $("#error-title").textContent = `${p.status ? p.status + " " : ""}${p.title || "Error"}`;
  let detail = p.detail || "";
  if (p.status === 401) detail += " (sign in again with a valid API key)";
  $("#error-detail").textContent = detail;
  const list = $("#error-list");
  list.replaceChildren(...(p.errors || []).map((e) => el("li", {}, `${(e.loc || []).join(".")}: ${e.msg}`)));
  $("#error").hidden = false;
  if (p.status === 401) sessionStorage.removeItem(KEY);
}
function clearError() { $("#error").hidden = true; }

// --- DOM helpers ---------------------------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "text") node.textContent = v; else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(c ?? ""));
  return node;
}
const pct = (x) => (x === null || x === undefined ? "—" : `${(100 * x).toFixed(2)}%`);
const num = (x) => (x === null || x === undefined ? "—" : Number(x).toLocaleString());
const when = (s) => (s ? new Date(s).toLocaleString() : "—");
const link = (href, text) => el("a", { href }, text);

// --- lists with cursor pagination ------------------------------------------------------------------------

const ROWS = {
  models: (m) => [link(`/ui/models/${m.id}/compare`, m.id), m.arch, m.filename, num(m.params), num(m.flops),
    when(m.created_at), link(`/ui/jobs/new?model=${encodeURIComponent(m.id)}`, "new job")],
  datasets: (d) => [d.id, d.filename, d.format, num(d.samples), num(d.classes), when(d.created_at)],
  jobs: (j) => [link(`/ui/jobs/${j.id}`, j.id), el("span", { class: `status-${j.status}` }, j.status), j.method,
    pct(j.progress), j.model_id ? link(`/ui/models/${j.model_id}/compare`, j.model_id) : "—", when(j.created_at)],
};

function initList() {
  const table = $("#list");
  const kind = table.dataset.kind;
  const stack = [null];  // cursors of the pages seen so far
  let next = null;
  async function load() {
    clearError();
    const params = new URLSearchParams({ limit: String(PAGE_SIZE) });
    const cursor = stack[stack.length - 1];
    if (cursor) params.set("cursor", cursor);
    const status = $("#status-filter") && $("#status-filter").value;
    if (status) params.set("status", status);
    try {
      const page = await api("GET", `/v1/${kind}?${params}`);
      next = page.next_cursor;
      table.tBodies[0].replaceChildren(...page.items.map((item) =>
        el("tr", { "data-id": item.id }, ...ROWS[kind](item).map((c) => el("td", {}, c)))));
      if (!page.items.length) table.tBodies[0].append(el("tr", {}, el("td", { colspan: "7" }, `no ${kind} yet`)));
      $("#next").disabled = !next;
      $("#prev").disabled = stack.length < 2;
    } catch (e) { showError(e); }
  }
  $("#next").onclick = () => { if (next) { stack.push(next); load(); } };
  $("#prev").onclick = () => { if (stack.length > 1) { stack.pop(); load(); } };
  if ($("#status-filter")) $("#status-filter").onchange = () => { stack.length = 1; load(); };
  return load;
}

// --- uploads with a progress bar -------------------------------------------------------------------------

function initUpload(reload) {
  const form = $("#upload-form");
  const kind = form.dataset.kind;
  if (kind === "models") {
    api("GET", "/v1/architectures").then((r) => {
      $("#upload-arch").replaceChildren(...r.items.map((a) => el("option", { value: a.name }, a.name)));
      $("#upload-arch").value = r.items.some((a) => a.name === "cifar_resnet56") ? "cifar_resnet56" : r.items[0].name;
    }).catch(showError);
  }
  form.onsubmit = (ev) => {
    ev.preventDefault();
    clearError();
    const data = new FormData();
    for (const [k, v] of new FormData(form).entries()) if (v !== "") data.append(k, v);
    const bar = $("#upload-progress");
    const xhr = new XMLHttpRequest();
    xhr.open("POST", `/v1/${kind}`);
    for (const [k, v] of Object.entries(authHeaders())) xhr.setRequestHeader(k, v);
    bar.hidden = false; bar.value = 0;
    $("#upload-status").textContent = "uploading…";
    xhr.upload.onprogress = (e) => { if (e.lengthComputable) bar.value = e.loaded / e.total; };
    xhr.upload.onload = () => { bar.value = 1; $("#upload-status").textContent = "checking…"; };
    xhr.onerror = () => showError(new Problem({ title: "Network error", detail: "the upload did not complete" }));
    xhr.onload = () => {
      let body = {};
      try { body = JSON.parse(xhr.responseText); } catch (e) { body = { detail: xhr.responseText.slice(0, 300) }; }
      if (xhr.status >= 400) {
        $("#upload-status").textContent = "failed";
        body.status = body.status || xhr.status;
        showError(new Problem(body));
        return;
      }
      $("#upload-status").textContent = `uploaded ${body.id}`;
      form.reset();
      reload();
    };
    xhr.send(data);
  };
}

// --- job form generated from /v1/methods and /v1/architectures --------------------------------------------

function optionInput(opt) {
  // one input for a method option (name, type, default, help, ge/le/gt/lt, choices)
  const id = `opt-${opt.name}`;
  let input;
  if (opt.type === "choice" || opt.choices) {
    input = el("select", { id }, ...(opt.choices || []).map((c) => el("option", { value: c }, String(c))));
    if (opt.default !== null && opt.default !== undefined) input.value = String(opt.default);
  } else if (opt.type === "bool") {
    input = el("input", { id, type: "checkbox" });
    input.checked = Boolean(opt.default);
  } else if (opt.type === "int" || opt.type === "float") {
    input = el("input", { id, type: "number", step: opt.type === "int" ? "1" : "any",
      min: opt.ge ?? opt.gt, max: opt.le ?? opt.lt, value: opt.default ?? "" });
  } else {
    input = el("input", { id, type: "text", value: opt.default ?? "" });
  }
  input.dataset.option = opt.name;
  input.dataset.type = opt.type;
  input.dataset.default = JSON.stringify(opt.default ?? null);
  return el("label", { class: "opt", title: opt.help || "" }, `${opt.name} (${opt.type}) `, input,
    el("span", { class: "hint" }, ` ${opt.help || ""}`));
}

function optionValue(input) {
  if (input.type === "checkbox") return input.checked;
  if (input.value === "") return null;
  if (input.dataset.type === "int") return parseInt(input.value, 10);
  if (input.dataset.type === "float") return parseFloat(input.value);
  return input.value;
}

function numberField(id) { const v = $(id).value; return v === "" ? null : Number(v); }

function jobBody() {
  const body = { model_id: $("#f-model").value, method: $("#f-method").value, options: {} };
  for (const input of $$("#method-options [data-option]")) {
    const v = optionValue(input);
    if (v !== null && JSON.stringify(v) !== input.dataset.default) body.options[input.dataset.option] = v;
  }
  const target = $("input[name=target]:checked").value;
  if (target === "flops") body.target_flops_reduction = numberField("#f-target_flops_reduction");
  else body.pruning_ratio = target === "auto" ? "auto" : numberField("#f-pruning_ratio");
  body.allocation = $("#f-allocation").value;
  for (const f of ["round_to", "calib_samples", "eval_samples", "batch_size", "seed", "time_limit_s"]) {
    const v = numberField(`#f-${f}`);
    if (v !== null) body[f] = v;
  }
  for (const f of ["calibration_dataset_id", "eval_dataset_id", "train_dataset_id"]) {
    if ($(`#f-${f}`).value) body[f] = $(`#f-${f}`).value;
  }
  const comp = Object.fromEntries($$(".comp").map((c) => [c.value, c.checked]));
  if (!comp.fold || !comp.lstsq || !comp.bn || comp.sequential) body.compensation = comp;
  body.exports = $$(".export").filter((c) => c.checked).map((c) => c.value);
  if ($("#f-finetune").checked) {
    body.finetune = { optimizer: $("#ft-optimizer").value, distill: $("#ft-distill").checked };
    for (const f of ["epochs", "lr", "batch_size", "train_samples", "max_steps_per_epoch"]) {
      const v = numberField(`#ft-${f}`);
      if (v !== null) body.finetune[f] = v;
    }
  }
  return body;
}

async function listAll(kind) {
  const page = await api("GET", `/v1/${kind}?limit=100`);
  return page.items;
}

async function initJobForm() {
  let methods, archs, models, datasets;
  try {
    [methods, archs, models, datasets] = await Promise.all([
      api("GET", "/v1/methods").then((r) => r.items), api("GET", "/v1/architectures").then((r) => r.items),
      listAll("models"), listAll("datasets")]);
  } catch (e) { showError(e); return; }
  const archBy = Object.fromEntries(archs.map((a) => [a.name, a]));
  const modelSel = $("#f-model");
  modelSel.replaceChildren(...models.map((m) => el("option", { value: m.id }, `${m.id} · ${m.arch} · ${m.filename}`)));
  const wanted = new URLSearchParams(location.search).get("model");
  if (wanted) modelSel.value = wanted;
  const showArch = () => {
    const m = models.find((x) => x.id === modelSel.value);
    const a = m && archBy[m.arch];
    $("#arch-info").textContent = m ? `${m.arch}${a ? ": " + a.description : ""} · input ${m.input_size.join("×")}` +
      ` · ${m.num_classes} classes · ${num(m.flops)} FLOPs` : "upload a model first";
  };
  modelSel.onchange = showArch; showArch();
  for (const sel of $$(".ds")) {
    sel.replaceChildren(el("option", { value: "" }, "none"),
      ...datasets.map((d) => el("option", { value: d.id }, `${d.id} · ${d.filename} · ${d.samples} samples`)));
  }
  const methodSel = $("#f-method");
  methodSel.replaceChildren(...methods.map((m) => el("option", { value: m.name }, `${m.name} (${m.kind})`)));
  methodSel.value = methods.some((m) => m.name === "l1") ? "l1" : methods[0].name;
  const showMethod = () => {
    const m = methods.find((x) => x.name === methodSel.value);
    const needs = [m.needs_data && "needs calibration data", m.trains && "trains (needs training data)"]
      .filter(Boolean).join(", ");
    $("#method-info").textContent = `${m.summary}${needs ? " — " + needs : ""}`;
    $("#method-options").replaceChildren(...m.options.map(optionInput));
  };
  methodSel.onchange = showMethod; showMethod();
  $("#job-form").onsubmit = async (ev) => {
    ev.preventDefault();
    clearError();
    try {
      const job = await api("POST", "/v1/jobs", jobBody());
      location.assign(`/ui/jobs/${job.id}`);
    } catch (e) { showError(e); }
  };
}

// --- job page: live progress from the event stream, then the report ----------------------------------------

async function readEvents(path, onEvent, signal) {
  // server-sent events through fetch() (EventSource cannot send the Authorization header)
  const resp = await fetch(path, { headers: authHeaders(), signal });
  if (!resp.ok) throw await problemOf(resp);
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += value.replace(/\r\n/g, "\n");
    let cut;
    while ((cut = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, cut);
      buf = buf.slice(cut + 2);
      let event = "message", data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data += line.slice(5).trim();
      }
      if (data) onEvent(event, JSON.parse(data));
    }
  }
}

function detailText(d) {
  if (!d) return "";
  const parts = [d.phase];
  if (d.epoch !== undefined) parts.push(`epoch ${d.epoch}${d.epochs ? "/" + d.epochs : ""}`);
  if (typeof d.step === "string") parts.push(d.step);
  else if (d.step !== undefined) parts.push(`step ${d.step}${d.steps ? "/" + d.steps : ""}`);
  if (d.done !== undefined) parts.push(`${d.what || "done"} ${d.done}/${d.total}`);
  if (d.loss !== undefined) parts.push(`loss ${Number(d.loss).toFixed(4)}`);
  if (d.top1 !== undefined) parts.push(`top-1 ${pct(d.top1)}`);
  if (d.eta_s !== undefined) parts.push(`ETA ${Math.round(d.eta_s)} s`);
  return parts.filter(Boolean).join(" · ");
}

window.progressLog = [];  // every value the progress bar took (read by the browser tests)

function showState(s) {
  $("#job-status").textContent = s.status;
  $("#job-status").className = `status-${s.status}`;
  $("#job-stage").textContent = s.stage || "—";
  $("#job-progress").value = s.progress;
  $("#job-percent").textContent = `${Math.round(100 * s.progress)}%`;
  window.progressLog.push(s.progress);
  if (s.progress_detail !== undefined) $("#job-detail").textContent = detailText(s.progress_detail);
  $("#cancel-job").hidden = !["queued", "running"].includes(s.status);
  if (s.error) { $("#job-error").textContent = s.error; $("#job-error").hidden = false; }
}

async function artifactBlob(jobId, name) {
  const resp = await fetch(`/v1/jobs/${jobId}/artifacts/${encodeURIComponent(name)}`, { headers: authHeaders() });
  if (!resp.ok) throw await problemOf(resp);
  return resp.blob();
}

function summaryRows(r) {
  const lat = r.latency || {};
  return [["Method", r.method], ["Allocation", r.allocation], ["Accuracy before", pct(r.accuracy_before)],
    ["Accuracy after", pct(r.accuracy_after)], ["Accuracy drop", pct(r.accuracy_drop)],
    ["FLOPs", `${num(r.flops_before)} → ${num(r.flops_after)}`], ["FLOPs reduction", pct(r.flops_reduction)],
    ["Parameters", `${num(r.params_before)} → ${num(r.params_after)}`], ["Params reduction", pct(r.params_reduction)],
    ["Measured speedup", lat.speedup ? `${Number(lat.speedup).toFixed(2)}×` : "—"],
    ["Fine-tuning", r.finetune ? `best top-1 ${pct(r.finetune.best_top1)} (epoch ${r.finetune.best_epoch})` : "—"],
    ["Total time", r.timings && r.timings.total_s ? `${r.timings.total_s.toFixed(1)} s` : "—"]];
}

function showReport(job) {
  const r = job.result;
  if (r) {
    $("#report").hidden = false;
    $("#compare-link").href = `/ui/models/${job.model_id}/compare`;
    $("#summary").tBodies[0].replaceChildren(...summaryRows(r).map(([k, v]) => el("tr", {}, el("th", {}, k),
      el("td", {}, v))));
    $("#layers").tBodies[0].replaceChildren(...(r.per_layer || []).map((l) => el("tr", {}, el("td", {}, l.name),
      el("td", {}, l.type), el("td", {}, `${l.channels_before} → ${l.channels_after}`),
      el("td", {}, num(l.flops_before)), el("td", {}, num(l.flops_after)))));
    const plots = $("#plots");
    plots.replaceChildren();
    for (const name of r.plots || []) {
      const img = el("img", { alt: name, "data-plot": name });
      plots.append(img);
      artifactBlob(job.id, name).then((b) => { img.src = URL.createObjectURL(b); }).catch(showError);
    }
  }
  if (job.artifacts.length) {
    $("#downloads").hidden = false;
    $("#artifacts").replaceChildren(...job.artifacts.map((a) => {
      const a_ = el("a", { href: "#", "data-artifact": a.name }, a.name);
      a_.onclick = async (ev) => {
        ev.preventDefault();
        try {
          const url = URL.createObjectURL(await artifactBlob(job.id, a.name));
          const tmp = el("a", { href: url, download: a.name });
          document.body.append(tmp); tmp.click(); tmp.remove();
          setTimeout(() => URL.revokeObjectURL(url), 60000);
        } catch (e) { showError(e); }
      };
      return el("li", {}, a_, ` (${num(a.size)} bytes, sha256 ${a.sha256.slice(0, 12)}…)`);
    }));
  }
}

async function initJob() {
  const jobId = document.body.dataset.jobId;
  let job;
  try { job = await api("GET", `/v1/jobs/${jobId}`); } catch (e) { showError(e); return; }
  showState(job);
  $("#cancel-job").onclick = () => api("POST", `/v1/jobs/${jobId}/cancel`).then(showState).catch(showError);
  $("#delete-job").onclick = async () => {
    if (!confirm(`Delete job ${jobId} and its artifacts?`)) return;
    try { await api("DELETE", `/v1/jobs/${jobId}`); location.assign("/ui/jobs"); } catch (e) { showError(e); }
  };
  let lastFetch = 0;
  const refreshDetail = async () => {  // the stream carries no detail: re-read the job at most once a second
    if (Date.now() - lastFetch < 1000) return;
    lastFetch = Date.now();
    try { const j = await api("GET", `/v1/jobs/${jobId}`); $("#job-detail").textContent = detailText(j.progress_detail); }
    catch (e) { /* the next event retries */ }
  };
  while (!["succeeded", "failed", "cancelled"].includes(job.status)) {
    let ended = false;
    try {
      await readEvents(`/v1/jobs/${jobId}/events`, (event, data) => {
        if (data.status === "deleted") { ended = true; return; }
        showState(data);
        if (data.progress_detail === undefined) refreshDetail();
        if (event === "end") ended = true;
      });
    } catch (e) {
      if (e instanceof Problem && e.body.status) { showError(e); return; }
      await new Promise((ok) => setTimeout(ok, 2000));  // dropped connection: reconnect
    }
    try { job = await api("GET", `/v1/jobs/${jobId}`); } catch (e) { showError(e); return; }
    if (ended) break;
  }
  showState(job);
  showReport(job);
}

// --- comparison page: every succeeded job of one model -------------------------------------------------

function scatter(points, xLabel, xFmt) {
  // an SVG scatter plot of {x, y, id, label}; y is an accuracy fraction
  const W = 520, H = 320, L = 56, B = 40, T = 12, R = 16;
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("width", W); svg.setAttribute("height", H); svg.setAttribute("role", "img");
  const add = (tag, attrs, text) => {
    const n = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v);
    if (text !== undefined) n.textContent = text;
    svg.append(n);
    return n;
  };
  const xs = points.map((p) => p.x), ys = points.map((p) => p.y);
  const pad = (lo, hi) => (hi - lo < 1e-9 ? [lo - 0.05, hi + 0.05] : [lo - (hi - lo) * 0.08, hi + (hi - lo) * 0.08]);
  const [x0, x1] = pad(Math.min(...xs), Math.max(...xs));
  const [y0, y1] = pad(Math.min(...ys), Math.max(...ys));
  const sx = (x) => L + ((x - x0) / (x1 - x0)) * (W - L - R);
  const sy = (y) => H - B - ((y - y0) / (y1 - y0)) * (H - B - T);
  add("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, stroke: "#999" });
  add("line", { x1: L, y1: T, x2: L, y2: H - B, stroke: "#999" });
  for (let i = 0; i <= 4; i++) {
    const xv = x0 + ((x1 - x0) * i) / 4, yv = y0 + ((y1 - y0) * i) / 4;
    add("text", { x: sx(xv), y: H - B + 14, "text-anchor": "middle" }, xFmt(xv));
    add("text", { x: L - 4, y: sy(yv) + 4, "text-anchor": "end" }, `${(100 * yv).toFixed(1)}%`);
  }
  add("text", { x: (L + W - R) / 2, y: H - 6, "text-anchor": "middle" }, xLabel);
  add("text", { x: 12, y: (T + H - B) / 2, transform: `rotate(-90 12 ${(T + H - B) / 2})`,
    "text-anchor": "middle" }, "accuracy after");
  for (const p of points) {
    const c = add("circle", { class: "pt", cx: sx(p.x), cy: sy(p.y), r: 5, "data-job": p.id });
    const t = document.createElementNS("http://www.w3.org/2000/svg", "title");
    t.textContent = p.label; c.append(t);
    c.addEventListener("click", () => location.assign(`/ui/jobs/${p.id}`));
  }
  return svg;
}

async function modelJobs(modelId) {
  // every succeeded job of the model (the list is paged through; the API has no model filter)
  const out = [];
  let cursor = null;
  do {
    const params = new URLSearchParams({ status: "succeeded", limit: "100" });
    if (cursor) params.set("cursor", cursor);
    const page = await api("GET", `/v1/jobs?${params}`);
    out.push(...page.items.filter((j) => j.model_id === modelId));
    cursor = page.next_cursor;
  } while (cursor);
  return out;
}

async function initCompare() {
  const modelId = document.body.dataset.modelId;
  let jobs;
  try { await api("GET", `/v1/models/${modelId}`); jobs = await modelJobs(modelId); } catch (e) { showError(e); return; }
  const rows = jobs.filter((j) => j.result).map((j) => ({ job: j, r: j.result,
    speedup: j.result.latency ? j.result.latency.speedup : null }));
  $("#compare-table").tBodies[0].replaceChildren(...rows.map(({ job, r, speedup }) => el("tr", { "data-job": job.id },
    el("td", {}, link(`/ui/jobs/${job.id}`, job.id)), el("td", {}, r.method || job.method),
    el("td", {}, pct(r.flops_reduction)), el("td", {}, pct(r.params_reduction)),
    el("td", {}, speedup ? `${Number(speedup).toFixed(2)}×` : "—"), el("td", {}, pct(r.accuracy_before)),
    el("td", {}, pct(r.accuracy_after)))));
  const label = ({ job, r }) => `${job.id} · ${r.method} · acc ${pct(r.accuracy_after)}`;
  const withAcc = rows.filter((x) => x.r.accuracy_after !== null && x.r.accuracy_after !== undefined);
  if (!withAcc.length) {
    $("#compare-note").textContent = rows.length ? "No job of this model has an accuracy (give an evaluation " +
      "dataset to plot them)." : "No succeeded job of this model yet.";
  } else {
    $("#plot-flops").append(scatter(withAcc.map((x) => ({ x: x.r.flops_reduction, y: x.r.accuracy_after,
      id: x.job.id, label: label(x) })), "FLOPs reduction", (v) => `${(100 * v).toFixed(0)}%`));
  }
  const withSpeed = withAcc.filter((x) => x.speedup);
  if (withSpeed.length) {
    $("#fig-speedup").hidden = false;
    $("#plot-speedup").append(scatter(withSpeed.map((x) => ({ x: x.speedup, y: x.r.accuracy_after, id: x.job.id,
      label: label(x) })), "measured speedup", (v) => `${v.toFixed(2)}×`));
  }
}

// --- sign in and page dispatch ---------------------------------------------------------------------------

function initLogin() {
  $("#login-form").onsubmit = async (ev) => {
    ev.preventDefault();
    clearError();
    sessionStorage.setItem(KEY, $("#api-key").value.trim());
    try {
      await api("GET", "/v1/models?limit=1");
      location.assign(sessionStorage.getItem("simprune.next") || "/ui/jobs");
      sessionStorage.removeItem("simprune.next");
    } catch (e) { showError(e); }
  };
}

const PAGES = {
  login: initLogin, jobs: () => initList()(), job: initJob, compare: initCompare, new: initJobForm,
  models: () => { const load = initList(); initUpload(load); load(); },
  datasets: () => { const load = initList(); initUpload(load); load(); },
};

document.addEventListener("DOMContentLoaded", () => {
  const page = document.body.dataset.page;
  const auth = document.body.dataset.auth === "on";
  if (page !== "login" && auth && !apiKey()) {
    sessionStorage.setItem("simprune.next", location.pathname + location.search);
    location.replace("/ui/login");
    return;
  }
  if (apiKey()) {
    $("#key-hint").textContent = `key ${apiKey().slice(0, 6)}…`;
    $("#sign-out").hidden = false;
    $("#sign-out").onclick = () => { sessionStorage.removeItem(KEY); location.assign("/ui/login"); };
  }
  PAGES[page]();
});
