"""The rate limit on the web view's live page, in headless chromium through a real
``task_report.py --serve`` and the real broker: worker snapshots made up here (published to the
queue's events exchange as a worker's outbox does) say a limit is applied and a slot waits for
its turn; the page shows the limit's line and the waiting slot, and a key from a stranger stays
text (no element made of it, its control characters as stand-ins)."""

from __future__ import annotations

import json
import re
import time

import pika

from taskqueue.broker.config import QueueSpec
from taskqueue.broker.topology import ROUTING_LIVE
from tests.dashboard import start_dashboard
from tests.helpers import MAIN_URL, wait_for

HOSTILE_KEY = "<img src=x onerror=document.title=9>\x1b[1m"  # 40 characters: all shown


def snapshot(now: float) -> dict:
    return {"kind": "snapshot", "worker": "alice", "host": "h1", "pid": 1, "time": now,
            "state": "running", "connected": True,
            "rate": {"limit": "20/s", "per_key": True, "arbiter": True,
                     "busiest": [[HOSTILE_KEY, 5.0]]},
            "slots": [{"slot": "alice/1", "state": "busy", "since": now - 1, "row": 7,
                       "task": "fetch.", "run_id": "r1", "done": 0, "failed": 0,
                       "rate_wait": {"key": HOSTILE_KEY, "until": now + 30}},
                      {"slot": "alice/2", "state": "idle", "since": now - 5, "done": 2,
                       "failed": 0}]}


def test_the_live_page_shows_the_limit_and_a_waiting_slot_as_text(page, queue, logs, tmp_path):
    board = start_dashboard(queue, tmp_path, logs)
    page.goto(board.address)
    page.wait_for_selector("#connection.ok")
    assert page.is_hidden("#rate-limit"), "no limit heard of: no line"
    exchange = QueueSpec(queue).exchange
    connection = pika.BlockingConnection(pika.URLParameters(MAIN_URL))
    try:
        channel = connection.channel()

        def shown() -> bool:
            channel.basic_publish(exchange, ROUTING_LIVE, json.dumps([snapshot(time.time())])
                                  .encode(), pika.BasicProperties(content_type="application/json",
                                                                  expiration="10000"))
            return "waiting for the rate limit" in page.inner_text("#workers")

        wait_for(shown, timeout=30, interval=0.5, what="the waiting slot on the page")
        rate = page.inner_text("#rate-limit")
        slot = page.inner_text("#workers tr.slot.waiting")
    finally:
        connection.close()
        board.stop()
    assert rate.startswith("rate limit 20/s (per key), arbiter alice, busiest: ")
    assert re.search(r"waiting for the rate limit, \d+ s left: row 7, key ", slot), slot
    shown_key = '"<img src=x onerror=document.title=9>\\x1b[1m"'
    assert f"key {shown_key}" in slot, slot
    assert f"busiest: {shown_key} 5 s" in rate, rate
    assert page.locator("#workers img, #rate-limit img").count() == 0
    assert page.title() != "9"
