// The dashboard's scripts (no build step, no CDN): this one's helpers and buttons, then each
// page's own (live.js, run.js). Everything from the server is data: it goes into the page as
// text (fill), never as markup.
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

// A toast goes away by itself (an error stays a little longer, to be read).
const TOAST_MS = { ok: 5000, error: 10000 };
let toastTimer = null;

function toast(text, ok) {
  const node = document.getElementById("toast");
  fill(node, text);
  node.className = ok ? "ok" : "error";
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { node.replaceChildren(); node.className = ""; },
    TOAST_MS[node.className]);
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
  if (button.dataset.id) params.set("id", button.dataset.id);
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

// Each page's script registers what it does on its page (live.js, run.js); all are deferred,
// so they run in order, before DOMContentLoaded.
function onPage(name, start) {
  document.addEventListener("DOMContentLoaded", () => {
    if (document.body.dataset.page === name) start();
  });
}
