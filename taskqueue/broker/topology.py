"""Declare-or-adopt: make sure the task queue, its companions, the events exchange and the
results stream exist.

An existing queue is used as it is, whatever its type and arguments, because RabbitMQ refuses a
redeclaration whose arguments differ: today's tutorial makes ``task_queue`` a quorum queue, older
code a classic one, an admin may add a policy or a limit. Only a queue that does not exist is
created, the task queue with exactly the tutorial's arguments (``QueueSpec``).

The broker does not say a queue's type in reply to a passive declare, so ``QueueSetup`` asks
by redeclaring it as ``x-queue-type: classic`` on a channel of its own: a quorum queue refuses
with "... but current is 'quorum'", which names its type (the refusal closes only that channel).
RabbitMQ compares some arguments before the type, so a refusal about another argument names
that argument's value: the probe adds it and asks again, until the type is named or accepted.

Every step runs on a short-lived channel of its own, so an answer such as 404 closes only that
channel, never the connection or the caller's channel.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from pika.channel import Channel
from pika.connection import Connection
from pika.exceptions import ChannelClosedByBroker

from taskqueue.broker.config import QueueSpec
from taskqueue.broker.urgent import urgent_name
from taskqueue.errors import EXIT_REFUSED, UserError

ROUTING_REPORT = "report"  # what versions before 0.4 stored in the <queue>.events queue
ROUTING_LIVE = "live"  # what live views want on top (worker snapshots); dropped if no view
ROUTING_CONTROL = "control"  # workers' answers to task_control.py's commands


class HomeNodeDown(Exception):
    """A classic queue's node is down: the queue exists but cannot be used until it is back.
    Its text is ours, the same on every series ("its node is down"), with the broker's words
    after it: 3.x and 4.x say it differently (see ``UNAVAILABLE_WORDS``)."""

    def __init__(self, queue: str, broker_words: str) -> None:
        super().__init__(f"queue {queue!r} cannot be used: its node is down "
                         f"(RabbitMQ: {broker_words})")


# How a 404 says that a queue exists but its process cannot serve, in 3.x and 4.x words
# (rabbit_amqqueue): its node is down ("home node '...' of durable queue '...' is down or
# inaccessible", both series), its process was stopped with its node (4.x with Khepri:
# "queue '...' process is stopped by supervisor"), or it crashed (4.x: "... has crashed and
# failed to restart"). Any of them: the queue is there, waiting for its node can bring it back.
UNAVAILABLE_WORDS = ("home node", "process is stopped by supervisor",
                     "has crashed and failed to restart")


def queue_unavailable(reply_code: int, reply_text: str) -> str | None:
    """What the broker said, without its code, when a 404 means "exists but cannot serve"
    (see ``UNAVAILABLE_WORDS``); None for any other answer (a queue that does not exist)."""
    if reply_code != 404 or not any(words in reply_text for words in UNAVAILABLE_WORDS):
        return None
    return reply_text.split(" - ", 1)[-1]


# RabbitMQ 4.0 gave quorum queues a default delivery limit of 20: a message returned to the
# queue 20 times (a channel closed while holding it, a basic.reject; not a basic.nack on 4.3) is
# dropped, or dead-lettered by the broker. Reading <queue>.dead to preview it would lose dead
# tasks that way, so the companions we make get no limit (-1, 4.x only: 3.x reads -1 as "drop
# at the first return"). The task queue keeps the tutorial's arguments; our --delivery-limit
# (default 5) acts long before the broker's 20.
UNLIMITED = {"x-delivery-limit": -1}
UNLIMITED_SINCE = (4, 0)


@dataclass
class Topology:
    """What the setup found."""

    task_type: str = "classic"
    created: list[str] = field(default_factory=list)
    types: dict[str, str] = field(default_factory=dict)
    version: tuple[int, ...] = (0,)  # the broker's
    urgent: bool = True  # <queue>.urgent may be used (False: the user has no permission on it)


def broker_version(connection: Connection) -> tuple[int, ...]:
    """The broker's version from its handshake, e.g. (3, 10, 8); (0,) if it does not say."""
    text = (getattr(connection, "server_properties", None) or {}).get("version", b"")
    text = text.decode() if isinstance(text, bytes) else str(text)
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3]) or (0,)


REFUSAL = re.compile(r"inequivalent arg '(?P<arg>[^']+)'.*but current is "
                     r"(?:none|the value '(?P<value>[^']*)' of type '(?P<type>\w+)'|"
                     r"'(?P<plain>[^']*)'$)")
PROBE_ROUNDS = 12


def read_refusal(reply_text: str) -> tuple[str, object] | None:
    """(argument, its current value) from a 406 'inequivalent arg' refusal; value None when the
    queue has no such argument; None when the text is not such a refusal."""
    match = REFUSAL.search(reply_text)
    if not match:
        return None
    if match["plain"] is not None:
        return match["arg"], match["plain"]
    if match["value"] is None:
        return match["arg"], None
    kind, value = match["type"], match["value"]
    if kind in ("signedint", "long", "short", "byte", "unsignedint", "unsignedshort"):
        return match["arg"], int(value)
    if kind == "bool":
        return match["arg"], value == "true"
    return match["arg"], value


Operation = Callable[[Channel, Callable[[object], None]], None]  # calls back with the answer


def on_own_channel(connection: Connection, operation: Operation, on_ok: Callable[[object], None],
                   on_refused: Callable[[ChannelClosedByBroker], None],
                   on_other: Callable[[BaseException], None]) -> None:
    """Run *operation* on a channel of its own, closed after the answer (*on_ok*); the
    broker's refusal closes that channel only (*on_refused*), anything else goes to
    *on_other*."""
    state = {"settled": False}

    def closed(_channel: Channel, reason: BaseException) -> None:
        if state["settled"]:
            return
        state["settled"] = True
        if isinstance(reason, ChannelClosedByBroker):
            on_refused(reason)
        else:
            on_other(reason)

    def opened(channel: Channel) -> None:
        channel.add_on_close_callback(closed)

        def answered(frame: object) -> None:
            state["settled"] = True
            channel.close()
            on_ok(frame)

        operation(channel, answered)

    connection.channel(on_open_callback=opened)


class QueueSetup:
    """Run once per connection: ``QueueSetup(connection, spec, log, on_done, on_error).start()``.

    ``on_done(topology)`` once everything exists; ``on_error(exc)`` with a ``UserError`` (the
    user must change something), ``HomeNodeDown`` (worth waiting for), or a channel error."""

    def __init__(self, connection: Connection, spec: QueueSpec, log: logging.Logger,
                 on_done: Callable[[Topology], None],
                 on_error: Callable[[BaseException], None], *, quiet: bool = False) -> None:
        self.connection, self.spec, self.log = connection, spec, log
        self.on_done, self.on_error = on_done, on_error
        self.quiet = quiet  # after the first connection: say nothing unless something changed
        self.version = broker_version(connection)
        self.topology = Topology(version=self.version)
        self._remaining = list(spec.all_queues)  # .urgent follows the task queue's type too
        self._recreated = False

    def start(self) -> None:
        self._next_queue()

    # --- one step: an operation on a fresh channel ---------------------------------------
    def _on_channel(self, operation: Operation, on_ok: Callable[[object], None],
                    on_refused: Callable[[ChannelClosedByBroker], None]) -> None:
        on_own_channel(self.connection, operation, on_ok, on_refused, self.on_error)

    # --- queues ----------------------------------------------------------------------------
    def _next_queue(self) -> None:
        if not self._remaining:
            self._bind_events()
            return
        name = self._remaining[0]
        # Our own companions most likely have the arguments we give them: start from those
        # (the broker's refusal text is cut at 255 characters, long values cannot be learned).
        hint = {} if name == self.spec.name else {
            key: value for key, value in self._companion_arguments(name).items()
            if key != "x-queue-type"}
        self._on_channel(lambda ch, ok: ch.queue_declare(name, passive=True, callback=ok),
                         lambda _frame: self._probe_type(name, hint),
                         lambda refusal: self._on_missing(name, refusal))

    def _probe_type(self, name: str, known: dict[str, object] | None = None,
                    rounds: int = PROBE_ROUNDS) -> None:
        known = dict(known or {})

        def found(kind: str) -> None:
            self.topology.types[name] = kind
            self._check_found(name, kind)

        def refused(refusal: ChannelClosedByBroker) -> None:
            if refusal.reply_code != 406:
                self._refused(name, refusal)
                return
            answer = read_refusal(refusal.reply_text)  # None if cut short (255 characters)
            if answer is None:
                found("unknown")
            elif answer[0] == "x-queue-type":
                found(str(answer[1] or "classic"))
            elif rounds <= 1 or (answer[1] is None and answer[0] not in known):
                found("unknown")  # arguments we cannot reproduce: the type stays unknown
            else:
                if answer[1] is None:
                    del known[answer[0]]  # a hint the queue does not have
                else:
                    known[answer[0]] = answer[1]  # the queue's value: ask again with it
                self._probe_type(name, known, rounds - 1)

        arguments = {**known, "x-queue-type": "classic"}
        self._on_channel(lambda ch, ok: ch.queue_declare(name, durable=True, arguments=arguments,
                                                         callback=ok),
                         lambda _frame: found("classic"), refused)

    def _check_found(self, name: str, kind: str) -> None:
        spec = self.spec
        if name == spec.name:
            self.topology.task_type = kind
            if kind == "unknown":
                kind = self.topology.task_type = "classic"  # what needs no special handling
            if kind not in ("classic", "quorum"):
                self.on_error(UserError(f"queue {name!r} is a {kind} queue, which cannot be a "
                                        "work queue; use another --queue", EXIT_REFUSED))
                return
            if spec.queue_type != "auto" and spec.queue_type != kind:
                self.on_error(UserError(
                    f"queue {name!r} already exists as a {kind} queue, not {spec.queue_type}; "
                    f"leave out --queue-type (the default, auto, uses it as it is), use "
                    f"another --queue, or delete it with 'rabbitmqctl delete_queue {name}' "
                    "if its messages can go", EXIT_REFUSED))
                return
            if not self.quiet:
                self.log.info("queue %r exists: a %s queue, used as it is", name, kind)
        elif kind == "classic" and self.topology.task_type == "quorum" and not self.quiet:
            self.log.warning("%r is a classic queue (one node) beside the quorum queue %r: "
                             "delete it when it is empty and it is made again as a quorum "
                             "queue", name, spec.name)
        if kind == "quorum" and name != spec.name and self.version >= UNLIMITED_SINCE:
            self._check_unlimited(name)
            return
        self._remaining.pop(0)
        self._next_queue()

    def _companion_arguments(self, name: str) -> dict[str, object]:
        return companion_arguments(self.spec, name, self.topology.task_type, self.version)

    def _check_unlimited(self, name: str) -> None:
        """A quorum companion made before we set ``UNLIMITED`` (an upgrade from 3.x, or an older
        version of ours) has 4.x's limit of 20: say so in one line, with the fix (a policy; the
        argument cannot be added to an existing queue). Redeclaring it with the argument asks:
        accepted means it has it; "received the value '-1' ... but current is none" means it
        has not. Either way the setup goes on: the previews of task_control.py give dead tasks
        back with basic.nack, which 4.3 does not count."""
        def go_on(_answer: object = None) -> None:
            self._remaining.pop(0)
            self._next_queue()

        def refused(refusal: ChannelClosedByBroker) -> None:
            if read_refusal(refusal.reply_text) == ("x-delivery-limit", None) and not self.quiet:
                self.log.warning(limit_advice(name))
            go_on()

        arguments = {**self._companion_arguments(name), "x-queue-type": "quorum"}
        self._on_channel(lambda ch, ok: ch.queue_declare(name, durable=True, arguments=arguments,
                                                         callback=ok), go_on, refused)

    def _on_missing(self, name: str, refusal: ChannelClosedByBroker) -> None:
        unavailable = queue_unavailable(refusal.reply_code, refusal.reply_text)
        if unavailable is not None:
            self.on_error(HomeNodeDown(name, unavailable))
            return
        if refusal.reply_code != 404:
            self._refused(name, refusal)
            return
        spec = self.spec
        if name == spec.name:
            arguments, kind = spec.task_queue_arguments(), spec.create_type()
            self.topology.task_type = kind
        else:
            arguments = self._companion_arguments(name)
            kind = str(arguments.get("x-queue-type", "classic"))

        def created(_frame: object) -> None:
            self.topology.types[name] = kind
            self.topology.created.append(name)
            self.log.info("created queue %r (%s)", name, kind)
            self._remaining.pop(0)
            self._next_queue()

        def refused(again: ChannelClosedByBroker) -> None:
            # Someone made it in between (another worker): adopt theirs, once.
            if again.reply_code == 406 and not self._recreated:
                self._recreated = True
                self._next_queue()
            else:
                self._refused(name, again)

        self._on_channel(lambda ch, ok: ch.queue_declare(name, durable=True, arguments=arguments,
                                                         callback=ok), created, refused)

    def _refused(self, name: str, refusal: ChannelClosedByBroker) -> None:
        """The broker's refusal stops the setup, except no permission on ``<queue>.urgent``:
        a user whose permissions name the queues of older versions (``^q(\\.retry|\\.dead)$``)
        keeps working without urgent tasks (broker/urgent.py), told so in one line."""
        if refusal.reply_code != 403 or name != urgent_name(self.spec.name):
            self.on_error(refusal)
            return
        self.topology.urgent = False
        if not self.quiet:
            self.log.warning("no permission on %r (%s): no urgent task (--priority high) is "
                             "taken or sent here; grant configure/write/read on it "
                             "(rabbitmqctl set_permissions)", name, refusal.reply_text)
        self._remaining.pop(0)
        self._next_queue()

    # --- the events exchange, the results stream ---------------------------------------
    def _bind_events(self) -> None:
        spec = self.spec

        def declare(channel: Channel, ok: Callable[[object], None]) -> None:
            channel.exchange_declare(spec.exchange, "topic", durable=True, callback=ok)

        self._on_channel(declare, lambda _frame: self._results_stream(), self.on_error)

    def _results_stream(self) -> None:
        """Used as it is when it exists (its retention was set by whoever made it); made with
        ours otherwise. No permission for it stops the setup: no work without records."""
        name = self.spec.results_name

        def refused(refusal: ChannelClosedByBroker) -> None:
            if refusal.reply_code == 404:
                self._on_channel(lambda ch, ok: ch.queue_declare(
                    name, durable=True, arguments=self.spec.results_arguments(), callback=ok),
                    made, lambda again: self.on_error(results_refusal(name, again)))
            else:
                self.on_error(results_refusal(name, refusal))

        def made(_frame: object) -> None:
            self.topology.created.append(name)
            self.log.info("created the results stream %r (kept %s, at most %.0f GB)", name,
                          self.spec.results_max_age, self.spec.results_max_bytes / 1e9)
            self.on_done(self.topology)

        self._on_channel(lambda ch, ok: ch.queue_declare(name, passive=True, callback=ok),
                         lambda _frame: self.on_done(self.topology), refused)


def companion_arguments(spec: QueueSpec, name: str, task_type: str,
                        version: tuple[int, ...]) -> dict[str, object]:
    """config.py's arguments for a companion, with no delivery limit on a 4.x quorum."""
    arguments = spec.companion_arguments(name, task_type, version)
    if arguments.get("x-queue-type") == "quorum" and version >= UNLIMITED_SINCE:
        arguments.update(UNLIMITED)
    return arguments


def limit_advice(name: str) -> str:
    """One line for a 4.x quorum queue of ours that has the broker's default delivery limit."""
    return (f"{name!r} has RabbitMQ 4's default delivery limit (20 returns, then the broker drops "
            "a message; made before this version set none): our own --delivery-limit decides "
            "anyway, but to be safe give it none with a policy, e.g. rabbitmqctl set_policy "
            f"--apply-to quorum_queues no-limit '^{re.escape(name)}$' '{{\"delivery-limit\": -1}}'")


def results_refusal(name: str, refusal: ChannelClosedByBroker) -> BaseException:
    """What to tell the user when the results stream cannot be made or used."""
    if refusal.reply_code == 403:
        return UserError(f"no permission on the results stream {name!r} ({refusal.reply_text});"
                         " every outcome is recorded there before its task is acked, so no "
                         "task is taken without it: grant configure/write/read on it "
                         "(rabbitmqctl set_permissions)", EXIT_REFUSED)
    if refusal.reply_code == 406:
        return UserError(f"cannot make the results stream {name!r} ({refusal.reply_text}): it "
                         "needs RabbitMQ 3.9 or newer, and no other queue of that name",
                         EXIT_REFUSED)
    return refusal
