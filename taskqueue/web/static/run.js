"use strict";
// A run's page: its tasks (filtered, sorted by the server, paged), a task's attempts, a link
// to each task's own page. Uses app.js's helpers.

let page = 1;
const order = { sort: "", descending: false };

// A task's own page: runs/RUN/tasks/ROW, or by its message id for a task without a row.
function taskHref(runId, row, messageId) {
  const run = encodeURIComponent(runId);
  return row === "-" || row === null || row === undefined
    ? `${ROOT}runs/${run}/tasks/id/${encodeURIComponent(messageId)}`
    : `${ROOT}runs/${run}/tasks/${row}`;
}

function rowCell(runId, task) {
  const cell = el("td");
  const link = el("a", task.row, "task-link");
  link.href = taskHref(runId, task.row, task.message_id);
  cell.append(link);
  return cell;
}

function showOrder() {
  for (const head of document.querySelectorAll("#tasks th[data-sort]")) {
    if (head.dataset.sort === order.sort) {
      head.setAttribute("aria-sort", order.descending ? "descending" : "ascending");
    } else head.removeAttribute("aria-sort");
  }
}

async function loadTasks(runId) {
  const form = document.getElementById("filter");
  const params = new URLSearchParams(new FormData(form));
  params.set("page", page);
  if (order.sort) params.set("sort", order.sort);
  if (order.descending) params.set("desc", "1");
  const data = await fetchJson(`${ROOT}runs/${encodeURIComponent(runId)}/tasks.json?${params}`);
  const c = data.counts;
  setText("run-counts", `${data.tasks} tasks: ${c.done} done, ${c.dead} dead, ` +
    `${c.cancelled} cancelled, ${c.failed} failed and not yet retried to an end`);
  const rows = data.rows.map((task) => {
    const row = el("tr", null, `task ${task.outcome}`);
    row.dataset.row = task.row;
    row.dataset.id = task.message_id;
    row.append(rowCell(runId, task));
    for (const key of ["task", "worker", "started", "seconds", "attempts", "outcome",
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

// The timeline picture, read again: under a new address (the same one is not fetched again).
function reloadTimeline() {
  const timeline = document.getElementById("timeline");
  const address = new URL(timeline.src);
  address.searchParams.set("read", Date.now());
  timeline.src = address.href;
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
  document.querySelector("#tasks thead").addEventListener("click", (event) => {
    const head = event.target.closest("th[data-sort]");
    if (!head) return;
    order.descending = order.sort === head.dataset.sort ? !order.descending : false;
    order.sort = head.dataset.sort;
    page = 1;
    showOrder();
    reload();
  });
  document.querySelector("#tasks tbody").addEventListener("click", (event) => {
    if (event.target.closest("a")) return;  // the task's own page
    const row = event.target.closest("tr");
    if (row) showAttempts(runId, row).catch((error) => toast(String(error), false));
  });
  document.addEventListener("taskqueue:live-again", () => { // standing.js: read on again
    reload();
    reloadTimeline();
  });
  reload();
}

onPage("run", runPage);
