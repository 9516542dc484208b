"""Deliveries for a subscription we cancelled: to us, never to pika's reject.

Between our basic.cancel and the moment the broker handles it, the broker may still send
deliveries to that subscription (they were on their way: in its buffers, the network, ours).
pika 1.x's ``Channel._on_deliver`` rejects (requeue) every delivery whose consumer tag is in its
``_cancelled`` set, which a nowait cancel leaves there until the channel closes. A reject is a
delivery on a quorum queue (docs/queue-types.md, "What counts as a return", every version): a
task that never ran gets a delivery counted, and enough pauses would dead-letter it.

``route_late`` wraps that channel's ``_on_deliver`` (pika calls it through
``self._on_deliver`` from ``_handle_content_frame``): a delivery whose consumer tag the given
function claims goes there (worker/lanes.py gives it back uncounted: worker/give_back.py); any
other goes to pika's own, unchanged. Both are pika internals: ``fits`` checks them once, and a
pika that does not fit keeps pika's behaviour, said in one warning line.

``Cancelling`` sends our cancels and knows when the broker has handled them. They go out
nowait, all at once (pika would send a cancel that waits for its cancel-ok only after the last
one's answer), then one ``basic.qos`` round trip: its answer comes after the broker handled
every cancel before it, so what was on its way (in the network, in buffers) came first. Only
then does the worker give its tasks back (a nack goes out at once, not in pika's queue of
requests: sent before the cancels, a task could come straight back to a subscription not
cancelled yet), and only then does a stop close the channel (a close gives back what is on its
way counted, on every version). The answer is waited for ``ANSWER_WITHIN`` seconds at most: a
blocked or gone broker never answers.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections import OrderedDict
from collections.abc import Callable

import pika
from pika import frame, spec
from pika.callback import CallbackManager
from pika.channel import Channel

OnDelivery = Callable[[Channel, spec.Basic.Deliver, pika.BasicProperties, bytes], None]
# Who takes a delivery for this consumer tag (None: pika, as ever).
Claim = Callable[[str], "OnDelivery | None"]

ANSWER_WITHIN = 2.0  # seconds a stop waits for the broker's answer to our cancels
GONE_KEPT = 64  # cancelled subscriptions remembered per channel: only recent ones get late ones
_ROUTED = "_taskqueue_route_late"  # set on a channel whose deliveries go through ours
_warned = False  # the one line a pika that does not fit gets (per process)


class _Probe:
    """A connection as far as a channel's delivery path reads it."""

    def __init__(self) -> None:
        self.callbacks = CallbackManager()


@functools.cache
def fits() -> str | None:
    """Why the installed pika does not fit ``route_late`` (None: it does): a channel's
    deliveries go through ``self._on_deliver(method_frame, header_frame, body)``, called from
    ``_handle_content_frame``."""
    try:
        names = list(inspect.signature(Channel._on_deliver).parameters)
        if names != ["self", "method_frame", "header_frame", "body"]:
            return f"Channel._on_deliver{tuple(names)} is not (method, header, body)"
        channel = Channel(_Probe(), 1, lambda _channel: None)
        seen: list[str] = []
        channel._on_deliver = lambda method_frame, _header, _body: seen.append(
            method_frame.method.consumer_tag)
        deliver = spec.Basic.Deliver(consumer_tag="probe", delivery_tag=1, exchange="",
                                     routing_key="q")
        channel._handle_content_frame(frame.Method(1, deliver))
        channel._handle_content_frame(frame.Header(1, 1, pika.BasicProperties()))
        channel._handle_content_frame(frame.Body(1, b"x"))
        if seen != ["probe"]:
            return "Channel._handle_content_frame does not call the channel's _on_deliver"
    except Exception as exc:  # anything else: not the pika this was written against
        return f"{type(exc).__name__}: {exc}"
    return None


def route_late(channel: Channel, claim: Claim, log: logging.Logger, who: str = "") -> bool:
    """Deliveries on *channel* whose consumer tag *claim* answers go there, not to pika (once
    per channel: the first *claim* stays). False if pika does not fit (said once)."""
    if not isinstance(channel, Channel):
        return False  # a stand-in channel (the fast tests) hands every delivery to its consumer
    if getattr(channel, _ROUTED, False):
        return True
    why = fits()
    if why is not None:
        global _warned
        if not _warned:
            _warned = True
            log.warning("[%s] pika %s does not fit taskqueue/broker/cancels.py (%s): a task on "
                        "its way when a pause or stop cancels our subscription goes back with "
                        "pika's reject, which counts as a delivery on quorum queues", who,
                        pika.__version__, why)
        return False
    original = channel._on_deliver

    def on_deliver(method_frame: frame.Method, header_frame: frame.Header, body: bytes) -> None:
        method = method_frame.method
        late = claim(method.consumer_tag)
        if late is None:
            original(method_frame, header_frame, body)  # pika's, unchanged
        else:
            late(channel, method, header_frame.properties, body)

    channel._on_deliver = on_deliver
    setattr(channel, _ROUTED, True)
    return True


class Cancelling:
    """Our subscriptions cancelled on one channel at a time (``forget`` at its loss): who takes
    a delivery still coming for one, and whether the broker has answered the last cancels."""

    def __init__(self, log: logging.Logger, who: str = "") -> None:
        self.log, self.who = log, who
        self._gone: OrderedDict[str, OnDelivery] = OrderedDict()
        self._round: object | None = None  # the qos round trip not answered yet

    @property
    def answered(self) -> bool:
        return self._round is None

    def cancel(self, channel: Channel, tags: dict[str, OnDelivery], prefetch: int,
               then: Callable[[], None]) -> None:
        """Cancel *tags*'s subscriptions (each with who takes what still comes for it); *then*
        runs once the broker has handled the cancels (or after ``ANSWER_WITHIN`` seconds).
        *prefetch*: the qos of the round trip (the one consumers made next would get anyway)."""
        self._route(channel, tags)
        for tag in tags:
            channel.basic_cancel(tag)
        marker = self._round = object()

        def answered(_frame: object = None) -> None:
            if self._round is marker:  # (not a later round's, nor a channel lost meanwhile)
                self._round = None
                then()

        def too_late() -> None:
            if self._round is marker and channel.is_open:
                self.log.warning("[%s] the broker has not answered our cancel within %g s "
                                 "(blocked or gone?): going on; a task still on its way goes "
                                 "back as it comes, or with the channel's close if we stop "
                                 "first (which counts as a delivery on quorum queues)",
                                 self.who, ANSWER_WITHIN)
            answered()

        channel.basic_qos(prefetch_count=prefetch, callback=answered)
        channel.connection.ioloop.call_later(ANSWER_WITHIN, too_late)

    def let_go(self, channel: Channel, tag: str, late: OnDelivery) -> None:
        """Cancel one subscription and go on (look_ahead.py): with a callback, so that pika
        forgets the tag at the broker's answer (without one it keeps every cancelled tag until
        the channel closes); what still comes for it goes to *late*."""
        self._route(channel, {tag: late})
        channel.basic_cancel(tag, callback=lambda _frame: None)

    def _route(self, channel: Channel, tags: dict[str, OnDelivery]) -> None:
        route_late(channel, self._gone.get, self.log, self.who)
        self._gone.update(tags)
        while len(self._gone) > GONE_KEPT:
            self._gone.popitem(last=False)

    def forget(self) -> None:
        """The channel is closed or closing: nothing more comes, no answer either."""
        self._gone.clear()
        self._round = None
