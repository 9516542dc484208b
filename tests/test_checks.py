"""Which deliveries read the results record, and from where (issue 29, item 1): pure logic,
no broker. ``Delivery.needs_check``/``check_from`` decide; ``ResultsTail`` reads only while a
check or a fence waits, from the moment the check needs, and goes on from where it stopped.
The same, end to end on a broker: tests/test_scale.py."""

from __future__ import annotations

import datetime
import logging
from types import SimpleNamespace

import pika

from taskqueue.broker.config import QueueSpec
from taskqueue.wire.messages import CHECK_FROM, FIRST_PUBLISH, PUBLISHED_AGAIN
from taskqueue.wire.record import CLOCK_SKEW, encode_group, new_run_id, run_began
from taskqueue.worker import tail
from taskqueue.worker.delivery import Delivery
from taskqueue.worker.policy import after_work
from taskqueue.worker.work import Outcome

RUN = new_run_id(suffix="abc123")


def delivery(redelivered: bool = False, type_: str | None = FIRST_PUBLISH,
             headers: dict | None = None, timestamp: int | None = 1_000_000) -> Delivery:
    properties = pika.BasicProperties(message_id="t.csv:3:abc", correlation_id=RUN,
                                      type=type_, timestamp=timestamp, headers=headers)
    return Delivery(None, 1, properties, b"task", redelivered)


# --- which deliveries are checked --------------------------------------------------------
def test_a_first_publish_delivered_the_first_time_is_not_checked():
    assert not delivery().needs_check


def test_every_delivery_that_may_be_a_copy_is_checked():
    assert delivery(redelivered=True).needs_check, "redelivered: its holder may have done it"
    assert delivery(type_=PUBLISHED_AGAIN).needs_check, "an emitter's resend or --resume"
    assert delivery(type_=None).needs_check, "another producer's, or published by hand"
    assert delivery(headers={"x-delivery-count": 2}).needs_check, "returned to a quorum queue"
    assert delivery(headers={"x-retries": 1}).needs_check, "a retry copy"
    assert delivery(headers={CHECK_FROM: 5}).needs_check, "a dead copy requeued"


def test_the_record_is_read_from_the_earliest_moment_a_done_record_can_date_from():
    assert delivery().check_from == 1_000_000 - CLOCK_SKEW, "a first publish: when it was"
    assert delivery(redelivered=True).check_from == 1_000_000 - CLOCK_SKEW
    again = delivery(type_=PUBLISHED_AGAIN)
    assert again.check_from == run_began(RUN), "sent again: any time since its run began"
    assert delivery(type_=None, timestamp=None).check_from == run_began(RUN)
    retried = delivery(headers={"x-retries": 1, CHECK_FROM: 2_000_000})
    assert retried.check_from == 2_000_000 - CLOCK_SKEW, "a retry: since the failed attempt"
    foreign = Delivery(None, 1, pika.BasicProperties(message_id="m"), b"x", False)
    assert foreign.check_from is None, "no run, no time: the whole stream"


def test_a_retry_copy_carries_when_the_failed_attempt_was_received():
    first = delivery()
    first.received = 3_000_000.5
    verdict = after_work(first, Outcome(False, "boom"), SimpleNamespace(
        max_retries=3, retry_delay=1.0), QueueSpec("q"), "w/1")
    assert verdict.outcome == "retry" and verdict.headers[CHECK_FROM] == 3_000_000


# --- what the tail reads -----------------------------------------------------------------
class Channel:
    """Records what the tail asks of a channel; attaches at once."""

    def __init__(self, opened: list[Channel]) -> None:
        self.is_open, self.offset, self.closed = True, None, False
        opened.append(self)

    def add_on_close_callback(self, _callback) -> None:
        pass

    add_on_cancel_callback = add_on_close_callback

    def basic_qos(self, prefetch_count: int, callback) -> None:
        callback(None)

    def basic_consume(self, queue: str, on_message, arguments: dict, callback) -> None:
        self.offset, self.on_message = arguments["x-stream-offset"], on_message
        callback(None)

    def basic_ack(self, *args, **kwargs) -> None:
        pass

    def close(self) -> None:
        self.is_open, self.closed = False, True


class Stream:
    """The results stream as one reader sees it: offsets, and our marks coming back."""

    def __init__(self) -> None:
        self.opened: list[Channel] = []
        self.marks: list[dict] = []
        self.offset = 100
        self.connection = SimpleNamespace(is_open=True, channel=lambda on_open_callback:
                                          on_open_callback(Channel(self.opened)))
        self.reader = tail.ResultsTail(QueueSpec("q"), "w", logging.getLogger("checks"),
                                       write_mark=self.marks.append,
                                       on_refused=lambda _exc: None)
        self.reader.start(self.connection, SimpleNamespace(call_later=lambda *_a: None),
                          lambda: None)
        self.send()  # the first fence comes back

    def send(self, *records: dict) -> None:
        """*records* written by others, then our marks asked for so far, read back."""
        if records:
            self._read(list(records))
        marks, self.marks[:] = list(self.marks), []
        for mark in marks:  # (a fence coming back may ask for the next: not read yet)
            self._read([mark])

    def _read(self, group: list[dict]) -> None:
        channel = self.opened[-1]
        self.offset += 1
        properties = pika.BasicProperties(headers={"x-stream-offset": self.offset})
        channel.on_message(channel, SimpleNamespace(delivery_tag=self.offset), properties,
                           encode_group(group))


def done(message_id: str, run: str = RUN) -> dict:
    return {"kind": "task", "outcome": "done", "run_id": run, "message_id": message_id,
            "worker": "other", "finished": 5.0}


def test_a_worker_reads_nothing_but_its_first_fence_and_then_stops_reading():
    stream = Stream()
    assert [c.offset for c in stream.opened] == ["next"], "from the end: no history read"
    assert stream.opened[-1].closed and stream.reader.state is tail.Reading.PAUSED
    answers = []
    stream.reader.check((RUN, "t.csv:1:a"), 1_000.0, False, answers.append)
    assert answers == [None] and len(stream.opened) == 1, "a first delivery reads nothing"


def test_a_check_reads_from_its_moment_to_a_fence_then_goes_on_from_where_it_stopped():
    stream = Stream()
    reader, answers = stream.reader, []
    reader.check((RUN, "t.csv:1:a"), 1_000.0, True, answers.append)
    since = stream.opened[-1].offset
    assert isinstance(since, datetime.datetime) and since.timestamp() == 1_000.0
    stream.send(done("t.csv:1:a"), done("t.csv:2:b"))
    assert answers == [("other", 5.0)] and reader.state is tail.Reading.PAUSED
    position = reader.position
    reader.check((RUN, "t.csv:2:b"), 1_500.0, True, answers.append)
    assert answers[-1] == ("other", 5.0) and len(stream.opened) == 2, "known: nothing read"
    reader.check((RUN, "t.csv:3:c"), 1_500.0, True, answers.append)
    assert stream.opened[-1].offset == position + 1, "later moment: on from where it stopped"
    stream.send()
    assert answers[-1] is None, "not done: it runs"
    reader.check((RUN, "t.csv:4:d"), 500.0, True, answers.append)
    assert stream.opened[-1].offset.timestamp() == 500.0, "earlier: read from there again"


def test_checks_made_while_reading_share_it_and_the_next_fence():
    stream = Stream()
    reader, answers = stream.reader, []
    reader.check((RUN, "t.csv:1:a"), 1_000.0, True, answers.append)
    reader.check((RUN, "t.csv:2:b"), 2_000.0, True, answers.append)
    assert len(stream.opened) == 2, "one reading for both"
    stream.send(done("t.csv:2:b"))
    stream.send()  # the second check's own fence
    assert answers == [None, ("other", 5.0)], "each at its fence: a at the first, b at the next"
    assert reader.state is tail.Reading.PAUSED


def test_a_probe_reads_from_the_end_and_forgets_the_history_it_would_have_to_read():
    stream = Stream()
    reader, answers, back = stream.reader, [], []
    reader.check((RUN, "t.csv:1:a"), 1_000.0, True, answers.append)
    stream.send()
    reader.probe(lambda: back.append(True))
    assert stream.opened[-1].offset == "next", "a probe never reads the history"
    stream.send()
    assert back == [True] and reader.state is tail.Reading.PAUSED
    reader.check((RUN, "t.csv:2:b"), 1_500.0, True, answers.append)
    assert stream.opened[-1].offset.timestamp() == 1_500.0, "the gap is not read: from its moment"


def other_mark(seq: int = 1) -> dict:
    return {"kind": "mark", "worker": "other", "seq": seq, "nonce": "not ours"}


def test_a_probe_is_answered_by_any_message_written_since_and_stops_reading_at_once():
    """Issue 29 item 2 (bench/scale.md): a probe that waited for its own mark read every other
    quiet worker's probe mark written meanwhile, (N/8)^2 x d deliveries a second. Any message
    a reading from the end gets was written since, and a majority has it: answered by the
    first, and the reading closes (our own mark is not waited for)."""
    stream = Stream()
    reader, back = stream.reader, []
    reader.probe(lambda: back.append(True))
    probing = stream.opened[-1]
    assert probing.offset == "next" and len(stream.marks) == 1, "our mark goes out"
    stream._read([other_mark()])  # another worker's probe mark, before ours is back
    assert back == [True], "answered by the first message read"
    assert probing.closed and reader.state is tail.Reading.PAUSED, "not one message more"
    reader.probe(lambda: back.append(True))
    assert stream.opened[-1].offset == "next" and len(stream.marks) == 2
    stream.send()  # alone on the stream: our own (new) mark answers it
    assert back == [True, True] and reader.state is tail.Reading.PAUSED


def test_a_message_from_the_history_does_not_answer_a_probe():
    """A reading opened for a check reads from its moment: what it gets may predate the
    probe, so only our own mark answers the probe then."""
    stream = Stream()
    reader, answers, back = stream.reader, [], []
    reader.check((RUN, "t.csv:1:a"), 1_000.0, True, answers.append)
    reader.probe(lambda: back.append(True))
    stream._read([other_mark(), done("t.csv:2:b")])
    assert back == [] and answers == [], "read from the check's moment: proves nothing new"
    stream.send()  # the check's fence; the probe, asked meanwhile, waits for the next
    stream.send()
    assert back == [True] and answers == [None]


def test_a_reading_paused_before_its_prefetch_is_set_does_not_consume():
    """Found at 1,000 workers (bench/scale.md): the consume asked in basic_qos's callback on a
    channel closing meanwhile raised ChannelWrongStateError, which ended the connection."""
    stream = Stream()
    reader = stream.reader
    later: list = []
    stream.connection.channel = lambda on_open_callback: on_open_callback(
        SlowChannel(stream.opened, later))
    reader.probe(lambda: None)
    slow = stream.opened[-1]
    reader.stop()  # the connection lost: the reading's channel goes
    slow.is_open = False
    later.pop()(None)  # the broker's Qos-Ok, after all
    assert slow.offset is None, "no consume on a closed channel"


class SlowChannel(Channel):
    """A channel whose Qos-Ok comes later (kept in *later*)."""

    def __init__(self, opened: list[Channel], later: list) -> None:
        super().__init__(opened)
        self.later = later

    def basic_qos(self, prefetch_count: int, callback) -> None:
        self.later.append(callback)

    def basic_consume(self, queue: str, on_message, arguments: dict, callback) -> None:
        if not self.is_open:
            raise pika.exceptions.ChannelWrongStateError("Channel is closed.")
        super().basic_consume(queue, on_message, arguments, callback)


def test_this_workers_own_done_records_are_known_without_reading():
    stream = Stream()
    reader, answers = stream.reader, []
    reader.note_done({**done("t.csv:9:z"), "worker": "w"})
    reader.check((RUN, "t.csv:9:z"), 1_000.0, True, answers.append)
    assert answers == [("w", 5.0)] and len(stream.opened) == 1


def test_a_check_made_while_the_first_fence_is_still_opening_reads_from_its_moment():
    """Found in review: the reading opened for the first fence (from the stream's end) was
    started over for a check, but from the end again: the check's history went unread."""
    opened: list[Channel] = []
    pending: list = []
    connection = SimpleNamespace(is_open=True, channel=lambda on_open_callback:
                                 pending.append(on_open_callback))
    reader = tail.ResultsTail(QueueSpec("q"), "w", logging.getLogger("checks"),
                              write_mark=lambda _mark: None, on_refused=lambda _exc: None)
    reader.start(connection, SimpleNamespace(call_later=lambda *_a: None), lambda: None)
    assert reader.state is tail.Reading.OPENING
    reader.check((RUN, "t.csv:1:a"), 1_000.0, True, lambda _done: None)
    for on_open in pending:
        on_open(Channel(opened))
    offsets = [channel.offset for channel in opened if not channel.closed]
    assert len(offsets) == 1 and offsets[0].timestamp() == 1_000.0, offsets
