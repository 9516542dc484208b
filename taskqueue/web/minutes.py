"""The history page's figures (issue 30, item 6): per minute, for the last day, the attempts
finished by outcome and the queue's depth. Pure: fed numbers, no broker, no clock.

A ring of ``MINUTES`` buckets per series, each bucket stamped with the minute it holds (minutes
since the epoch; the bucket is ``minute % MINUTES``). A value for a minute newer than the stamp
takes the bucket over (zeroed first); one for a minute older than it is beyond the day the ring
keeps and is dropped. So memory is the ring's, whatever the number of records, and reading
from the stream's start (as the dashboard does when it starts) fills the last day from the
record itself, in any order the records come.

Two rings: ``counts`` (added to: attempts by outcome, keyed by the minute the attempt
finished, as the worker's clock said) and ``depth`` (set: the queue's messages, as the
dashboard last sampled them in that minute; nothing recorded them before it started). A third,
``recent``, of one-second buckets for the last minute: the overview's "done per minute" is
the attempts finished in the last 60 s, not a minute bucket that starts empty at each minute.

An attempt recorded as finished later than now (a worker's clock ahead, or a stranger's record
dated years on) finished now as far as the rings go: it counts, and never takes over the
bucket of a minute to come, which would drop every attempt of the minute (or second) that
bucket holds now, for everyone, until that time came.
"""

from __future__ import annotations

import math
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass

MINUTES = 24 * 60  # the longest window the page offers
OUTCOMES = ("done", "failed", "dead", "cancelled")
DEPTHS = ("ready", "retrying", "dead")
NOTHING = -1  # a depth not sampled (a gap in the line, not a zero)
RECENT_SECONDS = 60  # the overview's "per minute": the last 60 s, in one-second buckets
LATEST = 1e11  # seconds since the epoch (year 5138): a stranger's time beyond it is no minute


@dataclass(frozen=True)
class Minute:
    """One minute of a window: its start (seconds since the epoch) and its values (None: no
    value for that minute)."""

    start: float
    values: dict[str, int] | None


class MinuteRing:
    """Per-minute values of the named *series*, for the last *minutes* minutes (buckets of
    *seconds* each: 60, or 1 for the last minute second by second)."""

    def __init__(self, series: tuple[str, ...], minutes: int = MINUTES, empty: int = 0,
                 seconds: float = 60.0) -> None:
        """*empty*: a bucket's value before anything is added or set (0 for counts)."""
        self.series, self.minutes, self.empty, self.seconds = series, minutes, empty, seconds
        self._stamps = array("q", [NOTHING] * minutes)
        self._values = {name: array("q", [empty] * minutes) for name in series}

    def add(self, moment: float, name: str, amount: int = 1) -> None:
        index = self._bucket(moment)
        if index is not None and name in self._values:
            self._values[name][index] += amount

    def set(self, moment: float, values: dict[str, int]) -> None:
        index = self._bucket(moment)
        if index is not None:
            for name, value in values.items():
                if name in self._values:
                    self._values[name][index] = value

    def window(self, now: float, minutes: int) -> list[Minute]:
        """The *minutes* minutes ending with the one *now* is in, oldest first."""
        last = int(now // self.seconds)
        out = []
        for minute in range(last - min(minutes, self.minutes) + 1, last + 1):
            index = minute % self.minutes
            held = self._stamps[index] == minute
            out.append(Minute(minute * self.seconds, {name: values[index] for name, values in
                                              self._values.items()} if held else None))
        return out

    def size(self) -> int:
        """Numbers held: the ring's, never more (the tests' measure of flat memory)."""
        return len(self._stamps) + sum(len(values) for values in self._values.values())

    def _bucket(self, moment: float) -> int | None:
        """The bucket of *moment*'s minute, taken over if it held an older one; None: too old,
        or no time at all (a record's NaN, infinity or 1e300 skips the chart, never the feed)."""
        if not math.isfinite(moment) or not 0 <= moment <= LATEST:
            return None
        minute = int(moment // self.seconds)
        index = minute % self.minutes
        stamp = self._stamps[index]
        if stamp == minute:
            return index
        if stamp > minute:
            return None  # a day older than what the bucket holds: beyond the ring
        self._stamps[index] = minute
        for values in self._values.values():
            values[index] = self.empty
        return index


class MinuteHistory:
    """What RecordTotals (attempts) and the dashboard's sampling (depth) feed; *clock*: now
    (the server's), beyond which no attempt is put."""

    def __init__(self, minutes: int = MINUTES,
                 clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.counts = MinuteRing(OUTCOMES, minutes)
        self.depth = MinuteRing(DEPTHS, minutes, empty=NOTHING)
        self.recent = MinuteRing(OUTCOMES, RECENT_SECONDS, seconds=1.0)
        self.sampled_since: float | None = None  # the first depth sample (the page says so)

    def finished(self, moment: float, outcome: str) -> None:
        if moment <= LATEST:  # NaN, infinity, 1e300: no time at all, skipped by the rings
            moment = min(moment, self.clock())
        self.counts.add(moment, outcome)
        self.recent.add(moment, outcome)

    def last_minute(self, now: float) -> dict[str, int]:
        """Attempts by outcome finished in the last 60 s (by the workers' clocks)."""
        total = dict.fromkeys(OUTCOMES, 0)
        for second in self.recent.window(now, RECENT_SECONDS):
            for name, value in (second.values or {}).items():
                total[name] += value
        return total

    def sample(self, moment: float, ready: int | None, retrying: int | None,
               dead: int | None) -> None:
        if self.sampled_since is None:
            self.sampled_since = moment
        self.depth.set(moment, {"ready": _or_nothing(ready), "retrying": _or_nothing(retrying),
                                "dead": _or_nothing(dead)})


def _or_nothing(value: int | None) -> int:
    return NOTHING if value is None else value
