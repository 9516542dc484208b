"""The sending side of pause, resume, cancel, stop-workers and rate-limit: append the command
to ``<queue>.control`` (confirmed), and count the workers that answer; and what the stream
says is in force (the rate limit) for status.

The command goes out at once (a cancel that waited to learn who is there let tasks finish
meanwhile); then which workers are there is learnt from their live snapshots (each sends one
at least every two seconds to the events exchange), listened to for ``LISTEN_SECONDS``, while
their answers come back on the same exchange. A worker that does not answer in
``ANSWER_SECONDS`` is named: it acts when it reads the stream (on reconnecting, say).
"""

from __future__ import annotations

import contextlib
import getpass
import json
import socket
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import pika
from pika.adapters.blocking_connection import BlockingChannel

from taskqueue.broker.blocking import NoConfirm, confirmed_within, open_blocking
from taskqueue.broker.config import BrokerSettings, QueueSpec, mask_url
from taskqueue.broker.depths import Refused, looks
from taskqueue.broker.on_demand import CONTROL_ARGUMENTS
from taskqueue.broker.topology import ROUTING_CONTROL, ROUTING_LIVE, queue_unavailable
from taskqueue.control.ratelimit import RateLimit
from taskqueue.control.state import CANCELS, ControlState, Selection, command, decode
from taskqueue.errors import EXIT_REFUSED, EXIT_UNREACHABLE, UserError
from taskqueue.wire.events import decode_events

LISTEN_SECONDS = 2.5  # workers snapshot at least every 2 s
CONFIRM_SECONDS = 10.0  # the command's confirm, at most, before the next URL is tried
ANSWER_SECONDS = 5.0
GONE_AFTER = 6.0


@dataclass
class Outcome:
    """What came of one command."""

    record: dict
    known: dict[str, str] = field(default_factory=dict)  # worker -> state it said it was in
    answers: dict[str, str] = field(default_factory=dict)  # worker -> what it did
    given: bool = False  # the broker confirmed the command

    @property
    def silent(self) -> list[str]:
        return sorted(set(self.concerned) - set(self.answers))

    @property
    def concerned(self) -> list[str]:
        named = self.record.get("worker")
        return [name for name in self.known if named in (None, name)]


def sender() -> str:
    """``user@host`` of whoever gives a command: a cancelled task's record names it."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for our uid (a container's), no USER either
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def send(settings: BrokerSettings, spec: QueueSpec, kind: str, *, run: str | None = None,
         worker: str | None = None, selection: Selection | None = None,
         by: str | None = None, say: Callable[[str], None] | None = None,
         limit: RateLimit | None = None) -> Outcome:
    """Give the command; return who was there and who answered. A node that does not confirm
    it within ``CONFIRM_SECONDS`` (cut off from its cluster's majority: it stays open and
    silent) is left for the next URL, with the same command (giving it twice changes nothing).
    A cancel and a rate-limit (*limit*, None: off) say who gave it: *by*, else ``sender()``.
    *say* gets that one line (default: stderr)."""
    say = say or (lambda line: print(line, file=sys.stderr, flush=True))
    if (kind in CANCELS or kind == "rate-limit") and by is None:
        by = sender()
    outcome = Outcome(command(kind, run=run, worker=worker, selection=selection, by=by,
                              limit=limit))
    urls = settings.urls
    for number, url in enumerate(urls, 1):
        connection = open_blocking(replace(settings, urls=urls[number - 1:]))
        try:
            return _send(connection, spec, outcome)
        except NoConfirm:
            if number == len(urls):
                raise UserError(f"the command was not taken and confirmed within "
                                f"{CONFIRM_SECONDS:.0f} s by {mask_url(url)} (a node cut off "
                                "from its cluster?); it "
                                "may still arrive; give it again when the broker is whole, or "
                                "add --url for the other nodes", EXIT_UNREACHABLE) from None
            say(f"{mask_url(url)} did not take and confirm the command within "
                f"{CONFIRM_SECONDS:.0f} s (cut off from its cluster's majority?); giving it "
                "through the next URL")
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code != 541 or number == len(urls):  # 541: the node gave up on it
                raise UserError(control_refusal(spec, exc), EXIT_REFUSED) from None
            say(f"{mask_url(url)} could not take the command ({exc.reply_text}); giving it "
                "through the next URL")
        except (pika.exceptions.AMQPConnectionError, pika.exceptions.StreamLostError) as exc:
            if outcome.given:  # only the answers were still coming: do not give it again
                raise UserError(f"the command was given, then the connection to the broker "
                                f"was lost while the workers answered ({exc!r}); see them "
                                "with task_report.py --watch", EXIT_UNREACHABLE) from None
            if number == len(urls):  # a node pausing itself, or going down, before confirming
                raise UserError(f"the connection to the broker was lost before the command "
                                f"was confirmed ({exc!r}); run it again once the broker is "
                                "back", EXIT_UNREACHABLE) from None
            say(f"the connection to {mask_url(url)} was lost before the command was "
                "confirmed; giving it through the next URL")
        finally:
            with contextlib.suppress(pika.exceptions.AMQPError, OSError):
                if connection.is_open:
                    connection.close()
    raise AssertionError("unreachable: every URL returns or raises")


def _send(connection: pika.BlockingConnection, spec: QueueSpec, outcome: Outcome) -> Outcome:
    # The bound covers the declares too, not only the confirm: a node cut off from its cluster
    # never answers a declare on RabbitMQ 4.3 (metadata changes need Khepri's majority), and
    # the command is then given through the next URL after CONFIRM_SECONDS, not ~30 s.
    with confirmed_within(connection, CONFIRM_SECONDS):
        listen(connection, spec, (ROUTING_LIVE, ROUTING_CONTROL),
               lambda event: take(outcome, event))
        append(connection, spec, outcome.record)  # first: the workers act on it as we listen
    outcome.given = True
    listened = time.monotonic() + LISTEN_SECONDS  # who is there: snapshots come every 2 s
    answered = time.monotonic() + ANSWER_SECONDS
    while (now := time.monotonic()) < answered and (now < listened or outcome.silent):
        until = min(answered, listened) if now < listened else answered
        connection.process_data_events(time_limit=max(0.0, until - now))
    return outcome


def listen(connection: pika.BlockingConnection, spec: QueueSpec, keys: tuple[str, ...],
           on_event: Callable[[dict], None]) -> None:
    """Have the events exchange's messages with *keys* given to *on_event* (a queue of our
    own, gone with the connection) while the connection processes data events."""
    channel = connection.channel()
    channel.exchange_declare(spec.exchange, "topic", durable=True)
    inbox = f"{spec.name}.control-answers.{uuid.uuid4().hex[:8]}"
    channel.queue_declare(inbox, exclusive=True, auto_delete=True)
    for key in keys:
        channel.queue_bind(inbox, spec.exchange, key)

    def on_message(_ch, _method, _properties, body: bytes) -> None:
        for event in decode_events(body):
            on_event(event)

    channel.basic_consume(inbox, on_message, auto_ack=True)


def busy_slots(settings: BrokerSettings, spec: QueueSpec) -> list[dict]:
    """What the workers there now are running: the busy slots of their live snapshots (each
    sends one at least every two seconds), heard for ``LISTEN_SECONDS``; each slot's latest."""
    slots: dict[str, dict] = {}

    def heard(event: dict) -> None:
        if event.get("kind") == "snapshot" and isinstance(event.get("slots"), list):
            for slot in event["slots"]:
                if isinstance(slot, dict) and slot.get("slot"):
                    slots[str(slot["slot"])] = slot

    connection = open_blocking(settings)
    try:
        listen(connection, spec, (ROUTING_LIVE,), heard)
        until = time.monotonic() + LISTEN_SECONDS
        while (left := until - time.monotonic()) > 0:  # it returns once something came
            connection.process_data_events(time_limit=left)
    finally:
        with contextlib.suppress(pika.exceptions.AMQPError, OSError):
            if connection.is_open:
                connection.close()
    return [slot for slot in slots.values() if slot.get("state") == "busy"]


def take(outcome: Outcome, event: dict) -> None:
    if event.get("kind") == "snapshot":
        fresh = time.time() - float(event.get("time") or 0) < GONE_AFTER
        if event.get("state") != "stopped" and fresh and event.get("worker"):
            outcome.known.setdefault(event["worker"], str(event.get("state")))
    elif event.get("kind") == "control-answer" and event.get("id") == outcome.record["id"]:
        outcome.answers[str(event.get("worker"))] = str(event.get("did"))
        outcome.known.setdefault(str(event.get("worker")), "running")


def append(connection: pika.BlockingConnection, spec: QueueSpec, record: dict) -> None:
    """Publish *record* to the control stream, confirmed (made if missing)."""
    channel = ensure_control(connection, spec)
    channel.confirm_delivery()
    channel.basic_publish("", spec.control_name, json.dumps(record).encode(),
                          pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent,
                                               content_type="application/json"), mandatory=True)
    channel.close()


def ensure_control(connection: pika.BlockingConnection, spec: QueueSpec
                   ) -> BlockingChannel:
    """A channel on which ``<queue>.control`` exists: an existing stream used as it is (one
    made before it was bounded would refuse a redeclaration with ours), a missing one made
    bounded (``CONTROL_ARGUMENTS``), or, if someone made it meanwhile, theirs."""
    for attempt in range(2):
        try:
            channel = connection.channel()
            channel.queue_declare(spec.control_name, passive=True)
            return channel
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code != 404 or queue_unavailable(404, exc.reply_text) is not None:
                raise
        try:
            channel = connection.channel()
            channel.queue_declare(spec.control_name, durable=True, arguments=CONTROL_ARGUMENTS)
            return channel
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code != 406 or attempt:
                raise
    raise AssertionError("unreachable: the second attempt returns or raises")


def control_refusal(spec: QueueSpec, exc: pika.exceptions.ChannelClosedByBroker) -> str:
    if exc.reply_code == 403:
        return (f"RabbitMQ refused an operation ({exc.reply_text}); grant the user "
                f"configure/write/read permissions on {spec.control_name!r} and "
                f"'{spec.name}.control-answers.*' (the README's recipe covers them)")
    return (f"cannot use the control stream {spec.control_name!r} ({exc.reply_text}); it needs "
            "RabbitMQ 3.9 or newer (streams), and the name free for a stream")


def summary(outcome: Outcome, what: str) -> str:
    """One line: what was done, by how many workers, and who did not answer."""
    concerned, answers = outcome.concerned, outcome.answers
    if not concerned and not answers:
        return f"{what}; no worker is running (workers that start will act on it)"
    acted = ", ".join(f"{name} ({did})" if did != "nothing to change" else f"{name} (already)"
                      for name, did in sorted(answers.items()))
    text = f"{what}; {len(answers)} worker(s) answered: {acted or 'none'}"
    if outcome.silent:
        text += (f"; no answer from {', '.join(outcome.silent)} (they act when they read the "
                 "control stream)")
    return text


READ_SECONDS = 10.0  # reading the control stream for status, at most
QUIET_SECONDS = 2.0  # nothing more came for this long: the stream's end (a new one is slow)


def in_force(connection: pika.BlockingConnection, spec: QueueSpec,
             last: int | None) -> ControlState:
    """What the control stream's commands up to offset *last* (its newest: ``measure``) add
    up to, read as a worker would (the rate limit in force: ``.rate_limit``)."""
    state = ControlState("task_control", time.time())
    if last is None:
        return state
    channel = connection.channel()
    channel.basic_qos(prefetch_count=500)
    deadline = time.monotonic() + READ_SECONDS
    for method, properties, body in channel.consume(spec.control_name,
                                                    inactivity_timeout=QUIET_SECONDS,
                                                    arguments={"x-stream-offset": "first"}):
        if method is None or time.monotonic() > deadline:
            break
        channel.basic_ack(method.delivery_tag)
        record = decode(body)
        if record is not None:
            state.apply(record)
        offset = (properties.headers or {}).get("x-stream-offset")
        if isinstance(offset, int) and offset >= last:
            break
    channel.close()
    return state


@dataclass
class Parked:
    """The tasks in the rate limit's wait tiers, and the tiers the broker would not count
    (name: its words): those may hold more."""

    tasks: int = 0
    uncounted: dict[str, str] = field(default_factory=dict)

    def phrase(self) -> str:
        """``412 tasks parked``, and any tier not counted, with why."""
        text = f"{self.tasks} tasks parked"
        if self.uncounted:
            text += " (not counted: " + ", ".join(
                f"{name}: {why}" for name, why in sorted(self.uncounted.items())) + ")"
        return text


def parked(connection: pika.BlockingConnection, spec: QueueSpec) -> Parked | None:
    """The tasks in the rate limit's wait tiers (``<queue>.wait.<N>s``), each read on a
    channel closed again (broker/depths.py); None: no tier exists (no limit was ever given).
    A tier the broker refuses to count (no permission, no leader) exists: it is named."""
    found: Parked | None = None
    for name, seen in looks(connection, spec.wait_names).items():
        if seen is None:
            continue
        found = found or Parked()
        if isinstance(seen, Refused):
            found.uncounted[name] = seen.text
        else:
            found.tasks += seen.ready
    return found


def rate_line(state: ControlState, parked_tasks: Parked | None) -> str:
    """``rate limit 20/s per key (by bob@h1); 412 tasks parked`` or ``no rate limit``."""
    limit = state.rate_limit
    line = "no rate limit" if limit is None else f"rate limit {limit.describe()}"
    return line if parked_tasks is None else f"{line}; {parked_tasks.phrase()}"
