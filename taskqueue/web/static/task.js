"use strict";
// A task's own page (runs/RUN/tasks/ROW): every attempt, and each one's result or reason in
// full. Uses app.js's helpers: what the record holds is shown as text, isolated.

function attemptLine(a) {
  const line = el("tr", null, `attempt ${a.outcome ?? ""}`);
  for (const value of [a.attempt, a.worker, a.host, clock(a.started),
    a.seconds === null || a.seconds === undefined ? "" : Number(a.seconds).toFixed(3),
    a.outcome]) line.append(textCell(value ?? ""));
  return line;
}

function attemptText(a) {
  const block = el("section", null, "attempt-text");
  const heading = el("h3");
  heading.append(a.outcome === "deleted" ? "deleted by " : `attempt ${a.attempt ?? "?"}: ` +
    `${a.outcome ?? "?"} `, bdi(a.worker ?? ""));
  const text = el("pre", null, "full-text");
  text.append(bdi((a.outcome === "done" ? a.result : a.reason) ?? ""));
  block.append(heading, text);
  return block;
}

async function taskPage() {
  const title = document.getElementById("task-title");
  const params = title.dataset.row ? `row=${title.dataset.row}`
    : `id=${encodeURIComponent(title.dataset.id)}`;
  const attempts = await fetchJson(
    `${ROOT}runs/${encodeURIComponent(title.dataset.run)}/task.json?${params}`);
  const last = attempts[attempts.length - 1] || {};
  const tried = attempts.filter((a) => a.outcome !== "deleted").length;
  setText("task-outcome", `${tried} attempt(s); now: ${last.outcome ?? "?"}`);
  document.querySelector("#task-attempts tbody").replaceChildren(...attempts.map(attemptLine));
  document.getElementById("task-texts").replaceChildren(...attempts.map(attemptText));
}

onPage("task", () => {
  const load = () => taskPage().catch((error) => toast(String(error), false));
  document.addEventListener("taskqueue:live-again", load); // standing.js: read on again
  load();
});
