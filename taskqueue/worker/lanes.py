"""Deliveries that came while every slot was busy, waiting for a free slot: urgent first.

A worker consumes two queues on its task channel (consumer.py): ``<queue>.urgent`` with a
prefetch of ``urgent_prefetch(slots)`` = 2 x slots, then ``<queue>`` with a prefetch of slots
(fair dispatch, as before). A delivery goes straight into a free slot; with none free it waits
here, and the next slot to free takes the oldest urgent one, else the oldest normal one.

So a worker holds at most ``slots`` normal tasks it has not started (one more while its tasks
are short: look_ahead.py), and only while urgent ones run in their slots; and while urgent tasks
wait in the broker, every slot that frees finds one already in hand: the broker sends its
replacement while the next one runs. (With slots + 1, slots that free together, as tasks of one
length started together do, found one for the first slot only and the others took a normal task:
20 of them at 4 workers x 4 slots in bench/priority.py, 0 with 2 x slots.) The price: a busy
worker may hold up to 2 x slots urgent tasks that another worker's free slot could start; each
waits until one of this worker's slots frees, up to one task's time.

A normal task held while urgent ones keep coming would wait as long as they do, and the
broker's consumer timeout (30 min by default) counts from its delivery, not from its start:
one held ``NORMAL_HELD_AT_MOST`` seconds goes before the urgent ones (at most one per slot that
frees), so urgency never costs a task held in hand its channel.

Paused or stopping, the deliveries held go back to their queues unstarted (give_back.py).

A delivery from ``<queue>.urgent`` is urgent (``Delivery.urgent``), so that its retry goes to
``<queue>.urgent.retry`` and comes back urgent (policy.py ``after_work``). ``Intake`` decides it
from the subscription the delivery came through (``urgent_delivery``), never from its headers:
only the queue says it, and a message's own ``x-urgent`` or the like is a header as any other.
``Intake`` makes that retry queue before subscribing (on_demand.py's declare-or-adopt); without
it (refused: no permission, no leader) no delivery is urgent in that sense: the retry goes
through ``<queue>.retry`` (the urgent lane is the queue's all the same).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable

import pika
from pika.channel import Channel
from pika.connection import Connection
from pika.spec import Basic

from taskqueue.broker.cancels import Cancelling
from taskqueue.broker.config import QueueSpec
from taskqueue.broker.on_demand import declare_or_adopt
from taskqueue.broker.topology import Topology, companion_arguments
from taskqueue.broker.urgent import urgent_name
from taskqueue.worker.give_back import GiveBack, Held, nack

OnMessage = Callable[[Channel, Basic.Deliver, pika.BasicProperties, bytes], None]


def urgent_prefetch(slots: int) -> int:
    """The prefetch of the ``<queue>.urgent`` consumer: an urgent task in hand for each slot
    beyond the ones running (the module's docstring says why)."""
    return 2 * slots


NORMAL_HELD_AT_MOST = 60.0  # seconds a held normal task yields to urgent ones (see above)
BackTo = Callable[[Held, bool], None]  # gives one held delivery back (urgent: from that lane)


class Lanes:
    """Two first-in-first-out lanes; ``take`` empties the urgent one first, but for a normal
    delivery held ``NORMAL_HELD_AT_MOST`` seconds."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._urgent: deque[Held] = deque()
        self._normal: deque[Held] = deque()
        self._clock = clock

    def __len__(self) -> int:
        return len(self._urgent) + len(self._normal)

    @property
    def urgent(self) -> int:
        return len(self._urgent)

    @property
    def normal(self) -> int:
        return len(self._normal)

    def normal_held_for(self) -> float:
        """How long the newest normal one has waited (the one ``last_normal`` takes out)."""
        return self._clock() - self._normal[-1].since if self._normal else 0.0

    def hold(self, held: Held, urgent: bool) -> None:
        held.since = self._clock()
        (self._urgent if urgent else self._normal).append(held)

    def take(self) -> Held | None:
        """The delivery a free slot runs next: the oldest urgent one, else the oldest normal;
        but a normal one held too long first."""
        if self._normal and self._clock() - self._normal[0].since >= NORMAL_HELD_AT_MOST:
            return self._normal.popleft()
        for lane in (self._urgent, self._normal):
            if lane:
                return lane.popleft()
        return None

    def give_back(self, back: BackTo = nack) -> int:
        """Paused or stopping: every waiting delivery back to its queue (none was started), on
        its channel if that is still open (a closed one gave them back already)."""
        count = 0
        for urgent, lane in ((True, self._urgent), (False, self._normal)):
            while lane:
                held = lane.popleft()
                if held.channel.is_open:
                    back(held, urgent)
                    count += 1
        return count

    def last_normal(self) -> Held | None:
        """The normal delivery that came last, taken out (look_ahead.py gives it back)."""
        return self._normal.pop() if self._normal else None

    def drop(self) -> None:
        """The channel is gone: the broker delivers them again; nobody can ack them now."""
        self._urgent.clear()
        self._normal.clear()


class Intake:
    """The worker's two subscriptions on its task channel, and the deliveries waiting in it.
    The consumer says when to subscribe, cancel or forget; it asks ``hold`` whether a delivery
    waits, and ``take`` for the one a free slot runs next."""

    def __init__(self, queue: str, slots: int, giving_back: GiveBack | None = None,
                 log: logging.Logger | None = None, worker: str = "") -> None:
        self.queue, self.urgent_queue, self.slots = queue, urgent_name(queue), slots
        self.lanes = Lanes()
        self.giving_back = giving_back  # None: a nack each
        self.log, self.worker = log or logging.getLogger(__name__), worker
        self.urgent = True  # False: no permission on <queue>.urgent (topology.py), not consumed
        # <queue>.urgent.retry is there (``prepare``): an urgent task's retry stays urgent
        self.urgent_retry = False
        self.late = 0  # given back after the cancel, not said yet (``say_late``)
        self._urgent_tag: str | None = None  # pika's, while <queue>.urgent is consumed
        self._normal_tags: list[str] = []  # <queue>'s: one, or two (look_ahead.py)
        self._low_tag: str | None = None  # of those, the one of consumer priority -1
        self._let_go_low: set[str] = set()  # low ones let go at several slots (may_hold_more)
        self._on_message: OnMessage | None = None
        self._retry_refused = False  # said once
        # The subscriptions cancelled (a pause, a stop, one let go): what still comes for them
        # goes back (``_late``), and a stop waits for the broker's answer (cancels.py).
        self.cancelling = Cancelling(self.log, worker)
        # Given back once the broker has answered our cancels (``cancel``): (held, its queue)
        self._going_back: list[tuple[Held, str]] = []

    def prepare(self, connection: Connection, topology: Topology, then: Callable[[], None]
                ) -> None:
        """Before subscribing: make sure ``<queue>.urgent.retry`` exists (an existing one used
        as it is), where an urgent task's retry waits its delay before it goes back to
        ``<queue>.urgent``; it follows the task queue's type, as ``<queue>.retry`` does. Refused
        (no permission on it, or any other refusal), retries go through ``<queue>.retry``,
        said in one line; *then* either way."""
        if not self.urgent:
            self.urgent_retry = False
            then()
            return
        spec = QueueSpec(self.urgent_queue)  # its .retry companion, dead-lettered back to it
        arguments = companion_arguments(spec, spec.retry_name, topology.task_type,
                                        topology.version)

        def ready(created: bool) -> None:
            if created:  # (as topology.py says it of the others)
                self.log.info("created queue %r (%s)", spec.retry_name,
                              arguments.get("x-queue-type", "classic"))
            self.urgent_retry = True
            then()

        def refused(reason: BaseException) -> None:
            self.urgent_retry = False
            if not self._retry_refused and getattr(reason, "reply_code", None) is not None:
                self._retry_refused = True
                self.log.warning("[%s] could not use %r (%s): a failed urgent task's retry goes "
                                 "through %r back to %r instead", self.worker, spec.retry_name,
                                 reason, QueueSpec(self.queue).retry_name, self.queue)
            then()

        declare_or_adopt(connection, spec.retry_name, arguments, ready, refused)

    @property
    def prefetch(self) -> int:
        """The prefetch to set before ``subscribe``: the urgent consumer's, made first."""
        return urgent_prefetch(self.slots)

    def subscribe(self, channel: Channel, on_message: OnMessage) -> None:
        """A prefetch applies to the consumers made after it (per consumer): <queue>.urgent's
        is ``prefetch``, then <queue>'s is slots. The broker takes them in this order."""
        self._urgent_tag, self._on_message = None, on_message
        if self.urgent:
            self._urgent_tag = channel.basic_consume(
                self.urgent_queue, self._arriving(self.urgent_queue, on_message))
        channel.basic_qos(prefetch_count=self.slots)
        normal_tag = channel.basic_consume(self.queue, self._arriving(self.queue, on_message))
        self._normal_tags, self._low_tag = [normal_tag], None

    @property
    def _tags(self) -> list[str]:
        """Every subscription of ours on the task channel: <queue>.urgent's, then <queue>'s."""
        return ([] if self._urgent_tag is None else [self._urgent_tag]) + self._normal_tags

    @property
    def normal_subscriptions(self) -> int:
        return len(self._normal_tags)

    def holds_normal(self) -> bool:
        return self.lanes.normal > 0

    def normal_held_for(self) -> float:
        """Seconds the newest normal delivery in hand has waited for a slot (0: none waits):
        the one ``hold_one_less`` gives back."""
        return self.lanes.normal_held_for()

    def subscribe_second(self, channel: Channel) -> None:
        """A second subscription to <queue>, prefetch 1, consumer priority -1: one more task in
        hand, sent only while every subscription of priority 0 (every worker's first) has its
        prefetch full (look_ahead.py)."""
        self._low_tag = self._subscribe_normal(channel, -1) or self._low_tag

    def may_hold_more(self, in_hand: set[str]) -> bool:
        """No task of a low subscription let go (several slots: ``hold_one_less``) is still in
        hand (*in_hand*: the consumer tags the tasks in hand came through). The broker no
        longer counts such a task against a subscription of ours: a new low one now would hold
        one task more than slots + 1."""
        self._let_go_low &= in_hand
        return not self._let_go_low

    @property
    def only_low(self) -> bool:
        """The one <queue> subscription left is the priority -1 one (the first was let go)."""
        return self._normal_tags == [self._low_tag]

    def restore_first(self, channel: Channel) -> None:
        """The slot is free and only the priority -1 subscription is left: a first one of
        priority 0 again, so this worker is served as every other is. The low one stays (a
        cancel now could meet a task on its way to it, to be given back); it is let go as any
        second one is."""
        self._subscribe_normal(channel, 0)

    def _subscribe_normal(self, channel: Channel, priority: int) -> str | None:
        if self._on_message is None or not channel.is_open:
            return None
        channel.basic_qos(prefetch_count=1)
        tag = channel.basic_consume(self.queue, self._arriving(self.queue, self._on_message),
                                    arguments={"x-priority": priority})
        self._normal_tags.append(tag)
        return tag

    def _let_go(self, channel: Channel, tag: str) -> None:
        """Cancel *tag*'s subscription, whose one task waits in hand (its prefetch full: no
        other should be on its way to it; one that is goes back: ``_late``)."""
        self.cancelling.let_go(channel, tag, self._late(self.queue))
        self._normal_tags.remove(tag)
        if tag == self._low_tag:
            self._low_tag = None

    def hold_one_less(self, channel: Channel) -> bool:
        """Cancel the <queue> subscription whose delivery waits in hand, and give that delivery
        back (unstarted): the other subscription's task runs on (look_ahead.py). The cancel
        goes first, so the broker cannot send the task straight back to it. With several
        slots the low one is cancelled whichever brought the task: the first counts the tasks
        running in the other slots (look_ahead.py says why)."""
        if len(self._normal_tags) < 2 or not channel.is_open:
            return False
        held = self.lanes.last_normal()
        if held is None:
            return False
        tag = held.method.consumer_tag
        if self.slots > 1 and self._low_tag is not None:
            tag = self._low_tag
            self._let_go_low.add(tag)  # (its task may run in a slot: may_hold_more)
        self.log.info("[%s] %s waited in hand behind a long task: it goes back to the queue "
                      "unstarted, for a worker that may be free", self.worker,
                      held.delivery().label)
        if tag in self._normal_tags:
            self._let_go(channel, tag)  # (the first, if its task waits: restore_first later)
        self._back_to(held, self.queue)
        return True

    def cancel(self, channel: Channel | None, then: Callable[[], None] = lambda: None) -> int:
        """Stop both subscriptions; the deliveries waiting go back (not started: another worker
        can run them now), and so do those the broker sent before our cancel reached it
        (``_late``). How many of the first went back. They go back once the broker has
        answered the cancels (``answered``, cancels.py): pika may hold our cancels behind a
        request still waiting for its answer, and a task given back before them could come
        straight back to a subscription not cancelled yet. *then* runs after that (a stop
        closes the channel only then)."""
        count = self.lanes.give_back(lambda held, urgent: self._going_back.append(
            (held, self.urgent_queue if urgent else self.queue)))
        if channel is not None and channel.is_open and self._tags:
            late = {tag: self._late(self.queue) for tag in self._normal_tags}
            if self._urgent_tag is not None:  # (first: the order we subscribed in)
                late = {self._urgent_tag: self._late(self.urgent_queue), **late}

            def answered() -> None:
                self.give_back_now()
                then()
            self.cancelling.cancel(channel, late, self.prefetch, answered)
        elif self.cancelling.answered:  # (else the cancels waiting for their answer do it)
            self.give_back_now()
        self._urgent_tag, self._normal_tags, self._low_tag = None, [], None
        return count

    def give_back_now(self) -> None:
        """What waits for the cancels' answer goes back: at the answer, or without it when
        stopping now (a second stop request, the last records out: a close would give it back
        counted)."""
        going, self._going_back = self._going_back, []
        for held, queue in going:
            self._back_to(held, queue)

    @property
    def answered(self) -> bool:
        """No cancel of ours waits for the broker's answer."""
        return self.cancelling.answered

    def _arriving(self, queue: str, on_message: OnMessage) -> OnMessage:
        """*queue*'s deliveries: to *on_message* while its subscription lasts (the consumer
        runs or holds them: it is consuming); after its cancel, to ``_late`` (cancels.py hands
        those to ``_late`` itself: pika would reject them)."""
        def arrived(channel: Channel, method: Basic.Deliver,
                    properties: pika.BasicProperties, body: bytes) -> None:
            tag = method.consumer_tag
            if tag == self._urgent_tag or tag in self._normal_tags:
                on_message(channel, method, properties, body)
            else:
                self._late(queue)(channel, method, properties, body)
        return arrived

    def _late(self, queue: str) -> OnMessage:
        """Once cancelled (a pause, a stop), what the broker sent before our cancel reached it
        goes back as the held ones did (``GiveBack``: no delivery counted where a nack would
        count one), on a channel still open (a closed one gave them back already)."""
        def arrived(channel: Channel, method: Basic.Deliver,
                    properties: pika.BasicProperties, body: bytes) -> None:
            if not channel.is_open:
                return
            self.late += 1
            held = Held(channel, method, properties, body)
            if self.cancelling.answered:
                self._back_to(held, queue)
            else:  # (with the held ones, once the cancels are answered: ``cancel``)
                self._going_back.append((held, queue))
        return arrived

    def say_late(self) -> None:
        """One line for the deliveries given back since the cancel's line (or the last of
        these): the ones on their way when it came (the consumer's beat calls this)."""
        if self.late:
            self.log.info("[%s] gave %d task(s) back to the queue that were on their way to us "
                          "when we stopped taking tasks", self.worker, self.late)
            self.late = 0

    def _back_to(self, held: Held, queue: str) -> None:
        if self.giving_back is None:
            nack(held)
        else:
            self.giving_back(held, queue)

    def forget(self) -> None:
        """The channel is closed or closing: the broker delivers all of them again."""
        self._urgent_tag, self._normal_tags, self._low_tag = None, [], None
        self.cancelling.forget()
        self._going_back.clear()  # (the broker has them back with the channel)
        self.lanes.drop()
        if self.giving_back is not None:
            self.giving_back.drop()

    def urgent_delivery(self, method: Basic.Deliver) -> bool:
        """``Delivery.urgent`` for a delivery through *method*'s subscription (asked as it
        comes): from ``<queue>.urgent``, while this worker has ``<queue>.urgent.retry``."""
        return self._from_urgent(method) and self.urgent_retry

    def _from_urgent(self, method: Basic.Deliver) -> bool:
        return self._urgent_tag is not None and method.consumer_tag == self._urgent_tag

    def hold(self, channel: Channel, method: Basic.Deliver, properties: pika.BasicProperties,
             body: bytes) -> None:
        held = Held(channel, method, properties, body, urgent=self.urgent_delivery(method))
        self.lanes.hold(held, self._from_urgent(method))

    def take(self) -> Held | None:
        return self.lanes.take()
