"""Queues made when first needed, each step on a channel of its own (``on_own_channel``), an
existing queue used as it is: the control stream (a worker's listener, control/listener.py)
and the rate limit's queues (the worker's rate gate, worker/ratelimit.py, once a rate-limit
command was seen). The task queue and its standing companions are topology.py's."""

from __future__ import annotations

from collections.abc import Callable

from pika.connection import Connection

from taskqueue.broker.config import QueueSpec
from taskqueue.broker.topology import (
    Operation,
    Topology,
    companion_arguments,
    on_own_channel,
    queue_unavailable,
)

# --- the control stream (task_control.py) ------------------------------------------------------
# Bounded by size, never by age: a worker learns the queue's state (paused, cancelled runs) by
# reading every command from the stream's start, so a pause must not expire with time. 10 MB
# is about 28,000 commands (a command takes about 360 bytes on disk); retention removes whole
# segments, so 1 MB segments keep the bound close. ``task_control.py retention --stream
# control`` changes it with a policy (control/retention.py).
CONTROL_MAX_BYTES = 10 * 10**6
CONTROL_SEGMENT_BYTES = 10**6
CONTROL_ARGUMENTS = {"x-queue-type": "stream",  # RabbitMQ 3.9+; replicated like quorum queues
                     "x-max-length-bytes": CONTROL_MAX_BYTES,
                     "x-stream-max-segment-size-bytes": CONTROL_SEGMENT_BYTES}


def declare_control(connection: Connection, spec: QueueSpec, on_done: Callable[[], None],
                    on_error: Callable[[BaseException], None]) -> None:
    """Make sure ``<queue>.control`` exists (``declare_or_adopt``). An existing stream is used as
    it is: one made before it was bounded has no x-max-length-bytes, and a redeclaration with
    ours would be refused (406, inequivalent arg). *on_error* gets the broker's refusal (403: no
    permission; 406: a broker without streams, before 3.9). Like the results stream, a queue of
    that name is taken as it is, whatever its type."""
    declare_or_adopt(connection, spec.control_name, CONTROL_ARGUMENTS,
                     lambda _created: on_done(), on_error)


def declare_or_adopt(connection: Connection, name: str, arguments: dict[str, object],
                     on_done: Callable[[bool], None],
                     on_error: Callable[[BaseException], None]) -> None:
    """Make sure queue *name* exists, each step on a channel of its own: an existing one is
    used as it is, a missing one is made with *arguments*, one made by someone else meanwhile
    (406) is used as theirs. *on_done(created)*; *on_error* gets the broker's refusal."""
    def step(operation: Operation, on_ok: Callable[[object], None],
             on_refused: Callable[[BaseException], None]) -> None:
        on_own_channel(connection, operation, on_ok, on_refused, on_error)

    def passive(on_refused: Callable[[BaseException], None]) -> None:
        step(lambda ch, ok: ch.queue_declare(name, passive=True, callback=ok),
             lambda _frame: on_done(False), on_refused)

    def create() -> None:
        step(lambda ch, ok: ch.queue_declare(name, durable=True, arguments=arguments,
                                             callback=ok), lambda _frame: on_done(True),
             lambda again: passive(on_error) if _code(again) == 406 else on_error(again))

    passive(lambda refusal: create() if _missing(refusal) else on_error(refusal))


def declare_rate_queues(connection: Connection, spec: QueueSpec, topology: Topology,
                        on_done: Callable[[list[str]], None],
                        on_error: Callable[[BaseException], None]) -> None:
    """Make sure the rate limit's queues (``QueueSpec.rate_queues``) exist, one after the
    other, existing ones used as they are; *on_done(the names created)*. They follow the task
    queue's type as ``.retry`` does (``.ratelimit``: quorum on any 3.10+ broker)."""
    names = spec.rate_queues
    created: list[str] = []

    def declare(index: int) -> None:
        if index == len(names):
            on_done(created)
            return
        name = names[index]

        def done(made: bool) -> None:
            if made:
                created.append(name)
            declare(index + 1)

        declare_or_adopt(connection, name, companion_arguments(
            spec, name, topology.task_type, topology.version), done, on_error)

    declare(0)


def _code(reason: BaseException) -> int | None:
    return getattr(reason, "reply_code", None)


def _missing(reason: BaseException) -> bool:
    """A 404 that means "no such queue", not "its node is down"."""
    return _code(reason) == 404 and queue_unavailable(404, str(
        getattr(reason, "reply_text", ""))) is None
