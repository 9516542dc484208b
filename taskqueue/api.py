"""From Python: submit tasks, wait for their outcomes, read their results.

    import taskqueue

    run = taskqueue.submit(["resize a.png", "resize b.png"], queue="task_queue")
    run.wait(timeout=600)                # True once every task has an outcome
                                         # (halt_after=5 or "5%": fail fast, as --halt-after)
    for row in run.results():            # one dict per task, the --csv columns as keys
        print(row["task"], row["outcome"], row["result_or_error"])

``submit`` publishes every text as a task (persistent, confirmed by the broker, like the
emitter) as one new run, and returns a ``Run``; ``keys=[...]`` gives each task its rate-limit
key (as the emitter's ``--key-column``). The work is done by ``listening_worker.py``
processes anywhere; the outcomes come from the results record (``<queue>.results``), so a Run
can be waited for, or its results read, from another process later: ``Run(run_id, ...)``.
"""

from __future__ import annotations

import logging
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

from taskqueue.broker.config import DEFAULT_QUEUE, BrokerSettings, QueueSpec, broker_urls
from taskqueue.broker.urgent import checked_priority
from taskqueue.emitter.halt import Halt, HaltAfter, run_canceller
from taskqueue.emitter.publisher import ConfirmedPublisher
from taskqueue.emitter.tasks import task_key, tasks_from_messages
from taskqueue.errors import EXIT_INCOMPLETE, UserError
from taskqueue.results.history import History
from taskqueue.results.table import task_rows
from taskqueue.results.waiting import Outcomes, OutcomeWaiter
from taskqueue.wire.record import new_run_id

log = logging.getLogger("taskqueue.submit")  # configure it to see the publisher's lines


class Run:
    """One submitted run: ``run_id``, the ``queue``, how many tasks were ``published``."""

    def __init__(self, run_id: str, queue: str = DEFAULT_QUEUE, url: str | list[str] | None
                 = None, published: int = 0, connect_timeout: float = 60.0) -> None:
        urls = [url] if isinstance(url, str) else url
        self.run_id, self.published = run_id, published
        self.spec = QueueSpec(queue)
        self.settings = BrokerSettings(broker_urls(urls), connect_timeout=connect_timeout)
        self.outcomes: Outcomes | None = None

    @property
    def queue(self) -> str:
        return self.spec.name

    def wait(self, timeout: float | None = None, *,
             halt_after: int | str | None = None) -> bool:
        """Block until every task has an outcome (done, dead or cancelled), or *timeout*
        seconds have passed; True if they all have one. ``outcomes`` says how many of each.

        *halt_after* (a number of dead tasks, or a percentage of the run's tasks as a text:
        ``"5%"``) fails fast, as the emitter's ``--halt-after``: once the run has that many
        dead tasks the rest of it is cancelled, the waiting goes on until the cancelled ones
        are counted too, and ``outcomes.halted`` says why (else it is ""). A bad value is a
        ValueError, raised before anything is read."""
        limit = None if halt_after is None else HaltAfter.of(halt_after)
        rows = bytearray(self.published + 1)
        rows[1:] = b"\x01" * self.published
        waiter = OutcomeWaiter(self.settings, self.spec, self.run_id, rows, self.published)
        halt = None if limit is None else Halt(
            limit, self.run_id, self.published, say=log.warning, label=f"halt_after={halt_after!r}",
            cancel=run_canceller(self.settings, self.spec, self.run_id, log))
        self.outcomes = waiter.wait(timeout, watch=halt)
        return self.outcomes.complete

    def results(self) -> Iterator[dict]:
        """One dict per task (its deciding attempt; keys: the ``--csv`` columns), as recorded
        so far: tasks without a record yet are not there."""
        with tempfile.TemporaryDirectory(prefix="taskqueue-") as directory:
            history = History(self.settings, self.spec, Path(directory))
            _table, rows = task_rows(self.run_id, history.run_records(self.run_id))
            yield from rows


def submit(texts: Iterable[str], queue: str = DEFAULT_QUEUE, url: str | list[str] | None = None,
           *, connect_timeout: float = 60.0, priority: str = "normal",
           keys: Iterable[str | None] | None = None) -> Run:
    """Publish each text as a task of one new run; every one confirmed by the broker before
    this returns (else ``UserError``, which says what is wrong). *url*: an AMQP URL or a list
    to fail over across (default: ``$RABBITMQ_URL``, else the local broker). *priority*:
    ``"high"`` makes every worker start these before waiting normal tasks (``<queue>.urgent``,
    docs/queue-types.md); another value is a ``UserError``, raised before anything is sent.
    *keys*: one per text, each task's rate-limit key (the header ``x-key``, for
    ``task_control.py rate-limit --per-key``): at most 256 UTF-8 bytes (a longer one is cut and
    ends with a digest of the whole), ``""`` or None for none; a count that differs from the
    texts' is a ``UserError``, raised before anything is sent."""
    checked_priority(priority)
    texts = list(texts)
    key_list = None if keys is None else list(keys)
    if key_list is not None and len(key_list) != len(texts):
        raise UserError(f"keys: {len(key_list)} keys for {len(texts)} tasks; give one per task "
                        "(\"\" for none)")
    for number, key in enumerate(key_list or (), start=1):
        try:
            task_key(key)
        except ValueError as exc:
            raise UserError(f"keys: key number {number}: {exc}") from None
    run = Run(new_run_id(suffix=uuid.uuid4().hex[:6]), queue, url, len(texts), connect_timeout)
    publisher = ConfirmedPublisher(run.settings, run.spec,
                                   tasks_from_messages(texts, run.run_id, key_list), log,
                                   run_id=run.run_id, total=len(texts), priority=priority)
    publisher.run()
    if publisher.input_error is not None:
        raise publisher.input_error
    if publisher.stats.confirmed < len(texts):
        raise UserError(f"only {publisher.stats.confirmed} of {len(texts)} tasks were confirmed "
                        "by the broker", EXIT_INCOMPLETE)
    return run
