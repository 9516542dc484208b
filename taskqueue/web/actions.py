"""The dashboard's buttons: pause, resume, cancel a run, stop a worker or all, requeue dead
tasks, delete (discard) dead tasks. The same code as ``task_control.py`` (control/commands.py,
control/requeue.py, control/discard.py).

Each action is asked twice: ``preview`` says what it will touch (how many workers, tasks) and
hands out a one-time ticket; ``perform`` with that ticket does it, once: a second submit of the
same ticket (a double click, a resent form) gets the first one's answer and does nothing more.
Every action performed is a log line: who, from where, what, and what came of it.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from dataclasses import dataclass

from taskqueue.broker.config import BrokerSettings, QueueSpec
from taskqueue.control import commands
from taskqueue.control.discard import DiscardFilter, discard_dead
from taskqueue.control.requeue import DeadFilter, DeadMover
from taskqueue.errors import UserError

ACTIONS = ("pause", "resume", "cancel", "stop", "requeue-dead", "discard-dead")
TICKETS_KEPT = 1000
TICKET_SECONDS = 600.0  # a confirmation left open longer must be asked again


@dataclass
class Ticket:
    action: str
    run: str | None
    worker: str | None
    reason: str | None
    made: float
    message_id: str | None = None  # discard-dead of one task
    answer: dict | None = None  # once performed
    running: bool = False


class ControlDesk:
    """Previews and performs the control actions for one queue (``perform`` blocks: call it
    from a thread)."""

    def __init__(self, settings: BrokerSettings, spec: QueueSpec, log: logging.Logger) -> None:
        self.settings, self.spec, self.log = settings, spec, log
        self._tickets: dict[str, Ticket] = {}
        self._lock = threading.Lock()

    def preview(self, action: str, count: int, *, run: str | None = None,
                worker: str | None = None, reason: str | None = None,
                message_id: str | None = None) -> dict:
        """What the confirmation asks ("Pause 3 workers?"), and the ticket that does it."""
        if action not in ACTIONS:
            raise UserError(f"unknown action {action!r}")
        if action == "cancel" and not run:
            raise UserError("cancel needs the run")
        if action == "discard-dead" and not run:  # deleting for good: never everything at once
            raise UserError("discard-dead needs the run")
        ticket = secrets.token_urlsafe(16)
        with self._lock:
            self._forget_old()
            self._tickets[ticket] = Ticket(action, run or None, worker or None, reason or None,
                                           time.monotonic(), message_id=message_id or None)
        return {"ticket": ticket, "count": count,
                "question": question(action, count, run=run, worker=worker, reason=reason,
                                     message_id=message_id)}

    def perform(self, ticket_id: str, who: str) -> dict:
        with self._lock:
            ticket = self._tickets.get(ticket_id)
            if ticket is None or (ticket.answer is None and not ticket.running
                                  and time.monotonic() - ticket.made > TICKET_SECONDS):
                return {"ok": False, "summary": "this confirmation has expired: ask again"}
            if ticket.answer is not None or ticket.running:
                answer = dict(ticket.answer or {"ok": True, "summary": "being done"})
                answer["again"] = True  # done once already: nothing more
                return answer
            ticket.running = True
        answer = {"ok": False, "summary": "failed (see the dashboard's log)"}
        try:
            answer = {"ok": True, "summary": self._do(ticket, who)}
        except UserError as exc:
            answer = {"ok": False, "summary": str(exc)}
        except Exception:  # a lost connection mid-action: said, never a stuck ticket
            self.log.exception("dashboard control by %s: %s failed", who, asked(ticket))
        finally:
            with self._lock:
                ticket.answer, ticket.running = answer, False
        self.log.info("dashboard control by %s: %s -> %s", who, asked(ticket),
                      answer["summary"])
        return answer

    def _do(self, ticket: Ticket, who: str) -> str:
        if ticket.action == "discard-dead":  # recorded as deleted by the dashboard's user
            done = discard_dead(self.settings, self.spec, self.log,
                                DiscardFilter(ticket.reason, ticket.run, None, frozenset(
                                    [ticket.message_id] if ticket.message_id else [])),
                                f"dashboard: {who}")
            if not done.complete:  # some are still there: an error toast, not a success
                raise UserError(done.summary(self.spec.name))
            return done.summary(self.spec.name)
        if ticket.action == "requeue-dead":
            mover = DeadMover(self.settings, self.spec, self.log,
                              DeadFilter(ticket.reason, ticket.run, None))
            mover.run()
            stats = mover.stats
            return (f"requeue-dead: {stats.moved} of the {stats.total} dead tasks moved back to "
                    f"{self.spec.name!r}, {stats.kept} left"
                    + (f", {stats.refused} refused by the broker" if stats.refused else ""))
        outcome = commands.send(self.settings, self.spec, ticket.action, run=ticket.run,
                                worker=ticket.worker, say=self.log.warning)
        return commands.summary(outcome, describe(ticket, self.spec.name))

    def _forget_old(self) -> None:
        now = time.monotonic()
        for key in [k for k, t in self._tickets.items() if now - t.made > TICKET_SECONDS]:
            del self._tickets[key]
        while len(self._tickets) >= TICKETS_KEPT:
            del self._tickets[next(iter(self._tickets))]


def question(action: str, count: int, *, run: str | None = None, worker: str | None = None,
             reason: str | None = None, message_id: str | None = None) -> str:
    if action == "requeue-dead":
        which = "".join([f" of run {run}" if run else "",
                         f" whose reason contains {reason!r}" if reason else ""])
        return f"Requeue {count} dead task(s){which}?"
    if action == "discard-dead":
        which = f" whose reason contains {reason!r}" if reason else ""
        if message_id:
            return f"Delete dead task {message_id!r} of run {run} for good?"
        return (f"Delete {count} dead task(s) of run {run}{which} for good? They cannot be "
                "requeued afterwards.")
    if action == "cancel":
        return f"Cancel run {run}: {count} task(s) not yet finished will not run?"
    if action == "stop":
        return f"Stop worker {worker}?" if worker else f"Stop all {count} worker(s)?"
    return f"{action.capitalize()} {count} worker(s)?"


def asked(ticket: Ticket) -> str:
    """What was asked for, as the log line says it."""
    words = [ticket.action]
    words += [f"--run {ticket.run}"] if ticket.run else []
    words += [f"--name {ticket.worker}"] if ticket.worker else []
    words += [f"--reason {ticket.reason!r}"] if ticket.reason else []
    words += [f"--id {ticket.message_id!r}"] if ticket.message_id else []
    return " ".join(words)


def describe(ticket: Ticket, queue: str) -> str:
    """What was done, in task_control.py's words."""
    if ticket.action == "cancel":
        return f"cancelled run {ticket.run} on queue {queue!r}"
    if ticket.action == "stop":
        who = f"worker {ticket.worker}" if ticket.worker else "every worker"
        return f"asked {who} of queue {queue!r} to stop"
    return f"{ticket.action}d queue {queue!r}"
