"""The worker's loop: one task at a time, worked off the I/O thread, acked only when done.

``TaskConsumer`` asks for ``prefetch_count=1``, so the broker hands each worker one task and
the next one only after the ack: whoever is free next gets the next task (fair dispatch). The
work runs on a ``WorkThread`` while pika's I/O loop keeps answering heartbeats, so a task of any
length does not cost the connection; the result comes back to the I/O thread with
``add_callback_threadsafe`` (pika's documented pattern), where the ack is sent.

A task that fails is published to ``<queue>.retry`` (it flows back after ``retry_delay``) up to
``max_retries`` times, then parked in ``<queue>.dead`` with the reason in its headers. A message
that can never succeed (not UTF-8, empty, too large) goes to ``<queue>.dead`` at once. The copy is
confirmed by the broker before the original is acked, so a crash in between duplicates, never
loses.
"""

from __future__ import annotations

import importlib
import logging
import queue as queue_module
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property, partial

import pika
from pika.channel import Channel
from pika.spec import Basic

from taskqueue.config import DEFAULT_MAX_TASK_BYTES, BrokerSettings, QueueSpec
from taskqueue.connection import BrokerSession, declare_queues, settled_tags
from taskqueue.errors import UserError
from taskqueue.events import EVENT_FLUSH_SECONDS, EventBatch
from taskqueue.tasks import row_of, seconds_for

CONSUMER_TIMEOUT_SECONDS = 1800  # RabbitMQ's default consumer_timeout (30 min)
EVENT_PROPERTIES = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent,
                                        content_type="application/json")
Handler = Callable[[str], None]


def sleep_per_dot(seconds_per_dot: float) -> Handler:
    """The default work: sleep a fixed time for every '.' in the task text."""
    def work(text: str) -> None:
        seconds = seconds_for(text, seconds_per_dot)
        if seconds > 0:  # sleep(0) still yields the CPU: ~80 us per task for nothing
            time.sleep(seconds)
    return work


def load_handler(spec: str) -> Handler:
    """Import ``package.module:function``, a callable taking the task text."""
    module_name, _, attribute = spec.partition(":")
    try:
        handler = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError, ValueError) as exc:
        raise UserError(f"cannot load --handler {spec!r} ({exc}); "
                        "give MODULE:FUNCTION, importable from here") from None
    if not callable(handler):
        raise UserError(f"--handler {spec!r} is not a function")
    return handler


class WorkThread:
    """One daemon thread that runs handlers one at a time and reports each outcome through
    ``on_done(error or None)``. Daemon, so a second Ctrl+C can exit while a task sleeps."""

    def __init__(self) -> None:
        self._jobs: queue_module.SimpleQueue = queue_module.SimpleQueue()
        threading.Thread(target=self._loop, name="work", daemon=True).start()

    def submit(self, job: Callable[[], None],
               on_done: Callable[[BaseException | None], None]) -> None:
        self._jobs.put((job, on_done))

    def _loop(self) -> None:
        while True:
            job, on_done = self._jobs.get()
            on_done(run_job(job))


@dataclass
class Delivery:
    """A message in hand, and what we know about it."""

    channel: Channel
    tag: int
    properties: pika.BasicProperties
    body: bytes
    redelivered: bool
    text: str = ""
    received: float = field(default_factory=time.time)
    started: float = 0.0
    requeued: bool = False  # put back by a second Ctrl+C: its result no longer matters

    @cached_property
    def headers(self) -> dict:
        return dict(self.properties.headers or {})

    @property
    def retries(self) -> int:
        return int(self.headers.get("x-retries", 0))

    @cached_property
    def label(self) -> str:
        """How log lines name the task: its row and message id."""
        row = row_of(self.properties.message_id)
        where = f"row {row}" if row is not None else "no row"
        return f"{where}, id {self.properties.message_id or '-'}"


@dataclass
class WorkerStats:
    done: int = 0
    failed_attempts: int = 0
    dead_lettered: int = 0
    redelivered: int = 0
    busy_seconds: float = 0.0
    started: float = field(default_factory=time.monotonic)

    def summary(self, name: str) -> str:
        total = time.monotonic() - self.started
        return (f"worker {name}: {self.done} done, {self.failed_attempts} failed attempts, "
                f"{self.dead_lettered} dead-lettered, {self.redelivered} redelivered; busy "
                f"{self.busy_seconds:.1f} s, idle {max(0.0, total - self.busy_seconds):.1f} s")


@dataclass(frozen=True)
class WorkerOptions:
    name: str
    handler: Handler
    expected_seconds: Callable[[str], float] = lambda _text: 0.0
    exit_when_idle: float | None = None
    max_retries: int = 3
    retry_delay: float = 2.0
    max_task_bytes: int = DEFAULT_MAX_TASK_BYTES
    events: bool = True
    # Only for the built-in simulated work, whose length is known in advance: a task with no
    # dots has nothing to wait for, so it runs on the I/O thread and skips two thread switches.
    inline_when_instant: bool = False


class TaskConsumer(BrokerSession):
    """Consume the task queue with prefetch 1 until stopped, idle, or failed for good."""

    def __init__(self, settings: BrokerSettings, queue: QueueSpec, log: logging.Logger,
                 options: WorkerOptions) -> None:
        super().__init__(settings, queue, log)
        self.options = options
        self.stats = WorkerStats()
        self.in_hand: Delivery | None = None
        self._work = WorkThread()
        self._stop_requests = 0
        self._consumer_tag: str | None = None
        self._confirm_tag = 0
        self._after_confirm: dict[int, Callable[[bool], None] | None] = {}
        self._last_activity = time.monotonic()
        self._retry_due = 0.0  # when the last task sent to <queue>.retry flows back
        self._events = EventBatch(options.name, socket.gethostname(),
                                  self._send_events) if options.events else None

    # --- stopping ------------------------------------------------------------------------
    def request_stop(self) -> None:
        """First call: take no new task, finish the one in hand. Second: requeue it, stop now."""
        self._stop_requests += 1
        if self._stop_requests == 1:
            if self.in_hand:
                self.log.warning("[%s] stopping after the task in hand (%s); press Ctrl+C again "
                                 "to requeue it and stop now", self.options.name,
                                 self.in_hand.label)
            self._cancel_consumer()
            self._finish_if_idle()
            return
        if self.in_hand and self.in_hand.channel.is_open:
            self.in_hand.requeued = True
            self.in_hand.channel.basic_nack(self.in_hand.tag, requeue=True)
            self.log.warning("[%s] requeued %s: %r", self.options.name, self.in_hand.label,
                             self.in_hand.text)
        self.in_hand = None
        self.finish()

    def _cancel_consumer(self) -> None:
        if self.channel is not None and self.channel.is_open and self._consumer_tag:
            self.channel.basic_cancel(self._consumer_tag)
            self._consumer_tag = None

    def _finish_if_idle(self) -> None:
        if self._stop_requests and self.in_hand is None:
            self._flush_events()
            if not self._after_confirm:
                self.finish()

    # --- BrokerSession hooks -----------------------------------------------------------
    def on_channel_ready(self, channel: Channel) -> None:
        if self._stop_requests:
            self.finish()
            return
        self._confirm_tag = 0
        declare_queues(channel, self.queue, lambda: channel.confirm_delivery(
            ack_nack_callback=self._on_confirm, callback=lambda _f: self._set_qos(channel)))
        if self.connections_made == 1:
            self.ioloop.call_later(EVENT_FLUSH_SECONDS, self._flush_events_periodically)
            if self.options.exit_when_idle is not None:
                self.ioloop.call_later(0.2, self._check_idle)

    def _set_qos(self, channel: Channel) -> None:
        channel.basic_qos(prefetch_count=1, callback=lambda _frame: self._consume(channel))

    def _consume(self, channel: Channel) -> None:
        channel.add_on_cancel_callback(self._on_cancelled_by_broker)
        self._consumer_tag = channel.basic_consume(self.queue.name, self._on_message)
        self._last_activity = time.monotonic()  # idle time counts from consuming, not start
        self.log.info("[%s] waiting for tasks on queue %r (one at a time). Ctrl+C to stop",
                      self.options.name, self.queue.name)

    def _on_cancelled_by_broker(self, _frame: object) -> None:
        """The broker ended our subscription (queue deleted, or its node went away): start over
        on a fresh connection, which declares the queue again."""
        self._consumer_tag = None
        if self._stop_requests or self.channel is None:
            return
        self.log.warning("[%s] the broker cancelled the subscription to %r (queue deleted or "
                         "moved); subscribing again", self.options.name, self.queue.name)
        self.channel.close()

    def on_channel_lost(self) -> None:
        self._consumer_tag = None
        self._after_confirm.clear()  # what was unconfirmed is redelivered or republished
        if self.in_hand:
            self.log.warning("[%s] connection lost while working on %s; the broker will deliver "
                             "it again (at-least-once)", self.options.name, self.in_hand.label)

    def _check_idle(self) -> None:
        idle_for = time.monotonic() - max(self._last_activity, self._retry_due)
        if self.in_hand is None and idle_for >= self.options.exit_when_idle:
            if not self._stop_requests:
                self.log.info("[%s] no task for %.1f s: exiting (--exit-when-idle)",
                              self.options.name, idle_for)
                self.request_stop()
            return
        self.ioloop.call_later(0.2, self._check_idle)

    # --- one task ------------------------------------------------------------------------
    def _on_message(self, channel: Channel, method: Basic.Deliver,
                    properties: pika.BasicProperties, body: bytes) -> None:
        self._last_activity = time.monotonic()
        delivery = Delivery(channel, method.delivery_tag, properties, body, method.redelivered)
        if self._stop_requests:  # sent before our cancel reached the broker
            channel.basic_nack(delivery.tag, requeue=True)
            return
        problem = self._unworkable(delivery)
        if problem:
            self._dead_letter(delivery, problem)
            return
        self._start_work(delivery)

    def _unworkable(self, delivery: Delivery) -> str | None:
        """Why this message can never succeed, or None. Sets ``delivery.text``."""
        if not delivery.body:
            return "empty message"
        if len(delivery.body) > self.options.max_task_bytes:
            return f"message of {len(delivery.body)} bytes exceeds {self.options.max_task_bytes}"
        try:
            delivery.text = delivery.body.decode("utf-8")
        except UnicodeDecodeError as exc:
            return f"body is not UTF-8 text ({exc.reason} at byte {exc.start})"
        return None

    def _start_work(self, delivery: Delivery) -> None:
        self.in_hand = delivery
        name = self.options.name
        if delivery.redelivered:
            self.stats.redelivered += 1
        note = f" (attempt {delivery.retries + 1})" if delivery.retries else ""
        if delivery.redelivered:
            note += " (redelivered: it may have run before)"
        self.log.info("[%s] received %s%s: %r", name, delivery.label, note, delivery.text)
        expected = self.options.expected_seconds(delivery.text)
        if expected > CONSUMER_TIMEOUT_SECONDS:
            self.log.warning("[%s] this task takes ~%.0f s, longer than RabbitMQ's default "
                             "consumer_timeout (1800 s): raise consumer_timeout in rabbitmq.conf "
                             "or the broker will close the channel and redeliver it",
                             name, expected)
        if self.options.inline_when_instant and expected == 0:
            delivery.started = time.time()
            self._on_work_done(delivery, run_job(partial(self.options.handler, delivery.text)))
            return
        self._work.submit(partial(self._work_on, delivery),
                          lambda error: self.call_threadsafe(
                              partial(self._on_work_done, delivery, error)))

    def _work_on(self, delivery: Delivery) -> None:
        """On the work thread."""
        delivery.started = time.time()
        self.options.handler(delivery.text)

    def _on_work_done(self, delivery: Delivery, error: BaseException | None) -> None:
        """On the I/O thread: the handler returned (error is None) or raised."""
        if delivery.requeued:
            return
        if self.in_hand is delivery:
            self.in_hand = None  # (after a reconnect, the next task may be in hand already)
        self._last_activity = time.monotonic()
        seconds = time.time() - delivery.started
        self.stats.busy_seconds += seconds
        if not delivery.channel.is_open:
            # The broker already put it back; acking on a new channel is impossible.
            self.log.warning("[%s] finished %s after the connection was lost; it is redelivered",
                             self.options.name, delivery.label)
        elif error is None:
            delivery.channel.basic_ack(delivery.tag)
            self.stats.done += 1
            self.log.info("[%s] done %s in %.2f s: %r", self.options.name, delivery.label,
                          seconds, delivery.text)
            self._publish_event(delivery, "done", seconds)
        else:
            self._on_failure(delivery, f"{type(error).__name__}: {error}", seconds)
        self._finish_if_idle()

    def _on_failure(self, delivery: Delivery, reason: str, seconds: float) -> None:
        self.stats.failed_attempts += 1
        attempt = delivery.retries + 1
        if attempt > self.options.max_retries:
            self._dead_letter(delivery, f"failed {attempt} times; last: {reason}")
            return
        self.log.warning("[%s] failed %s (%s); retry %d/%d in %.1f s", self.options.name,
                         delivery.label, reason, attempt, self.options.max_retries,
                         self.options.retry_delay)
        self._publish_event(delivery, "failed", seconds, reason)
        headers = {**delivery.headers, "x-retries": attempt, "x-last-error": reason[:500]}
        properties = _copy_properties(delivery.properties, headers,
                                      expiration=str(int(self.options.retry_delay * 1000)))
        self._publish_then_ack(delivery, self.queue.retry_name, properties)
        # --exit-when-idle must not give up on a task that is due back after its delay.
        self._retry_due = time.monotonic() + self.options.retry_delay

    def _dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Park the message in ``<queue>.dead`` with the reason, then ack the original."""
        self.stats.dead_lettered += 1
        self.log.error("[%s] dead-lettered %s to %r: %s", self.options.name, delivery.label,
                       self.queue.dead_name, reason)
        headers = {**delivery.headers, "x-death-reason": reason[:1000],
                   "x-original-queue": self.queue.name, "x-dead-lettered-by": self.options.name}
        self._publish_event(delivery, "dead", 0.0, reason)
        self._publish_then_ack(delivery, self.queue.dead_name,
                               _copy_properties(delivery.properties, headers))

    def _publish_then_ack(self, delivery: Delivery, routing_key: str,
                          properties: pika.BasicProperties) -> None:
        def settle(confirmed: bool) -> None:
            if not delivery.channel.is_open:
                return
            if confirmed:
                delivery.channel.basic_ack(delivery.tag)
            else:  # the broker refused the copy: keep the original rather than lose it
                delivery.channel.basic_nack(delivery.tag, requeue=True)
            self._finish_if_idle()

        self._publish(routing_key, delivery.body, properties, settle)

    # --- publishing on the consumer's channel (in confirm mode) ----------------------
    def _publish(self, routing_key: str, body: bytes, properties: pika.BasicProperties,
                 on_confirm: Callable[[bool], None] | None) -> bool:
        """Publish; *on_confirm(acked)* runs when the broker confirms. False: no channel."""
        channel = self.channel
        if channel is None or not channel.is_open:
            return False
        channel.basic_publish("", routing_key, body, properties)
        self._confirm_tag += 1
        self._after_confirm[self._confirm_tag] = on_confirm
        return True

    def _on_confirm(self, frame: pika.frame.Method) -> None:
        acked, tags = settled_tags(frame, self._after_confirm)
        for tag in tags:
            callback = self._after_confirm.pop(tag)
            if callback is not None:
                callback(acked)
        self._finish_if_idle()

    def _publish_event(self, delivery: Delivery, outcome: str, seconds: float,
                       reason: str = "") -> None:
        """Record the attempt for the who-did-what report (sent in batches, see events.py)."""
        if self._events is None:
            return
        self._events.record(
            run_id=delivery.properties.correlation_id or "", outcome=outcome,
            message_id=delivery.properties.message_id, row=row_of(delivery.properties.message_id),
            task=delivery.text, received=delivery.received,
            started=delivery.started or delivery.received, seconds=seconds,
            attempt=delivery.retries + 1, redelivered=delivery.redelivered, reason=reason)

    def _send_events(self, body: bytes) -> bool:
        return self._publish(self.queue.events_name, body, EVENT_PROPERTIES, None)

    def _flush_events(self) -> None:
        if self._events is not None:
            self._events.flush()

    def _flush_events_periodically(self) -> None:
        self._flush_events()
        self.ioloop.call_later(EVENT_FLUSH_SECONDS, self._flush_events_periodically)


def run_job(job: Callable[[], None]) -> BaseException | None:
    """Run *job*; any exception it raises is the task's failure, returned, never raised."""
    try:
        job()
    except Exception as exc:
        return exc
    return None


def _copy_properties(original: pika.BasicProperties, headers: dict,
                     expiration: str | None = None) -> pika.BasicProperties:
    return pika.BasicProperties(
        delivery_mode=pika.DeliveryMode.Persistent, message_id=original.message_id,
        content_type=original.content_type, content_encoding=original.content_encoding,
        app_id=original.app_id, timestamp=original.timestamp, headers=headers,
        correlation_id=original.correlation_id,
        expiration=expiration)
