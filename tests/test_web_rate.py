"""The rate limit on the web view's live page, in headless chromium through a real
``task_report.py --serve`` and the real broker: worker snapshots made up here (published to the
queue's events exchange as a worker's outbox does) say a limit is applied and a slot waits for
its turn; the page shows the limit's line, the waiting slot and the tasks parked in the
limit's tiers (on the Queue card), and a key from a stranger stays text (no element made of it,
its control characters as stand-ins)."""

from __future__ import annotations

import json
import re
import time

import pika

from taskqueue.broker.config import QueueSpec
from taskqueue.broker.topology import ROUTING_LIVE
from tests.dashboard import start_dashboard
from tests.helpers import MAIN_URL, delete_queues, wait_for

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
    assert page.is_hidden("#q-parked") and page.is_hidden("#q-parked-label"), \
        "no limit, nothing parked: no parked count"
    spec = QueueSpec(queue)
    exchange = spec.exchange
    connection = pika.BlockingConnection(pika.URLParameters(MAIN_URL))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        # A plain queue stands for a tier (no TTL: its tasks stay while the page counts them).
        channel.queue_declare(spec.wait_names[1], durable=True)
        for n in range(3):
            channel.basic_publish("", spec.wait_names[1], f"task {n}".encode())

        def shown() -> bool:
            channel.basic_publish(exchange, ROUTING_LIVE, json.dumps([snapshot(time.time())])
                                  .encode(), pika.BasicProperties(content_type="application/json",
                                                                  expiration="10000"))
            return "waiting for the rate limit" in page.inner_text("#workers")

        wait_for(shown, timeout=30, interval=0.5, what="the waiting slot on the page")
        wait_for(lambda: shown() and page.is_visible("#q-parked")
                 and page.inner_text("#q-parked") == "3", timeout=30, interval=0.5,
                 what="the parked count on the Queue card")
        label = page.inner_text("#q-parked-label")
        rate = page.inner_text("#rate-limit")
        slot = page.inner_text("#workers tr.slot.waiting")
    finally:
        connection.close()
        board.stop()
    assert rate.startswith("rate limit 20/s (per key), arbiter alice, busiest: ")
    assert label == "parked (rate limit)"
    assert re.search(r"waiting for the rate limit, \d+ s left: row 7, key ", slot), slot
    shown_key = '"<img src=x onerror=document.title=9>\\x1b[1m"'
    assert f"key {shown_key}" in slot, slot
    assert f"busiest: {shown_key} 5 s" in rate, rate
    assert page.locator("#workers img, #rate-limit img").count() == 0
    assert page.title() != "9"


def overview_cells(page, name: str) -> dict[str, tuple[str, bool]]:
    """A queue's line on the overview: each figure's text, and whether it is shown."""
    row = page.locator(f'#overview tr.queue-row[data-queue="{name}"]')
    return {cell.get_attribute("data-figure"): (cell.inner_text(), cell.is_visible())
            for cell in row.locator("td[data-figure]").all()}


def test_the_overview_counts_the_tasks_a_rate_limit_parked(page, queue, logs, tmp_path):
    """Two queues, no worker, no limit: no parked column; tasks in B's tier (a plain queue
    stands for it): the column appears, B's line says 2, A's "-" (nothing parked, no limit),
    and overview.json says the same."""
    a, b = queue, f"{queue}.b"
    board = start_dashboard(a, tmp_path, logs, "--queue", b)
    try:
        page.goto(board.address)
        wait_for(lambda: overview_cells(page, b).get("workers", ("?",))[0] != "?",
                 timeout=30, what="the overview's first figures")
        assert overview_cells(page, b)["parked"][1] is False
        assert page.is_hidden('#overview th[data-figure="parked"]'), "no parked column"
        tier = QueueSpec(b).wait_names[1]
        connection = pika.BlockingConnection(pika.URLParameters(MAIN_URL))
        try:
            channel = connection.channel()
            channel.confirm_delivery()
            channel.queue_declare(tier, durable=True)
            for n in range(2):
                channel.basic_publish("", tier, f"task {n}".encode())
        finally:
            connection.close()
        # No tier, no limit: the feed looks for tiers every 10 s (views/live_parked.py).
        wait_for(lambda: overview_cells(page, b)["parked"] == ("2", True), timeout=30,
                 interval=0.5, what="B's parked count on the overview")
        assert overview_cells(page, a)["parked"] == ("-", True)
        assert page.inner_text('#overview th[data-figure="parked"]') == "parked (rate limit)"
        rows = {row["name"]: row for row in page.evaluate(
            "() => fetch(`${ROOT}overview.json`).then((answer) => answer.json())")["queues"]}
        assert (rows[b]["parked"], rows[b]["parked_shown"]) == (2, True)
        assert (rows[a]["parked"], rows[a]["parked_shown"]) == (0, False)
    finally:
        board.stop()
        delete_queues(b)
