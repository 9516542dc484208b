"""A worker killed mid-park (docs/design/rate-limit.md §6, "Killed mid-park"): SIGKILL after a
parked task's copy to ``<queue>.wait.<N>s`` was confirmed and before the broker had the ack of
the original. Two copies of the task exist then: the original, delivered again, and the
parked copy, back from its tier. The task still runs exactly once and nothing is lost: the
original runs on another worker, and the park copy, taken later by a third worker (which
knows nothing of it: no done index of its own), is skipped by the done-once check (a park
copy is always checked: it carries ``x-check-from`` and no ``type`` of a first publish).

The point is made exact as test_results.py's kill points are: the worker talks to the broker
through a ``HoldingProxy`` that keeps its consuming connection's bytes from the broker (the
ack is sent, and never arrives), while its publishing connection flows (the park copy is
published and confirmed). The kill comes once the copy is in its tier and a later live
snapshot of the worker says its slots are free (a parked task's slot is freed once its ack
is sent: worker/life.py ``_on_over``). No hook in the worker is needed.
"""

from __future__ import annotations

import os
import re
import signal
import time
from urllib.parse import urlsplit

import pika

from taskqueue.broker.config import QueueSpec
from taskqueue.broker.topology import ROUTING_LIVE
from taskqueue.wire.events import decode_events
from tests.helpers import MAIN_URL, queue_state, start_worker, wait_for, write_csv
from tests.proxy import HoldingProxy
from tests.test_ratelimit_worker import assert_no_task_left, limit
from tests.test_results import emit, report_csv, runs_of

PARKED_LINE = re.compile(r"\] parked row (?P<row>\d+), id t\.csv:")  # not the warm-up


def parked_now(spec: QueueSpec) -> int:
    """The copies in the tiers (each tier as it is: those not made yet count 0)."""
    return sum((queue_state(name) or (0, 0))[0] for name in spec.wait_names)


class Snapshots:
    """The workers' live snapshots from now on (a queue of our own on the events exchange)."""

    def __init__(self, spec: QueueSpec) -> None:
        self.connection = pika.BlockingConnection(pika.URLParameters(MAIN_URL))
        self.channel = self.connection.channel()
        self.channel.exchange_declare(spec.exchange, "topic", durable=True)
        self.inbox = self.channel.queue_declare("", exclusive=True).method.queue
        self.channel.queue_bind(self.inbox, spec.exchange, ROUTING_LIVE)

    def all_idle(self, worker: str, after: float) -> bool:
        """A snapshot of *worker* taken after *after* says every slot of it is idle."""
        while True:
            method, _properties, body = self.channel.basic_get(self.inbox, auto_ack=True)
            if method is None:
                return False
            for event in decode_events(body):
                if (event.get("kind") == "snapshot" and event.get("worker") == worker
                        and float(event.get("time", 0)) > after and event.get("slots")
                        and all(slot.get("state") == "idle" for slot in event["slots"])):
                    return True

    def close(self) -> None:
        self.connection.close()


def test_a_worker_killed_between_a_parks_confirm_and_its_ack_runs_the_task_once(
        queue, logs, tmp_path):
    """Worker "first" runs task A and parks task B (one key, 1 a minute: B's turn is a minute
    away, so its copy goes to the 16-s tier), the acks of both held; SIGKILL. "second" gets
    both originals again: A is skipped (its record is there), B runs. B's park copy comes back
    from its tier once "second" has gone: "third" takes it, reads the record and skips it."""
    spec = QueueSpec(queue)
    runs = tmp_path / "runs.txt"
    os.environ["RUNS_FILE"] = str(runs)  # tests.handlers:counted notes each run there
    limit(queue, "1/min", "--per-key", logs=logs)
    proxy = HoldingProxy(urlsplit(MAIN_URL).port)
    snapshots = Snapshots(spec)
    first_out = tmp_path / "first.out"
    try:
        # Two slots, so both tasks are delivered at once: with the acks held, the broker
        # sends this worker nothing more (its prefetch is full).
        first = start_worker("--url", f"amqp://guest:guest@127.0.0.1:{proxy.port}/%2F",
                             "--queue", queue, "--name", "first", "--concurrency", "2",
                             "--handler", "tests.handlers:counted", log_dir=logs,
                             out=first_out)
        # A warm-up task of another key, acked: the arbiter's first answers are 2.25 s ahead
        # (its quiet start, R1); once it is done, task A's turn is at once.
        emit(queue, logs, write_csv(tmp_path / "warm.csv", ["job,host", "warm-up,warm"]),
             "--header", "--column", "job", "--key-column", "host")
        wait_for(lambda: "'warm-up' -> " in first_out.read_text(), timeout=60,
                 what="the warm-up task done")
        # (Two subscriptions once the short warm-up made it hold one task more: look_ahead.py.)
        wait_for(lambda: queue_state(queue) in ((0, 1), (0, 2)), timeout=30,
                 what="the warm-up acked")
        proxy.hold(HoldingProxy.named("listening_worker first"), "broker")  # its acks
        run = emit(queue, logs, write_csv(tmp_path / "t.csv", [
            "job,host", "task A,api.example", "task B,api.example"]),
            "--header", "--column", "job", "--key-column", "host")
        wait_for(lambda: PARKED_LINE.search(first_out.read_text()), timeout=60,
                 what="task B parked")
        wait_for(lambda: parked_now(spec) == 1, timeout=30,
                 what="the park copy confirmed in its tier")
        in_tier = time.time()
        wait_for(lambda: snapshots.all_idle("first", in_tier), timeout=30, interval=0.2,
                 what="the worker's slots free (the park's ack sent, and held)")
        assert queue_state(queue)[0] == 0, "nothing acked: both tasks still the worker's"
        first.send_signal(signal.SIGKILL)
        assert first.wait(timeout=10) == -signal.SIGKILL
    finally:
        proxy.close()
        snapshots.close()
    said = first_out.read_text()
    [parked_row] = {int(m["row"]) for m in PARKED_LINE.finditer(said)}
    assert runs_of(runs) == {"warm-up": 1, "task A": 1}, said
    # Two copies of B now: its original, delivered again, and its park copy in its tier. The
    # broker returns the originals once it sees the killed worker's connection close (through
    # the proxy, closed just now): that takes it a moment, so the count is waited for.
    wait_for(lambda: (queue_state(queue)[0], parked_now(spec)) == (2, 1), timeout=30,
             what="A's and B's originals back in the queue, B's park copy in its tier")
    limit(queue, "off", logs=logs)  # the next workers run them as they come

    second = start_worker("--queue", queue, "--name", "second", "--handler",
                          "tests.handlers:counted", "--exit-when-idle", "1.5", log_dir=logs,
                          out=tmp_path / "second.out")
    assert second.wait(timeout=60) == 0
    told = (tmp_path / "second.out").read_text()
    assert parked_now(spec) == 1, ("the park copy came back while 'second' ran: it would "
                                   "skip it by what it did itself, not by the record", told)
    assert re.search(r"\] skipped row 2, id t\.csv:.*already done by first/", told), told
    assert re.search(rf"\] done row {parked_row}, id t\.csv:", told), told
    wait_for(lambda: parked_now(spec) == 0 and queue_state(queue)[0] == 1, timeout=60,
             what="the park copy back from its tier")
    third = start_worker("--queue", queue, "--name", "third", "--handler",
                         "tests.handlers:counted", "--exit-when-idle", "1.5", log_dir=logs,
                         out=tmp_path / "third.out")
    assert third.wait(timeout=60) == 0
    last = (tmp_path / "third.out").read_text()
    assert re.search(rf"\] skipped row {parked_row}, id t\.csv:.*already done by second at ",
                     last), last
    assert runs_of(runs) == {"warm-up": 1, "task A": 1, "task B": 1}, (said, told, last)
    table = report_csv(queue, logs, tmp_path / "r", run)
    assert sorted((row["task"], row["outcome"]) for row in table) == [
        ("task A", "done"), ("task B", "done")], "nothing lost, nothing twice"
    assert_no_task_left(queue)
