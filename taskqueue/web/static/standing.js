"use strict";
// How a queue's pages stand (issue 30, item 7): the live page, a run's page, a task's page and
// the dead tasks all follow the queue's stream (one per browser, shared by its tabs) and say,
// when the broker or the dashboard does not answer, why, grey their figures, keep the time
// they were true and disable their buttons; the next snapshot makes them live again. Uses
// app.js's helpers; live.js shows what the live page shows of each snapshot.

// --- how the figures stand: current, or as of the last moment someone answered -------------
// When the broker does not answer (the server says so: data.problem) or the dashboard itself
// does not (the stream is lost), the page says so, greys its figures, keeps the time they were
// true, and disables the buttons (they would fail); it recovers by itself with the next snapshot.
let lastUpdated = null;

let stale = false;

function showStanding(why) {
  const connection = document.getElementById("connection");
  const asOf = lastUpdated ? `; the figures are as of ${clock(lastUpdated)}` : "";
  fill(connection, why ? `${why}${asOf}; trying again by itself…` : "live");
  connection.className = why ? "connection error" : "connection ok";
  document.querySelector("main").classList.toggle("stale", Boolean(why));
  for (const button of document.querySelectorAll("main button[data-action]")) {
    button.disabled = Boolean(why);
  }
  // A page that read its figures once (a run's table, a task's attempts) reads them again.
  if (stale && !why) document.dispatchEvent(new Event("taskqueue:live-again"));
  stale = Boolean(why);
}

let showSnapshot = () => {}; // the page's own use of a snapshot (the live page shows it all)

function onSnapshot(text) {
  const data = JSON.parse(text);
  lastUpdated = data.updated;
  showSnapshot(data);
  showStanding(data.problem ? `broker unreachable: ${data.problem}` : null);
}

const onLost = () => showStanding("the dashboard does not answer (reconnecting to the dashboard…)");

// --- the stream: one per browser, shared by its tabs (stream-worker.js) ----------------------
// A browser opens at most 6 connections to a host: a stream per tab would starve the seventh
// tab and every other page. Where SharedWorker is missing (or fails to load), one of our own.
class LiveStream {
  constructor() {
    this.port = null;
    this.source = null;
    this.visible = false;
    if (typeof SharedWorker !== "function") return;
    try {
      const worker = new SharedWorker(`${ROOT}static/stream-worker.js`, { name: "taskqueue-live" });
      worker.onerror = () => this.ownStream();
      this.port = worker.port;
      this.port.onmessage = (event) => {
        if (event.data.lost) onLost(); else onSnapshot(event.data.data);
      };
    } catch (error) {
      this.port = null; // not allowed here: our own stream
    }
  }

  ownStream() {
    if (this.port) this.port.close();
    this.port = null;
    this.shown(this.visible);
  }

  shown(visible) {
    this.visible = visible;
    if (this.port) { this.port.postMessage({ visible }); return; }
    if (visible && !this.source) {
      this.source = new EventSource(`${ROOT}stream`);
      this.source.onmessage = (event) => onSnapshot(event.data);
      this.source.onerror = onLost;
    }
    if (!visible && this.source) { this.source.close(); this.source = null; }
  }

  bye() {
    if (this.port) this.port.postMessage({ bye: true }); else this.shown(false);
  }
}

// Follows the queue's stream; *show* is given each snapshot. A hidden tab costs nothing: it
// stops listening, and starts again when shown.
function followLive(show) {
  showSnapshot = show;
  const stream = new LiveStream();
  const follow = () => {
    stream.shown(!document.hidden);
    if (document.hidden) setText("connection", "paused while the tab is hidden");
  };
  document.addEventListener("visibilitychange", follow);
  window.addEventListener("pagehide", () => stream.bye());
  window.addEventListener("pageshow", follow); // back from the back-forward cache
  follow();
}

// Pages whose figures are read once, from the record: how they stand, from the same stream.
for (const name of ["run", "task", "dead"]) onPage(name, () => followLive(() => {}));
// The dead tasks are the server's page, not a script's: read again whole once live again.
onPage("dead", () => document.addEventListener("taskqueue:live-again", () => location.reload()));
