// The dashboard's one script (no build step, no CDN). Everything from the server is data:
// it goes into the page as text (fill), never as markup.
"use strict";

const xsrf = () => document.querySelector('meta[name="xsrf"]').content;

// Where the dashboard's addresses start: "/" or, behind a proxy, its prefix ("/taskqueue/"),
// as the server put it on <body data-root>. Every address below is built on it.
const ROOT = document.body.dataset.root || "/";

// Text from tasks and records is shown for what it is (the rule of taskqueue/views/shown.py):
// control characters (C0 but tab and newline, DEL, C1), lone surrogates and U+FFFE/U+FFFF
// become their escapes (\x00, \ud800) in a span.ctl, and text that may be bidirectional goes
// in a <bdi>, so that a right-to-left override in a task cannot reorder the page's own words
// after it.
const HIDDEN = new RegExp("[\\u0000-\\u0008\\u000b-\\u001f\\u007f-\\u009f\\ufffe\\uffff]" +
  "|[\\ud800-\\udbff](?![\\udc00-\\udfff])|(?<![\\ud800-\\udbff])[\\udc00-\\udfff]", "g");

function standIn(char) {
  const code = char.charCodeAt(0);
  return code <= 0xff ? `\\x${code.toString(16).padStart(2, "0")}`
    : `\\u${code.toString(16).padStart(4, "0")}`;
}

// Fills *node* with *value* as text: stand-ins in their own style, never markup.
function fill(node, value) {
  const text = String(value);
  const parts = [];
  let last = 0;
  for (const found of text.matchAll(HIDDEN)) {
    parts.push(text.slice(last, found.index));
    const mark = document.createElement("span");
    mark.className = "ctl";
    mark.title = `U+${found[0].charCodeAt(0).toString(16).toUpperCase().padStart(4, "0")}`;
    mark.textContent = standIn(found[0]);
    parts.push(mark);
    last = found.index + found[0].length;
  }
  parts.push(text.slice(last));
  node.replaceChildren(...parts.filter((part) => part !== ""));
  return node;
}

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) fill(node, text);
  if (className) node.className = className;
  return node;
}

// Text from a task or a record, isolated: <bdi> (the page's words around it keep their order).
const bdi = (text) => el("bdi", text ?? "");

// A table cell holding text from the server.
const textCell = (text) => { const node = el("td"); node.append(bdi(text)); return node; };

function setText(id, value) {
  const node = document.getElementById(id);
  if (node) fill(node, value === null || value === undefined ? "?" : value);
}

function seconds(value) {
  if (value === null || value === undefined) return "?";
  if (value < 90) return `${Math.round(value)} s`;
  if (value < 5400) return `${Math.round(value / 60)} min`;
  return `${(value / 3600).toFixed(1)} h`;
}

function clock(epoch) {
  return epoch ? new Date(epoch * 1000).toLocaleTimeString() : "-";
}

function toast(text, ok) {
  const node = document.getElementById("toast");
  fill(node, text);
  node.className = ok ? "ok" : "error";
}

// The server's errors are one JSON line ({"error": ...}); anything else is shown as its status.
async function errorOf(response) {
  try {
    return (await response.json()).error || `error ${response.status}`;
  } catch (error) {
    return `error ${response.status}`;
  }
}

async function fetchJson(url) {
  const answer = await fetch(url, { credentials: "same-origin" });
  if (!answer.ok) throw new Error(await errorOf(answer));
  return answer.json();
}

// --- control: preview (count + one-time ticket) -> confirm -> POST once ----------------------
async function control(button) {
  const params = new URLSearchParams({ action: button.dataset.action });
  const run = button.dataset.run ?? (button.hasAttribute("data-run-current") ? currentRun : "");
  if (run) params.set("run", run);
  if (button.dataset.worker) params.set("worker", button.dataset.worker);
  if (button.dataset.reason) params.set("reason", button.dataset.reason);
  const previewed = await fetch(`${ROOT}control/preview.json?${params}`, { credentials: "same-origin" });
  if (!previewed.ok) { toast(await errorOf(previewed), false); return; }
  const preview = await previewed.json();
  const dialog = document.getElementById("confirm");
  fill(document.getElementById("confirm-question"), preview.question);
  const yes = document.getElementById("confirm-yes");
  const no = document.getElementById("confirm-no");
  yes.disabled = false;
  dialog.showModal();
  const answer = await new Promise((resolve) => {
    yes.onclick = () => { yes.disabled = true; resolve(true); };
    no.onclick = () => resolve(false);
    dialog.oncancel = () => resolve(false);
  });
  dialog.close();
  if (!answer) return;
  toast("working…", true);
  const body = new URLSearchParams({ ticket: preview.ticket });
  const done = await fetch(`${ROOT}control`, {
    method: "POST", credentials: "same-origin", body,
    headers: { "X-XSRFToken": xsrf() },
  });
  if (!done.ok) { toast(`refused: ${await errorOf(done)}`, false); return; }
  const result = await done.json();
  toast(result.summary, result.ok);
}

document.addEventListener("click", (event) => {
  const button = event.target.closest("button[data-action]");
  if (button) control(button).catch((error) => toast(String(error), false));
});

// --- the live page ---------------------------------------------------------------------------
let currentRun = "";
let source = null;

function showLive(data) {
  const q = data.queue, r = data.run;
  for (const key of ["ready", "in_progress", "retrying", "dead", "consumers"]) {
    setText(`q-${key}`, q[key]);
  }
  setText("q-latency", q.latency === null ? "-" : seconds(q.latency));
  document.getElementById("paused").hidden = !q.paused;
  currentRun = r.id || "";
  const link = document.getElementById("run-link");
  fill(link, r.id || "-");
  link.href = r.id ? `${ROOT}runs/${encodeURIComponent(r.id)}` : `${ROOT}runs`;
  setText("r-done", r.total === null ? r.done : `${r.done} / ${r.total}`);
  for (const key of ["failed", "dead", "cancelled"]) setText(`r-${key}`, r[key]);
  setText("r-rate", `${r.rate} tasks/s`);
  setText("r-eta", r.eta === null ? "?" : seconds(r.eta));
  const progress = document.getElementById("run-progress");
  progress.max = r.total || 1;
  progress.value = r.total ? r.done + r.dead + r.cancelled : 0;
  showWorkers(data);
  showFailures(data.failures);
  setText("updated", clock(data.updated));
  const connection = document.getElementById("connection");
  connection.textContent = data.problem ? `broker: ${data.problem}` : "live";
  connection.className = data.problem ? "connection error" : "connection ok";
}

function showWorkers(data) {
  const body = document.querySelector("#workers tbody");
  const rows = [];
  for (const worker of data.workers) {
    const row = el("tr", null, `worker ${worker.kind}`);
    row.dataset.worker = worker.name;
    for (const value of [worker.name, worker.host, worker.state, worker.done, worker.failed,
      `${worker.share}%`]) row.append(textCell(value));
    const cell = el("td");
    if (worker.kind !== "gone" && worker.kind !== "stopped") {
      const stop = el("button", "Stop", "small");
      stop.type = "button";
      stop.dataset.action = "stop";
      stop.dataset.worker = worker.name;
      cell.append(stop);
    }
    row.append(cell);
    rows.push(row);
    for (const slot of worker.slot_rows) {
      const line = el("tr", null, `slot ${slot.kind}`);
      line.append(textCell(slot.slot), el("td", ""), textCell(slot.state), el("td", ""),
        el("td", ""), el("td", ""), el("td", ""));
      rows.push(line);
    }
  }
  if (!rows.length) {
    const none = el("tr");
    const cell = el("td", "no worker heard from yet: start listening_worker.py", "muted");
    cell.colSpan = 7;
    none.append(cell);
    rows.push(none);
  }
  body.replaceChildren(...rows);
  const counts = Object.entries(data.worker_states).map(([k, n]) => `${n} ${k}`).join(", ");
  setText("worker-summary", data.workers.length ? `(${data.workers.length}: ${counts})` : "");
}

function showFailures(failures) {
  const list = document.getElementById("failures");
  const items = failures.map((f) => {
    const item = el("li", `${clock(f.time)} `);
    item.append(bdi(f.worker), ` row ${f.row} "`, bdi(f.task), `": ${f.outcome} (`, bdi(f.reason),
      ")");
    return item;
  });
  list.replaceChildren(...(items.length ? items : [el("li", "none", "muted")]));
}

function connect() {
  if (source) return;
  source = new EventSource(`${ROOT}stream`);
  source.onmessage = (event) => showLive(JSON.parse(event.data));
  source.onerror = () => {
    const connection = document.getElementById("connection");
    connection.textContent = "reconnecting to the dashboard…";
    connection.className = "connection error";
  };
}

function disconnect() {
  if (source) { source.close(); source = null; }
  setText("connection", "paused while the tab is hidden");
}

function livePage() {
  // A hidden tab costs nothing: it stops listening, and starts again when shown.
  document.addEventListener("visibilitychange", () => {
    if (document.hidden) disconnect(); else connect();
  });
  if (!document.hidden) connect();
}

// --- a run's page ----------------------------------------------------------------------------
let page = 1;

async function loadTasks(runId) {
  const form = document.getElementById("filter");
  const params = new URLSearchParams(new FormData(form));
  params.set("page", page);
  const data = await fetchJson(`${ROOT}runs/${encodeURIComponent(runId)}/tasks.json?${params}`);
  const c = data.counts;
  setText("run-counts", `${data.tasks} tasks: ${c.done} done, ${c.dead} dead, ` +
    `${c.cancelled} cancelled, ${c.failed} failed and not yet retried to an end`);
  const rows = data.rows.map((task) => {
    const row = el("tr", null, `task ${task.outcome}`);
    row.dataset.row = task.row;
    row.dataset.id = task.message_id;
    for (const key of ["row", "task", "worker", "started", "seconds", "attempts", "outcome",
      "result_or_error"]) row.append(textCell(task[key]));
    return row;
  });
  document.querySelector("#tasks tbody").replaceChildren(...rows);
  const pages = Math.max(1, Math.ceil(data.matching / data.size));
  setText("page-info", `page ${data.page} of ${pages} (${data.matching} matching)`);
  document.getElementById("prev").disabled = data.page <= 1;
  document.getElementById("next").disabled = data.page >= pages;
}

async function showAttempts(runId, row) {
  const params = row.dataset.row !== "-" ? `row=${row.dataset.row}` :
    `id=${encodeURIComponent(row.dataset.id)}`;
  const attempts = await fetchJson(`${ROOT}runs/${encodeURIComponent(runId)}/task.json?${params}`);
  const section = document.getElementById("attempts");
  setText("attempts-of", `row ${row.dataset.row}`);
  section.querySelector("tbody").replaceChildren(...attempts.map((a) => {
    const line = el("tr");
    for (const value of [a.attempt, a.worker, a.host, clock(a.started),
      a.seconds === null ? "" : Number(a.seconds).toFixed(3), a.outcome,
      a.outcome === "done" ? a.result : a.reason]) line.append(textCell(value ?? ""));
    return line;
  }));
  section.hidden = false;
}

function runPage() {
  const runId = document.getElementById("run-title").dataset.run;
  const reload = () => loadTasks(runId).catch((error) => toast(String(error), false));
  document.getElementById("filter").addEventListener("submit", (event) => {
    event.preventDefault();
    page = 1;
    reload();
  });
  document.getElementById("prev").addEventListener("click", () => { page -= 1; reload(); });
  document.getElementById("next").addEventListener("click", () => { page += 1; reload(); });
  document.querySelector("#tasks tbody").addEventListener("click", (event) => {
    const row = event.target.closest("tr");
    if (row) showAttempts(runId, row).catch((error) => toast(String(error), false));
  });
  reload();
}

document.addEventListener("DOMContentLoaded", () => {
  const which = document.body.dataset.page;
  if (which === "live") livePage();
  if (which === "run") runPage();
});
