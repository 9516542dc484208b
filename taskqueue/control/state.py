"""The control commands and the state they add up to, as a worker sees it. Pure: no broker.

A command is a small JSON object appended to ``<queue>.control``; every worker reads the stream
from its start, so a worker started later knows everything said before it:

  {"command": "pause"}            take no new tasks (finish the ones in hand)
  {"command": "resume"}           take tasks again
  {"command": "cancel", "run": ID}  tasks of that emitter run are not run (acked as cancelled)
  {"command": "cancel-tasks", "run": ID or absent, "rows": [N, ...], "ids": [MESSAGE_ID, ...],
   "match": TEXT}                 only the tasks it selects (``Selection``); a name of its
                                  own, so that a worker older than it ignores it instead of
                                  cancelling the whole run
  {"command": "stop", "worker": NAME or null}  stop like SIGTERM: only workers running when
                                  it was given (a worker started afterwards is not stopped)
  {"command": "rate-limit", "per_second": 20.0 or null, "text": "20/s" or "off",
   "per_key": false}              at most that many task starts a second, over all workers
                                  (per ``x-key`` with per_key); null: no limit. The last wins

Each also carries "id" (for the answers) and "time" (when it was given); a cancel and a
rate-limit carry "by" (``user@host`` of whoever gave it), which the task's ``cancelled`` record
and the status name.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field

from taskqueue.control.ratelimit import RateLimit, record_fields, sound_record
from taskqueue.wire.record import run_began

COMMANDS = ("pause", "resume", "cancel", "cancel-tasks", "stop", "rate-limit")
CANCELS = ("cancel", "cancel-tasks")
CLOCK_SKEW = 1.0  # seconds a command may seem to predate a worker started at once with it


def command(kind: str, *, run: str | None = None, worker: str | None = None,
            selection: Selection | None = None, by: str | None = None,
            limit: RateLimit | None = None) -> dict:
    """A new command record (``cancel-tasks``: *selection*'s fields, its run among them;
    ``rate-limit``: *limit*'s, None for off)."""
    if kind not in COMMANDS:
        raise ValueError(f"unknown control command {kind!r}")
    record: dict = {"command": kind, "id": uuid.uuid4().hex[:12], "time": time.time()}
    if kind == "rate-limit":
        record.update(record_fields(limit))
    if selection is not None:
        record.update(selection.fields())
    if run is not None:
        record["run"] = run
    if worker is not None:
        record["worker"] = worker
    if by is not None:
        record["by"] = by
    return record


@dataclass(frozen=True)
class Selection:
    """The tasks one ``cancel-tasks`` names: of *run*, those whose row is one of *rows*, whose
    message id is one of *ids*, or whose text contains *match*. Each of the three adds tasks
    to the set. *match* is plain text, found as it is (case and all) anywhere in the task's
    text: never a pattern. Without *run* (only with *ids*): of any run that began *before*
    (the command's time), since a message id is a row of a file, the same in a later run of
    that file, which the cancel must not reach (the run's id says when it began)."""

    run: str | None = None
    rows: frozenset[int] = frozenset()
    ids: frozenset[str] = frozenset()
    match: str | None = None
    before: float | None = None

    @classmethod
    def of(cls, record: dict) -> Selection | None:
        """The selection a command record carries; None if it is not a sound one."""
        run, rows, ids, match = (record.get(key) for key in ("run", "rows", "ids", "match"))
        rows, ids = rows or [], ids or []
        if not (isinstance(rows, list) and all(_whole(row) for row in rows)
                and isinstance(ids, list) and all(isinstance(i, str) and i for i in ids)
                and (run is None or isinstance(run, str))
                and (match is None or (isinstance(match, str) and match))):
            return None
        when = record.get("time")
        before = float(when) if isinstance(when, (int, float)) and run is None else None
        selection = cls(run, frozenset(rows), frozenset(ids), match, before)
        return selection if selection.sound else None

    @property
    def sound(self) -> bool:
        """It names something, and nothing beyond one run but by message id."""
        if not (self.rows or self.ids or self.match):
            return False
        return self.run is not None or not (self.rows or self.match)

    def fields(self) -> dict:
        """The selection as a command record's fields."""
        record: dict = {} if self.run is None else {"run": self.run}
        if self.rows:
            record["rows"] = sorted(self.rows)
        if self.ids:
            record["ids"] = sorted(self.ids)
        if self.match is not None:
            record["match"] = self.match
        return record

    def selects(self, run_id: str, message_id: str | None, row: int | None, text: str) -> bool:
        if self.run is not None and run_id != self.run:
            return False
        if not (row in self.rows or message_id in self.ids
                or (self.match is not None and self.match in text)):
            return False  # the common case, tested first: the run's time is read only after
        # A later run of the same file has the same ids: an id alone selects in earlier runs.
        return self.before is None or (run_began(run_id) or 0.0) <= self.before

    def describe(self) -> str:
        """``rows 3, 15 of run R``, ``id X``, ``tasks containing 'abc' of run R``..."""
        parts = []
        if self.rows:
            parts.append(("row " if len(self.rows) == 1 else "rows ")
                         + ", ".join(str(row) for row in sorted(self.rows)))
        if self.ids:
            parts.append(("id " if len(self.ids) == 1 else "ids ") + ", ".join(sorted(self.ids)))
        if self.match is not None:
            parts.append(f"tasks containing {self.match!r}")
        return " or ".join(parts) + (f" of run {self.run}" if self.run else "")


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


MAX_BY = 100  # characters of a command's "by" kept


def by_whom(record: dict) -> str:
    """`` by alice@host`` for a command that says who gave it, else nothing."""
    by = record.get("by")
    if not isinstance(by, str) or not by:
        return ""
    # Anyone who may write to the control stream says who they are: kept short, and shown
    # without control or bidi characters (a log line and a record carry it).
    return " by " + "".join(char if char.isprintable() else "?" for char in by[:MAX_BY])


def what_is_cancelled(record: dict) -> str:
    """A cancel command in words, for a worker's log: ``run R cancelled by alice@host``,
    ``row 3 of run R cancelled by alice@host``."""
    selection = Selection.of(record) if record.get("command") == "cancel-tasks" else None
    what = f"run {record.get('run')}" if selection is None else selection.describe()
    return f"{what} cancelled{by_whom(record)}"


class Cancellations(set[str]):
    """The runs cancelled whole (the set itself: ``run in cancellations``), and the tasks
    cancelled one by one or a few at a time (``selections``), each with who cancelled it."""

    def __init__(self) -> None:
        super().__init__()
        self.runs_by: dict[str, str] = {}  # run -> " by user@host" (or "")
        # By run (None: by id in any run), each with " by user@host" (or ""): a task is
        # tested against its own run's only, so that it costs nothing while none names it.
        self.selections: dict[str | None, list[tuple[Selection, str]]] = {}

    def add_run(self, run: str, record: dict) -> None:
        self.add(run)
        self.runs_by[run] = by_whom(record)

    def add_selection(self, selection: Selection, record: dict) -> None:
        self.selections.setdefault(selection.run, []).append((selection, by_whom(record)))

    def may_concern(self, run_id: str) -> bool:
        """Whether a task of *run_id* may be cancelled (else ``reason_for`` is None)."""
        return run_id in self or run_id in self.selections or None in self.selections

    def reason_for(self, run_id: str, message_id: str | None, row: int | None,
                   text: str) -> str | None:
        """Why that task is cancelled (its record's reason), or None: it is not."""
        if run_id and run_id in self:
            return f"run {run_id} was cancelled{self.runs_by.get(run_id, '')}"
        for selection, by in (*self.selections.get(run_id, ()), *self.selections.get(None, ())):
            if selection.selects(run_id, message_id, row, text):
                return f"cancelled{by}: {selection.describe()}"
        return None


def decode(body: bytes) -> dict | None:
    """A command from the stream, or None for anything else (never an exception)."""
    try:
        record = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(record, dict) or record.get("command") not in COMMANDS:
        return None
    if record["command"] == "cancel" and not isinstance(record.get("run"), str):
        return None
    if record["command"] == "cancel-tasks" and Selection.of(record) is None:
        return None
    if record["command"] == "rate-limit" and not sound_record(record):
        return None
    return record


@dataclass
class ControlState:
    """What the commands read so far say to the worker *name*, started at *started*."""

    name: str
    started: float
    paused: bool = False
    # Named for what it held first (the runs cancelled whole): the tasks cancelled a few at a
    # time are in it too (``Cancellations``), which is what the worker passes to the policy.
    cancelled_runs: Cancellations = field(default_factory=Cancellations)
    stop: bool = False
    rate_limit: RateLimit | None = None  # the last rate-limit command's; None: none or off
    ever_limited: bool = False  # a limit was given once (tasks may be parked: see them back)

    def apply(self, record: dict) -> str | None:
        """Take one command into account; returns what this worker must do now ("pause",
        "resume", "cancel", "cancel-tasks", "stop", "rate-limit") or None (nothing changes
        for it)."""
        kind = record["command"]
        if kind == "rate-limit":
            return self._limit(record)
        if kind == "pause" and not self.paused:
            self.paused = True
            return "pause"
        if kind == "resume" and self.paused:
            self.paused = False
            return "resume"
        if kind == "cancel" and record["run"] not in self.cancelled_runs:
            self.cancelled_runs.add_run(record["run"], record)
            return "cancel"
        if kind == "cancel-tasks":
            selection = Selection.of(record)
            if selection is not None:  # (decode lets no other through)
                self.cancelled_runs.add_selection(selection, record)
                return "cancel-tasks"
        if kind == "stop" and self.concerns(record) and self.is_new(record):
            self.stop = True
            return "stop"
        return None

    def _limit(self, record: dict) -> str | None:
        if not sound_record(record):  # (decode lets no other through)
            return None
        limit, before = RateLimit.of(record), self.rate_limit
        self.rate_limit = limit  # the newest's "by", even when the rate is the same
        self.ever_limited = self.ever_limited or limit is not None
        same = (limit is None and before is None) or (
            limit is not None and before is not None
            and (limit.per_second, limit.per_key) == (before.per_second, before.per_key))
        return None if same else "rate-limit"

    def concerns(self, record: dict) -> bool:
        """A command for every worker, or named for this one."""
        return record.get("worker") in (None, self.name)

    def is_new(self, record: dict) -> bool:
        """Given while this worker runs (so it answers it); older ones are history."""
        when = record.get("time")
        return isinstance(when, (int, float)) and when >= self.started - CLOCK_SKEW
