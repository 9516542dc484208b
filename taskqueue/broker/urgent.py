"""Urgent tasks: ``--priority high`` goes to the companion queue ``<queue>.urgent``.

Why a companion and not the broker's priorities: RabbitMQ 3.x quorum queues have none
(``x-max-priority`` is for classic queues only), and 4.0's quorum queues have two levels but
deliver high and normal messages 2 to 1, so normal tasks still start between urgent ones. A
second queue of the same type behaves the same on 3.10 and 4.x: every worker consumes both,
and a free slot takes an urgent task it holds before a normal one (worker/lanes.py).
docs/queue-types.md#urgent-tasks has the bound.

A failed urgent task's retry stays urgent: it waits its delay in ``<queue>.urgent.retry``, which
dead-letters to ``<queue>.urgent`` as ``<queue>.retry`` does to ``<queue>`` (a queue's
dead-letter routing key is one; worker/lanes.py makes it when it consumes ``<queue>.urgent``).
Which queue a delivery came from is the worker's to know, not the message's to say: the
intake sets ``Delivery.urgent`` from the subscription it came through (worker/lanes.py), and
policy.py routes the retry by that field. No header says it, so no message (nor a copy of one)
can make itself urgent.
"""

from __future__ import annotations

from taskqueue.errors import EXIT_BAD_INPUT, UserError

PRIORITIES = ("normal", "high")
URGENT_SUFFIX = ".urgent"


def urgent_name(queue: str) -> str:
    """The companion queue that holds *queue*'s urgent tasks."""
    return f"{queue}{URGENT_SUFFIX}"


def urgent_retry_name(queue: str) -> str:
    """Where an urgent task's retry waits its delay, dead-lettered back to ``<queue>.urgent``:
    the ``.retry`` companion of the urgent queue (config.py ``QueueSpec.retry_name``)."""
    return f"{urgent_name(queue)}.retry"


def checked_priority(priority: str) -> str:
    """*priority* if it is one we know; else a ``UserError`` (exit 2) that says which are."""
    if priority not in PRIORITIES:
        raise UserError(f"priority {priority!r} is not one of {', '.join(PRIORITIES)}",
                        EXIT_BAD_INPUT)
    return priority


def queue_for(queue: str, priority: str) -> str:
    """The queue a task of *priority* is published to (through the default exchange)."""
    return urgent_name(queue) if checked_priority(priority) == "high" else queue
