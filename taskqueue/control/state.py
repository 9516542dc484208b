"""The control commands and the state they add up to, as a worker sees it. Pure: no broker.

A command is a small JSON object appended to ``<queue>.control``; every worker reads the stream
from its start, so a worker started later knows everything said before it:

  {"command": "pause"}            take no new tasks (finish the ones in hand)
  {"command": "resume"}           take tasks again
  {"command": "cancel", "run": ID}  tasks of that emitter run are not run (acked as cancelled)
  {"command": "stop", "worker": NAME or null}  stop like SIGTERM: only workers running when
                                  it was given (a worker started afterwards is not stopped)

Each also carries "id" (for the answers) and "time" (when it was given).
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field

COMMANDS = ("pause", "resume", "cancel", "stop")
CLOCK_SKEW = 1.0  # seconds a command may seem to predate a worker started at once with it


def command(kind: str, *, run: str | None = None, worker: str | None = None) -> dict:
    """A new command record."""
    if kind not in COMMANDS:
        raise ValueError(f"unknown control command {kind!r}")
    record: dict = {"command": kind, "id": uuid.uuid4().hex[:12], "time": time.time()}
    if run is not None:
        record["run"] = run
    if worker is not None:
        record["worker"] = worker
    return record


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
    return record


@dataclass
class ControlState:
    """What the commands read so far say to the worker *name*, started at *started*."""

    name: str
    started: float
    paused: bool = False
    cancelled_runs: set[str] = field(default_factory=set)
    stop: bool = False

    def apply(self, record: dict) -> str | None:
        """Take one command into account; returns what this worker must do now ("pause",
        "resume", "cancel", "stop") or None (nothing changes for it)."""
        kind = record["command"]
        if kind == "pause" and not self.paused:
            self.paused = True
            return "pause"
        if kind == "resume" and self.paused:
            self.paused = False
            return "resume"
        if kind == "cancel" and record["run"] not in self.cancelled_runs:
            self.cancelled_runs.add(record["run"])
            return "cancel"
        if kind == "stop" and self.concerns(record) and self.is_new(record):
            self.stop = True
            return "stop"
        return None

    def concerns(self, record: dict) -> bool:
        """A command for every worker, or named for this one."""
        return record.get("worker") in (None, self.name)

    def is_new(self, record: dict) -> bool:
        """Given while this worker runs (so it answers it); older ones are history."""
        when = record.get("time")
        return isinstance(when, (int, float)) and when >= self.started - CLOCK_SKEW
