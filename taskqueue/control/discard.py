"""discard-dead: tasks in ``<queue>.dead`` deleted for good, chosen by reason, run or message id,
and each one written to the results record as discarded, by whom.

``DeadDiscarder`` is requeue.py's ``DeadMover`` with one change: a task that matches is not
published to the task queue, it is acked (gone). What does not match goes to the back of
``.dead`` unchanged, confirmed before its old copy is acked, exactly as requeue-dead does; a
dry run looks at every one, takes nothing, and hands them all back. The web view's *Delete*
button runs this same class (web/actions.py).

The record: each task deleted gets a ``discard`` record in the results stream (``{"kind":
"discard", "by", "time", "run_id", "message_id", "row", "reason"}``), confirmed *before* the
dead task is acked, as a worker records an outcome before its ack: a crash in between leaves
the task in ``.dead`` with a record too many (a second discard records it again), never a
deletion without its record. Readers that count tasks skip it (it has no outcome). Should the
stream refuse the record (deleted), the task stays in ``.dead``.
"""

from __future__ import annotations

import argparse
import getpass
import logging
import socket
import time
from dataclasses import dataclass, field

import pika

from taskqueue.broker.blocking import open_blocking
from taskqueue.broker.config import BrokerSettings, QueueSpec
from taskqueue.control.requeue import SHOWN, DeadFilter, DeadMover, death_reason
from taskqueue.errors import UserError
from taskqueue.wire.messages import row_of
from taskqueue.wire.record import encode_group

RECORD_PROPERTIES = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent,
                                         content_type="application/json")


@dataclass(frozen=True)
class DiscardFilter(DeadFilter):
    """requeue-dead's filter (reason, run, limit) and message ids: any one of them."""

    ids: frozenset[str] = field(default_factory=frozenset)

    def matches(self, properties: pika.BasicProperties) -> bool:
        if self.ids and properties.message_id not in self.ids:
            return False
        return super().matches(properties)

    @property
    def chooses(self) -> bool:
        """Whether it names anything: discarding every dead task needs saying so (--all)."""
        return bool(self.ids) or self.reason is not None or self.run is not None


def who_am_i() -> str:
    """user@host, as a cancel names who gave it."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "?"
    return f"{user}@{socket.gethostname()}"


def discard_record(properties: pika.BasicProperties, body: bytes, by: str, queue: str) -> dict:
    return {"kind": "discard", "by": by, "time": time.time(), "queue": queue,
            "run_id": properties.correlation_id or "", "message_id": properties.message_id or "",
            "row": row_of(properties.message_id),
            "task": body[:200].decode("utf-8", "replace"),
            "reason": death_reason(properties)[:500]}


class DeadDiscarder(DeadMover):
    """See the module docstring. ``run()`` returns with ``stats`` filled in (``moved``: how
    many were deleted) and ``records`` holding what was deleted."""

    def __init__(self, settings: BrokerSettings, spec: QueueSpec, log: logging.Logger,
                 chosen: DiscardFilter, by: str, dry_run: bool = False) -> None:
        super().__init__(settings, spec, log, chosen, dry_run=dry_run)
        self.by = by
        self.records: list[dict] = []

    def _publish(self, dead_tag: int, kind: str, properties: pika.BasicProperties,
                 body: bytes) -> None:
        if kind != "move":
            super()._publish(dead_tag, kind, properties, body)
            return
        record = discard_record(properties, body, self.by, self.spec.name)
        # Its record, confirmed, deletes it: the confirm acks the dead task (_on_confirm).
        self._send(self.spec.results_name, encode_group([record]), RECORD_PROPERTIES, dead_tag,
                   kind)
        self.records.append(record)
        if len(self.stats.shown) < SHOWN:
            self.stats.shown.append(f"{properties.message_id or '-'}: "
                                    f"{body[:60].decode('utf-8', 'replace')!r}")


def require_dead_queue(settings: BrokerSettings, spec: QueueSpec) -> None:
    """One clear line when there is no ``.dead`` (a mistyped --queue), before any walk."""
    connection = open_blocking(settings)
    try:
        connection.channel().queue_declare(spec.dead_name, passive=True)
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code == 404:
            raise UserError(f"there is no queue {spec.dead_name!r}: nothing to discard "
                            "(check --queue)") from None
        raise
    finally:
        if connection.is_open:
            connection.close()


@dataclass
class Discarded:
    """What a discard did, for its summary line."""

    deleted: int
    total: int
    kept: int
    refused: int
    shown: list[str]
    dry_run: bool

    @property
    def complete(self) -> bool:
        """Every chosen task deleted (each only once its record was confirmed: the module
        docstring); False: some were not settled and are still in ``.dead``."""
        return not self.refused

    def summary(self, queue: str) -> str:
        verb = "would be deleted" if self.dry_run else "deleted"
        text = (f"discard-dead: {self.deleted} of the {self.total} dead tasks in "
                f"{queue + '.dead'!r} {verb}, {self.kept} left")
        if self.refused:
            text += f", {self.refused} not settled (still there)"
        if not self.dry_run and self.deleted:
            text += "; recorded in the results stream"
        return text


def discard_dead(settings: BrokerSettings, spec: QueueSpec, log: logging.Logger,
                 chosen: DiscardFilter, by: str, dry_run: bool = False) -> Discarded:
    """Delete the chosen dead tasks, each once its record (who deleted it) is confirmed."""
    require_dead_queue(settings, spec)
    discarder = DeadDiscarder(settings, spec, log, chosen, by, dry_run=dry_run)
    discarder.run()
    stats = discarder.stats
    return Discarded(stats.moved, stats.total, stats.kept, stats.refused, stats.shown, dry_run)


# --- task_control.py discard-dead (commands/control.py adds the parser and calls ``command``) --
def add_parser(sub) -> argparse.ArgumentParser:
    """``discard-dead --reason TEXT | --run ID | --id MESSAGE_ID ... | --all [--dry-run]``."""
    parser = sub.add_parser("discard-dead", help="delete tasks from <queue>.dead for good, "
                            "recorded in the results stream (e.g. discard-dead --reason timeout)")
    parser.add_argument("--reason", help="only tasks whose reason contains TEXT")
    parser.add_argument("--run", metavar="ID", help="only tasks of this emitter run")
    parser.add_argument("--id", dest="ids", action="append", default=[], metavar="MESSAGE_ID",
                        help="only this task (repeatable)")
    parser.add_argument("--all", action="store_true", help="every dead task (needs saying)")
    parser.add_argument("--dry-run", action="store_true",
                        help="count and show what would be deleted; delete nothing")
    return parser


def command(args: argparse.Namespace, settings: BrokerSettings, spec: QueueSpec,
            log: logging.Logger) -> int:
    chosen = DiscardFilter(args.reason, args.run, None, frozenset(args.ids))
    if not chosen.chooses and not args.all:
        raise UserError("discard-dead deletes for good: give --reason, --run or --id, "
                        "or --all for every dead task")
    done = discard_dead(settings, spec, log, chosen, who_am_i(), dry_run=args.dry_run)
    print(done.summary(spec.name))
    for line in done.shown:
        print(f"  {line}")
    return 0 if done.complete else 1
