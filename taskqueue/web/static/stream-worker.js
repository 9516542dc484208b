"use strict";
// One event stream per browser, however many of its tabs show the live page: this SharedWorker
// holds the only EventSource on /stream and passes each snapshot on to every tab (MessagePort).
// A browser opens at most 6 HTTP/1.1 connections to a host; a stream per tab used them all up,
// so the seventh tab, and every other page of the dashboard in that browser, waited forever.
//
// A tab says whether it is shown ({visible}), and {bye} when it goes. The stream is open while
// at least one tab is shown, closed while all are hidden (a hidden tab costs nothing). A tab
// shown again is sent the last snapshot at once. {lost} tells the tabs the dashboard does not
// answer (EventSource tries again by itself; when it gives up, we start it again).

// The stream is next to this script's folder: /static/stream-worker.js -> /stream, and
// under a prefix (--public-url) /taskqueue/static/stream-worker.js -> /taskqueue/stream.
const STREAM = new URL("../stream", self.location.href).href;
const RETRY_MS = 5000; // after the server refused the stream (a restart, a lost session)

const tabs = new Map(); // MessagePort -> shown (bool)
let source = null;
let last = null; // the latest snapshot's text, for a tab shown again
let retry = null;

function tell(message) { // to the tabs shown: a hidden one keeps saying it is paused
  for (const [port, shown] of tabs) if (shown) port.postMessage(message);
}

function open() {
  source = new EventSource(STREAM);
  source.onmessage = (event) => {
    last = event.data;
    tell({ data: event.data });
  };
  source.onerror = () => {
    tell({ lost: true });
    if (source && source.readyState === EventSource.CLOSED) {
      source = null;
      retry = retry || setTimeout(() => { retry = null; follow(); }, RETRY_MS);
    }
  };
}

// Open or close the stream for what the tabs want now.
function follow() {
  const wanted = [...tabs.values()].some((shown) => shown);
  if (wanted && !source && !retry) open();
  if (!wanted && source) {
    source.close();
    source = null;
  }
}

self.onconnect = (event) => {
  const port = event.ports[0];
  tabs.set(port, false);
  port.onmessage = (message) => {
    if (message.data.bye) {
      tabs.delete(port);
    } else {
      tabs.set(port, Boolean(message.data.visible));
      // Only while the stream is open: after all tabs were hidden, the last one is old.
      if (message.data.visible && source && last !== null) port.postMessage({ data: last });
    }
    follow();
  };
};
