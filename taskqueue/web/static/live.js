"use strict";
// The live page: the queue, the current run, the workers and the latest failures, pushed by the
// server's event stream (/stream). Uses app.js's helpers (loaded first, same global scope).

let currentRun = "";

function showLive(data) {
  const q = data.queue, r = data.run;
  for (const key of ["ready", "in_progress", "retrying", "dead", "consumers"]) {
    setText(`q-${key}`, q[key]);
  }
  setText("q-latency", q.latency === null ? "-" : seconds(q.latency));
  // The tasks a rate limit parked: shown while some are, or while a limit is in force.
  for (const id of ["q-parked-label", "q-parked"]) {
    document.getElementById(id).hidden = !q.parked_shown;
  }
  setText("q-parked", q.parked ?? "?");
  document.getElementById("paused").hidden = !q.paused;
  // The rate limit the workers apply, as the terminal view says it (keys in it are text).
  const rate = document.getElementById("rate-limit");
  rate.hidden = !data.rate;
  fill(rate, data.rate || "");
  showRuns(data.runs.length ? data.runs : [{ ...r, run: r.id }], data.runs_more);
  showWorkers(data);
  showFailures(data.failures);
  setText("updated", clock(data.updated));
}

// A card per run going on, newest first, each with the record's figures for that run (the
// runs page's): a card follows its own run, and its counts only grow. The first card is the
// page's own (#run-card: its "Cancel run" acts on that run); the others are copies of it.
function showRuns(runs, more) {
  const first = document.getElementById("run-card");
  for (const old of document.querySelectorAll(".run-card.other")) old.remove();
  let after = first;
  runs.forEach((run, index) => {
    let card = first;
    if (index > 0) {
      card = first.cloneNode(true);
      card.classList.add("other");
      for (const node of [card, ...card.querySelectorAll("[id]")]) node.removeAttribute("id");
      after.after(card);
      after = card;
    }
    showRun(card, run);
  });
  currentRun = runs[0].run || "";
  const moreNote = document.getElementById("runs-more");
  moreNote.hidden = !more;
  setText("runs-more-count", more);
}

function showRun(card, r) {
  const figure = (name) => card.querySelector(`[data-figure="${name}"]`);
  card.dataset.run = r.run || "";
  const link = figure("link");
  fill(link, r.run || "-");
  link.href = r.run ? `${ROOT}runs/${encodeURIComponent(r.run)}` : `${ROOT}runs`;
  fill(figure("done"), r.total === null ? r.done : `${r.done} / ${r.total}`);
  for (const key of ["failed", "dead", "cancelled"]) fill(figure(key), r[key]);
  fill(figure("rate"), r.rate === null ? "-" : `${r.rate} tasks/s`);
  fill(figure("eta"), r.eta === null ? "?" : seconds(r.eta));
  const progress = figure("progress");
  progress.max = r.total || 1;
  progress.value = r.total ? r.done + r.dead + r.cancelled : 0;
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
      const state = textCell(slot.state);
      if (slot.progress) state.append(progressOf(slot.progress));
      line.append(textCell(slot.slot), el("td", ""), state, el("td", ""),
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

// A busy slot's latest progress, as its task told it: a bar, the percentage, and the note: a
// stranger's text, filled in as text and isolated (bdi), never markup.
function progressOf(progress) {
  const box = el("div", null, "task-progress");
  const percent = Math.round(100 * progress.fraction);
  const bar = el("progress");
  bar.max = 1;
  bar.value = progress.fraction;
  box.dataset.fraction = String(progress.fraction);
  box.append(bar, ` ${percent}% `, bdi(progress.note));
  return box;
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

onPage("live", () => followLive(showLive));
