"use strict";
// The overview of several queues (issue 30, item 6): each queue's depths, workers and attempts
// done and failed in the last 60 s, read from overview.json every 2 s (a small answer, no
// stream held: the server's cost stays one broker reader per queue however many tabs). A
// queue whose broker does not answer is greyed with why and the time its figures are of; the
// dashboard not answering greys them all. Uses app.js's helpers: names are text.

const OVERVIEW_EVERY_MS = 2000;

function queueState(queue) {
  if (queue.problem) return `broker unreachable: ${queue.problem}; as of ${clock(queue.as_of)}`;
  return queue.paused ? "paused" : "live";
}

function showQueue(row, queue) {
  const figure = (name) => row.querySelector(`[data-figure="${name}"]`);
  for (const name of ["ready", "retrying", "dead"]) fill(figure(name), queue[name] ?? "?");
  fill(figure("parked"), queue.parked_shown ? queue.parked ?? "?" : "-");
  fill(figure("workers"), `${queue.workers} (${queue.busy} busy)`);
  fill(figure("done"), queue.done_per_minute);
  fill(figure("failed"), queue.failed_per_minute);
  fill(figure("state"), queueState(queue));
  row.classList.toggle("stale", Boolean(queue.problem));
  row.classList.toggle("paused", queue.paused);
}

async function readOverview() {
  const rows = new Map([...document.querySelectorAll("#overview tr.queue-row")]
    .map((row) => [row.dataset.queue, row]));
  try {
    const data = await fetchJson(`${ROOT}overview.json`);
    for (const queue of data.queues) {
      const row = rows.get(queue.name);
      if (row) showQueue(row, queue);
    }
    // The parked column (a rate limit's): there while one queue at least has it to show.
    const parked = data.queues.some((queue) => queue.parked_shown);
    for (const cell of document.querySelectorAll('#overview [data-figure="parked"]')) {
      cell.hidden = !parked;
    }
    setText("updated", clock(data.updated));
    lastUpdated = data.updated;
    showStanding(null);
  } catch (error) {
    showStanding(`the dashboard does not answer (${error.message || error})`);
  }
}

onPage("overview", () => {
  readOverview();
  setInterval(readOverview, OVERVIEW_EVERY_MS);
});
