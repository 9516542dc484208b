"""delete-queue: remove a task queue and everything of ours beside it.

``QueueRemover`` looks at every name in ``QueueSpec.everything`` (the queue, ``.retry``,
``.dead``, ``.urgent``, ``.urgent.retry``, the rate limit's ``.ratelimit`` and
``.wait.<N>s``, the legacy ``.events`` queue, the ``.results`` and ``.control`` streams) and at
the ``<queue>.events`` exchange, each by a passive declare on a channel of its own (a 404 closes
the channel it came on, nothing else), and deletes what exists. Whether to go ahead (workers
attached, asked on a terminal or ``--yes``) is ``confirm``'s decision, kept apart so that the
rule is the same wherever the answer comes from.

The broker does not count a stream's records in reply to a passive declare (it says 0), so
streams are listed as streams, and the messages counted are those of the queues (ready ones:
a task in a worker's hand is not counted, and is lost too under ``--force``). Workers are seen
by their consumers on the task queue; a paused worker has none (it reads only the control
stream), so stop workers before deleting their queue rather than pause them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from operator import methodcaller
from typing import Any

import pika
import pika.exceptions as pe
from pika.adapters.blocking_connection import BlockingChannel

from taskqueue.broker.config import QueueSpec
from taskqueue.broker.topology import queue_unavailable
from taskqueue.errors import EXIT_BAD_INPUT, EXIT_REFUSED, UserError

STOP_HINT = "task_control.py stop-workers"


@dataclass(frozen=True)
class Found:
    """One existing queue or stream: its messages (None for a stream: not counted) and
    consumers, as a passive declare reports them."""

    name: str
    messages: int | None
    consumers: int

    @property
    def kind(self) -> str:
        return "stream" if self.messages is None else "queue"


@dataclass
class Survey:
    """What exists of a queue's names on the broker."""

    spec: QueueSpec
    queues: list[Found] = field(default_factory=list)  # in QueueSpec.everything's order
    exchange: bool = False  # the <queue>.events exchange exists

    @property
    def anything(self) -> bool:
        return bool(self.queues) or self.exchange

    @property
    def messages(self) -> int:
        return sum(found.messages or 0 for found in self.queues)

    @property
    def consumers(self) -> int:
        """Consumers of the task queue itself: running (not paused) workers."""
        return sum(found.consumers for found in self.queues if found.name == self.spec.name)

    def lines(self) -> list[str]:
        """One line per queue, stream and the exchange, aligned."""
        width = max([len(found.name) for found in self.queues] + [len(self.spec.exchange)])
        lines = []
        for found in self.queues:
            count = ("records not counted" if found.messages is None
                     else f"{found.messages} message{'s' * (found.messages != 1)}")
            extra = f", {found.consumers} consumer(s)" if found.consumers else ""
            lines.append(f"  {found.name:<{width}}  {found.kind:<8}  {count}{extra}")
        if self.exchange:
            lines.append(f"  {self.spec.exchange:<{width}}  exchange")
        return lines


@dataclass(frozen=True)
class Removed:
    """What one ``QueueRemover.remove`` deleted."""

    spec: QueueSpec
    queues: list[str]
    messages: int  # as the broker counted them on deleting (a stream counts 0)
    exchange: bool

    def summary(self) -> str:
        """One line: how many queues and streams, holding how many messages, and the exchange."""
        text = f"deleted {len(self.queues)} queues and streams holding {self.messages} messages"
        if self.exchange:
            text += f", and the exchange {self.spec.exchange!r}"
        if not self.queues and not self.exchange:
            text = "deleted nothing: it was all gone already"
        return text


class QueueRemover:
    """Find, and delete, every queue, stream and exchange of ours for *spec*'s queue.

    Contract: ``survey()`` only looks (passive declares; it creates and deletes nothing).
    ``remove()`` deletes every name of ``QueueSpec.everything`` that exists when it runs, then
    the ``<queue>.events`` exchange, and returns what it deleted; without *force* it first
    raises ``UserError`` (exit 2), deleting nothing, if the task queue has consumers. It never
    touches a name outside ``QueueSpec.everything`` and the exchange. Every operation uses a
    channel of its own on *connection*, which stays the caller's to close. A refusal by the
    broker (permissions, a classic queue whose node is down) is a ``UserError`` (exit 4)."""

    def __init__(self, connection: pika.BlockingConnection, spec: QueueSpec) -> None:
        if not spec.name:
            raise UserError("delete-queue needs a queue name (--queue NAME)", EXIT_BAD_INPUT)
        self.connection, self.spec = connection, spec

    def survey(self) -> Survey:
        survey = Survey(self.spec)
        for name in self.spec.everything:
            frame = self._passive(methodcaller("queue_declare", name, passive=True), name)
            if frame is not None:
                stream = name in self.spec.streams
                survey.queues.append(Found(name, None if stream else frame.method.message_count,
                                           frame.method.consumer_count))
        survey.exchange = self._passive(lambda channel: channel.exchange_declare(
            self.spec.exchange, passive=True), self.spec.exchange) is not None
        return survey

    def remove(self, *, force: bool = False) -> Removed:
        survey = self.survey()
        if survey.consumers and not force:
            raise UserError(busy_refusal(survey), EXIT_BAD_INPUT)
        deleted, messages = [], 0
        for found in survey.queues:
            frame = self._on_channel(methodcaller("queue_delete", found.name), found.name)
            deleted.append(found.name)
            messages += 0 if found.messages is None else frame.method.message_count
        if survey.exchange:
            self._on_channel(lambda channel: channel.exchange_delete(self.spec.exchange),
                             self.spec.exchange)
        return Removed(self.spec, deleted, messages, survey.exchange)

    def _passive(self, declare: Callable[[BlockingChannel], Any], name: str) -> Any:
        """The declare's reply, or None when *name* does not exist (404)."""
        try:
            return self._on_channel(declare, name)
        except _Missing:
            return None

    def _on_channel(self, operation: Callable[[BlockingChannel], Any], name: str) -> Any:
        channel = self.connection.channel()
        try:
            return operation(channel)
        except pe.ChannelClosedByBroker as exc:
            unavailable = queue_unavailable(exc.reply_code, exc.reply_text)
            if unavailable is not None:  # its node is down (3.x and 4.x words)
                raise UserError(f"{name!r} cannot be reached ({unavailable}); bring its node "
                                "back, then run delete-queue again", EXIT_REFUSED) from None
            if exc.reply_code == 404:
                raise _Missing(name) from None
            raise UserError(f"RabbitMQ refused an operation on {name!r} ({exc.reply_text}); "
                            "the user needs configure permission on the queue's names",
                            EXIT_REFUSED) from None
        finally:
            if channel.is_open:
                channel.close()


class _Missing(Exception):
    """A 404: the name does not exist."""


def busy_refusal(survey: Survey) -> str:
    return (f"queue {survey.spec.name!r} has {survey.consumers} consumer(s): workers are "
            f"running; stop them first ({STOP_HINT} --queue {survey.spec.name}), or add "
            "--force to delete it under them (they would declare it again)")


def confirm(survey: Survey, *, yes: bool, force: bool, interactive: bool,
            ask: Callable[[str], bool]) -> bool:
    """Whether to delete what *survey* found: raise ``UserError`` (exit 2) if workers are
    attached and not *force*, or if there is nobody to ask (*interactive* false, meaning stdin
    is not a terminal) and not *yes*; else True with *yes*, else the answer to *ask*."""
    if survey.consumers and not force:
        raise UserError(busy_refusal(survey), EXIT_BAD_INPUT)
    if yes:
        return True
    if not interactive:
        raise UserError(f"not deleting queue {survey.spec.name!r}: stdin is not a terminal, so "
                        "nobody can confirm; add --yes to delete without being asked",
                        EXIT_BAD_INPUT)
    return ask(f"Delete all of the above ({survey.messages} messages) for good?")
