"use strict";
// The history page (history.html): the chart is drawn by the server (views/chart.py) and is in
// the page as it comes; every 30 s the same window's chart is fetched again and put in its
// place, parsed as SVG (XML), never as HTML. Uses app.js's ROOT, onPage and toast.

const HISTORY_EVERY_MS = 30000;

async function refreshHistory(box) {
  const answer = await fetch(`${ROOT}history.svg?window=${encodeURIComponent(box.dataset.window)}`,
    { credentials: "same-origin" });
  if (!answer.ok) throw new Error(`the chart could not be read (${answer.status})`);
  const parsed = new DOMParser().parseFromString(await answer.text(), "image/svg+xml");
  const chart = parsed.documentElement;
  if (chart.nodeName !== "svg") throw new Error("the chart could not be read");
  box.replaceChildren(document.importNode(chart, true));
  box.dataset.refreshed = String(Number(box.dataset.refreshed || "0") + 1);
}

onPage("history", () => {
  const box = document.getElementById("history-chart");
  setInterval(() => refreshHistory(box).catch((error) => toast(String(error), false)),
    HISTORY_EVERY_MS);
});
