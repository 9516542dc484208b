"use strict";
// The live page: the queue, the current run, the workers and the latest failures, pushed by the
// server's event stream (/stream). Uses app.js's helpers (loaded first, same global scope).

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

onPage("live", livePage);
