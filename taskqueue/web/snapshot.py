"""The live page's data: ``LiveState`` (views/live.py) as one JSON-ready dict, made once per
refresh and sent to every tab. Pure: no broker, no web server (tested with made-up events).

The same words as the terminal view (live_screen.py): the queue, the run, each worker with its
slots folded into one line ("4/4 busy: rows 129-132, longest 3 s"), the last failures. Slots are
listed one by one only while there are few (``SLOTS_LISTED``), each busy one with its task's latest
progress: at 200 workers x 8 slots a
worker is one row, and the page stays small.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

from taskqueue.views.live import LiveState, SlotView
from taskqueue.views.live_parked import parked_shown
from taskqueue.views.live_screen import folded_state, natural_key, short_state
from taskqueue.web.totals import RecordTotals

SLOTS_LISTED = 64  # more slots than this: workers only, each folded
RUNS_SHOWN = 3  # run cards on the live page; more: "and N more" (the runs page lists them)


@dataclass
class FeedState(LiveState):
    """The feed's LiveState with the record's totals beside it (feed.py): the live page's run
    cards come from those, per run, so that a card follows its own run whatever the live
    tally (one current run, switched by whichever run's task came last) does."""

    totals: RecordTotals = field(default_factory=RecordTotals)
    parked_read: bool = True  # the feed reads the tiers (views/live_parked.py TierWatch)


def live_json(state: LiveState, now: float, feed_problem: str | None = None) -> dict:
    """The page's data as of *now*: the present, or the last moment the broker answered when
    *feed_problem* says why it does not (the page then greys what it shows)."""
    counts = state.counts
    eta = state.eta(now)
    rate = state.rate_line(now)
    parked = state.parked
    slots = sorted(state.slots.values(), key=lambda s: natural_key(s.slot))
    workers = workers_of(state, now)
    done_total = sum(slot.done for slot in slots) or 1
    listed = len(slots) <= SLOTS_LISTED
    rows = [_worker(state, name, *workers[name], now, done_total, listed)
            for name in sorted(workers, key=natural_key)]
    return {
        "updated": now,
        "problem": feed_problem,
        "broker": {"reachable": feed_problem is None, "problem": feed_problem},
        "queue": {"name": state.queue, "ready": counts.ready, "retrying": counts.retry,
                  "dead": counts.dead, "consumers": counts.consumers,
                  "in_progress": state.in_progress(now), "paused": state.paused(now),
                  "latency": state.last_wait[1] if state.last_wait and counts.ready else None,
                  "parked": parked, "parked_shown": parked_shown(parked, bool(rate))},
        "rate": rate or None,  # the rate limit the workers apply (a line)
        "run": {"id": state.run_id, "done": state.done, "total": state.total,
                "failed": state.failed, "dead": state.dead, "cancelled": state.cancelled,
                "rate": round(state.rate(now), 2), "eta": eta},
        **_run_cards(state, now, eta),
        "workers": rows,
        "worker_states": dict(Counter(row["kind"] for row in rows)),
        "slots_listed": listed,
        "failures": [{"time": when, "worker": worker, "row": row, "task": task,
                      "outcome": outcome, "reason": reason}
                     for when, worker, row, task, outcome, reason in reversed(state.failures)],
    }


def _run_cards(state: LiveState, now: float, eta: float | None) -> dict:
    """The runs going on, each with the record's figures (the runs page's): newest first, at
    most RUNS_SHOWN, and how many more. The live tally's rate and ETA go with its own run."""
    if not isinstance(state, FeedState):
        return {"runs": [], "runs_more": 0}
    runs = state.totals.live_runs(now)
    for run in runs:
        mine = run["run"] == state.run_id
        run["rate"] = round(state.rate(now), 2) if mine else None
        run["eta"] = eta if mine else None
    return {"runs": runs[:RUNS_SHOWN], "runs_more": max(0, len(runs) - RUNS_SHOWN)}


def _worker(state: LiveState, name: str, kind: str, slots: list[SlotView], now: float,
            done_total: int, listed: bool) -> dict:
    done = sum(slot.done for slot in slots)
    return {"name": name, "host": slots[0].host, "kind": kind,
            "state": folded_state(state, slots, now), "slots": len(slots),
            "busy": sum(1 for s in slots if s.state == "busy" and state.active(s, now)),
            "done": done, "failed": sum(slot.failed for slot in slots),
            "share": round(100 * done / done_total),
            "slot_rows": [{"slot": s.slot, "kind": short_state(state, s, now).split(" ")[0],
                           "state": state.slot_state(s, now), "row": s.row, "task": s.task,
                           "progress": _progress(state, s, now)}
                          for s in slots] if listed else []}


def _progress(state: LiveState, slot: SlotView, now: float) -> dict | None:
    """A busy slot's latest progress, as its task told it (the note is data: the page fills
    it in as text)."""
    if (slot.progress is None or slot.state != "busy" or not state.active(slot, now)
            or slot.rate_wait is not None):
        return None
    fraction, note = slot.progress
    return {"fraction": fraction, "note": note}


def workers_of(state: LiveState, now: float) -> dict[str, tuple[str, list[SlotView]]]:
    """Each worker's kind (``worker_kind``) and slots, in their natural order: the live page,
    the overview and /metrics count workers alike. A slot without a worker's name is a worker
    of its own."""
    slots: dict[str, list[SlotView]] = defaultdict(list)
    for slot in sorted(state.slots.values(), key=lambda s: natural_key(s.slot)):
        slots[slot.worker or slot.slot].append(slot)
    return {name: (worker_kind(state, held, now), held) for name, held in slots.items()}


def worker_kind(state: LiveState, slots: list[SlotView], now: float) -> str:
    """One word per worker: busy, idle, paused, gone or stopped."""
    if all(s.state == "stopped" for s in slots):
        return "stopped"
    if not any(state.active(s, now) for s in slots):
        return "gone"
    if any(s.state == "busy" and state.active(s, now) for s in slots):
        return "busy"
    return "paused" if slots[0].paused else "idle"
