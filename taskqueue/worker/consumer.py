"""The worker's consuming side: take deliveries, hand each to a free slot, ack when done.

``TaskConsumer`` asks for ``prefetch_count`` = its number of slots (1 by default), so the
broker never hands a worker more unacked tasks than it can work on at once: whoever has a free
slot gets the next task (fair dispatch). The work runs in the slots (slots.py, work.py) while
pika's I/O loop keeps answering heartbeats; outcomes come back to the I/O thread, where the ack
is sent. Everything the worker publishes goes through its ``Outbox`` (outbox.py), a connection
of its own, so that a broker blocking publishers (memory or disk alarm) never stops consuming.

What becomes of a task is decided by policy.py (pure functions: retry, dead letter, delivery
limit); this class carries the verdict out. A copy to ``<queue>.retry`` or ``<queue>.dead`` is
confirmed by the broker before the original is acked, so a crash in between duplicates, never
loses; while a copy waits, its slot stays taken and the worker is not idle.
"""

from __future__ import annotations

import logging
import socket
import time
from dataclasses import replace

import pika
from pika.channel import Channel
from pika.spec import Basic

from taskqueue.broker.config import (
    BrokerSettings,
    QueueSpec,
)
from taskqueue.broker.connection import BrokerSession
from taskqueue.broker.topology import Topology
from taskqueue.control.listener import WorkerControl
from taskqueue.control.state import ControlState
from taskqueue.views.events import EVENT_FLUSH_SECONDS
from taskqueue.worker.account import WorkerAccount, WorkerOptions
from taskqueue.worker.delivery import Delivery
from taskqueue.worker.outbox import Copy, Outbox
from taskqueue.worker.policy import Verdict, after_work, before_work, dead_letter
from taskqueue.worker.slots import WorkSlot, slot_names
from taskqueue.worker.work import Outcome, Runner, failure_reason

CONSUMER_TIMEOUT_SECONDS = 1800  # RabbitMQ's default consumer_timeout (30 min)
TICK_SECONDS = 0.25  # idle checks, event flushes and live snapshots run on this beat
SNAPSHOT_SECONDS = (0.5, 2.0)  # a live snapshot at most this often, and at least this often
EXIT_GRACE_SECONDS = 5.0  # at exit, wait this long for the last events to be confirmed


class TaskConsumer(BrokerSession):
    """Consume the task queue into ``len(runners)`` slots until stopped, idle, or failed for
    good. ``request_stop()`` (or Ctrl+C / SIGTERM): first, take no new task and finish the
    ones in hand; second, put them back in the queue and stop now."""

    def __init__(self, settings: BrokerSettings, queue: QueueSpec, log: logging.Logger,
                 options: WorkerOptions, runners: list[Runner]) -> None:
        super().__init__(replace(settings, client_name=f"listening_worker {options.name}"), log,
                         queue_name=queue.name)
        self.queue = queue
        self.options = options
        self.host = socket.gethostname()
        self.topology: Topology | None = None
        self.slots = [WorkSlot(name, runner, self._on_outcome, self.call_threadsafe)
                      for name, runner in zip(slot_names(options.name, len(runners)), runners)]
        self._free_slots = list(reversed(self.slots))  # a stack: the first slot goes first
        self.outbox = Outbox(settings, queue, log, self.ioloop, options.name)
        self.outbox.on_finished = self._on_outbox_finished
        self.account = WorkerAccount(options, self.host, self.slots, self.outbox)
        self.stats = self.account.stats
        self._record = self.account.record
        self._stop_requests = 0
        self._stop_since: float | None = None
        self._closing = False
        self._consumer_tag: str | None = None
        self._waiting_for_slots = False
        self._idle_since: float | None = None  # consuming with every slot free, since when
        self._idle_probe: object | None = None  # a round trip asked before exiting idle
        self._retry_due = 0.0  # when the last task sent to <queue>.retry flows back
        self._copies: dict[int, tuple[WorkSlot, Delivery, Copy]] = {}
        self._changed = True
        self._last_snapshot = 0.0
        self._ticks = 0
        self.control = WorkerControl(queue, ControlState(options.name, time.time()), log,
                                     self._on_control, self._answer)

    # --- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        super().start()
        self.outbox.start()
        self.ioloop.call_later(TICK_SECONDS, self._tick)

    def request_stop(self) -> None:
        self.on_stop_request(0)

    def on_stop_request(self, _count: int) -> None:
        self._stop_requests += 1
        self._stop_since = self._stop_since or time.monotonic()
        name = self.options.name
        in_hand = [slot for slot in self.slots if slot.delivery and not slot.delivery.settled]
        if self._stop_requests == 1:
            if in_hand:
                self.log.warning("[%s] stopping after the %d task(s) in hand (%s); press Ctrl+C "
                                 "again to requeue them and stop now", name, len(in_hand),
                                 "; ".join(slot.delivery.label for slot in in_hand))
            self._cancel_consumer()
            self._finish_if_idle()
            return
        for slot in in_hand:
            delivery = slot.delivery
            if delivery.channel.is_open:
                delivery.channel.basic_nack(delivery.tag, requeue=True)
                self.log.warning("[%s] requeued %s: %r", slot.name, delivery.label, delivery.text)
            delivery.settled = True
            slot.interrupt()
        if self._closing:  # already waiting for the last events to go out: stop waiting
            self.outbox.finish()
        else:
            self._shutdown(grace=1.0)

    def _cancel_consumer(self) -> None:
        if self.channel is not None and self.channel.is_open and self._consumer_tag:
            self.channel.basic_cancel(self._consumer_tag)
        self._consumer_tag = None

    def _on_outbox_finished(self) -> None:
        if self.outbox.error is not None:
            self.fail(self.outbox.error)  # e.g. no permission to publish: the user must act
        else:
            self.finish()

    def _finish_if_idle(self) -> None:
        if self._stop_requests and len(self._free_slots) == len(self.slots):
            self._shutdown(EXIT_GRACE_SECONDS)

    def _shutdown(self, grace: float) -> None:
        """Record the worker's totals, let the outbox send what waits, then close."""
        if self._closing:
            return
        self._closing = True
        self.account.totals()
        for slot in self.slots:
            slot.close()
        self.outbox.close(grace)

    # --- BrokerSession hooks -----------------------------------------------------------
    def on_channel_ready(self, channel: Channel) -> None:
        if self._stop_requests:
            self._finish_if_idle()
            return
        self.set_up_queues(channel, self.queue, lambda topology: self._on_set_up(channel,
                                                                                   topology))

    def _on_set_up(self, channel: Channel, topology: Topology) -> None:
        self.topology = topology
        self.outbox.exchange_ready = True
        self.outbox.send(everything=True)
        self.mark_ready()
        channel.add_on_cancel_callback(self._on_cancelled_by_broker)
        # The control stream first: a worker started while the queue is paused takes nothing.
        self.control.start(channel.connection, self.ioloop, lambda: self._subscribe(channel))

    def _subscribe(self, channel: Channel) -> None:
        """prefetch_count = the number of slots. Slots still busy with work from a lost
        connection (an in-process handler cannot be stopped) would make a new task wait behind
        them while other workers are free: subscribe only once they are done."""
        if self._stop_requests or channel is not self.channel or not channel.is_open:
            return
        if self.control.paused or self._consumer_tag:
            return  # paused (task_control.py): resume subscribes
        if len(self._free_slots) < len(self.slots):
            if not self._waiting_for_slots:
                self.log.warning("[%s] still working on a task from the lost connection: taking "
                                 "new tasks once it is finished", self.options.name)
            self._waiting_for_slots = True
            return
        self._waiting_for_slots = False
        channel.basic_qos(prefetch_count=len(self.slots),
                          callback=lambda _frame: self._consume(channel))

    def _consume(self, channel: Channel) -> None:
        if self._stop_requests or channel is not self.channel or self.control.paused \
                or self._consumer_tag:
            return
        self._consumer_tag = channel.basic_consume(self.queue.name, self._on_message)
        self._idle_since = time.monotonic()  # idle time counts from consuming, not from start
        count = len(self.slots)
        self.log.info("[%s] waiting for tasks on queue %r (%s). Ctrl+C to stop",
                      self.options.name, self.queue.name,
                      "one at a time" if count == 1 else f"up to {count} at a time")

    def _on_cancelled_by_broker(self, _frame: object) -> None:
        """The broker ended our subscription (queue deleted, or its node went away): start over
        on a fresh connection, which sets the queues up again."""
        self._consumer_tag = None
        self._idle_since = None
        if self._stop_requests or self.channel is None:
            return
        self.log.warning("[%s] the broker cancelled the subscription to %r (queue deleted or "
                         "moved); subscribing again", self.options.name, self.queue.name)
        self.channel.close()

    def on_channel_lost(self) -> None:
        self.control.stop()
        self._consumer_tag = None
        self._idle_since = None
        self._idle_probe = None
        for slot in self.slots:
            delivery = slot.delivery
            if delivery is None or delivery.settled:
                continue
            delivery.settled = True  # nobody can ack it now: the broker delivers it again
            self.log.warning("[%s] connection lost while working on %s: stopped it; the broker "
                             "delivers it again (at-least-once)", slot.name, delivery.label)
            slot.interrupt()
        for key, (slot, delivery, copy) in list(self._copies.items()):
            copy.cancelled = True  # the original is back in the queue: no copy needed
            del self._copies[key]
            self._free(slot, delivery, 0.0)

    # --- one task ------------------------------------------------------------------------
    def _on_message(self, channel: Channel, method: Basic.Deliver,
                    properties: pika.BasicProperties, body: bytes) -> None:
        delivery = Delivery(channel, method.delivery_tag, properties, body, method.redelivered)
        if self._stop_requests or not self._free_slots or self.control.paused:
            # Sent before our basic.cancel arrived (stopping, or paused): back to the queue.
            channel.basic_nack(delivery.tag, requeue=True)
            return
        slot = self._free_slots.pop()
        slot.delivery = delivery
        self._changed = True
        self._idle_since = None
        try:
            self._take(slot, delivery)
        except Exception as exc:  # one odd message must never take the connection down
            self.log.exception("[%s] cannot handle %s", slot.name, delivery.label)
            if not delivery.settled:
                self._copy_then_ack(slot, delivery, dead_letter(
                    delivery, f"the worker could not handle this message: "
                    f"{failure_reason(exc)}", self.queue, slot.name), 0.0)

    def _take(self, slot: WorkSlot, delivery: Delivery) -> None:
        verdict = before_work(delivery, self.options, self.queue, slot.name,
                              self.control.state.cancelled_runs)
        if verdict is not None and verdict.outcome == "cancelled":
            self._ack_cancelled(slot, delivery, 0.0)
        elif verdict is not None:
            self._copy_then_ack(slot, delivery, verdict, 0.0)
        if verdict is not None:
            return
        if delivery.redelivered:
            self.stats.redelivered += 1
        note = f" (attempt {delivery.retries + 1})" if delivery.retries else ""
        if delivery.redelivered:
            note += " (redelivered: it may have run before)"
        self.log.info("[%s] received %s%s: %r", slot.name, delivery.label, note, delivery.text)
        expected = slot.runner.expected_seconds(delivery.text)
        if expected > CONSUMER_TIMEOUT_SECONDS and not (
                slot.runner.timeout and slot.runner.timeout < CONSUMER_TIMEOUT_SECONDS):
            self.log.warning("[%s] this task takes ~%.0f s, longer than RabbitMQ's default "
                             "consumer_timeout (1800 s): raise consumer_timeout in rabbitmq.conf "
                             "or the broker will close the channel and redeliver it",
                             slot.name, expected)
        slot.assign(delivery)

    def _on_outcome(self, slot: WorkSlot, delivery: Delivery, outcome: Outcome) -> None:
        """On the I/O thread: the slot's work for *delivery* ended."""
        seconds = time.time() - delivery.started
        try:
            self._settle(slot, delivery, outcome, seconds)
        except Exception:
            self.log.exception("[%s] could not settle %s; it goes back to the queue",
                               slot.name, delivery.label)
            if not delivery.settled and delivery.channel.is_open:
                delivery.channel.basic_nack(delivery.tag, requeue=True)
            delivery.settled = True
            self._free(slot, delivery, seconds)

    def _settle(self, slot: WorkSlot, delivery: Delivery, outcome: Outcome,
                seconds: float) -> None:
        if delivery.settled or not delivery.channel.is_open:
            # Requeued by a second Ctrl+C, or the connection was lost: the broker has it back.
            self._free(slot, delivery, seconds)
            return
        verdict = after_work(delivery, outcome, self.options, self.queue, slot.name,
                             delivery.cancelled)
        if verdict.outcome == "cancelled":
            self._ack_cancelled(slot, delivery, seconds)
            return
        if verdict.outcome != "done":
            slot.failed += 1
            self.stats.failed_attempts += 1
            self._copy_then_ack(slot, delivery, verdict, seconds)
            return
        delivery.channel.basic_ack(delivery.tag)
        delivery.settled = True
        self.stats.done += 1
        self.stats.done_by_run[delivery.run_id] += 1
        slot.done += 1
        result = f" -> {outcome.result[:80]!r}" if outcome.result else ""
        self.log.info("[%s] done %s in %.2f s: %r%s", slot.name, delivery.label, seconds,
                      delivery.text, result)
        self._record(slot, delivery, "done", seconds, result=outcome.result)
        self._free(slot, delivery, seconds)

    def _ack_cancelled(self, slot: WorkSlot, delivery: Delivery, seconds: float) -> None:
        delivery.channel.basic_ack(delivery.tag)
        delivery.settled = True
        self.stats.cancelled += 1
        self.log.info("[%s] cancelled %s (run %s was cancelled): %r", slot.name, delivery.label,
                      delivery.run_id, delivery.text)
        self._record(slot, delivery, "cancelled", seconds, f"run {delivery.run_id} cancelled")
        self._free(slot, delivery, seconds)

    # --- task_control.py: pause, resume, cancel, stop ---------------------------------------
    def _on_control(self, action: str, record: dict) -> None:
        name = self.options.name
        self._changed = True
        if action == "pause":
            in_hand = len(self.slots) - len(self._free_slots)
            self.log.warning("[%s] paused (task_control.py): taking no new tasks%s", name,
                             f"; finishing the {in_hand} in hand" if in_hand else "")
            self._cancel_consumer()
            self._idle_since = None  # paused is not idle: --exit-when-idle waits for resume
        elif action == "resume":
            self.log.info("[%s] resumed (task_control.py): taking tasks again", name)
            if self.channel is not None and not self._waiting_for_slots:
                self._subscribe(self.channel)
        elif action == "cancel":
            self._cancel_run(record["run"])
        elif action == "stop":
            self.log.warning("[%s] stop requested (task_control.py stop-workers)", name)
            if not self._stop_requests:
                self.request_stop()

    def _cancel_run(self, run_id: str) -> None:
        """Tasks of *run_id* in hand are stopped for real; queued ones are acked unrun."""
        stopped = 0
        for slot in self.slots:
            delivery = slot.delivery
            if delivery is not None and not delivery.settled and delivery.run_id == run_id:
                delivery.cancelled = True
                slot.interrupt()
                stopped += 1
        self.log.warning("[%s] run %s cancelled (task_control.py): %s", self.options.name,
                         run_id, f"stopping its {stopped} task(s) in hand" if stopped else
                         "its tasks will not be run")

    def _answer(self, record: dict, what: str) -> None:
        self.outbox.reply({"kind": "control-answer", "id": record.get("id"),
                           "command": record.get("command"), "worker": self.options.name,
                           "host": self.host, "did": what, "time": time.time()})

    def _free(self, slot: WorkSlot, delivery: Delivery, seconds: float) -> None:
        if slot.delivery is not delivery:
            return  # freed already (its copy was cancelled when the connection dropped)
        slot.release(seconds)
        self._free_slots.append(slot)
        self._changed = True
        if len(self._free_slots) == len(self.slots):
            if self._consumer_tag:
                self._idle_since = time.monotonic()
            if self._waiting_for_slots and self.channel is not None:
                self._subscribe(self.channel)
        self._finish_if_idle()

    def _copy_then_ack(self, slot: WorkSlot, delivery: Delivery, verdict: Verdict,
                       seconds: float) -> None:
        """Carry out a retry or dead verdict: the slot keeps the delivery (unacked) until the
        broker confirms the copy; then the original is acked (and a dead letter counted)."""
        key = id(delivery)
        if verdict.outcome == "retry":
            self.log.warning("[%s] failed %s (%s); retry %d/%d in %.1f s", slot.name,
                             delivery.label, verdict.reason, delivery.attempt,
                             self.options.max_retries, self.options.retry_delay)
            self._record(slot, delivery, "failed", seconds, verdict.reason)

        def settled(confirmed: bool) -> None:
            self._copies.pop(key, None)
            if not delivery.settled and delivery.channel.is_open:
                if confirmed:
                    delivery.channel.basic_ack(delivery.tag)
                    self._copied(slot, delivery, verdict, seconds)
                else:  # the broker refused the copy: keep the original rather than lose it
                    self.log.warning("[%s] the broker refused the copy of %s to %r; the task "
                                     "goes back to the queue", slot.name, delivery.label,
                                     verdict.copy_to)
                    delivery.channel.basic_nack(delivery.tag, requeue=True)
                delivery.settled = True
            self._free(slot, delivery, seconds)

        properties = _copy_properties(delivery.properties, verdict.headers, verdict.expiration)
        copy = Copy(verdict.copy_to, delivery.body, properties, settled)
        self._copies[key] = (slot, delivery, copy)
        self.outbox.publish_copy(copy)

    def _copied(self, slot: WorkSlot, delivery: Delivery, verdict: Verdict,
                seconds: float) -> None:
        if verdict.outcome == "retry":
            # --exit-when-idle must not give up on a task due back from <queue>.retry: its
            # delay runs from the moment the broker took the copy (an alarm may have held it).
            self._retry_due = time.monotonic() + self.options.retry_delay
            return
        self.stats.dead_lettered += 1
        self.log.error("[%s] dead-lettered %s to %r: %s", slot.name, delivery.label,
                       verdict.copy_to, verdict.reason)
        self._record(slot, delivery, "dead", seconds, verdict.reason)

    # --- events, live snapshots, idleness -------------------------------------------------
    def _tick(self) -> None:
        if self._finished:
            return
        self._ticks += 1
        now = time.monotonic()
        if self.options.events and not self._closing:
            since = now - self._last_snapshot
            if (self._changed and since >= SNAPSHOT_SECONDS[0]) or since >= SNAPSHOT_SECONDS[1]:
                state = "paused" if self.control.paused else "running"
                self.outbox.announce(self.account.snapshot(state, self._consumer_tag is not None))
                self._changed, self._last_snapshot = False, now
        if self._ticks % round(EVENT_FLUSH_SECONDS / TICK_SECONDS) == 0:
            self.outbox.send(everything=True)  # events and the snapshot go out on this beat
        self._check_idle(now)
        self._give_up_copies_if_overdue(now)
        self.ioloop.call_later(TICK_SECONDS, self._tick)

    def _give_up_copies_if_overdue(self, now: float) -> None:
        """Stopping, a copy the broker has not taken after EXIT_GRACE_SECONDS (an alarm blocks
        publishing) no longer holds the worker: its original goes back to the queue instead
        (its next attempt is at-least-once), so a stop never waits for the alarm to end."""
        if self._stop_since is None or now - self._stop_since < EXIT_GRACE_SECONDS:
            return
        for key, (slot, delivery, copy) in list(self._copies.items()):
            copy.cancelled = True
            del self._copies[key]
            if not delivery.settled and delivery.channel.is_open:
                delivery.channel.basic_nack(delivery.tag, requeue=True)
                self.log.warning("[%s] the broker has not taken the copy of %s to %r (blocked?):"
                                 " stopping, the task goes back to the queue instead", slot.name,
                                 delivery.label, copy.routing_key)
            delivery.settled = True
            self._free(slot, delivery, 0.0)

    def _check_idle(self, now: float) -> None:
        """--exit-when-idle: idle means connected, consuming, every slot free, no task came
        (and none is due back from <queue>.retry). Time spent disconnected does not count, nor
        does a path gone silent: before exiting, a round trip must say the queue is empty."""
        limit = self.options.exit_when_idle
        if limit is None or self._stop_requests or self._idle_since is None:
            return
        if self._copies or self.outbox.copies_waiting:
            return  # a failed task's copy is not confirmed yet: the task is still ours
        idle_for = now - max(self._idle_since, self._retry_due)
        if idle_for < limit or self._idle_probe is not None:
            return
        probe = self._idle_probe = object()

        def answered(depth: int | None, _consumers: int | None) -> None:
            if self._idle_probe is not probe:
                return  # asked on a connection since lost
            self._idle_probe = None
            if depth == 0 and self._idle_since is not None and not self._stop_requests:
                self.log.info("[%s] no task for %.1f s: exiting (--exit-when-idle)",
                              self.options.name, time.monotonic() - self._idle_since)
                self.request_stop()
            elif depth:
                self._idle_since = time.monotonic()  # tasks wait: they are on their way

        self.inspect_queue(self.queue.name, answered)


def _copy_properties(original: pika.BasicProperties, headers: dict,
                     expiration: str | None = None) -> pika.BasicProperties:
    return pika.BasicProperties(
        delivery_mode=pika.DeliveryMode.Persistent, message_id=original.message_id,
        content_type=original.content_type, content_encoding=original.content_encoding,
        app_id=original.app_id, timestamp=original.timestamp, headers=headers,
        correlation_id=original.correlation_id, expiration=expiration)
