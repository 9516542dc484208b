"""A slot takes its next task once its last one's record is on its way (worker/life.py
``_set_apart``): the confirm and the ack no longer hold the slot. A one-slot worker holding its
next task (look_ahead.py) runs through a ``HoldingProxy`` that keeps the broker's confirms from
its publishing connection: the next task starts while the last record is unconfirmed (before
3b8020a it waited for the ack). Nothing is lost: once the confirms flow each task is acked and
recorded once, and a stop waits for a task set apart (``InHand.any_apart``). Holds stay under
the outbox's CONFIRM_TIMEOUT (10 s); records go out one group at a time, so while the confirms
are held only the first record is at the broker (outbox.py)."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

from taskqueue.broker.config import BrokerSettings, QueueSpec
from taskqueue.broker.urgent import urgent_name
from taskqueue.results.reader import RecordReader
from tests.helpers import (
    MAIN_URL,
    emit_run,
    gate_files,
    queue_settles_at,
    queue_state,
    recorded,
    start_gated,
    wait_for,
)
from tests.proxy import HoldingProxy
from tests.test_cancel_in_flight import Proxy
from tests.test_stuck import alive, descendants

CONFIRMS = HoldingProxy.named("listening_worker w (publishing)")  # outbox.py's name for it
STARTS_WITHIN = 8.0  # seconds: under CONFIRM_TIMEOUT (before 3b8020a it never starts in a hold)


def said(out: Path, what: str, text: str) -> int:
    """How many "[w] <what> row N, id ...: '<text>'" lines the worker logged ("received": the
    task starts in its slot; "done": it is acked, after its record's confirm)."""
    return sum(1 for line in out.read_text().splitlines()
               if f"] {what} row" in line and f": '{text}'" in line)


def holding_the_next_task(queue: str, tmp_path: Path, logs: Path, proxy: Proxy
                          ) -> tuple[subprocess.Popen, Path, Path]:
    """A one-slot worker (tests.handlers:gated, its gate open) through *proxy*, after a short
    task: subscribed twice (look_ahead.py). The process, its output file, the gate."""
    _runs, gate = gate_files(tmp_path)
    gate.touch()
    out = tmp_path / "w.out"
    worker = start_gated(queue, "w", log_dir=logs, out=out, port=proxy.port)
    wait_for(lambda: queue_state(queue) == (0, 1), timeout=60, what="the worker subscribed")
    emit_run("--queue", queue, "--message", "warm-up", logs=logs)
    wait_for(lambda: said(out, "done", "warm-up") == 1 and queue_state(queue) == (0, 2),
             what="a short task done, a second subscription")
    return worker, out, gate


def recorded_done(queue: str, run: str) -> dict[int, str]:
    """Row -> task of the run's records at the broker that say done."""
    return {row: fields["task"] for row, fields in recorded(queue, run=run).items()
            if fields["outcome"] == "done"}


def totals_of_runs(queue: str) -> dict[str, int]:
    """The tasks done per run in the worker's totals, its last record (account.py, written when
    it stops: the report checks its counts against them)."""
    reader = RecordReader(BrokerSettings([MAIN_URL]), QueueSpec(queue), idle=1.0)
    [totals] = [r for r in reader.records() if r.get("kind") == "worker"]
    return totals["runs"]


def left_clean(ours: set[int], queue: str, out: Path) -> str:
    """No process of the worker's left, nothing in the queue and no subscription: its log."""
    wait_for(lambda: not any(alive(pid) for pid in ours), timeout=10,
             what="no process of the worker's left")
    queue_settles_at(queue, (0, 0))
    return out.read_text()


def test_the_next_task_starts_while_the_last_ones_record_awaits_its_confirm(queue: str,
                                                                           logs: Path,
                                                                           tmp_path: Path):
    proxy = Proxy(urlsplit(MAIN_URL).port)
    try:
        worker, out, _gate = holding_the_next_task(queue, tmp_path, logs, proxy)
        proxy.hold(CONFIRMS, "client")
        run = emit_run("--queue", queue, "--message", "one", "--message", "two", logs=logs)
        # One slot, two tasks (one in it, one held): the second starts only once the slot is
        # free. Before, that was at the first one's ack, which waits for the held confirm.
        wait_for(lambda: said(out, "received", "one") == said(out, "received", "two") == 1,
                 timeout=STARTS_WITHIN,
                 what="the second task started while the first one's confirm is held")
        wait_for(lambda: recorded_done(queue, run) == {1: "one"}, what="its record at the broker")
        assert said(out, "done", "one") == said(out, "done", "two") == 0, out.read_text()[-3000:]
        proxy.release()
        wait_for(lambda: said(out, "done", "one") == said(out, "done", "two") == 1
                 and queue_state(queue) == (0, 2), what="both acked once the confirms came")
        ours = descendants(worker.pid)
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 0, out.read_text()[-3000:]
    finally:
        proxy.close()
    text = left_clean(ours, queue, out)
    assert said(out, "done", "one") == said(out, "done", "two") == 1, text[-3000:]
    assert recorded_done(queue, run) == {1: "one", 2: "two"}
    assert totals_of_runs(queue).get(run) == 2
    assert "requeued" not in text and "Traceback" not in text, text[-3000:]


def test_a_stop_while_the_slot_runs_the_next_task_waits_for_the_confirm(queue: str, logs: Path,
                                                                        tmp_path: Path):
    """SIGTERM while the slot runs a task and the one before waits for its record's confirm:
    both count as in hand; the confirm comes after the stop, the first is acked, the running
    one ends, is recorded and acked, and the worker exits 0. Nothing goes back."""
    proxy = Proxy(urlsplit(MAIN_URL).port)
    try:
        worker, out, gate = holding_the_next_task(queue, tmp_path, logs, proxy)
        proxy.hold(CONFIRMS, "client")
        first = emit_run("--queue", queue, "--message", "one", logs=logs)
        wait_for(lambda: recorded_done(queue, first) == {1: "one"},
                 what="its record at the broker")
        gate.unlink()  # the next task works until the test opens the gate again
        second = emit_run("--queue", queue, "--message", "two", logs=logs)
        wait_for(lambda: said(out, "received", "two") == 1, timeout=STARTS_WITHIN,
                 what="the next task started while the first one's confirm is held")
        assert said(out, "done", "one") == 0, out.read_text()[-3000:]
        ours = descendants(worker.pid)
        worker.send_signal(signal.SIGTERM)
        wait_for(lambda: "[w] stopping after the 2 task(s) in hand" in out.read_text(),
                 what="the stop, both tasks in hand")
        proxy.release()
        wait_for(lambda: said(out, "done", "one") == 1, what="the first acked after the stop")
        assert worker.poll() is None, "left with a task running:\n" + out.read_text()[-3000:]
        gate.touch()
        assert worker.wait(timeout=60) == 0, out.read_text()[-3000:]
    finally:
        proxy.close()
    text = left_clean(ours, queue, out)
    assert said(out, "done", "one") == said(out, "done", "two") == 1, text[-3000:]
    assert "requeued" not in text and "back to the queue" not in text, text[-3000:]
    assert recorded_done(queue, first) == {1: "one"} and recorded_done(queue, second) == {
        1: "two"}
    totals = totals_of_runs(queue)
    assert (totals.get(first), totals.get(second)) == (1, 1), totals


def test_a_stop_with_the_slot_free_waits_for_the_confirm_of_the_task_set_apart(queue: str,
                                                                              logs: Path,
                                                                              tmp_path: Path):
    """The slot is free, the last task's record unconfirmed (set apart): a SIGTERM waits for its
    confirm and ack past the broker's answer to our cancels before it writes the worker's
    totals and exits 0."""
    proxy = Proxy(urlsplit(MAIN_URL).port)
    try:
        worker, out, _gate = holding_the_next_task(queue, tmp_path, logs, proxy)
        proxy.hold(CONFIRMS, "client")
        run = emit_run("--queue", queue, "--message", "one", logs=logs)
        wait_for(lambda: recorded_done(queue, run) == {1: "one"}, what="its record at the broker")
        ours = descendants(worker.pid)
        worker.send_signal(signal.SIGTERM)
        wait_for(lambda: "[w] stopping after the 1 task(s) in hand" in out.read_text(),
                 what="the stop, the task in hand")
        wait_for(lambda: (queue_state(urgent_name(queue)) or (0, 0))[1] == 0,
                 what="our cancels at the broker")
        assert said(out, "done", "one") == 0, out.read_text()[-3000:]
        proxy.release()
        assert worker.wait(timeout=60) == 0, out.read_text()[-3000:]
    finally:
        proxy.close()
    text = left_clean(ours, queue, out)
    assert said(out, "done", "one") == 1, text[-3000:]
    assert "requeued" not in text and "back to the queue" not in text, text[-3000:]
    assert recorded_done(queue, run) == {1: "one"}
    # Stopping at the cancels' answer wrote the totals before its ack, without it (the ack
    # still came within EXIT_GRACE_SECONDS): the report would count a task no worker counted.
    assert totals_of_runs(queue).get(run) == 1
