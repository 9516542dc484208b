"""A delivery's wait for its turn under a rate limit (docs/design/rate-limit.md §4).

Between the done-once check and the start (life.py), a slot whose worker knows a limit asks
the worker's gate (worker/ratelimit.py) for its turn, under the task's key (``x-key``) when the
limit counts per key, else under "". The answer is

* **firm**, "start in d s" (d <= HOLD): the slot holds the task d s (a timer), then starts it;
* **soft**, "your turn is in about w s": in global mode with w <= HOLD_IN_SLOT the slot holds
  the task (no other key could go first) and asks again as a *returner* just before its turn;
  else the task is **parked**: a copy to the tier ``<queue>.wait.<N>s`` that brings it back to
  the queue after N s (policy.park), then the ack, and the slot is free. Parking is no attempt:
  no record, ``x-retries`` as it was.

A parked task that comes back with more than HOLD s still to wait (``x-rate-left``) goes on to
the next tier at once (a *hop*: no check, no ask); else it is checked, then asks as a returner
(the arbiter serves returners before newcomers, R2). A task cancelled while it waits is recorded
cancelled within POLL_SECONDS. An ask unanswered for ASK_GIVE_UP s is given up: the task is
parked for the shortest tier (design §6's give-back, as a copy rather than a nack).

While waiting, its settlement's step is ``WAITING_TURN`` (what decides whether the task is still
the wait's to start or park); where the wait itself is, its ``TurnState``: asking, a firm
ticket, held, or over (what decides what an answer, a timer or a limit change does). The slot's
``rate_wait`` says for which key and, once answered, until when (the live snapshot shows
it). The limit set off: every waiting slot starts now; changed: held ones ask again. Paused
or draining while waiting: the task is parked (it would wait anyway, and a copy keeps the
broker's delivery count as it was, where a nack would raise it); a second stop request puts
it back with the others, a lost connection drops it (the broker delivers it again).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from functools import partial
from typing import Protocol

from taskqueue.broker.config import QueueSpec
from taskqueue.control.ratelimit import HOLD, HOLD_IN_SLOT, Answer, RateLimit, tier_for
from taskqueue.worker.delivery import Delivery
from taskqueue.worker.guard import guarded
from taskqueue.worker.phase import Phase
from taskqueue.worker.policy import Verdict, park
from taskqueue.worker.settlement import Settlement
from taskqueue.worker.slots import WorkSlot

POLL_SECONDS = 1.0  # a waiting slot looks at the worker's phase this often (pause, drain)
SOONEST_SECONDS = 0.05  # a held slot asks again at the earliest this long after an answer
GIVE_UP_PHASES = frozenset({Phase.PAUSED, Phase.DRAINING})
# An ask unanswered this long (no arbiter, an alarm, the rate queues missing) is given up: the
# task is parked rather than held until the broker's consumer timeout takes it back (30 min),
# interrupting everything in hand. A park is a copy: during an alarm it goes to the journal
# (settlement.py), and the broker's delivery count stays as it was (a nack would raise it).
ASK_GIVE_UP = 60.0


class Gate(Protocol):
    """What a delivery's life needs of the worker's rate gate (worker/ratelimit.py RateGate)."""

    def limit(self) -> RateLimit | None: ...
    def ask(self, key: str, returner: bool, on_answer: Callable[[Answer], None]
            ) -> Callable[[], None]: ...
    def on_change(self, callback: Callable[[RateLimit | None], None]) -> None: ...


class Timers(Protocol):
    """The I/O loop's timers (pika's ``call_later`` / ``remove_timeout``)."""

    def call_later(self, delay: float, callback: Callable[[], None]) -> object: ...
    def remove_timeout(self, handle: object) -> None: ...


class TurnState(Enum):
    """Where one slot's wait for its turn is; each decision about the wait reads it.

        begin -> ASKING ──firm ticket──> FIRM ──its time──> started ────┐
                  │  ^                                                  ├──> OVER
      soft, held  v  │ just before its turn, or the limit changed       │
                  HELD   (ASKING asks again too; FIRM keeps its ticket) │
        from any of them: the limit off -> started; paused or draining, │
        no answer, a soft wait too long to hold -> parked; cancelled; ──┘
        its task over (the life forgets the wait)
    """

    ASKING = "asking"  # an ask waits for its answer (given up after ASK_GIVE_UP s)
    FIRM = "firm"  # a firm ticket: it starts at ``until``, whatever the limit becomes
    HELD = "held"  # a soft ticket held in the slot: it asks again just before ``until``
    OVER = "over"  # forgotten: a late answer, timer or limit change finds nothing to do


@dataclass
class Turn:
    """One slot's wait: for which key, as a returner or not, and its state. ``until``: when
    its turn comes (epoch seconds; while asking, when it asked). ``cancel_ask`` and ``timer``
    are only the handles that undo what is pending; no decision reads them."""

    slot: WorkSlot
    delivery: Delivery
    settlement: Settlement
    key: str
    returner: bool
    until: float
    state: TurnState = TurnState.ASKING
    asks: int = 0  # the number of the last ask: an answer to an earlier one is not for it
    cancel_ask: Callable[[], None] | None = None
    timer: object | None = None

    # --- the transitions --------------------------------------------------------------------
    def ask(self, now: float) -> int:
        """(Again) ASKING, from *now*; the new ask's number."""
        self.state, self.until, self.asks = TurnState.ASKING, now, self.asks + 1
        return self.asks

    def take_firm(self) -> None:
        """ASKING -> FIRM: a firm ticket, to start at ``until``."""
        self.state = TurnState.FIRM

    def hold(self) -> None:
        """ASKING -> HELD: held in the slot, its place kept (it asks again as a returner)."""
        self.state, self.returner = TurnState.HELD, True

    def end(self) -> None:
        """-> OVER: started, parked, recorded cancelled or put back; nothing of it goes on."""
        self.state = TurnState.OVER

    def answers(self, ask: int) -> bool:
        """An answer to ask number *ask* is the one this turn waits for."""
        return self.state is TurnState.ASKING and self.asks == ask


class RateWaits:
    """The slots waiting for their turn. The life calls ``hop``, ``begin`` and ``forget``;
    *start* starts a slot's task once its turn came (re-checking cancellation), *cancelled*
    records it cancelled if it is (True: it was), *carry_out* carries out a park's verdict."""

    def __init__(self, gate: Gate, queue: QueueSpec, log: logging.Logger,
                 phase: Callable[[], Phase], timers: Callable[[Delivery], Timers],
                 start: Callable[[WorkSlot, Delivery, Settlement], None],
                 cancelled: Callable[[WorkSlot, Delivery], bool],
                 carry_out: Callable[[WorkSlot, Delivery, Verdict], None],
                 parked_due: Callable[[float], None], changed: Callable[[], None],
                 clock: Callable[[], float] = time.time) -> None:
        self.gate, self.queue, self.log, self.phase = gate, queue, log, phase
        self._timers, self._start, self._carry_out = timers, start, carry_out
        self._cancelled = cancelled
        self._parked_due, self._changed, self._clock = parked_due, changed, clock
        self._turns: dict[WorkSlot, Turn] = {}
        gate.on_change(self._on_limit)

    def hop(self, slot: WorkSlot, delivery: Delivery) -> bool:
        """A parked task back too early (more than HOLD s left) goes on to its next tier at
        once, unchecked and unasked. False: it is due (or no limit is in force: it runs)."""
        if self.gate.limit() is None or delivery.rate_left <= HOLD:
            return False
        self._park(slot, delivery, delivery.rate_left, hop=True)
        return True

    def begin(self, slot: WorkSlot, delivery: Delivery, settlement: Settlement) -> bool:
        """Ask for *delivery*'s turn if a limit is in force (True: it waits; *start* is called
        when its turn comes). False: no limit, start it now."""
        limit = self.gate.limit()
        if limit is None:
            return False
        settlement.wait_turn()
        delivery.rate_waited = True
        self.forget(slot)  # (never one left: the life forgets a wait once its task is over)
        turn = Turn(slot, delivery, settlement, delivery.key if limit.per_key else "",
                    delivery.parks > 0, self._clock())
        self._turns[slot] = turn
        self._ask(turn)
        return True

    def forget(self, slot: WorkSlot) -> None:
        """The slot's delivery is over (acked, put back, dropped): nothing of its wait goes on."""
        turn = self._turns.pop(slot, None)
        if turn is not None:
            self._stop(turn)
            turn.end()
        slot.rate_wait = None

    # --- the steps of a wait ---------------------------------------------------------------
    def _ask(self, turn: Turn) -> None:
        self._stop(turn)
        asked = turn.ask(self._clock())
        self._show(turn)

        def on_answer(answer: Answer) -> None:
            if turn.answers(asked):
                self._guarded(turn, lambda: self._answered(turn, answer))

        cancel = self.gate.ask(turn.key, turn.returner, on_answer)
        if turn.answers(asked):  # (not answered at once)
            turn.cancel_ask = cancel
            self._sleep(turn, ASK_GIVE_UP, self._unanswered)  # pause and drain are watched

    def _answered(self, turn: Turn, answer: Answer) -> None:
        turn.cancel_ask = None
        self._stop(turn)
        turn.until = self._clock() + answer.wait
        if self.phase() in GIVE_UP_PHASES:
            self._give_up(turn)
        elif answer.firm:
            turn.take_firm()
            self._show(turn)
            self._sleep(turn, answer.wait, self._go)
        elif self._holds(answer.wait):
            turn.hold()  # its place is kept: it asks again just before its turn
            self._show(turn)
            self._sleep(turn, max(SOONEST_SECONDS, answer.wait - HOLD / 2), self._ask)
        elif self._ends(turn):
            self._park(turn.slot, turn.delivery, answer.wait)

    def _holds(self, wait: float) -> bool:
        """S3: with one limit for all tasks no other task could go first: a wait this short
        is held in the slot rather than parked."""
        limit = self.gate.limit()
        return limit is not None and not limit.per_key and wait <= HOLD_IN_SLOT

    def _ends(self, turn: Turn) -> bool:
        """The wait is over (forgotten); True if the task is still WAITING_TURN, so that what
        ends the wait (a start, a park) may act on it. (Never False while the settlement's end
        forgets its wait, life.py ``_on_over``: a step of two minds is not acted on.)"""
        self._forget(turn)
        if turn.settlement.waiting_turn:
            return True
        self.log.error("[%s] the wait for the turn of %s ended while it is %s: left as it is",
                       turn.slot.name, turn.delivery.label, turn.settlement.step.value)
        return False

    def _go(self, turn: Turn) -> None:
        if self._ends(turn):
            self._start(turn.slot, turn.delivery, turn.settlement)

    def _give_up(self, turn: Turn) -> None:
        """Paused or draining: the task waits out of the slot (parked) for what is left."""
        left = 0.0 if turn.state is TurnState.FIRM else max(0.0, turn.until - self._clock())
        if not self._ends(turn):
            return
        self._park(turn.slot, turn.delivery, left, because=f" (the worker is {self.phase().value})")

    def _unanswered(self, turn: Turn) -> None:
        self.log.warning("[%s] no answer to the rate limit's ask for the turn of %s in %.0f s "
                         "(no arbiter, a memory or disk alarm, or the rate queues missing): "
                         "parked for the shortest tier; it asks again when back",
                         turn.slot.name, turn.delivery.label, ASK_GIVE_UP)
        if self._ends(turn):
            self._park(turn.slot, turn.delivery, 0.0, quiet=True)

    def _park(self, slot: WorkSlot, delivery: Delivery, wait: float, hop: bool = False,
              because: str = "", quiet: bool = False) -> None:
        verdict = park(delivery, wait, self.queue, hop)
        tier = tier_for(wait)
        log = self.log.debug if hop or quiet else self.log.info
        log("[%s] %s %s%s: its turn under the rate limit is in %.1f s (%s, back in %d s)",
            slot.name, "hop of" if hop else "parked", delivery.label, because, wait,
            verdict.copy_to, tier)
        self._parked_due(tier + HOLD)  # (back a little after its tier's time)
        self._carry_out(slot, delivery, verdict)

    def _sleep(self, turn: Turn, seconds: float, then: Callable[[Turn], None] | None) -> None:
        """Wait *seconds* (a timer), then *then*; meanwhile look every POLL_SECONDS whether
        the task was cancelled (it is recorded so at once) or the worker paused or draining
        (the wait is given up)."""
        timers = self._timers(turn.delivery)
        deadline = time.monotonic() + seconds

        def step() -> None:
            turn.timer = None
            if turn.state is TurnState.OVER:
                return
            if self._cancelled(turn.slot, turn.delivery):
                self._forget(turn)  # recorded cancelled: its wait is over
            elif self.phase() in GIVE_UP_PHASES:
                self._give_up(turn)
            elif then is not None and time.monotonic() >= deadline:
                then(turn)
            else:
                arm()

        def arm() -> None:
            left = deadline - time.monotonic()
            if then is not None and left <= 0:
                self._guarded(turn, lambda: then(turn))  # (a timer a little late)
                return
            turn.timer = timers.call_later(min(POLL_SECONDS, max(0.0, left)),
                                           lambda: self._guarded(turn, step))

        arm()

    def _guarded(self, turn: Turn, step: Callable[[], None]) -> None:
        """A step run from the I/O loop (a timer, an answer, a limit change): whatever it
        raises, the task goes back to the queue and the loop goes on."""
        def back() -> None:
            self._forget(turn)
            turn.settlement.requeue("the worker could not wait for its turn")
        guarded(self.log, f"[{turn.slot.name}] could not wait for the turn of "
                f"{turn.delivery.label}; it goes back to the queue", step, back)()

    def _stop(self, turn: Turn) -> None:
        """Undo what is pending (an ask, a timer); the state is the caller's to move."""
        if turn.cancel_ask is not None:
            cancel, turn.cancel_ask = turn.cancel_ask, None
            cancel()
        if turn.timer is not None:
            timer, turn.timer = turn.timer, None
            self._timers(turn.delivery).remove_timeout(timer)

    def _forget(self, turn: Turn) -> None:
        if turn.state is not TurnState.OVER:
            self.forget(turn.slot)

    def _show(self, turn: Turn) -> None:
        """The slot's ``rate_wait`` (display only: the live views); no ``until`` while the
        ask awaits its answer (there is no time to count down yet)."""
        shown: dict = {"key": turn.key}
        if turn.state is not TurnState.ASKING:
            shown["until"] = round(turn.until, 3)
        turn.slot.rate_wait = shown
        self._changed()

    # --- the limit changed ------------------------------------------------------------------
    def _on_limit(self, limit: RateLimit | None) -> None:
        """Off: every waiting slot starts now. Changed: the slots not holding a firm ticket
        ask again (under the key the new limit counts)."""
        for turn in list(self._turns.values()):
            if turn.state is TurnState.OVER:
                continue  # (over meanwhile: a start or a park of another one's doing)
            self._guarded(turn, partial(self._follow, turn, limit))  # each turn on its own

    def _follow(self, turn: Turn, limit: RateLimit | None) -> None:
        if limit is None:
            self._stop(turn)
            self._go(turn)
        elif turn.state is not TurnState.FIRM:
            turn.key = turn.delivery.key if limit.per_key else ""
            self._ask(turn)
