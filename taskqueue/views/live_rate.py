"""The rate limit in the live views (docs/design/rate-limit.md §5): the limit the workers say
they apply, and the slots waiting for their turn.

A worker's snapshot carries ``"rate"`` at its top (``{"limit": "20/s", "per_key": bool,
"arbiter": bool, "busiest": [[key, seconds], ...]}``, or ``{}``/absent without a limit: an old
worker never sends it), and a slot waiting for its turn ``"rate_wait": {"key", "until"}``.
Both are read defensively (a snapshot is JSON from the wire), and the keys are a producer's
text: every word shown here goes through ``terminal_text`` (the web page then fills it in as
text, never markup).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from taskqueue.views.terminal import terminal_text

KEY_CHARS = 40  # of a key, in a slot's state
BUSIEST_SHOWN = 3


@dataclass(frozen=True)
class RateWait:
    """A slot's task waits for its turn under the rate limit, until ``until`` (epoch s)."""

    key: str
    until: float

    @classmethod
    def of(cls, value: object) -> RateWait | None:
        """From a snapshot's slot entry's ``rate_wait`` (None: absent or not understood)."""
        if not isinstance(value, dict):
            return None
        until = value.get("until")
        if isinstance(until, bool) or not isinstance(until, (int, float)):
            until = 0.0  # asked, no answer yet: no time to count down
        key = value.get("key")
        return cls(key if isinstance(key, str) else "", float(until))

    def words(self, row: object, now: float, with_key: bool = True) -> str:
        """``waiting for the rate limit, 3 s left: row 12, key "api.example.com"`` (the
        terminal's rows put the key after their columns: ``key_words``)."""
        left = f", {max(0.0, self.until - now):.0f} s left" if self.until else ""
        where = f"row {row}" if row is not None else "a task"
        key = f", {self.key_words()}" if self.key and with_key else ""
        return f"waiting for the rate limit{left}: {where}{key}"

    def key_words(self) -> str:
        """``key "api.example.com"`` ("" for no key)."""
        return f'key "{terminal_text(self.key[:KEY_CHARS])}"' if self.key else ""


@dataclass
class RateReports:
    """Each worker's latest ``rate`` (its snapshot's), to say the limit in one line."""

    reports: dict[str, tuple[float, dict, bool]] = field(default_factory=dict)
    #           worker -> (when heard, its "rate", whether it stopped)

    def note(self, worker: str, heard: float, rate: object, stopped: bool) -> None:
        self.reports[worker] = (heard, rate if isinstance(rate, dict) else {}, stopped)

    def forget(self, now: float, after: float) -> None:
        for worker in [w for w, (heard, _r, _s) in self.reports.items() if now - heard > after]:
            del self.reports[worker]

    def line(self, now: float, gone_after: float) -> str:
        """``rate limit 20/s (per key), arbiter alice, busiest: "k1" 12 s``, and how many
        running workers do not apply it (an old worker ignores it); "" when none applies one."""
        running = {worker: rate for worker, (heard, rate, stopped) in self.reports.items()
                   if not stopped and now - heard <= gone_after}
        settings = Counter(setting for setting in map(_setting, running.values())
                           if setting is not None)
        if not settings:
            return ""
        (limit, per_key), applying = settings.most_common(1)[0]
        text = f"rate limit {terminal_text(limit)}{' (per key)' if per_key else ''}"
        arbiters = sorted(worker for worker, rate in running.items() if rate.get("arbiter"))
        if arbiters:
            text += f", arbiter {terminal_text(arbiters[0])}"
            busiest = _busiest(running[arbiters[0]].get("busiest")) if per_key else ""
            if busiest:  # (without --per-key, every task has the one key "")
                text += f", busiest: {busiest}"
        if applying < len(running):
            text += f"; {len(running) - applying} of {len(running)} workers not at this limit"
        return text


def _setting(rate: dict) -> tuple[str, bool] | None:
    limit = rate.get("limit")
    if not isinstance(limit, str) or not limit:
        return None
    return limit[:20], rate.get("per_key") is True


def _busiest(value: object) -> str:
    """The arbiter's busiest keys, a few: ``"k1" 12 s, "k2" 3 s`` ("" for none)."""
    if not isinstance(value, list):
        return ""
    shown = []
    for item in value[:BUSIEST_SHOWN]:
        if (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)
                and isinstance(item[1], (int, float)) and not isinstance(item[1], bool)):
            key = f'"{terminal_text(item[0][:KEY_CHARS])}"' if item[0] else "(no key)"
            shown.append(f"{key} {max(0.0, item[1]):.0f} s")
    return ", ".join(shown)
