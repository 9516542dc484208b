"""The dashboard's broker reader (web/feed.py) on the real broker: a results stream deleted
under it (``task_control.py delete-queue``, ``rabbitmqctl delete_queue``) and made again.

Before: pika dropped the cancelled reading without a word, and the feed showed the old
stream's figures for good, deaf to the new one (and, reading on after a reconnect from the old
stream's offset, it skipped the new stream's first records: offsets start at 0 again)."""

from __future__ import annotations

import logging
import time

import pika

from taskqueue.broker.config import BrokerSettings, QueueSpec
from taskqueue.web.copies import RunCopies
from taskqueue.web.feed import DashboardFeed
from taskqueue.wire.record import encode_group, new_run_id, stream_arguments
from tests.helpers import MAIN_URL, wait_for


class Said(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def write_records(stream: str, run: str, count: int, first: int = 1) -> None:
    """*count* done tasks of *run*, one stream message each, as workers write them (the stream
    made if need be, as a worker would)."""
    connection = pika.BlockingConnection(pika.URLParameters(MAIN_URL))
    try:
        channel = connection.channel()
        channel.queue_declare(stream, durable=True, arguments=stream_arguments())
        channel.confirm_delivery()
        now = time.time()
        for row in range(first, first + count):
            channel.basic_publish("", stream, encode_group([{
                "kind": "task", "id": f"{run}-{row}", "run_id": run, "message_id": f"m{row}",
                "row": row, "outcome": "done", "worker": "w1", "queued": now, "started": now,
                "finished": now, "seconds": 0.01}]))
    finally:
        connection.close()


def delete_stream(stream: str) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(MAIN_URL))
    try:
        connection.channel().queue_delete(stream)
    finally:
        connection.close()


def test_a_results_stream_deleted_and_made_again_is_read_from_its_first_record(queue, tmp_path):
    spec = QueueSpec(queue)
    said = Said()
    log = logging.getLogger(f"test.feed.{queue}")
    log.addHandler(said)
    copies = RunCopies(tmp_path / "reports", queue)
    feed = DashboardFeed(BrokerSettings([MAIN_URL]), spec, log, copies, interval=0.2)
    old_run, new_run = new_run_id(suffix="old111"), new_run_id(suffix="new222")
    write_records(spec.results_name, old_run, 5)
    feed.start()
    try:
        wait_for(lambda: feed.totals.records == 5, timeout=30, what="the first stream read")
        assert copies.path(old_run).exists()

        delete_stream(spec.results_name)
        # One more task: a worker makes the stream again; its record is at offset 0.
        write_records(spec.results_name, new_run, 1)

        def shows_the_new_stream() -> bool:
            with feed.lock:
                runs = [line["run"] for line in feed.totals.run_list()]
                return feed.totals.records == 1 and runs == [new_run]

        wait_for(shows_the_new_stream, timeout=30, what="only the new stream's record shown")
        with feed.lock:
            assert feed.totals.outcomes == {"done": 1}
            assert feed.state.run_id == new_run and feed.state.done == 1
        assert [line for line in said.lines if "ended our reading of the results stream"
                in line], said.lines
        assert not copies.path(old_run).exists(), "the old run's copy went with its stream"
        assert copies.path(new_run).exists()

        write_records(spec.results_name, new_run, 2, first=2)  # followed on from there
        wait_for(lambda: feed.totals.records == 3, timeout=30, what="the new stream followed")
    finally:
        feed.stop()
        log.removeHandler(said)
