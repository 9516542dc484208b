"""worker/settlement.py without a broker: received -> running -> record -> confirm -> ack, and
every way off that path (a refused record, a channel gone, a requeue, a drop, either while the
work runs). The outbox and the channel are stand-ins that note what was asked of them; the
confirms are given by hand."""

from __future__ import annotations

from types import SimpleNamespace

import pika

from taskqueue.worker.copies import Copy
from taskqueue.worker.settlement import Settlement, Step


class Channel:
    def __init__(self) -> None:
        self.is_open = True
        self.acked: list[int] = []
        self.nacked: list[tuple[int, bool]] = []

    def basic_ack(self, tag: int) -> None:
        self.acked.append(tag)

    def basic_nack(self, tag: int, requeue: bool) -> None:
        self.nacked.append((tag, requeue))


class Outbox:
    """Keeps what it is given; the test confirms (or refuses) each by hand."""

    blocked = False  # no alarm here: the journal's side is tests/test_journal.py's

    def __init__(self) -> None:
        self.records: list[tuple[dict, object]] = []
        self.copies: list[Copy] = []
        self.watching: set = set()  # settlements that journal if an alarm comes

    def when_blocked(self, journal_it) -> None:
        self.watching.add(journal_it)

    def forget(self, journal_it) -> None:
        self.watching.discard(journal_it)

    def record_result(self, record: dict, on_confirmed) -> None:
        self.records.append((record, on_confirmed))

    def publish_copy(self, copy: Copy) -> None:
        self.copies.append(copy)


def settlement(tag: int = 7):
    channel, outbox, over, recorded = Channel(), Outbox(), [], []
    delivery = SimpleNamespace(channel=channel, tag=tag, body=b"task", settled=False)
    settled = Settlement(delivery, outbox, over.append, recorded.append)
    return settled, SimpleNamespace(channel=channel, outbox=outbox, over=over,
                                    recorded=recorded, delivery=delivery)


def test_a_task_is_acked_only_once_its_record_and_copy_are_both_confirmed():
    settled, seen = settlement()
    record = {"outcome": "failed", "row": 3}
    settled.finish("retry", 1.5, record=record, copy_to="q.retry",
                   properties=pika.BasicProperties())
    assert settled.step is Step.CONFIRMING and settled.in_hand
    assert settled.outcome == "retry" and settled.seconds == 1.5
    (given, confirm), = seen.outbox.records
    assert given is record
    copy, = seen.outbox.copies
    assert copy.routing_key == "q.retry" and copy.body == b"task"
    confirm(True)
    assert seen.channel.acked == [] and seen.recorded == [record], "the copy is not confirmed yet"
    copy.on_settled(True)
    assert seen.channel.acked == [7]
    assert settled.step is Step.ACKED and not settled.in_hand
    assert seen.over == [settled] and seen.delivery.settled


def test_nothing_to_record_is_acked_at_once():
    settled, seen = settlement()
    settled.finish("skipped", 0.0)
    assert seen.channel.acked == [7] and settled.step is Step.ACKED
    assert not seen.outbox.records and not seen.outbox.copies


def test_a_refused_record_puts_the_task_back_and_cancels_its_copy():
    settled, seen = settlement()
    settled.finish("dead", 2.0, record={"outcome": "dead"}, copy_to="q.dead",
                   properties=pika.BasicProperties())
    (_, confirm), = seen.outbox.records
    confirm(False)
    assert seen.channel.nacked == [(7, True)] and seen.channel.acked == []
    assert settled.step is Step.REQUEUED
    assert settled.why == "the broker refused its record or copy"
    assert seen.outbox.copies[0].cancelled, "a copy of a task that went back is not needed"
    assert seen.recorded == [], "a refused record was not recorded"
    seen.outbox.copies[0].on_settled(True)  # late: changes nothing
    assert seen.channel.acked == [] and seen.over == [settled]


def test_a_channel_closed_before_the_work_ended_drops_the_task_unrecorded():
    settled, seen = settlement()
    seen.channel.is_open = False
    settled.finish("done", 1.0, record={"outcome": "done"})
    assert settled.step is Step.DROPPED and seen.over == [settled]
    assert seen.outbox.records == [], "the broker delivers it again: no record of this attempt"


def test_a_channel_closed_while_confirming_drops_the_task_but_the_record_still_counts():
    settled, seen = settlement()
    record = {"outcome": "done"}
    settled.finish("done", 1.0, record=record)
    seen.channel.is_open = False
    seen.outbox.records[0][1](True)
    assert settled.step is Step.DROPPED and seen.channel.acked == []
    assert seen.recorded == [record], "the record is on the broker whatever became of the task"


def test_a_record_confirmed_after_a_requeue_is_still_told():
    settled, seen = settlement()
    record = {"outcome": "done"}
    settled.finish("done", 1.0, record=record)
    assert settled.requeue("a second Ctrl+C") is True
    seen.outbox.records[0][1](True)
    assert seen.recorded == [record] and settled.step is Step.REQUEUED
    assert seen.channel.nacked == [(7, True)] and seen.channel.acked == []


def test_requeue_and_drop_only_act_on_a_task_still_in_hand():
    settled, seen = settlement()
    settled.finish("done", 0.1)
    assert settled.requeue("too late") is False
    settled.drop()
    assert settled.step is Step.ACKED and seen.over == [settled]
    settled.finish("done", 0.1)  # a second finish is ignored too
    assert seen.channel.acked == [7]


def test_a_requeue_on_a_closed_channel_is_a_drop():
    settled, seen = settlement()
    seen.channel.is_open = False
    assert settled.requeue("stop") is True
    assert settled.step is Step.DROPPED and seen.channel.nacked == []


def test_a_drop_cancels_the_copy_in_flight():
    settled, seen = settlement()
    settled.finish("retry", 1.0, copy_to="q.retry", properties=pika.BasicProperties())
    settled.drop()
    assert seen.outbox.copies[0].cancelled and settled.step is Step.DROPPED
    seen.outbox.copies[0].on_settled(True)
    assert seen.channel.acked == [] and seen.over == [settled]


def test_its_work_running_is_a_step_and_a_run_ends_in_deciding():
    settled, seen = settlement()
    assert settled.step is Step.RECEIVED and not settled.work_runs
    settled.work_started()
    assert settled.step is Step.RUNNING and settled.work_runs and settled.in_hand
    settled.work_ended()
    assert settled.step is Step.DECIDING and not settled.work_runs and settled.in_hand
    settled.finish("done", 1.0, record={"outcome": "done"})
    seen.outbox.records[0][1](True)
    assert settled.step is Step.ACKED and seen.channel.acked == [7]


def test_a_task_put_back_while_its_work_runs_holds_its_slot_until_the_work_ends():
    settled, seen = settlement()
    settled.work_started()
    assert settled.requeue("a second Ctrl+C") is True
    assert seen.channel.nacked == [(7, True)] and seen.over == [settled]
    assert settled.step is Step.REQUEUED_RUNNING and settled.work_runs and not settled.in_hand
    settled.work_ended()
    assert settled.step is Step.REQUEUED and not settled.work_runs
    assert seen.over == [settled], "over once, when it went back"


def test_a_task_dropped_while_its_work_runs_holds_its_slot_until_the_work_ends():
    settled, seen = settlement()
    settled.work_started()
    settled.drop()
    assert settled.step is Step.DROPPED_RUNNING and settled.work_runs and not settled.in_hand
    settled.requeue("too late")  # not ours any more: nothing changes
    assert seen.channel.nacked == [] and settled.step is Step.DROPPED_RUNNING
    settled.work_ended()
    assert settled.step is Step.DROPPED and not settled.work_runs


def test_a_task_put_back_before_its_work_runs_frees_its_slot_at_once():
    settled, seen = settlement()
    assert settled.requeue("the worker could not start it") is True
    assert settled.step is Step.REQUEUED and not settled.work_runs
    assert seen.channel.nacked == [(7, True)] and seen.over == [settled]
    settled.work_started()  # too late: it is not ours
    assert settled.step is Step.REQUEUED
