"""Several queues from one dashboard, without a broker (issue 30, item 6; review r2): a
queue's overview line while its broker is down, the last-minute and per-minute rings fed a
record dated in the future, queue names an address cannot carry, each queue's buttons on
threads of their own, ``/q/<name>`` without its slash, and the workers' kinds in one place.
Boards are made (never started: no broker is asked) and fed made-up slots and records."""

from __future__ import annotations

import logging
import sys
import threading
import time
from pathlib import Path

import pytest
import tornado.httputil

from taskqueue.broker.config import BrokerSettings, QueueSpec
from taskqueue.views.live_tally import SlotView
from taskqueue.web.board import Board, make_board, overview_row
from taskqueue.web.minutes import RECENT_SECONDS, MinuteHistory
from taskqueue.web.snapshot import live_json

pytestmark = pytest.mark.fast

NOW = 1_700_000_000.0  # before the machine's clock: no record here is from the future
SETTINGS = BrokerSettings(["amqp://guest:guest@127.0.0.1:1/%2F"])  # never connected to


def board_of(name: str, tmp_path: Path) -> Board:
    return make_board(SETTINGS, QueueSpec(name), reports_dir=tmp_path, interval=1.0,
                      log=logging.getLogger("test"), root=f"/q/{name}/")


def test_a_queue_whose_broker_is_down_keeps_its_workers_and_minute_as_last_heard(tmp_path):
    board = board_of("jobs", tmp_path)
    feed = board.feed
    feed.state.slots["w1-0"] = SlotView("w1-0", "w1", "h", "busy", NOW - 5, heard=NOW)
    feed.state.slots["w2-0"] = SlotView("w2-0", "w2", "h", "idle", NOW - 5, heard=NOW,
                                        paused=True)
    for second in range(3):
        feed.totals.minutes.finished(NOW - 10 - second, "done")
    feed.heard_at = NOW
    feed.problem = "connection refused"  # the broker went down just after NOW
    row = overview_row(board, NOW + 55)  # by now's clock: workers gone, minute empty
    assert (row["workers"], row["busy"], row["done_per_minute"]) == (2, 1, 3), row
    assert row["problem"] == "connection refused" and row["as_of"] == NOW
    live = live_json(feed.state, NOW, feed.problem)  # the live page says the same
    assert sorted(w["kind"] for w in live["workers"]) == ["busy", "paused"]


def test_a_current_queue_is_judged_now(tmp_path):
    board = board_of("jobs", tmp_path)
    feed = board.feed
    feed.state.slots["w1-0"] = SlotView("w1-0", "w1", "h", "busy", NOW - 600,
                                        heard=NOW - 600)
    feed.heard_at = NOW
    row = overview_row(board, NOW)
    assert (row["workers"], row["problem"], row["as_of"]) == (0, None, NOW), "gone long ago"


def test_an_attempt_dated_ahead_counts_now_and_takes_no_bucket_of_the_future():
    history = MinuteHistory(clock=lambda: NOW)
    history.finished(NOW + 120, "done")  # a worker's clock two minutes fast
    for _ in range(5):
        history.finished(NOW, "done")
    assert history.last_minute(NOW)["done"] == 6

    history = MinuteHistory(clock=lambda: NOW)
    for second in range(RECENT_SECONDS):
        history.finished(4e9 + second, "failed")  # a stranger's record, dated 2096
    for second in range(RECENT_SECONDS):
        history.finished(NOW - second, "done")
    assert history.last_minute(NOW)["done"] == RECENT_SECONDS

    history = MinuteHistory(clock=lambda: NOW)
    history.finished(NOW + 12 * 3600, "dead")  # half a day ahead: its bucket is now's -12 h
    history.finished(NOW - 12 * 3600, "done")
    day = history.counts.window(NOW, 24 * 60)
    assert sum(m.values["done"] for m in day if m.values) == 1, "the older minute kept"
    assert day[-1].values == {"done": 0, "failed": 0, "dead": 1, "cancelled": 0}


@pytest.mark.parametrize("name", [".", ".."])
def test_a_queue_named_dot_or_dot_dot_is_refused_beside_others(monkeypatch, capsys, name):
    from taskqueue.commands import reporter

    monkeypatch.setattr(sys, "argv", ["task_report.py", "--serve", "--queue", "jobs",
                                      "--queue", name])
    with pytest.raises(SystemExit) as ended:
        reporter.parse_args()
    assert ended.value.code == 2
    assert f"queue {name!r} cannot be served beside others" in capsys.readouterr().err
    monkeypatch.setattr(sys, "argv", ["task_report.py", "--serve", "--queue", name])
    assert reporter.parse_args().queues == [name], "alone, at the root: served"


def test_each_queues_buttons_have_threads_of_their_own(tmp_path):
    a, b = board_of("a", tmp_path), board_of("b", tmp_path)
    release = threading.Event()
    try:
        held = [a.controls.submit(release.wait) for _ in range(8)]  # long requeues on A
        assert b.controls.submit(lambda: "paused").result(timeout=30) == "paused"
        assert not any(job.done() for job in held)
    finally:
        release.set()
        a.stop_threads()
        b.stop_threads()


def handler_of(app, path: str):
    request = tornado.httputil.HTTPServerRequest(
        start_line=tornado.httputil.RequestStartLine("GET", path, "HTTP/1.1"),
        headers=tornado.httputil.HTTPHeaders({"Host": "127.0.0.1"}))
    return app.find_handler(request)


def test_a_queue_without_its_slash_is_sent_to_its_root(tmp_path):
    from taskqueue.web.access import Access
    from taskqueue.web.routes import ToQueue, make_app

    odd = "b ü#?%"
    boards = [board_of("a", tmp_path), board_of(odd, tmp_path)]
    boards[1].root = "/q/b%20%C3%BC%23%3F%25/"
    app = make_app(boards=boards, access=Access(token="t"), registry=boards[0].registry,
                   cookie_secret="s", log=logging.getLogger("test"))
    found = handler_of(app, "/q/b%20%C3%BC%23%3F%25")
    assert found.handler_class is ToQueue and found.handler_kwargs["board"] is boards[1]
    assert handler_of(app, "/q/a").handler_kwargs["board"] is boards[0]
    assert handler_of(app, "/q/c").handler_class is not ToQueue, "no such queue: a 404"
    for board in boards:
        board.stop_threads()


def test_each_worker_has_one_kind_wherever_it_is_counted(tmp_path):
    from taskqueue.web.snapshot import workers_of

    board = board_of("jobs", tmp_path)
    state = board.feed.state
    now = time.time()  # the registry (/metrics) reads the clock
    state.slots["w1-1"] = SlotView("w1-1", "w1", "h", "busy", now, heard=now)
    state.slots["w1-0"] = SlotView("w1-0", "w1", "h", "idle", now, heard=now)
    state.slots["w2-0"] = SlotView("w2-0", "w2", "h", "stopped", now, heard=now)
    state.slots["lone"] = SlotView("lone", "", "h", "idle", now - 600, heard=now - 600)
    groups = workers_of(state, now)
    assert {name: (kind, [s.slot for s in slots]) for name, (kind, slots) in groups.items()} \
        == {"w1": ("busy", ["w1-0", "w1-1"]), "w2": ("stopped", ["w2-0"]),
            "lone": ("gone", ["lone"])}
    board.feed.heard_at = now
    assert overview_row(board, now)["workers"] == 1
    assert [w["kind"] for w in live_json(state, now)["workers"]] == ["gone", "busy", "stopped"]
    shown = {kind: board.registry.get_sample_value("taskqueue_workers",
                                                   {"queue": "jobs", "state": kind})
             for kind in ("busy", "gone", "stopped")}
    assert shown == {"busy": 1.0, "gone": 1.0, "stopped": 1.0}
    board.stop_threads()
