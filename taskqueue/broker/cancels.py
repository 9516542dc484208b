"""Our consumer cancels, and the deliveries on their way when one is sent: to us, not rejected.

Between our basic.cancel and the broker's cancel-ok the broker may still send deliveries to
that subscription (it sent them before the cancel reached it; they come before the cancel-ok,
in channel order). pika 1.x's ``Channel._on_deliver`` rejects (requeue) every delivery whose
consumer tag is in its ``_cancelled`` set: from our cancel until the cancel-ok (with a
callback), or until the channel closes (nowait). A reject, like a nack, is a delivery on a
quorum queue of RabbitMQ 3.x and 4.0-4.2: a task that never ran gets a delivery counted, and
enough pauses would dead-letter it (docs/guarantees.md promises those go back uncounted).

So ``Cancels.cancel`` cancels with a callback and, until that tag's cancel-ok, hands its
deliveries to the callback given (the worker gives them back as a confirmed copy where a nack
counts: worker/give_back.py). Any other tag (not cancelled through us, or answered already)
keeps pika's behaviour. It hands them on once no cancel of ours on the channel awaits its
answer: pika sends one cancel at a time (each waits for the last one's cancel-ok), so the
subscriptions cancelled after the first are still there at the broker meanwhile, and a task
given back at once could come straight back to one of them, and go back again (on 4.3, where
the give-back is a nack: tests/test_cancel_in_flight.py saw one task given back twice).

To do it, the channel's ``_on_deliver`` is wrapped on that channel instance (pika calls it
through ``self._on_deliver`` from ``_handle_content_frame``), and each tag's cancel-ok is heard
through the channel's ``callbacks`` (pika's own ``CallbackManager``), filtered by consumer tag
as pika filters its own (the ``callback`` of ``basic_cancel`` is not: it fires on the next
cancel-ok of any tag). Both are pika internals: ``fits`` checks them once, on a channel of its
own, and a pika that does not fit gets today's behaviour (a nowait cancel; pika rejects what
comes late), said in one warning line.

``when_answered`` lets a stop wait for the cancel-oks before closing the channel (a channel's
close gives back what is on its way too, counted as well), within a bound: a blocked or gone
broker never answers.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable

import pika
from pika import frame, spec
from pika.callback import CallbackManager
from pika.channel import Channel

OnLate = Callable[[Channel, spec.Basic.Deliver, pika.BasicProperties, bytes], None]
CallLater = Callable[[float, Callable[[], None]], object]

_LOG = logging.getLogger(__name__)
_warned = False  # the one line a pika that does not fit gets (per process)


def _ignore(_frame: object) -> None:
    """basic_cancel's callback: only so that the cancel waits for its cancel-ok (one function
    for every cancel: pika counts it, no callback piles up)."""


class _Probe:
    """A connection as far as a channel's delivery path reads it."""

    def __init__(self) -> None:
        self.callbacks = CallbackManager()


@functools.cache
def fits() -> str | None:
    """Why the installed pika does not fit what ``Cancels`` relies on (None: it does): a
    channel's deliveries go through ``self._on_deliver(method, header, body)`` from
    ``_handle_content_frame``, and its ``callbacks`` filter a cancel-ok by consumer tag."""
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
        answered: list[str] = []
        channel.callbacks.add(1, spec.Basic.CancelOk, lambda f: answered.append("probe"),
                              arguments={"consumer_tag": "probe"})
        for tag in ("other", "probe"):
            ok = spec.Basic.CancelOk(consumer_tag=tag)
            channel.callbacks.process(1, ok, channel, frame.Method(1, ok))
        if answered != ["probe"]:
            return "the channel's callbacks do not filter a cancel-ok by consumer tag"
    except Exception as exc:  # anything else: not the pika this was written against
        return f"{type(exc).__name__}: {exc}"
    return None


class Cancels:
    """The subscriptions we cancelled on one channel and not yet answered (``of``: one per
    channel), and the deliveries that came for them meanwhile."""

    def __init__(self, channel: Channel, log: logging.Logger, who: str = "") -> None:
        self.channel, self.log, self.who = channel, log, f"[{who}] " if who else ""
        self._late: dict[str, OnLate] = {}  # tag: who takes its deliveries until its cancel-ok
        self._unanswered: set[str] = set()  # of those, the ones not answered (nor given up)
        self._came: list[Callable[[], None]] = []  # deliveries for them, until none is
        self._waiting: list[Callable[[], None]] = []  # ``when_answered``'s, until all answered
        self.works = isinstance(channel, Channel) and self._fits()
        if self.works:
            original = channel._on_deliver

            def on_deliver(method_frame: frame.Method, header_frame: frame.Header,
                           body: bytes) -> None:
                method = method_frame.method
                late = self._late.get(method.consumer_tag)
                if late is None:
                    original(method_frame, header_frame, body)  # pika's, unchanged
                    return
                self._came.append(lambda: late(channel, method, header_frame.properties, body))
                if not self._unanswered:
                    self._hand_on()
            channel._on_deliver = on_deliver

    @classmethod
    def of(cls, channel: Channel, log: logging.Logger, who: str = "") -> Cancels:
        """*channel*'s (made, and its deliveries wrapped, once); *who* starts its lines."""
        made = getattr(channel, "_taskqueue_cancels", None)
        if not isinstance(made, Cancels):
            made = cls(channel, log, who)
            channel._taskqueue_cancels = made
        return made

    def _fits(self) -> bool:
        global _warned
        why = fits()
        if why is not None and not _warned:
            _warned = True
            self.log.warning("%spika %s does not fit taskqueue/broker/cancels.py (%s): a task on "
                             "its way when a pause or stop cancels our subscription goes back "
                             "with pika's reject, which counts as a delivery on quorum queues "
                             "of RabbitMQ 3.x and 4.0-4.2", self.who, pika.__version__, why)
        return why is None

    def cancel(self, tag: str, on_late: OnLate) -> None:
        """Cancel *tag*'s subscription; its deliveries until the cancel-ok go to *on_late*, once
        no cancel of ours on the channel awaits its answer (the module's docstring says why)."""
        channel = self.channel
        if not self.works:
            channel.basic_cancel(tag)  # nowait, as before (a fake channel, or pika unfit)
            return
        if tag not in channel.consumer_tags:
            return  # gone already (the broker cancelled it): pika sends nothing, none answers
        self._late[tag] = on_late
        self._unanswered.add(tag)
        channel.callbacks.add(channel.channel_number, spec.Basic.CancelOk, self._answered,
                              arguments={"consumer_tag": tag})
        channel.basic_cancel(tag, callback=_ignore)

    def _answered(self, method_frame: frame.Method) -> None:
        tag = method_frame.method.consumer_tag
        self._late.pop(tag, None)  # nothing more comes for it: pika's own path again
        self._unanswered.discard(tag)
        if not self._unanswered:
            self._hand_on()
            self._wake()

    def _hand_on(self) -> None:
        came, self._came = self._came, []
        for late in came:
            late()

    @property
    def unanswered(self) -> int:
        """Cancels sent on an open channel with no cancel-ok yet (closed: none is coming)."""
        return len(self._unanswered) if self.channel.is_open else 0

    def when_answered(self, then: Callable[[], None], within: float,
                      call_later: CallLater) -> bool:
        """True if no cancel awaits its answer; else *then* runs once they are answered, or
        after *within* seconds (said in one line, if the channel is still open)."""
        if not self.unanswered:
            return True
        self._waiting.append(then)
        if len(self._waiting) == 1:
            call_later(within, lambda: self._give_up(within))
        return False

    def _give_up(self, waited: float) -> None:
        if not self._waiting:
            return  # answered meanwhile
        if self.unanswered:
            self.log.warning("%sthe broker has not answered our cancel of %d subscription(s) "
                             "within %g s (blocked or gone?): closing all the same; a task still "
                             "on its way goes back with the channel's close, which counts as a "
                             "delivery on quorum queues of RabbitMQ 3.x and 4.0-4.2", self.who,
                             self.unanswered, waited)
        self._unanswered.clear()  # (what comes before the close goes to its on_late at once)
        self._hand_on()
        self._wake()

    def _wake(self) -> None:
        waiting, self._waiting = self._waiting, []
        for then in waiting:
            then()
