"""The worker's phase: one at a time, and every decision about taking tasks reads it.

    STARTING ──┐                       ┌──> PAUSED ──(resume)──┐
               ├─> (set up, record, ───┼──> WAITING_FOR_SLOTS ─┼─> CONSUMING
 RECONNECTING ─┘    control stream)    └───────────────────────┘
       ^                                                         |
       └───────────── the connection is lost (from any of these) ─┘

    any of them ──(first stop request)──> DRAINING ──(slots free)──> STOPPING ──> STOPPED
                   a second stop request: the tasks in hand go back to the queue, STOPPING now

Only CONSUMING takes tasks (a delivery that arrives in any other phase — sent before our
cancel reached the broker — goes straight back to the queue: worker/lanes.py gives it back).
WAITING_FOR_SLOTS: connected
again while a slot still runs work from the lost connection (an in-process handler cannot be
stopped), or resumed while paused tasks finish; a new subscription would count none of them
against ``prefetch_count``, so the worker subscribes once every slot is free and no task is set
apart (in_hand.py: the broker counts it until its ack). Pure: no pika.
"""

from __future__ import annotations

from enum import Enum


class Phase(Enum):
    STARTING = "starting"  # the first connection: set up, read the record, then control
    RECONNECTING = "reconnecting"  # the connection was lost: connecting and setting up again
    WAITING_FOR_SLOTS = "waiting for slots"  # connected; subscribes once every slot is free
    CONSUMING = "consuming"  # subscribed: the broker hands us tasks
    PAUSED = "paused"  # task_control.py pause: finish what is in hand, take nothing new
    DRAINING = "draining"  # a first stop request: finish what is in hand, then stop
    STOPPING = "stopping"  # closing: the last records and events go out
    STOPPED = "stopped"


STOP_ASKED = frozenset({Phase.DRAINING, Phase.STOPPING, Phase.STOPPED})
MAY_SUBSCRIBE = frozenset({Phase.STARTING, Phase.RECONNECTING, Phase.WAITING_FOR_SLOTS,
                           Phase.PAUSED})
CONNECTED_WORK = frozenset({Phase.STARTING, Phase.WAITING_FOR_SLOTS, Phase.CONSUMING,
                            Phase.PAUSED})


def after_connection_lost(phase: Phase) -> Phase:
    """A stopping worker stays stopping; any other goes to connect again."""
    return Phase.RECONNECTING if phase in CONNECTED_WORK else phase


def after_stop_request(phase: Phase) -> tuple[Phase, bool]:
    """The phase after a stop request, and whether it is the second (stop now)."""
    if phase in STOP_ASKED:
        return phase, True
    return Phase.DRAINING, False


def subscribe_step(phase: Phase, paused: bool, busy_slots: int) -> str:
    """What a call to subscribe does now: ``"no"`` (stopping, or subscribed already),
    ``"pause"`` (task_control.py paused the workers), ``"wait"`` (a slot is busy: once every
    slot is free) or ``"subscribe"``."""
    if phase not in MAY_SUBSCRIBE:
        return "no"
    if paused:
        return "pause"
    return "wait" if busy_slots else "subscribe"
