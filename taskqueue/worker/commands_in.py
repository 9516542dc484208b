"""What a worker does when a command comes in on ``<queue>.control`` (task_control.py): pause,
resume, cancel a run or some of its tasks, set the rate limit, stop; and its answer to each.

``ControlCommands`` owns the stream's listener (control/listener.py, which keeps the state the
commands add up to) and acts on the worker through ``Worker``: the consumer (consumer.py),
which keeps its phase to itself, so a pause or a resume is asked of it, never set here.
"""

from __future__ import annotations

import logging
import time
from typing import Protocol

from taskqueue.broker.config import QueueSpec
from taskqueue.control.listener import WorkerControl
from taskqueue.control.ratelimit import RateLimit
from taskqueue.control.state import ControlState, what_is_cancelled
from taskqueue.worker.in_hand import InHand
from taskqueue.worker.phase import STOP_ASKED, Phase


class Named(Protocol):
    @property
    def name(self) -> str: ...


class Replies(Protocol):
    def reply(self, answer: dict) -> None: ...


class Limits(Protocol):
    def apply(self, limit: RateLimit | None) -> None: ...


class Worker(Protocol):
    """What the commands act on: the consumer (consumer.py TaskConsumer)."""

    @property
    def log(self) -> logging.Logger: ...
    @property
    def options(self) -> Named: ...
    @property
    def host(self) -> str: ...
    @property
    def outbox(self) -> Replies: ...
    @property
    def rate(self) -> Limits: ...
    @property
    def phase(self) -> Phase: ...
    @property
    def in_hand(self) -> InHand: ...

    def busy_slots(self) -> int: ...
    def mark_changed(self) -> None: ...
    def pause(self) -> None: ...
    def subscribe_again(self) -> None: ...
    def request_stop(self) -> None: ...


class ControlCommands:
    """Feeds the listener's commands to the worker; ``listener`` is the stream's reader (the
    consumer starts and stops it with its connection)."""

    def __init__(self, worker: Worker, queue: QueueSpec, state: ControlState) -> None:
        self.worker = worker
        self.listener = WorkerControl(queue, state, worker.log, self.on_command, self.answer)

    def on_command(self, action: str, record: dict) -> None:
        worker, name = self.worker, self.worker.options.name
        worker.mark_changed()
        if action == "pause":
            busy = worker.busy_slots()
            worker.log.warning("[%s] paused (task_control.py): taking no new tasks%s", name,
                               f"; finishing the {busy} in hand" if busy else "")
            worker.pause()
        elif action == "resume":
            worker.log.info("[%s] resumed (task_control.py): taking tasks again", name)
            worker.subscribe_again()
        elif action in ("cancel", "cancel-tasks"):
            self._cancel_in_hand(record)
        elif action == "rate-limit":
            worker.rate.apply(self.listener.state.rate_limit)
        elif action == "stop":
            worker.log.warning("[%s] stop requested (task_control.py stop-workers)", name)
            if worker.phase not in STOP_ASKED:  # (a second request would put tasks back)
                worker.request_stop()

    def _cancel_in_hand(self, record: dict) -> None:
        """The tasks in hand that are cancelled now (a whole run, or the tasks a cancel-tasks
        selects) are stopped for real, their program and its children ended, and recorded
        cancelled with the reason (who cancelled it); queued ones are acked unrun when they
        come (policy.before_work)."""
        stopped = self.worker.in_hand.stop_cancelled(self.listener.state.cancelled_runs)
        self.worker.log.warning("[%s] %s (task_control.py): %s", self.worker.options.name,
                                what_is_cancelled(record), f"stopping its {stopped} task(s) "
                                "in hand" if stopped else "its tasks will not be run")

    def answer(self, record: dict, what: str) -> None:
        worker = self.worker
        worker.outbox.reply({"kind": "control-answer", "id": record.get("id"),
                             "command": record.get("command"), "worker": worker.options.name,
                             "host": worker.host, "did": what, "time": time.time()})
