"""Hostile task text in the web view (issue 30, item 4): whatever a task holds, it stays text,
and it cannot harm the page around it. Tasks published for real, worked by a real worker,
shown by a real ``task_report.py --serve`` in Debian's chromium:

* a right-to-left override (U+202E) cannot reorder the page's own text after the task
  (checked on the layout: the characters of "attempts, last by" stand left to right);
* NUL, other C0 and C1 control characters are shown visibly (as escapes, set apart), none
  reaches the page raw, and the run's timeline SVG stays valid XML (it parses, and the
  browser draws it);
* unbroken strings of 100 kB (the task, its error, its result) wrap: no page scrolls sideways.

How each case travels: the emitter reads a task file as UTF-8 lines and refuses a NUL byte, so
the NUL task is published as another producer would (pika, a raw body). A lone surrogate cannot
be carried by a task at all (a body is UTF-8 and the worker dead-letters one that is not); it
can only come in a record written by a stranger (JSON's ``\\ud800``): such a record is published
to the results stream, and the timeline is also drawn from one directly (the fast test).
"""

from __future__ import annotations

import json
import re
import time
import xml.etree.ElementTree as ET

import pika
import pytest
from playwright.sync_api import Page

from taskqueue.broker.config import QueueSpec
from taskqueue.views.timeline import svg
from taskqueue.wire.messages import message_id
from tests.dashboard import start_dashboard
from tests.helpers import MAIN_URL, run_script, start_worker, wait_for, write_csv

RLO = "\u202e"
CONTROLS = "\x07\x1b[31m\x08\x0b\x0c\r\x7f c1 \x85\x9b"  # C0 (not tab or newline), DEL, C1
LONG = 100_000  # characters in one unbroken word

# The page's own text after a task must keep its order: these phrases follow the task text.
AFTER_TASK_LIVE = "cannot handle"  # the failure's reason, after the task on the live page
AFTER_TASK_DEAD = "attempts, last by"  # "(1 attempts, last by w1)" after the task

# Every character of *phrase* (in the first text node under *selector* holding it), left
# edges in the order they are written: a reordered phrase is not increasing.
LEFTS = """(root, phrase) => {
  const walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT);
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    const at = node.data.indexOf(phrase);
    if (at < 0) continue;
    const lefts = [];
    for (let i = at; i < at + phrase.length; i++) {
      if (node.data[i] === " ") continue;
      const range = document.createRange();
      range.setStart(node, i);
      range.setEnd(node, i + 1);
      lefts.push(range.getBoundingClientRect().left);
    }
    return lefts;
  }
  return null;
}"""

# How *text* is isolated from the page's text around it: the computed unicode-bidi of the
# nearest inline element around it that isolates, else "none". (A block isolates nothing from
# the text beside it in the same block: only an inline isolate does.)
ISOLATION = """(text) => {
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    if (!node.data.includes(text)) continue;
    for (let el = node.parentElement; el; el = el.parentElement) {
      const style = getComputedStyle(el);
      if (style.display !== "inline") return "none";
      if (style.unicodeBidi.includes("isolate")) return style.unicodeBidi;
    }
  }
  return null;
}"""

RAW_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")
# How the page shows NUL (the NUL task) and CONTROLS: as their escapes, in their own style.
SHOWN = ["\\x00", "\\x07", "\\x1b", "\\x08", "\\x0b", "\\x0c", "\\x0d", "\\x7f", "\\x85",
         "\\x9b"]


def reads_left_to_right(tab: Page, selector: str, phrase: str) -> None:
    lefts = tab.locator(selector).first.evaluate(LEFTS, phrase)
    assert lefts, f"{phrase!r} not found under {selector}"
    assert lefts == sorted(lefts) and len(set(lefts)) == len(lefts), \
        f"the page's own {phrase!r} is reordered by the task's text before it: {lefts}"


def no_sideways_scroll(tab: Page, what: str) -> None:
    wide, client = tab.evaluate("[document.documentElement.scrollWidth, "
                                 "document.documentElement.clientWidth]")
    assert wide <= client, f"{what} scrolls sideways: {wide} px of content in {client} px"


def controls_shown(tab: Page, selector: str, expected: list[str]) -> None:
    text = tab.locator(selector).inner_text()
    raw = sorted({f"U+{ord(c):04X}" for c in RAW_CONTROL.findall(text)})
    assert not raw, f"control characters reach {selector} raw: {raw}"
    missing = [symbol for symbol in expected if symbol not in text]
    assert not missing, f"not shown visibly in {selector}: {missing}"
    assert tab.locator(f"{selector} .ctl").count() >= len(expected), "in their own style"


def publish_raw(queue: str, run: str, row: int, text: str) -> None:
    """A task as another producer publishes it: any UTF-8 body (here one holding a NUL)."""
    connection = pika.BlockingConnection(pika.URLParameters(MAIN_URL))
    try:
        connection.channel().basic_publish(
            "", queue, text.encode("utf-8"),
            pika.BasicProperties(message_id=message_id("producer", row, text, "producer"),
                                 correlation_id=run, type="task", delivery_mode=2))
    finally:
        connection.close()


def test_hostile_task_text_cannot_reorder_break_or_widen_the_pages(page, queue, logs,
                                                                   tmp_path):
    rows = [f"boom spoof {RLO}reversed", f"boom ctl {CONTROLS} end",
            "boom " + "w" * LONG, "long " + "y" * LONG, f"fine {CONTROLS}"]
    run = emit_big(queue, logs, write_csv(tmp_path / "t.csv", rows))
    publish_raw(queue, run, 6, "boom nul \x00 end")
    board = start_dashboard(queue, tmp_path, logs)
    page.goto(board.address)
    page.wait_for_selector("#connection.ok")
    worker = start_worker("--queue", queue, "--name", "w1", "--handler",
                          "tests.handlers:dots_fail_on_boom", "--max-retries", "0",
                          "--max-task-bytes", "200000", "--exit-when-idle", "2",
                          log_dir=logs, out=tmp_path / "w.out")
    assert worker.wait(timeout=120) == 0, (tmp_path / "w.out").read_text()[-2000:]

    # The live page: the last failures, each "... <task>: dead (<reason>)".
    page.wait_for_selector("#failures li:has-text('spoof')")
    wait_for(lambda: page.locator("#failures li").count() == 4, what="the four failures shown")
    reads_left_to_right(page, "#failures li:has-text('spoof')", AFTER_TASK_LIVE)
    assert page.evaluate(ISOLATION, "spoof") == "isolate"
    controls_shown(page, "#failures", SHOWN)
    no_sideways_scroll(page, "the live page")

    # The dead tasks: "row N: <task> (1 attempts, last by w1)".
    page.click("header a[href='/dead']")
    page.wait_for_selector(".reason")
    reads_left_to_right(page, ".reason li:has-text('spoof')", AFTER_TASK_DEAD)
    assert page.evaluate(ISOLATION, "spoof") == "isolate"
    controls_shown(page, "main", SHOWN)
    no_sideways_scroll(page, "the dead tasks page")

    # The run's page: its table, and its timeline (every attempt's task in a bar's title).
    page.goto(f"{board.base}/runs/{run}")
    page.wait_for_selector("#tasks tbody tr")
    assert page.locator("#tasks tbody tr").count() == 6
    assert page.evaluate(ISOLATION, "spoof") == "isolate"
    controls_shown(page, "#tasks", SHOWN)
    page.wait_for_function("document.getElementById('timeline').complete")
    assert page.evaluate("document.getElementById('timeline').naturalWidth") > 0, \
        "the browser draws the run's timeline"
    no_sideways_scroll(page, "the run's page")
    page.locator("#tasks tbody tr:has-text('spoof')").click()
    page.wait_for_selector("#attempts:not([hidden]) tbody tr")
    no_sideways_scroll(page, "the run's page with a task's attempts")

    status, headers, body = board.request("GET", f"/runs/{run}/timeline.svg")
    assert status == 200 and headers["content-type"].startswith("image/svg+xml"), status
    picture = ET.fromstring(body)  # valid XML, or this raises
    titles = [t.text or "" for t in picture.iter("{http://www.w3.org/2000/svg}title")]
    assert len(titles) == 6, titles
    assert any("nul \\x00 end" in t for t in titles), "the NUL is drawn as its escape"
    assert any("\\x07\\x1b[31m" in t for t in titles), "so are the other controls"
    board.stop()


def emit_big(queue: str, logs, path) -> str:
    """``emit`` of the browser tests, with room for the 100 kB task."""
    result = run_script("emitter_of_tasks.py", "--queue", queue, "--file", str(path),
                        "--max-task-bytes", "200000", log_dir=logs)
    assert result.returncode == 0, result.stdout + result.stderr
    return re.search(r"\(run (\S+)\)", result.stdout)[1]


def publish_record(queue: str, record: dict) -> None:
    """A record as a stranger writes it to the results stream (JSON escapes \\ud800 for a lone
    surrogate: json.dumps does by default)."""
    connection = pika.BlockingConnection(pika.URLParameters(MAIN_URL))
    try:
        connection.channel().basic_publish("", QueueSpec(queue).results_name,
                                           json.dumps([record]).encode())
    finally:
        connection.close()


def test_a_record_holding_a_lone_surrogate_is_shown_and_the_dashboard_reads_on(
        page, queue, logs, tmp_path):
    run = emit_big(queue, logs, write_csv(tmp_path / "t.csv", ["fine"]))
    board = start_dashboard(queue, tmp_path, logs)
    now = time.time()
    publish_record(queue, {
        "kind": "task", "id": "stranger-1", "run_id": run, "worker": "stranger", "host": "h",
        "message_id": "stranger:2:0", "row": 2, "task": "lone \ud800 here", "outcome": "dead",
        "received": now, "started": now, "finished": now + 0.1, "seconds": 0.1, "attempt": 1,
        "redelivered": False, "reason": "bad \udc00 reason", "result": None})
    worker = start_worker("--queue", queue, "--exit-when-idle", "2", log_dir=logs,
                          out=tmp_path / "w.out")  # its record comes after the stranger's
    assert worker.wait(timeout=60) == 0
    page.goto(board.address)
    page.wait_for_selector("#connection.ok")
    page.goto(f"{board.base}/runs/{run}")
    page.wait_for_selector("#tasks tbody tr:has-text('fine')")  # read on past the stranger's
    shown = page.locator("#tasks").inner_text()
    assert "lone" in shown and not re.search("[\ud800-\udfff]", shown), shown
    status, _headers, body = board.request("GET", f"/runs/{run}/timeline.svg")
    assert status == 200
    ET.fromstring(body)
    page.click("header a[href='/dead']")
    assert "bad" in page.locator(".reason-text").inner_text()
    board.stop()


@pytest.mark.fast
def test_the_timeline_is_valid_xml_whatever_its_records_hold():
    """A stranger's records may hold anything JSON can: NUL, controls, lone surrogates
    (``"\\ud800"``), U+FFFE. The picture stays XML 1.0 and shows each one visibly."""
    hostile = "a\x00b\x1b\x85\ud800\udfff\ufffe" + RLO + "z"
    bars = [{"worker": f"w{hostile}", "started": 1.0, "finished": 2.0, "outcome": "dead",
             "row": 1, "task": hostile, "seconds": 1.0}]
    picture = svg(f"run {hostile}", 1.0, 2.0, [(f"w{hostile}", f"w{hostile}", 0)], bars, None,
                  {})
    root = ET.fromstring(picture.encode("utf-8"))
    text = "".join(root.itertext())
    assert "a\\x00b\\x1b\\x85\\ud800\\udfff\\ufffe" in text
