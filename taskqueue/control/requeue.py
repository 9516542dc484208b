"""requeue-dead: tasks from ``<queue>.dead`` back to the task queue, in bulk, losing none.

``DeadMover`` counts the messages waiting in ``.dead`` when it starts and goes through that
many, in order, with a window of them in flight (memory stays flat for a million): a matching
one is published to the task queue with its retry count reset and ``x-replayed`` counting its
replays; one that does not match is published to the back of ``.dead`` again, unchanged, so
the next ones can be reached; either way the dead copy is acked only once the broker has
confirmed the new one (a crash in between duplicates, never loses). ``--limit N`` stops after N
moved (the rest stay where they are); ``--dry-run`` looks at every one, moves nothing, and gives
them all back when it ends, with a basic.nack: a look is not a delivery attempt (RabbitMQ 4.x
drops a message from a quorum queue at its 21st return; 4.3 counts a closed channel but not a
nack). 4.0 to 4.2 count every return, a nack too: there a dry run puts each task it looks at
back at the end of ``.dead`` as a new message, unchanged, confirmed before the old one is acked
(its count starts again; copies read past the end go back with the nack, first in line, so
the order may change, and their count stays at most 1). It works on any message in ``.dead``:
ours (``x-death-reason``) or the broker's own dead letters (``x-death``).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pika
from pika.channel import Channel
from pika.spec import Basic

from taskqueue.broker.config import BrokerSettings, QueueSpec
from taskqueue.broker.connection import BrokerSession
from taskqueue.broker.frames import settled_tags
from taskqueue.broker.topology import broker_version
from taskqueue.errors import EXIT_UNREACHABLE, UserError
from taskqueue.wire.messages import PRIOR_DELIVERIES, PUBLISHED_AGAIN, RATE_LEFT, RATE_PARKS

# The brokers that count a basic.nack(requeue) as a failed delivery and have a default limit.
COUNTS_EVERY_RETURN = ((4, 0), (4, 3))
WINDOW = 2000  # dead tasks in flight (delivered, republished, not yet confirmed)
SHOWN = 5  # what --dry-run lists
DROPPED_HEADERS = ("x-retries", "x-last-error", "x-death-reason", "x-dead-lettered-by",
                   "x-original-queue", "x-delivery-count", "x-death", "x-first-death-reason",
                   "x-first-death-queue", "x-first-death-exchange", "x-last-death-reason",
                   "x-last-death-queue", "x-last-death-exchange", "x-copy-id",
                   # a rate limit's (a dead copy from an older worker may carry them): a task
                   # replayed is counted afresh, and waits for a new turn
                   PRIOR_DELIVERIES, RATE_LEFT, RATE_PARKS)


@dataclass(frozen=True)
class DeadFilter:
    reason: str | None = None  # a substring of the reason, ours or the broker's
    run: str | None = None  # the emitter's run id
    limit: int | None = None

    def matches(self, properties: pika.BasicProperties) -> bool:
        if self.run is not None and properties.correlation_id != self.run:
            return False
        return self.reason is None or self.reason.lower() in death_reason(properties).lower()


def death_reason(properties: pika.BasicProperties) -> str:
    """Why it is in .dead: our x-death-reason, else the broker's dead-lettering reason."""
    headers = properties.headers or {}
    ours = headers.get("x-death-reason")
    if ours is not None:
        return ours.decode("utf-8", "replace") if isinstance(ours, bytes) else str(ours)
    deaths = headers.get("x-death")
    if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict):
        return str(deaths[0].get("reason", ""))
    return str(headers.get("x-first-death-reason", ""))


def replayed(properties: pika.BasicProperties) -> pika.BasicProperties:
    """The task as new: retry count and death notes gone, ``x-replayed`` one more."""
    headers = {key: value for key, value in (properties.headers or {}).items()
               if key not in DROPPED_HEADERS}
    try:
        count = int(headers.get("x-replayed", 0))
    except (TypeError, ValueError):
        count = 0
    headers["x-replayed"] = count + 1
    return pika.BasicProperties(
        delivery_mode=pika.DeliveryMode.Persistent, headers=headers,
        message_id=properties.message_id, correlation_id=properties.correlation_id,
        content_type=properties.content_type, content_encoding=properties.content_encoding,
        timestamp=properties.timestamp, app_id=properties.app_id,
        type=PUBLISHED_AGAIN)  # a copy again: the worker checks the record before running it


@dataclass
class MoveStats:
    total: int = 0  # in .dead when it started: how many it goes through
    seen: int = 0
    moved: int = 0
    kept: int = 0  # looked at, not matching: back in .dead
    refused: int = 0  # the broker refused the new copy: the dead one stays
    shown: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    @property
    def rate(self) -> float:
        return self.seen / max(1e-6, time.monotonic() - self.started)


class DeadMover(BrokerSession):
    """See the module docstring. ``run()`` returns with ``stats`` filled in."""

    def __init__(self, settings: BrokerSettings, spec: QueueSpec, log: logging.Logger,
                 chosen: DeadFilter, dry_run: bool = False,
                 on_progress: Callable[[MoveStats], None] | None = None,
                 rewrite: bool | None = None) -> None:
        super().__init__(settings, log, queue_name=spec.dead_name)
        self.spec, self.chosen, self.dry_run = spec, chosen, dry_run
        self.stats = MoveStats()
        self.on_progress = on_progress
        self._reader: Channel | None = None
        # A dry run's looks are rewritten (see the module docstring): None = by the version.
        self.rewrite = rewrite
        # publish tag -> (dead tag, what it is: "move", "keep", or a dry run's "look")
        self._pending: dict[int, tuple[int, str]] = {}
        self._tag = 0
        self._reading = True
        self._moving = 0  # matched ones published, not yet confirmed
        self._returned = False
        self._consumer_tag = ""

    # --- setting up ---------------------------------------------------------------------------
    def on_channel_ready(self, channel: Channel) -> None:
        if self.connections_made > 1:  # what was in flight went back to .dead: nothing lost
            self.fail(UserError(f"the connection was lost after {self.stats.moved} tasks were "
                                "moved; run the command again for the rest (a task whose move "
                                "was not yet confirmed may be there twice)", EXIT_UNREACHABLE))
            return
        channel.queue_declare(self.spec.dead_name, passive=True,
                              callback=lambda frame: self._counted(channel, frame))

    def _counted(self, channel: Channel, frame: pika.frame.Method) -> None:
        self.stats.total = frame.method.message_count
        if self.rewrite is None:
            low, high = COUNTS_EVERY_RETURN
            self.rewrite = self.dry_run and low <= broker_version(self.connection) < high
        self.mark_ready()
        if self.stats.total == 0:
            self.finish()
            return
        channel.add_on_return_callback(self._on_return)
        channel.confirm_delivery(ack_nack_callback=self._on_confirm,
                                 callback=lambda _frame: self._open_reader())

    def _open_reader(self) -> None:
        def opened(reader: Channel) -> None:
            self._reader = reader
            # A dry run holds them all, then lets go; moving or rewriting acks as it goes.
            prefetch = 0 if self.dry_run and not self.rewrite else WINDOW
            reader.basic_qos(prefetch_count=prefetch, callback=lambda _frame: self._consume(reader))

        if self.connection is not None:
            self.connection.channel(on_open_callback=opened)

    def _consume(self, reader: Channel) -> None:
        self._consumer_tag = reader.basic_consume(self.spec.dead_name, self._on_dead)

    def on_channel_lost(self) -> None:
        self._pending.clear()

    # --- one dead task ------------------------------------------------------------------------
    def _on_dead(self, reader: Channel, method: Basic.Deliver,
                 properties: pika.BasicProperties, body: bytes) -> None:
        if not self._reading:
            return  # beyond what it came for: handed back at the end (_give_back)
        self.stats.seen += 1
        matched = self.chosen.matches(properties) and (
            self.chosen.limit is None or self.stats.moved + self._moving < self.chosen.limit)
        if self.dry_run:
            self.stats.moved += matched
            self.stats.kept += not matched
            if matched and len(self.stats.shown) < SHOWN:
                self.stats.shown.append(f"{properties.message_id or '-'}: "
                                        f"{body[:60].decode('utf-8', 'replace')!r} "
                                        f"({death_reason(properties)[:80]})")
            if self.rewrite:
                self._publish(method.delivery_tag, "look", properties, body)
        else:
            self._publish(method.delivery_tag, "move" if matched else "keep", properties, body)
        if self.on_progress is not None:
            self.on_progress(self.stats)
        limit_reached = self.chosen.limit is not None and \
            self.stats.moved + self._moving >= self.chosen.limit
        if self.stats.seen >= self.stats.total or limit_reached:
            self._reading = False
            self._finish_when_settled()

    def _publish(self, dead_tag: int, kind: str, properties: pika.BasicProperties,
                 body: bytes) -> None:
        """A move goes to the task queue as new; anything else to the back of .dead unchanged."""
        moved = kind == "move"
        self._send(self.spec.name if moved else self.spec.dead_name, body,
                   replayed(properties) if moved else properties, dead_tag, kind)

    def _send(self, queue: str, body: bytes, properties: pika.BasicProperties, dead_tag: int,
              kind: str) -> None:
        """Publish to *queue*, mandatory and confirmed: the dead task *dead_tag* is acked by
        the confirm (``_on_confirm``), or handed back if the publish did not make it."""
        if self.channel is None:
            return  # the connection was lost: the dead task is delivered again
        self.channel.basic_publish("", queue, body, properties, mandatory=True)
        self._tag += 1
        self._pending[self._tag] = (dead_tag, kind)
        self._moving += kind == "move"

    def _on_return(self, _channel: Channel, _method: object, _properties: object,
                   _body: bytes) -> None:
        # No such queue (deleted meanwhile). The confirm follows; every dead copy it settles
        # stays in .dead: erring that way can duplicate a task, never lose one.
        self._returned = True

    def _on_confirm(self, frame: pika.frame.Method) -> None:
        acked, tags = settled_tags(frame, self._pending)
        returned, self._returned = self._returned, False
        reader = self._reader
        if reader is None:
            return
        for tag in tags:
            dead_tag, kind = self._pending.pop(tag)
            matched = kind == "move"
            self._moving -= matched
            counted = kind != "look"  # a dry run counted its looks as it read them
            if acked and not returned:
                reader.basic_ack(dead_tag)
                self.stats.moved += matched and counted
                self.stats.kept += not matched and counted
            else:
                reader.basic_nack(dead_tag, requeue=True)
                self.stats.refused += counted
        self._finish_when_settled()

    def _finish_when_settled(self) -> None:
        if self._reading or self._pending:
            return
        reader = self._reader
        if reader is None or not reader.is_open or not self._consumer_tag:
            self.finish()
            return
        reader.basic_cancel(self._consumer_tag, callback=lambda _frame: self._give_back(reader))

    def _give_back(self, reader: Channel) -> None:
        """What the reader still holds (a dry run: every task it looked at) goes back to .dead
        with one basic.nack(requeue) once no more can come (the cancel is answered). Closing
        the channel would give them back too, but RabbitMQ 4.x counts that as a failed
        delivery, and drops a message from a quorum queue at its 20th (its default delivery
        limit): previews would lose dead tasks. 4.3 does not count a nack; 3.x counts both but
        has no default limit."""
        reader.basic_nack(delivery_tag=0, multiple=True, requeue=True)  # 0 + multiple: all
        reader.close()
        self.finish()


def progress_printer(stream=None) -> Callable[[MoveStats], None]:
    """A line redrawn on a terminal (every 0.2 s); nothing elsewhere (the summary says all)."""
    stream = stream or sys.stderr
    last = [0.0]

    def show(stats: MoveStats) -> None:
        now = time.monotonic()
        if not stream.isatty() or now - last[0] < 0.2:
            return
        last[0] = now
        share = 100 * stats.seen / max(1, stats.total)
        stream.write(f"\r{stats.seen:,}/{stats.total:,} looked at ({share:.0f}%), "
                     f"{stats.moved:,} moved, {stats.rate:,.0f}/s\x1b[K")
        stream.flush()

    return show
