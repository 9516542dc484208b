"""What a results record is, and the stream that keeps them.

A record is one JSON object; a stream message holds a JSON list of them (a *group*: the worker
confirms many records with one publish). Kinds:
  ``task``    one attempt's outcome (done with its result, failed or dead with its reason,
              cancelled), with the task's message_id, row, run, attempt, worker, slot, host,
              start and duration: the same fields as the live view's task events (events.py);
              and, when the task told any, its last ``progress`` ({"fraction": 0.4, "note":
              "step 2 of 5"}, wire/progress.py; readers before it ignore the field);
  ``run``     an emitter run started (its row count) or finished (how many it published);
  ``worker``  a worker stopped, with its totals;
  ``mark``    a worker's fence: once its own mark comes back, it has read every record
              written before (tail.py); readers skip marks.
Run ids made since 0.4 start with their UTC time (``20261201T101500Z-ab12cd``), so a reader
can start reading the stream where the run began instead of at its beginning.
"""

from __future__ import annotations

import calendar
import datetime
import json
import re
import time

from taskqueue.wire.events import decode_events
from taskqueue.wire.events import kind_of as kind_of  # one rule for records and events

RESULTS_MAX_AGE = "30D"  # x-max-age: records are kept at least this long ...
RESULTS_MAX_BYTES = 20 * 10**9  # ... unless the stream grows past this (oldest segments go)
SEGMENT_BYTES = 100 * 10**6  # retention removes whole segments: smaller ones, finer steps
FINAL = ("done", "dead", "cancelled")  # outcomes after which a task is over
CLOCK_SKEW = 60.0  # seconds a worker's or emitter's clock may be behind the broker's
LEGACY_SLACK = 14 * 3600.0  # older run ids are local time: anywhere from UTC-12 to UTC+14

_RUN_TIME = re.compile(r"^(\d{8})(T|-)(\d{6})(Z?)-")
# One encoder for every group: json.dumps with any option builds a new JSONEncoder per call,
# about 3 us of a worker's per-task cost at 1 slot.
_GROUP_ENCODER = json.JSONEncoder(ensure_ascii=False)


def stream_arguments(max_age: str = RESULTS_MAX_AGE, max_bytes: int = RESULTS_MAX_BYTES
                     ) -> dict[str, object]:
    """The results stream's arguments, when we make it (an existing one is used as it is)."""
    return {"x-queue-type": "stream", "x-max-age": max_age, "x-max-length-bytes": max_bytes,
            "x-stream-max-segment-size-bytes": min(SEGMENT_BYTES, max_bytes)}


def new_run_id(now: float | None = None, suffix: str = "") -> str:
    """A run id that says when the run began, in UTC: ``20261201T101500Z-ab12cd``."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
    return f"{stamp}-{suffix}"


def run_began(run_id: str) -> float | None:
    """The earliest moment the run's records can date from (epoch seconds), from its id; None
    when the id does not say (another producer's, or none)."""
    match = _RUN_TIME.match(run_id or "")
    if not match:
        return None
    try:
        moment = time.strptime(match[1] + match[3], "%Y%m%d%H%M%S")
    except ValueError:
        return None
    began = float(calendar.timegm(moment))
    utc = match[2] == "T" and match[4] == "Z"
    return began - (CLOCK_SKEW if utc else LEGACY_SLACK)


def stream_offset(since: float | None) -> object:
    """The ``x-stream-offset`` to read from: a timestamp, or the stream's first record."""
    if since is None:
        return "first"
    return datetime.datetime.fromtimestamp(max(0.0, since), tz=datetime.timezone.utc)


def encode_group(records: list[dict]) -> bytes:
    return _GROUP_ENCODER.encode(records).encode("utf-8")


def decode_group(body: bytes) -> list[dict]:
    """The records of one stream message; anything not ours yields nothing."""
    return decode_events(body)  # the same JSON list (or one object) as the live events


def mark(worker: str, seq: int, nonce: str) -> dict:
    """A fence: *nonce* is this process's, so that another process with the same worker name
    (a restarted ``--name alice``, or two by mistake) never answers our fences."""
    return {"kind": "mark", "worker": worker, "nonce": nonce, "seq": seq, "time": time.time()}


def task_key(record: dict) -> tuple[str, str] | None:
    """(run, message_id) of a task record or a delivery; None without a message_id (such a
    task, another producer's, can never be recognised as done before)."""
    message_id = record.get("message_id")
    if not isinstance(message_id, str) or not message_id:
        return None
    return (record.get("run_id") or "", message_id)
