"""What becomes of a task: the retry / dead-letter / delivery-limit policy, as pure functions.

No broker here (Dramatiq keeps its retries as middleware for the same reason): a delivery and
what its attempt came to go in, a ``Verdict`` comes out, and the consumer carries it out —
an ack, or a copy to ``<queue>.retry`` / ``<queue>.dead`` (or, parked by a rate limit, to a
``<queue>.wait.<N>s`` tier) confirmed before the original is acked. So the whole policy is
tested without a broker (tests/test_policy.py, tests/test_fast_park.py).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Protocol

from taskqueue.broker.config import QueueSpec
from taskqueue.broker.urgent import urgent_retry_name
from taskqueue.control.ratelimit import tier_for
from taskqueue.control.state import Cancellations
from taskqueue.wire.messages import CHECK_FROM, PRIOR_DELIVERIES, RATE_LEFT, RATE_PARKS
from taskqueue.wire.record import CLOCK_SKEW
from taskqueue.worker.delivery import Delivery
from taskqueue.worker.work import Outcome

MAX_REASON = 1000  # characters of a reason kept in x-death-reason
MAX_LAST_ERROR = 500  # ... and in x-last-error, on the way to a retry
CONSUMER_TIMEOUT_REASON = "taken back by the broker at its consumer timeout"
BROKER_DELIVERY_LIMIT = 20  # RabbitMQ 4's default for quorum queues: the 21st return drops it
MAX_LEFT = 1_000_000  # seconds still to wait that a park copy can carry (seconds_header)
# The broker's own headers, never carried to a parked copy: its count of deliveries (carried as
# x-prior-deliveries instead) and its dead-letter history (x-death and co.: their handling
# changed across RabbitMQ versions, 3.13.0-3.13.2 could drop a message for them).
BROKER_HEADERS = ("x-delivery-count", "x-death")
# What belongs to one attempt, never carried to its retry or dead copy: the broker's count of
# deliveries and those before a park (a retry is a new attempt, counted afresh, as a task
# never parked is), what was left to wait for its turn (stale: it would hop unasked for an old
# wait), and its parks (the next attempt's record counts its own). (Whether it is urgent is in no
# header: ``Delivery.urgent``, from the queue it came from; a copy's queue says it again.)
ATTEMPT_HEADERS = ("x-delivery-count", PRIOR_DELIVERIES, RATE_LEFT, RATE_PARKS)
BROKER_HEADER_PREFIXES = ("x-first-death-", "x-last-death-")


class Limits(Protocol):
    """The options the policy reads (``WorkerOptions`` has them all). Read-only properties:
    a frozen dataclass's fields cannot be set, which plain attributes here would ask for."""

    @property
    def max_retries(self) -> int: ...
    @property
    def retry_delay(self) -> float: ...
    @property
    def max_task_bytes(self) -> int: ...
    @property
    def delivery_limit(self) -> int: ...


@dataclass(frozen=True)
class Verdict:
    """``done``: ack. ``retry`` / ``dead`` / ``parked``: publish a copy to ``copy_to`` with
    ``headers`` (and ``expiration``), then ack the original once the broker confirms the copy.
    ``parked`` is no attempt: no results record."""

    outcome: str  # done, cancelled (both: ack); retry, dead, parked, given back (a copy, ack)
    reason: str = ""
    copy_to: str | None = None
    headers: dict = field(default_factory=dict)
    expiration: str | None = None


def before_work(delivery: Delivery, limits: Limits, queue: QueueSpec, slot: str,
                cancelled_runs: Collection[str] = (), overruns: int = 0) -> Verdict | None:
    """A message that must not be worked on, dead-lettered unread: it can never succeed (not
    UTF-8, empty, too large, unreadable headers), or it was delivered ``delivery_limit`` times
    without an ack (a quorum queue counts: it keeps killing or hanging its workers), or the
    broker took it back ``delivery_limit`` times for outlasting the queue's consumer timeout
    (*overruns*, counted by the worker: RabbitMQ 4.3 does not count those). The larger count
    decides (3.x counts a timeout in both). Deliveries before a rate limit parked it count
    too (``x-prior-deliveries``). None: work on it. (Sets ``delivery.text``.)"""
    problem = delivery.problem(limits.max_task_bytes)
    if problem:
        return dead_letter(delivery, problem, queue, slot)
    why = cancellation(delivery, cancelled_runs)
    if why is not None:
        return Verdict("cancelled", why)
    delivered = delivery.deliveries
    if overruns >= limits.delivery_limit and overruns > delivered:
        return dead_letter(delivery, f"{CONSUMER_TIMEOUT_REASON} {overruns} times "
                           f"(--delivery-limit {limits.delivery_limit}): it runs longer than "
                           "the queue's consumer timeout allows; raise that timeout (policy "
                           "key consumer-timeout) for tasks this long", queue, slot)
    if delivered >= limits.delivery_limit:
        return dead_letter(delivery, f"delivered {delivered + 1} times without an "
                           f"ack (--delivery-limit {limits.delivery_limit}): it may crash or "
                           "hang every worker that takes it", queue, slot)
    return None


def cancellation(delivery: Delivery, cancelled: Collection[str]) -> str | None:
    """Why *delivery*'s task is cancelled (its record's reason: what was cancelled, by whom),
    or None. *cancelled*: the worker's ``Cancellations`` (whole runs and selected tasks), or
    just the ids of runs cancelled whole. (Reads ``delivery.text``: after ``problem()``.)"""
    if isinstance(cancelled, Cancellations):
        if not cancelled.may_concern(delivery.run_id):
            return None  # the common case: reading the row and the id would cost for nothing
        message_id = delivery.properties.message_id
        return cancelled.reason_for(delivery.run_id,
                                    message_id if isinstance(message_id, str) else None,
                                    delivery.row, delivery.text)
    if delivery.run_id and delivery.run_id in cancelled:
        return f"run {delivery.run_id} was cancelled"
    return None


def broker_limit_clash(version: tuple[int, ...], task_type: str, limits: Limits) -> str | None:
    """Why our --delivery-limit cannot act on this queue, or None. RabbitMQ 4 drops a message
    returned more than 20 times from a quorum queue (unless a policy lifts it), silently: our
    limit must come first, so that the task is dead-lettered with its reason instead."""
    if version < (4, 0) or task_type != "quorum" or limits.delivery_limit <= BROKER_DELIVERY_LIMIT:
        return None
    return (f"--delivery-limit {limits.delivery_limit} is above RabbitMQ 4's default delivery "
            f"limit of quorum queues ({BROKER_DELIVERY_LIMIT}): the broker drops a task returned "
            f"{BROKER_DELIVERY_LIMIT + 1} times (workers killed or cut off while on it) before "
            f"ours dead-letters it; use --delivery-limit {BROKER_DELIVERY_LIMIT} or less, or "
            "lift the broker's with a policy (delivery-limit -1)")


def after_work(delivery: Delivery, outcome: Outcome, limits: Limits, queue: QueueSpec,
               slot: str, cancelled: bool | str = False) -> Verdict:
    """Done: ack. Stopped because it was cancelled while it ran: ack, as cancelled
    (*cancelled*: why, as ``cancellation`` says it; True: its run was). Failed: retry after
    ``retry_delay`` while attempts remain, else dead. A retry waits in ``<queue>.retry``, which
    dead-letters it back to ``<queue>``; an urgent task's (``delivery.urgent``: it came from
    ``<queue>.urgent`` to a worker that has ``<queue>.urgent.retry``, lanes.py) in
    ``<queue>.urgent.retry``, back to ``<queue>.urgent``: its retry stays urgent."""
    if outcome.ok:
        return Verdict("done")
    if cancelled:
        return Verdict("cancelled", cancelled if isinstance(cancelled, str)
                       else f"run {delivery.run_id} was cancelled")
    attempt = delivery.retries + 1
    if attempt > limits.max_retries:
        return dead_letter(delivery, f"failed {attempt} times; last: {outcome.reason}", queue,
                           slot)
    headers = {**_carried(delivery), "x-retries": attempt,
               "x-last-error": outcome.reason[:MAX_LAST_ERROR],
               CHECK_FROM: int(delivery.received)}
    retry_to = urgent_retry_name(queue.name) if delivery.urgent else queue.retry_name
    return Verdict("retry", outcome.reason, retry_to, headers,
                   expiration=str(int(limits.retry_delay * 1000)))


def dead_letter(delivery: Delivery, reason: str, queue: QueueSpec, slot: str) -> Verdict:
    headers = {**_carried(delivery), "x-death-reason": reason[:MAX_REASON],
               "x-original-queue": queue.name, "x-dead-lettered-by": slot,
               CHECK_FROM: int(delivery.received)}
    return Verdict("dead", reason, queue.dead_name, headers)


def _carried(delivery: Delivery) -> dict:
    """Its headers but this attempt's own (ATTEMPT_HEADERS), for a retry or dead copy."""
    return {name: value for name, value in delivery.headers.items()
            if name not in ATTEMPT_HEADERS}


def park(delivery: Delivery, wait: float, queue: QueueSpec, hop: bool = False) -> Verdict:
    """A task whose turn under the rate limit is *wait* seconds away, out of the slot until
    then: a copy to the longest tier (``<queue>.wait.<N>s``, dead-lettered back to the queue
    after N s) not longer than the wait, then the ack. Not an attempt: ``x-retries`` as it
    was, no record. The copy carries what is left to wait after its tier (relative, R3), the
    times it was parked, the deliveries without an ack so far (R5), none of the broker's
    headers (R6), no expiration. *hop*: it came back too early and goes on to the next tier
    unchecked and unasked (same parks); its ``x-check-from`` stays, as no check was made."""
    tier = tier_for(wait)
    headers = _moved(delivery)
    headers.update({RATE_LEFT: seconds_header(wait - tier),
                    RATE_PARKS: delivery.parks + (0 if hop else 1)})
    if not hop or not isinstance(headers.get(CHECK_FROM), (int, float)):
        # Checked up to its receipt (or never a copy before it): a done record of another
        # copy can only date from later. (An unchecked hop keeps the moment it was given.)
        headers[CHECK_FROM] = _check_from(delivery, hop)
    return Verdict("parked", f"its turn under the rate limit is in {wait:.1f} s",
                   queue.wait_name(tier), headers)


def give_back(delivery: Delivery, queue_name: str) -> Verdict:
    """A delivery held in hand and never started (a pause, a stop: lanes.py), back to
    *queue_name* (the queue it came from) as a copy, then the ack; not an attempt: no record,
    ``x-retries`` as it was. A quorum queue on RabbitMQ 3.x and 4.0-4.2 counts a
    nack(requeue) as a delivery, which --delivery-limit (and 4.x's own limit) reads: a task
    given back that way often enough would be dead-lettered unrun. So, as for a park: none of
    the broker's headers, the deliveries without an ack so far carried in
    ``x-prior-deliveries`` (a redelivery keeps its count, the give-back adds none). It was
    never checked, so its ``x-check-from`` stays, or is the earliest moment a done record of
    it can date from: a kill between the copy's confirm and the ack leaves two copies, and the
    one taken second must find the first one's done record (both are checked)."""
    headers = _moved(delivery)
    if not isinstance(headers.get(CHECK_FROM), (int, float)):
        headers[CHECK_FROM] = _check_from(delivery, hop=True)
    return Verdict("given back", "held in hand, not started", queue_name, headers)


def _moved(delivery: Delivery) -> dict:
    """The headers of a task moved without being run (parked, given back): none of the
    broker's, and the deliveries without an ack so far in ``x-prior-deliveries``, so that
    --delivery-limit goes on counting from them."""
    headers = {name: value for name, value in delivery.headers.items()
               if name not in BROKER_HEADERS and not name.startswith(BROKER_HEADER_PREFIXES)}
    headers[PRIOR_DELIVERIES] = delivery.deliveries
    return headers


def _check_from(delivery: Delivery, hop: bool) -> int:
    if not hop:
        return int(delivery.received)
    since = delivery.check_from  # a hop without x-check-from (another producer's): its own
    return 1 if since is None else max(1, int(since + CLOCK_SKEW))


def seconds_header(seconds: float) -> Decimal:
    """Seconds (>= 0, to the millisecond) as a header value: an AMQP decimal, which pika
    encodes (a float it cannot) and every client reads as a number. At most MAX_LEFT (an
    AMQP decimal holds 32 bits): a task parked longer asks again sooner, keeping its place."""
    return Decimal(max(0, min(round(seconds * 1000), MAX_LEFT * 1000))).scaleb(-3)
