"""A rate limit shared by all workers: its text, its control record, and the arbiter's
scheduler (GCRA per key). Pure: no broker, no clock of its own (every call is given *now*).

The arbiter answers each ask either **firm** ("start in d seconds", d <= ``HOLD``) or **soft**
("your turn in about w seconds": park the task, or hold it, and ask again as a *returner*).
Waits are relative seconds, so no two hosts' clocks are ever compared.
See docs/design/rate-limit.md §4 and its review's R1 (quiet start) and R2 (returners first).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

from taskqueue.broker.config import WAIT_TIERS
from taskqueue.wire.keys import received_key

HOLD = 2.0  # a firm ticket is never further ahead than this
TAU = 0.25  # GCRA tolerance: a key idle long enough may start this many seconds' worth at once
ASK_TIMEOUT = 3.0  # no answer in this long: ask again (a new id)
ASK_TTL_MS = 1500  # an ask no arbiter took by then expires (well before the re-ask: R4)
HOLD_IN_SLOT = 30.0  # global mode: a soft wait up to this long is held in the slot (S3)
TIERS = WAIT_TIERS  # seconds: <queue>.wait.<N>s (broker/config.py names them)
MAX_PER_SECOND = 5000.0
IDLE = 1.0  # a key whose next slot passed this long ago unclaimed has no live reservations
FORGET = 60.0  # a key quiet this long is forgotten (memory = active keys only)
SWEEP_EVERY = 1.0  # seconds between two looks for keys to forget

UNITS = {"s": 1.0, "sec": 1.0, "second": 1.0, "m": 60.0, "min": 60.0, "minute": 60.0,
         "h": 3600.0, "hour": 3600.0}
_RATE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*/\s*([a-z]+)\s*")


def parse_rate(text: str) -> float:
    """``10/s``, ``100/min`` (``/m``), ``5000/h``, ``2.5/s`` -> tasks per second. ValueError,
    with a one-line message, for anything else or a rate outside (0, 5000/s]."""
    found = _RATE.fullmatch(text.lower())
    if found is None or found.group(2) not in UNITS:
        raise ValueError(f"rate {text!r} is not N/s, N/min or N/h (e.g. 20/s, 100/min, 2.5/s)")
    per_second = float(found.group(1)) / UNITS[found.group(2)]
    if not 0 < per_second <= MAX_PER_SECOND:
        raise ValueError(f"rate {text!r} must be above 0 and at most "
                         f"{MAX_PER_SECOND:.0f}/s")
    return per_second


def format_rate(per_second: float) -> str:
    """20.0 -> ``20/s``, 0.5 -> ``30/min``, 100/60 -> ``100/min``, 2.5 -> ``2.5/s``: the first
    unit in which the rate is at least 1 with at most two decimals, else the largest unit that
    gives at least 1."""
    for unit, seconds in (("s", 1.0), ("min", 60.0), ("h", 3600.0)):
        count = per_second * seconds
        if count >= 1 and abs(count * 100 - round(count * 100)) < 1e-6 * count:
            return f"{round(count, 2):g}/{unit}"
    for unit, seconds in (("s", 1.0), ("min", 60.0)):
        if per_second * seconds >= 1:
            return f"{per_second * seconds:.4g}/{unit}"
    return f"{per_second * 3600:.4g}/h"


@dataclass(frozen=True)
class RateLimit:
    """A limit in force: *per_second* tasks, counted per key (``x-key``) or for all tasks."""

    per_second: float
    per_key: bool
    text: str
    by: str = ""
    id: str = ""

    @classmethod
    def of(cls, record: dict) -> RateLimit | None:
        """The limit a ``rate-limit`` control record sets; None for ``off`` or a malformed one
        (tell them apart with ``sound_record``)."""
        if not sound_record(record) or record["per_second"] is None:
            return None
        per_second = float(record["per_second"])
        text = record.get("text")
        by, ident = record.get("by"), record.get("id")
        return cls(per_second, bool(record.get("per_key", False)),
                   text if isinstance(text, str) and text else format_rate(per_second),
                   by if isinstance(by, str) else "", ident if isinstance(ident, str) else "")

    def describe(self) -> str:
        """``20/s per key (by bob@h1)``."""
        return (self.text + (" per key" if self.per_key else "")
                + (f" (by {self.by})" if self.by else ""))


def sound_record(record: dict) -> bool:
    """A ``rate-limit`` record a worker can act on: a rate in range, or null (off)."""
    if record.get("command") != "rate-limit":
        return False
    per_second, per_key = record.get("per_second"), record.get("per_key", False)
    if not isinstance(per_key, bool):
        return False
    return per_second is None or (_number(per_second)
                                  and 0 < per_second <= MAX_PER_SECOND)


def record_fields(limit: RateLimit | None) -> dict:
    """A ``rate-limit`` command's own fields: *limit*, or off."""
    if limit is None:
        return {"per_second": None, "text": "off", "per_key": False}
    return {"per_second": limit.per_second, "text": limit.text, "per_key": limit.per_key}


def _number(value: object) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


@dataclass(frozen=True)
class Answer:
    """The arbiter's answer: *firm*: start in *wait* seconds (<= HOLD); soft: about *wait*
    seconds until this task's turn."""

    firm: bool
    wait: float


@dataclass
class _Key:
    tat: float  # when the next firm ticket falls due (GCRA's theoretical arrival time)
    eta: float  # when the next soft reservation falls; eta > tat: reservations are pending


class Scheduler:
    """GCRA per key with reservations, in memory, on the arbiter. ``T = 1/rate``.

    Firm: ``t = max(tat, now - TAU)``; if ``t - now <= HOLD`` a firm ticket for t, tat += T.
    Soft: a newcomer is given a reservation at eta (eta += T). Returners first (R2): a
    newcomer gets a firm ticket only when no reservation is pending, so it never overtakes
    a parked task; a returner that still finds its slot too far ahead keeps its place (no new
    reservation). Reservations nobody comes back for (a cancelled task) are dropped once the
    key's next slot has passed unclaimed for ``IDLE`` seconds."""

    def __init__(self, per_second: float) -> None:
        self._interval = 1.0 / per_second
        self._keys: dict[str, _Key] = {}
        self._floor = -math.inf  # no ticket before this (R1: set by quiet_start)
        self._swept = -math.inf

    @property
    def interval(self) -> float:
        return self._interval

    def set_rate(self, per_second: float) -> None:
        """A new rate for the next tickets; pending reservations are re-spaced to it (those
        who come back earlier than their new turn are told to wait again, keeping place)."""
        old, self._interval = self._interval, 1.0 / per_second
        for state in self._keys.values():
            if state.eta > state.tat:
                state.eta = state.tat + (state.eta - state.tat) * self._interval / old

    def quiet_start(self, now: float) -> None:
        """R1: this arbiter has just become the active one; the previous one may have given
        tickets up to HOLD (+ the TAU burst) ahead, so no key's first ticket falls before
        ``now + HOLD + TAU`` (under-rate for ~2 s instead of twice the rate). What it knew of
        keys is stale (another arbiter served between): forgotten."""
        self._keys.clear()
        self._floor = now + HOLD + TAU

    def ask(self, key: str, now: float, returner: bool = False) -> Answer:
        self._sweep(now)
        state = self._keys.get(key)
        if state is None:
            start = max(now - TAU, self._floor)
            state = self._keys[key] = _Key(start, start)
        elif state.tat < now - IDLE:
            state.eta = min(state.eta, state.tat)  # its reservations were not claimed
        t = max(state.tat, now - TAU)
        pending = state.eta > state.tat
        if t - now <= HOLD and (returner or not pending):
            state.tat = t + self._interval
            state.eta = max(state.eta, state.tat)
            return Answer(True, max(0.0, t - now))
        if returner:  # keeps its place: asks again when its slot is about HOLD/2 ahead
            return Answer(False, t - now - HOLD / 2)
        turn = max(state.eta, t)
        state.eta = turn + self._interval
        return Answer(False, max(0.0, turn - now))

    def busiest(self, now: float, n: int = 10) -> list[tuple[str, float]]:
        """The *n* keys whose next turn is furthest ahead, with those seconds (none if none is
        ahead of now)."""
        ahead = [(key, max(state.tat, state.eta) - now) for key, state in self._keys.items()]
        ahead = [(key, round(left, 3)) for key, left in ahead if left > 0]
        return sorted(ahead, key=lambda item: (-item[1], item[0]))[:n]

    def __len__(self) -> int:
        return len(self._keys)

    def _sweep(self, now: float) -> None:
        if now - self._swept < SWEEP_EVERY:
            return
        self._swept = now
        gone = [key for key, state in self._keys.items()
                if max(state.tat, state.eta) < now - FORGET]
        for key in gone:
            del self._keys[key]


def tier_for(left: float) -> int:
    """The longest tier (seconds) not longer than *left*; the shortest for less than it."""
    return max((tier for tier in TIERS if tier <= left), default=TIERS[0])


def encode_ask(key: str, returner: bool, ask_id: str, worker: str) -> bytes:
    return json.dumps({"key": key, "returner": returner, "id": ask_id,
                       "worker": worker}).encode()


def decode_ask(body: bytes) -> dict | None:
    """``{"key", "returner", "id", "worker"}`` from an ask, or None for anything malformed. A
    key is cut as the emitter cuts it (wire/keys.py): a longer one, from an older worker or
    another producer's x-key, is answered under its cut key rather than never answered."""
    ask = _json_object(body)
    if ask is None:
        return None
    key, returner = ask.get("key", ""), ask.get("returner", False)
    ask_id, worker = ask.get("id", ""), ask.get("worker", "")
    if not (isinstance(key, str) and isinstance(returner, bool)
            and isinstance(ask_id, str) and isinstance(worker, str)):
        return None
    return {"key": received_key(key), "returner": returner, "id": ask_id, "worker": worker}


def encode_answer(answer: Answer) -> bytes:
    return json.dumps({"firm": answer.firm, "in": round(answer.wait, 4)}).encode()


def decode_answer(body: bytes) -> Answer | None:
    """The arbiter's answer, or None for anything malformed."""
    answer = _json_object(body)
    if answer is None:
        return None
    firm, wait = answer.get("firm"), answer.get("in")
    if not (isinstance(firm, bool) and isinstance(wait, (int, float)) and _number(wait)):
        return None
    return Answer(firm, max(0.0, float(wait)))


def _json_object(body: bytes) -> dict | None:
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError, TypeError):
        return None
    return value if isinstance(value, dict) else None
