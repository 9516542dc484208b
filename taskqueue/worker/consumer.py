"""The worker's consuming side: take deliveries, hand each to a free slot, settle it.

``TaskConsumer`` asks for ``prefetch_count`` = its number of slots (1 by default), so the broker
hands a worker no more unacked tasks than it can work on at once (one more while tasks are
short: look_ahead.py): whoever has a free slot gets the next task (fair dispatch). It consumes
``<queue>.urgent`` too (broker/urgent.py), and a slot that frees takes an urgent task in hand
before a normal one (lanes.py). The work runs in the slots (slots.py, work.py) while pika's I/O
loop keeps answering heartbeats. A delivery's life reads top to bottom in life.py: receive ->
already done? (tail.py) -> run (slots) -> what becomes of it (policy.py, a pure decision) ->
record, copy, confirm, ack (settlement.py). Everything the worker publishes goes through its
``Outbox`` (outbox.py), a connection of its own, so that a broker blocking publishers (memory or
disk alarm) never stops consuming.

The worker has one phase at a time (phase.py: starting, reconnecting, waiting for slots,
consuming, paused, draining, stopping, stopped), and every decision about taking tasks reads
it: no flag beside it says "stopping" or "subscribed".
"""

from __future__ import annotations

import logging
import socket
import time
from dataclasses import replace
from functools import partial

import pika
from pika.channel import Channel
from pika.spec import Basic

from taskqueue.broker.config import BrokerSettings, QueueSpec, mask_url
from taskqueue.broker.connection import BrokerSession
from taskqueue.broker.topology import Topology, results_refusal
from taskqueue.control.state import ControlState
from taskqueue.errors import EXIT_REFUSED, UserError
from taskqueue.worker.account import WorkerAccount, WorkerOptions
from taskqueue.worker.commands_in import ControlCommands
from taskqueue.worker.delivery import Delivery, Overruns
from taskqueue.worker.give_back import GiveBack
from taskqueue.worker.idle import IdleWatch
from taskqueue.worker.in_hand import EXIT_GRACE_SECONDS, InHand
from taskqueue.worker.lanes import Intake
from taskqueue.worker.life import DeliveryLife, WorkerParts
from taskqueue.worker.look_ahead import LookAhead
from taskqueue.worker.outbox import Outbox
from taskqueue.worker.phase import (
    STOP_ASKED,
    Phase,
    after_connection_lost,
    after_stop_request,
    subscribe_step,
)
from taskqueue.worker.policy import broker_limit_clash
from taskqueue.worker.ratelimit import RateGate
from taskqueue.worker.reach import ReachWatch
from taskqueue.worker.slots import WorkSlot, slot_names
from taskqueue.worker.tail import ResultsTail
from taskqueue.worker.work import Runner

TICK_SECONDS = 0.25  # idle checks, event flushes and live snapshots run on this beat


class TaskConsumer(BrokerSession):
    """Consume the task queue into ``len(runners)`` slots until stopped, idle, or failed for
    good. ``request_stop()`` (or Ctrl+C / SIGTERM): first, take no new task and finish the
    ones in hand; second, put them back in the queue and stop now."""

    def __init__(self, settings: BrokerSettings, queue: QueueSpec, log: logging.Logger,
                 options: WorkerOptions, runners: list[Runner]) -> None:
        super().__init__(replace(settings, client_name=f"listening_worker {options.name}"), log,
                         queue_name=queue.name)
        self.queue, self.options, self.host = queue, options, socket.gethostname()
        self.phase = Phase.STARTING
        self.topology: Topology | None = None
        # Filled at the end, once the delivery's life they report to exists (the parts below
        # hold these same lists).
        self.slots: list[WorkSlot] = []
        self._free_slots: list[WorkSlot] = []  # a stack: the first slot goes first
        self.in_hand = InHand(self.slots, log, self._after_free)  # the tasks still ours
        self.outbox = Outbox(settings, queue, log, self.ioloop, options.name)
        self.outbox.on_finished = self._on_outbox_finished
        self.account = WorkerAccount(options, self.host, self.slots, self.outbox)
        self.stats = self.account.stats
        self.overruns = Overruns()
        self.tail = ResultsTail(queue, options.name, log, self.outbox.record_result,
                                self._results_refused)
        self.outbox.on_block, self.outbox.on_unblock = (self.tail.alarm.publishing_blocked,
                                                        self.tail.alarm.publishing_unblocked)
        # A node cut off from the majority delivers nothing and says nothing: a quiet worker
        # asks for a probe (a fence) now and then, and leaves a node that cannot answer it.
        self.reach = ReachWatch(self.tail.probe, self._on_cut_off)
        self._tail_read = 0  # the tail's messages read at the last beat (progress: reach.py)
        self.outbox.on_stalled = self._on_outbox_stalled
        # The shared rate limit (worker/ratelimit.py): asks on the publishing connection, the
        # arbiter role on this one, whatever our phase.
        self.rate = RateGate(queue, log, options.name, self.ioloop, lambda: self.outbox.blocked)
        self.outbox.on_connected = self.rate.publishing_ready
        self._last_delivery = 0.0  # when the last task came (or consuming began)
        self.idle = IdleWatch(self, options.exit_when_idle)
        self._stop_since: float | None = None  # when the first stop request came
        # The subscriptions to <queue>.urgent and <queue> (CONSUMING has both), and the
        # deliveries that came while every slot was busy.
        self.intake = Intake(queue.name, len(runners), GiveBack(self.outbox, lambda: self.topology),
                             log, options.name)
        self.look_ahead = LookAhead(self.intake, self.inspect_queue,
                                    self.in_hand.in_hand_for, log=log,
                                    subscriptions_in_hand=self.in_hand.subscriptions)
        self._ticks = 0
        # task_control.py's commands (commands_in.py), which ask us to pause, resume or stop.
        self.commands = ControlCommands(self, queue, ControlState(options.name, time.time()))
        self.control = self.commands.listener
        self.life = DeliveryLife(WorkerParts(
            log, queue, options, self.slots, self._free_slots, self.outbox, self.account,
            self.tail, self.idle, self.control, self.overruns, lambda: self.phase, self._free,
            self.mark_changed, self.in_hand, partial(self.ioloop.call_later, 0), rate=self.rate))
        # A slot's outcome goes to the life on the I/O thread: the slot hops threads itself
        # (call_threadsafe), so pika is only ever called from the connection's thread.
        self.slots.extend(WorkSlot(name, runner, self.life.on_outcome, self.call_threadsafe)
                          for name, runner in zip(slot_names(options.name, len(runners)),
                                                  runners))
        self._free_slots.extend(reversed(self.slots))

    def mark_changed(self) -> None:
        self.account.changed = True  # a live snapshot goes out on the next beat

    def _results_refused(self, reason: BaseException) -> None:
        """No permission on the results stream: no task is taken without records."""
        error = results_refusal(self.queue.results_name, reason)
        self.fail(error if isinstance(error, UserError) else UserError(str(error), EXIT_REFUSED))

    # --- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        super().start()
        self.outbox.start()
        self.ioloop.call_later(TICK_SECONDS, self._tick)

    def request_stop(self) -> None:
        self.on_stop_request(0)

    def on_stop_request(self, _count: int) -> None:
        self._stop_since = self._stop_since or time.monotonic()
        in_hand = self.in_hand.now()
        self.phase, second = after_stop_request(self.phase)
        if not second:
            if in_hand:
                self.log.warning("[%s] stopping after the %d task(s) in hand (%s); press Ctrl+C "
                                 "again to requeue them and stop now", self.options.name,
                                 len(in_hand), "; ".join(held.delivery.label
                                                         for _slot, held in in_hand))
            self._cancel_consumer()
            self._finish_if_idle()
            return
        self.in_hand.requeue(in_hand, "a second stop request")
        self.intake.give_back_now()  # (not waiting for the cancels' answer either)
        if self.phase is Phase.STOPPING:  # waiting for the last records: stop waiting
            self.outbox.finish()
        else:
            self._shutdown(grace=1.0)

    def _cancel_consumer(self) -> None:
        given = self.intake.cancel(self.channel, then=self._finish_if_idle)
        if given:
            self.log.info("[%s] gave %d waiting task(s) back to the queue", self.options.name,
                          given)
        self.idle.stop()

    def _on_outbox_finished(self) -> None:
        if self._stop_since is not None:  # nothing unconfirmed will be confirmed now
            self.intake.give_back_now()
            self.in_hand.give_back_unconfirmed(self.intake.giving_back)
        self.intake.say_late()
        self.phase = Phase.STOPPED
        if self.outbox.error is not None:
            self.fail(self.outbox.error)  # e.g. no permission to publish: the user must act
        else:
            self.finish()

    def _finish_if_idle(self) -> None:
        # (and the broker has answered our cancels: what was on its way came back first)
        if self.phase is Phase.DRAINING and self.busy_slots() == 0 and self.intake.answered:
            self._shutdown(EXIT_GRACE_SECONDS)

    def _shutdown(self, grace: float) -> None:
        """Record the worker's totals, let the outbox send what waits, then close."""
        if self.phase in (Phase.STOPPING, Phase.STOPPED):
            return
        self.phase = Phase.STOPPING
        self.account.totals()
        self.rate.close()  # the next worker becomes the arbiter now, not when we are gone
        for slot in self.slots:
            slot.close()
        self.outbox.close(grace)

    # --- BrokerSession hooks -----------------------------------------------------------
    def on_channel_ready(self, channel: Channel) -> None:
        if self.phase in STOP_ASKED:
            self._finish_if_idle()
            return
        self.set_up_queues(channel, self.queue, lambda topology: self._on_set_up(channel,
                                                                                   topology))

    def _on_set_up(self, channel: Channel, topology: Topology) -> None:
        self.topology = topology
        self.intake.urgent = self.idle.urgent = topology.urgent  # no permission: not consumed
        clash = broker_limit_clash(topology.version, topology.task_type, self.options)
        if clash and self.connections_made == 1:
            self.log.warning("[%s] %s", self.options.name, clash)
        self.outbox.exchange_ready = True
        self.outbox.send(everything=True)
        self.mark_ready()
        self.rate.consuming_ready(channel.connection, topology)
        channel.add_on_cancel_callback(self._on_cancelled_by_broker)
        # The record first (a first fence proves we may read and write it: no work without
        # records), then the control stream (a worker started while paused takes nothing),
        # then <queue>.urgent.retry (lanes.py: an urgent task's retry stays urgent).
        self.tail.start(channel.connection, self.ioloop, lambda: self.control.start(
            channel.connection, self.ioloop, lambda: self.intake.prepare(
                channel.connection, topology, lambda: self._subscribe(channel))))

    def _subscribe(self, channel: Channel) -> None:
        """prefetch_count = the number of slots (2 x slots for <queue>.urgent). Slots still busy
        with work from a lost connection (an in-process handler cannot be stopped) would make a
        new task wait behind them while other workers are free: subscribe only once they are
        done."""
        if not self._current(channel):
            return
        step = subscribe_step(self.phase, self.control.paused, self.busy_slots())
        if step == "pause":
            self.phase = Phase.PAUSED  # resume subscribes
        elif step == "wait":
            if self.phase is Phase.RECONNECTING:
                self.log.warning("[%s] still working on a task from the lost connection: taking "
                                 "new tasks once it is finished", self.options.name)
            self.phase = Phase.WAITING_FOR_SLOTS  # _free subscribes
        elif step == "subscribe":
            channel.basic_qos(prefetch_count=self.intake.prefetch,
                              callback=lambda _frame: self._consume(channel))

    def _current(self, channel: Channel) -> bool:
        """*channel* is the open one of this connection (not one lost meanwhile)."""
        return bool(channel.is_open) and channel is self.channel

    def _consume(self, channel: Channel) -> None:
        if not self._current(channel) or subscribe_step(
                self.phase, self.control.paused, 0) != "subscribe":
            return  # stopped, paused or subscribed meanwhile
        self.intake.subscribe(channel, self._on_message)
        self.phase = Phase.CONSUMING
        self._last_delivery = time.monotonic()
        self.idle.consuming()  # idle time counts from consuming, not from start
        count = len(self.slots)
        self.log.info("[%s] waiting for tasks on queue %r (%s). Ctrl+C to stop",
                      self.options.name, self.queue.name,
                      "one at a time" if count == 1 else f"up to {count} at a time")
        if self.intake.urgent:
            self.log.info("[%s] and on %r, whose tasks go first", self.options.name,
                          self.intake.urgent_queue)

    def _on_cancelled_by_broker(self, _frame: object) -> None:
        """The broker ended our subscription: start over on a fresh connection, which sets the
        queues up again and subscribes again. The cancel carries no reason. With a task in hand
        it is a consumer timeout, most likely: RabbitMQ 4.3 cancels the consumer (3.x closed
        the channel) and takes back the task held too long, uncounted (life.py counts it).
        Without one: the queue was deleted, or its node went away. Stopping, our own cancels
        went out already: the channel stays, with what it is giving back."""
        self.idle.stop()
        if self.phase in STOP_ASKED or self.channel is None or not self.channel.is_open:
            return  # (both subscriptions cancelled: the second one finds the channel closing)
        self.intake.forget()  # the channel is closed below
        self.phase = Phase.RECONNECTING  # the channel is closed below: set up again
        if not self.life.taken_back("the broker cancelled the subscription"):
            self.log.warning("[%s] the broker cancelled the subscription to %r (queue deleted, "
                             "or its node went away); subscribing again", self.options.name,
                             self.queue.name)
        self.channel.close()

    def _on_channel_closed(self, channel: Channel, reason: BaseException) -> None:
        """connection.py's, after counting a consumer timeout that closed the channel (3.x, and
        4.x classic queues: "delivery acknowledgement on channel N timed out"), which a classic
        queue does not count: before the channel's loss drops the task in hand."""
        text = str(reason)
        if channel is self.channel and "delivery acknowledgement" in text and "timed out" in text:
            self.life.taken_back("the broker closed the channel")
        super()._on_channel_closed(channel, reason)

    def _on_message(self, channel: Channel, method: Basic.Deliver,
                    properties: pika.BasicProperties, body: bytes) -> None:
        self._last_delivery = time.monotonic()  # a task came through: this node serves
        if self.phase is Phase.CONSUMING and not self._free_slots:
            # Every slot busy: it waits in hand for the next free one, urgent first. (Not
            # consuming: the life gives it back.)
            self.intake.hold(channel, method, properties, body)
            return
        self.life.on_message(channel, method, properties, body,
                             urgent=self.intake.urgent_delivery(method))

    def _take_waiting(self) -> None:
        """A slot is free: it takes the next delivery in hand, urgent first (lanes.py)."""
        if self.phase is not Phase.CONSUMING or not self._free_slots:
            return
        held = self.intake.take()
        if held is not None:
            self.life.on_message(held.channel, held.method, held.properties, held.body,
                                 urgent=held.urgent)

    def _quiet_since(self) -> float | None:
        """Consuming with no task running, since when (None: not quiet). A slot waiting for
        its record's confirm counts as quiet: that wait is the broker's, not the work's."""
        if self.phase is not Phase.CONSUMING:
            return None
        if any(slot.settlement is not None and slot.settlement.work_runs for slot in self.slots):
            return None
        return self._last_delivery

    def _on_cut_off(self, waited: float) -> None:
        """reach.py: our probe has not come back: this node cannot serve (a partition, most
        likely, on its minority side). Leave it; the next URL is tried (tasks in hand go back
        to the queue, as on any lost connection)."""
        self.log.warning("[%s] %s delivers nothing and our mark in the results stream has not "
                         "come back for %.0f s: the node cannot reach the cluster's majority "
                         "(a network partition?); moving to the next URL", self.options.name,
                         mask_url(self.url), waited)
        self.drop_connection("the node cannot reach the cluster's majority")

    def _on_outbox_stalled(self, url: str) -> None:
        """The outbox gives up a node whose confirms stopped. If it is not ours, our probe's
        silence came from there: its timeout starts again (reach.py). If it is ours, it is one
        more sign that our node cannot serve: the probe's timeout keeps running."""
        if url != self.url:
            self.reach.postpone()

    def on_channel_lost(self) -> None:
        self.reach.reset()
        self.rate.consuming_lost()
        self.control.stop()
        self.tail.stop()
        self.intake.forget()  # nobody can ack them now: the broker delivers them again
        self.idle.stop()
        self.phase = after_connection_lost(self.phase)
        self.in_hand.drop()  # nobody can ack them now: the broker delivers them again
        self._finish_if_idle()  # (a stop that waited for the cancels' answer: none comes now)

    def _free(self, slot: WorkSlot, delivery: Delivery, seconds: float) -> None:
        if slot.delivery is not delivery:
            return  # freed already
        if slot.settlement is not None and slot.settlement.work_runs:
            return  # its work still runs (dropped while working): freed when it ends
        slot.release(seconds)
        slot.settlement = None
        self._free_slots.append(slot)
        self._take_waiting()
        if self.phase is Phase.CONSUMING and self.channel is not None:
            self.look_ahead.after_task(seconds if delivery.started else None, self.channel)
        self._after_free()

    def _after_free(self) -> None:
        """A slot freed, or a task set apart is over (in_hand.py): with none busy and none set
        apart, the worker is idle (--exit-when-idle), may subscribe (resumed, or connected
        again: the broker no longer counts any task of ours), or ends its drain."""
        self.account.changed = True
        if self.busy_slots() == 0:
            if self.phase is Phase.CONSUMING:
                self.idle.all_free()
            if self.phase is Phase.WAITING_FOR_SLOTS:
                self.subscribe_again()
        self._finish_if_idle()

    # --- what task_control.py's commands ask of us (commands_in.py) -------------------------
    def busy_slots(self) -> int:
        """Slots not free (a task in hand, or work still running for one no longer ours), and
        tasks set apart waiting for their confirms (the broker counts them until the ack)."""
        return len(self.slots) - len(self._free_slots) + self.in_hand.apart

    def pause(self) -> None:
        """task_control.py pause (commands_in.py): take nothing new, finish what is in hand.
        Paused is not idle: --exit-when-idle waits for the resume."""
        self._cancel_consumer()
        if self.phase in (Phase.CONSUMING, Phase.WAITING_FOR_SLOTS):
            self.phase = Phase.PAUSED

    def subscribe_again(self) -> None:
        """Resumed, or every slot free again: subscribe (it waits for busy slots itself)."""
        if self.channel is not None:
            self._subscribe(self.channel)

    # --- the beat: live snapshots, event flushes, idleness, a stop that cannot wait ------------
    def _tick(self) -> None:
        if self._finished:
            return
        self._ticks += 1
        now = time.monotonic()
        if self.options.events and self.phase not in (Phase.STOPPING, Phase.STOPPED):
            self.account.beat(now, "paused" if self.control.paused else "running",
                              self.phase is Phase.CONSUMING, self.rate.snapshot)
        if self._ticks % 2 == 0:
            self.outbox.send(everything=True)  # events and the snapshot go out on this beat
        if self.phase not in STOP_ASKED:
            # Our probe's mark may be behind what the results stream is still sending us (a
            # reading catching up): a node that sends is serving, the probe's clock restarts.
            read = self.tail.messages_read
            self.reach.check(now, self._quiet_since(), self.outbox.blocked
                             or not self.outbox.confirming or read != self._tail_read)
            self._tail_read = read
            self.idle.check(now)
        self.outbox.check_confirms(now)
        self.tail.check_fences(now)
        if self.phase is Phase.CONSUMING and self.channel is not None and not self.outbox.blocked:
            self.look_ahead.check(self.channel)  # (blocked: a give-back would be a counted nack)
        self.in_hand.give_back_if_stuck(self._stop_since is not None, now,
                                        self.intake.giving_back)
        self.intake.say_late()  # (given back after the pause or stop's line: lanes.py)
        self.ioloop.call_later(TICK_SECONDS, self._tick)
