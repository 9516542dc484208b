"""How long a worker stayed on a node while it was cut off by a partition or its VM paused
(issue 24's "longest on the wrong side", as Jepsen reports it): from when the chaos harness
had each node away (from the fault's start to its undoing; the node may take a little longer
to serve again) and from the workers' logs, where each worker's consuming connection was.
Pure: text and numbers in, numbers out (tests/test_chaos_sides.py).

Times are seconds since the run began. A worker's log line carries its wall-clock time to the
second (``HH:MM:SS LEVEL message``), so a stay is known to about a second.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

LINE = re.compile(r"^(\d\d):(\d\d):(\d\d) [A-Z]+\s+(.*)$")
# The consuming connection's lines; the publishing connection's start "publishing connection:".
CONNECTED = re.compile(r"^connected(?: again)? to (\S+)")
LEFT = re.compile(r"^connection to \S+ lost \(|^\[[^\]]+\] \S+ delivers nothing .*; moving to "
                  r"the next URL$")
DAY = 86400


@dataclass(frozen=True)
class Away:
    """A node that could not serve from ``began`` to ``ended``; ``node`` is its AMQP
    ``host:port``, ``what`` says why (for the summary)."""

    node: str
    began: float
    ended: float
    what: str


@dataclass(frozen=True)
class Stay:
    """A worker's consuming connection on ``node`` from ``began`` to ``ended`` (``inf``: it
    had not left when its log ends and the process still ran)."""

    worker: str
    node: str
    began: float
    ended: float


def log_clock(line: str) -> tuple[int, str] | None:
    """(local seconds since midnight, message) of a worker's log line, None if not one."""
    match = LINE.match(line)
    if not match:
        return None
    hours, minutes, seconds, message = match.groups()
    return int(hours) * 3600 + int(minutes) * 60 + int(seconds), message


def node_of(url: str) -> str:
    """``host:port`` of a URL, with or without a (masked) password."""
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or 5672}"


def stays(worker: str, log: str, run_began_clock: float, exited: float | None) -> list[Stay]:
    """Where ``log`` says the worker's consuming connection was. ``run_began_clock``: the
    run's start as local seconds since midnight; ``exited``: when the process ended, if it
    did (a stay not left in the log lasts until then)."""
    found: list[Stay] = []
    node, since = None, 0.0
    for line in log.splitlines():
        parsed = log_clock(line)
        if parsed is None:
            continue
        clock, message = parsed
        # The nearest day: past midnight counts on, a line a second before the start is -1.
        at = (clock - math.floor(run_began_clock) + DAY // 2) % DAY - DAY // 2
        connected = CONNECTED.match(message)
        if connected or (node is not None and LEFT.search(message)):
            if node is not None:
                found.append(Stay(worker, node, since, at))
            node, since = (node_of(connected[1]), at) if connected else (None, 0.0)
    if node is not None:
        found.append(Stay(worker, node, since, math.inf if exited is None else exited))
    return [stay for stay in found if stay.ended >= stay.began]


def on_the_wrong_side(aways: list[Away], all_stays: list[Stay]) -> list[tuple[float, Stay, Away]]:
    """Every time a worker was on a node while it was away: (seconds, the stay, the away),
    longest first."""
    overlaps = []
    for away in aways:
        for stay in all_stays:
            if stay.node != away.node:
                continue
            seconds = min(stay.ended, away.ended) - max(stay.began, away.began)
            if seconds > 0:
                overlaps.append((seconds, stay, away))
    return sorted(overlaps, key=lambda overlap: -overlap[0])


def summary(aways: list[Away], all_stays: list[Stay]) -> str:
    """One line for the chaos table: the longest, how many times a worker was on a node
    while it was away, and how many of those lasted until it was back (never noticed)."""
    if not aways:
        return "no node away"
    overlaps = on_the_wrong_side(aways, all_stays)
    if not overlaps:
        return f"0 s (no worker was on a node while it was away; {len(aways)} times away)"
    seconds, stay, away = overlaps[0]
    whole = sum(1 for _, s, a in overlaps if s.began <= a.began and s.ended >= a.ended)
    return (f"{seconds:.0f} s ({stay.worker}, {away.what}); a worker on a node away "
            f"{len(overlaps)} times, {whole} of them until it was back")
