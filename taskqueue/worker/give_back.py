"""Deliveries held in hand and never started, back to their queues (lanes.py holds them).

Paused or stopping, the deliveries held go back to their queues unstarted (``GiveBack``). A
nack(requeue) is a delivery to a quorum queue on RabbitMQ 3.x and 4.0-4.2 (docs/queue-types.md,
"What counts as a return"): its ``x-delivery-count`` rises, and a task given back
--delivery-limit times would be dead-lettered, never having run (4.x's own limit of 20 would
drop it). There each goes back as a copy to the same queue, confirmed, then the original is
acked (policy.give_back: its count carried on, as a park carries it), with a ``Settlement`` of
its own (settlement.py) for the steps. Where a nack counts nothing (classic queues, 4.3) it
stays a nack: the task keeps its place in the queue and needs no check when it comes back.
A delivery the broker sent before our cancel reached it (on its way when the pause came) goes
back the same way: every delivery comes in through ``Intake``, which knows the subscription,
so the queue, it came from; once that subscription is cancelled it hands the delivery to
``GiveBack``, never to a slot. A copy the broker refuses falls back to the nack, said in one
warning line (that one counts). Those are said once they are given back: the held ones in the
line of the pause or stop (the consumer's), the late ones in one line of their own
(``Intake.say_late``, on the consumer's next beat). A stop that cannot wait for the broker (an
alarm: in_hand.py ``give_back_unconfirmed``) nacks the originals whose copies it has not
confirmed (``GiveBack.unconfirmed_back``), in one line.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import pika
from pika.channel import Channel
from pika.spec import Basic

from taskqueue.broker.topology import Topology
from taskqueue.worker.delivery import Delivery
from taskqueue.worker.outbox import Outbox
from taskqueue.worker.policy import give_back
from taskqueue.worker.settlement import Settlement, Step


@dataclass
class Held:
    """A delivery as pika gave it, not yet handed to a slot."""

    channel: Channel
    method: Basic.Deliver
    properties: pika.BasicProperties
    body: bytes
    since: float = 0.0  # when it was held (the lanes' clock)
    urgent: bool = False  # ``Delivery.urgent``, as the intake decided it when it came

    def delivery(self) -> Delivery:
        return Delivery(self.channel, self.method.delivery_tag, self.properties, self.body,
                        self.method.redelivered, urgent=self.urgent)


# The first version whose quorum queues do not count a basic.nack(requeue) as a delivery
# (docs/queue-types.md's table; control/requeue.py's dry run relies on it too).
NACK_UNCOUNTED_SINCE = (4, 3)


def nack(held: Held, _urgent: bool = False) -> None:
    held.channel.basic_nack(held.method.delivery_tag, requeue=True)


class GiveBack:
    """A delivery not started back to its queue, by a copy where a nack would count as a
    delivery (the module docstring says why), else by the nack; one ``Settlement`` each
    (settlement.py), so its step says where it is: confirming until its copy is confirmed, then
    acked; requeued (the nack); dropped (its channel gone)."""

    def __init__(self, outbox: Outbox, topology: Callable[[], Topology | None]) -> None:
        self.outbox, self.topology = outbox, topology
        self.going: list[Settlement] = []  # copies not yet confirmed: originals still ours

    def __call__(self, held: Held, queue: str) -> None:
        """Never raises into pika (it runs in a consumer's callback): a failure is said and
        the delivery goes back with the nack."""
        try:
            self._give(held, queue)
        except Exception:
            self.outbox.log.exception("[%s] could not give a delivery back to %r as a copy; "
                                      "it goes back with a nack", self.outbox.worker, queue)
            if held.channel.is_open:
                nack(held)

    def _give(self, held: Held, queue: str) -> None:
        delivery = held.delivery()
        settlement = Settlement(delivery, self.outbox, self._over)
        if not self._copied(queue):
            settlement.requeue("given back with a nack")
            return
        try:
            verdict = give_back(delivery, queue)
        except ValueError:  # a header it cannot read: the slot that takes it dead-letters it
            settlement.requeue("given back with a nack: a header it cannot read")
            return
        self.going.append(settlement)
        # Confirmed, the original is acked; refused, it is nacked (``_over`` says so); its
        # channel lost, the broker has it back (and the copy, if sent: the one taken second
        # finds the first one's done record, as for the two copies a kill mid-park leaves).
        settlement.finish(verdict.outcome, 0.0, None, verdict.copy_to,
                          _same_but(held.properties, verdict.headers))

    def _over(self, settlement: Settlement) -> None:
        """Acked, requeued or dropped. A copy the broker refused (its queue full with
        reject-publish, unavailable, or gone) leaves the nack, which counts as a delivery here:
        the one case a task given back is counted where a copy was meant, so it is said."""
        if settlement not in self.going:
            return  # (given back by ``unconfirmed_back``, which says so)
        self.going.remove(settlement)
        if settlement.step is Step.REQUEUED and settlement.outcome == "given back":
            copy_to = settlement.copy.routing_key if settlement.copy is not None else "?"
            self.outbox.log.warning(
                "[%s] could not give %s back to %r as a copy: the broker refused it (the queue "
                "full, unavailable or gone); it went back with a nack, which counts as a "
                "delivery there (--delivery-limit)", self.outbox.worker,
                settlement.delivery.label, copy_to)

    def _copied(self, queue: str) -> bool:
        """Whether *queue* counts a nack as a delivery and the copy can be confirmed now. During
        an alarm (the publishing connection blocked: no confirm until it ends) or while that
        connection is away, the nack, as before this copy existed: counted, but the task is
        free at once for a worker that can run it."""
        topology = self.topology()
        if topology is None or topology.types.get(queue, topology.task_type) != "quorum" \
                or topology.version >= NACK_UNCOUNTED_SINCE:
            return False
        return not self.outbox.blocked and self.outbox.confirming

    def unconfirmed_back(self, due: Callable[[Settlement], bool] = lambda _s: True) -> int:
        """A stop that no longer waits (an alarm holds the confirms: in_hand.py): the originals
        whose copies the broker has not confirmed go back with a nack now (counted as a delivery
        where the copy was meant; their copies are not sent again), said in one line; how many
        were nacked (of those *due*: sent long enough ago). One whose channel is closed already
        is not nacked: the broker has it back (the line says how many, apart)."""
        nacked: list[str] = []
        dropped = 0
        for settlement in [each for each in self.going if due(each)]:
            self.going.remove(settlement)  # (so ``_over`` says nothing of it)
            if settlement.requeue("the broker has not confirmed its copy (blocked?)"):
                if settlement.step is Step.REQUEUED:
                    nacked.append(settlement.delivery.label)
                else:  # DROPPED: no channel to nack on
                    dropped += 1
        closed = f"{dropped} whose channel was closed: not nacked, the broker has them back"
        if nacked:
            self.outbox.log.warning(
                "[%s] the broker has not confirmed the copies of %d task(s) given back "
                "(blocked?): stopping, they go back to the queue with a nack instead: %s%s",
                self.outbox.worker, len(nacked), _some(nacked),
                f"; and {closed}" if dropped else "")
        elif dropped:
            self.outbox.log.warning("[%s] the broker has not confirmed the copies of %d task(s) "
                                    "given back (blocked?): stopping; %s", self.outbox.worker,
                                    dropped, closed)
        return len(nacked)

    def drop(self) -> None:
        """The consuming channel is gone: the broker has the originals back; copies not sent yet
        are not sent."""
        for settlement in list(self.going):
            settlement.drop()


def _some(labels: list[str], shown: int = 5) -> str:
    """The first *shown* of *labels*, and how many more: one line however many."""
    more = f"; and {len(labels) - shown} more" if len(labels) > shown else ""
    return "; ".join(labels[:shown]) + more


def _same_but(original: pika.BasicProperties, headers: dict) -> pika.BasicProperties:
    """The message as it was, with *headers*; without ``user_id``, which the broker checks
    against the connection that publishes (another user's would be refused)."""
    properties = copy.copy(original)
    properties.headers, properties.user_id = headers, None
    return properties
