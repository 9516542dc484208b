"""Can the node we consume from serve us? A network partition leaves a node running, its
connections open and its heartbeats fine, but cut off from the majority of the queue's and the
results stream's replicas: nothing is delivered, acks and records go nowhere, and a passive
declare answers from a stale view (``depth 0``). No error ever comes.

The sure sign is a write that needs that majority coming back: a *probe* reads the results
stream from its end on the consuming connection, with a mark written by the outbox, and is
answered by the first message it gets, ours or another worker's (tail.py: a stream gives its
readers only what a majority of its nodes holds; waiting for our own mark would read every
other quiet worker's probe meanwhile, quadratic in their number).
``ReachWatch`` asks for one once the worker has been quiet (consuming, no task running, nothing
delivered) for ``PROBE_AFTER`` seconds, and again every ``PROBE_AFTER`` seconds while that
lasts. One that has not come back after ``PROBE_TIMEOUT`` seconds means this node cannot
serve: the consumer says so and moves to the next URL (a node that can serve answers in
milliseconds; moving needlessly costs a reconnect, as no task is running). The outbox's own
``CONFIRM_TIMEOUT`` moves the publishing connection off such a node too. ``--exit-when-idle``
asks for a probe before exiting (idle.py): a node that cannot serve is not an empty queue.
A memory or disk alarm stops every mark; the tail then answers probes from what the stream
holds (as it does checks), and the timeout does not run.
"""

from __future__ import annotations

import time
from collections.abc import Callable

PROBE_AFTER = 8.0  # seconds quiet before a probe, and between probes while quiet
PROBE_TIMEOUT = 12.0  # seconds for a probe to come back before the node is given up


def next_step(now: float, quiet_since: float | None, asked_at: float | None,
              after: float = PROBE_AFTER, timeout: float = PROBE_TIMEOUT) -> str:
    """What to do now (pure): ``"ask"`` a probe, give the node up (``"cut"``), or ``"wait"``.
    *quiet_since*: quiet since when (None: a task runs, or not consuming); *asked_at*: when
    the probe in flight was asked (None: none is)."""
    if quiet_since is None:
        return "wait"
    if asked_at is not None:
        return "cut" if now - asked_at >= timeout else "wait"
    return "ask" if now - quiet_since >= after else "wait"


class ReachWatch:
    """See the module docstring. The consumer calls ``check`` on its beat and ``reset`` when
    its connection is lost; idle.py calls ``prove``."""

    def __init__(self, ask_probe: Callable[[Callable[[], None]], None],
                 on_cut: Callable[[float], None]) -> None:
        # ask_probe(on_back): the tail writes a fence; on_back() once it is read back.
        # on_cut(waited): the node cannot serve; the consumer leaves it.
        self.ask_probe, self.on_cut = ask_probe, on_cut
        self._asked_at: float | None = None
        self._proven_at: float | None = None  # when the last probe came back
        self._generation = 0  # probes asked before a reset are not ours any more
        self._waiters: list[Callable[[], None]] = []

    def reset(self) -> None:
        """The connection is lost, or a task came (the node serves): no probe in flight."""
        self._generation += 1
        self._asked_at = None
        self._waiters.clear()

    def postpone(self) -> None:
        """The outbox gave up another node than ours (its confirms stopped there): a probe in
        flight went out there, so its silence says nothing about ours. Its mark is sent again
        from the outbox's next node; the timeout starts again."""
        if self._asked_at is not None:
            self._asked_at = time.monotonic()

    def check(self, now: float, quiet_since: float | None, unjudged: bool) -> None:
        """*unjudged*: no mark can come back now whatever our node (an alarm blocks the
        outbox, or it is reconnecting), or the results stream is still sending us what was
        written before our mark (a reading catching up: the node serves): the timeout does
        not run."""
        if quiet_since is None:
            if self._asked_at is not None or self._waiters:
                self.reset()
            return
        if unjudged and self._asked_at is not None:
            self._asked_at = now
        since = max(quiet_since, self._proven_at or quiet_since)
        step = next_step(now, since, self._asked_at)
        if step == "ask":
            self._ask(now)
        elif step == "cut":
            waited = now - (self._asked_at or now)
            self.reset()
            self.on_cut(waited)

    def prove(self, on_proven: Callable[[], None]) -> None:
        """Call *on_proven* once a probe asked from now on (or in flight) comes back; never,
        if the node cannot serve (``on_cut`` follows instead)."""
        self._waiters.append(on_proven)
        if self._asked_at is None:
            self._ask(time.monotonic())

    def _ask(self, now: float) -> None:
        self._asked_at = now
        generation = self._generation
        self.ask_probe(lambda: self._back(generation))

    def _back(self, generation: int) -> None:
        if generation != self._generation:
            return
        self._asked_at = None
        self._proven_at = time.monotonic()
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter()
