"""Urgent tasks: ``--priority high`` goes to the companion queue ``<queue>.urgent``.

Why a companion and not the broker's priorities: RabbitMQ 3.x quorum queues have none
(``x-max-priority`` is for classic queues only), and 4.0's quorum queues have two levels but
deliver high and normal messages 2 to 1, so normal tasks still start between urgent ones. A
second queue of the same type behaves the same on 3.10 and 4.x: every worker consumes both,
and a free slot takes an urgent task it holds before a normal one (worker/lanes.py).
docs/queue-types.md#urgent-tasks has the bound.
"""

from __future__ import annotations

from taskqueue.errors import EXIT_BAD_INPUT, UserError

PRIORITIES = ("normal", "high")
URGENT_SUFFIX = ".urgent"


def urgent_name(queue: str) -> str:
    """The companion queue that holds *queue*'s urgent tasks."""
    return f"{queue}{URGENT_SUFFIX}"


def checked_priority(priority: str) -> str:
    """*priority* if it is one we know; else a ``UserError`` (exit 2) that says which are."""
    if priority not in PRIORITIES:
        raise UserError(f"priority {priority!r} is not one of {', '.join(PRIORITIES)}",
                        EXIT_BAD_INPUT)
    return priority


def queue_for(queue: str, priority: str) -> str:
    """The queue a task of *priority* is published to (through the default exchange)."""
    return urgent_name(queue) if checked_priority(priority) == "high" else queue
