"""What the live view draws, fitted to the terminal: the queue line (with its latency), the
run line (done/total, rate, ETA) and the last failures are always on screen; the workers get
the rows that are left.

  * every slot fits: one line per slot, in natural order (w2 before w10);
  * else one line per worker, its slots folded ("4/4 busy: rows 129-132, longest 3 s");
  * else the workers that matter first (gone or stuck-looking, then the busiest), and one line
    for the rest: "... and 37 more workers: 30 busy, 7 idle".

Pure drawing over ``LiveTally`` (live_tally.py); watch.py asks the terminal its size every refresh,
so the view follows a resize.
"""

from __future__ import annotations

import time
from collections import defaultdict

from taskqueue.views.live_parked import parked_shown
from taskqueue.views.live_tally import LiveTally, SlotView
from taskqueue.views.names import natural_key
from taskqueue.views.terminal import progress_words

STUCK_AFTER = 60.0  # a task busy this long (or 5x the run's mean) looks stuck
HEADER = (f"{'worker':<22} {'host':<14} {'state':<50} {'done':>5} {'failed':>6} {'share':>5} "
          "progress")


def draw(state: LiveTally, now: float, width: int = 100, height: int | None = None) -> list[str]:
    rate, parked = state.rate_line(now), parked_text(state, now)
    top = [f"queue {state.queue!r}: {queue_text(state, now)}", *([parked] if parked else []),
           f"run {state.run_id or '-'}: {progress_text(state, now)}", *([rate] if rate else []),
           ""]
    failures = failure_lines(state)
    bottom = ["", f"updated {time.strftime('%H:%M:%S', time.localtime(now))}   "
                  "(Ctrl+C to leave)"]
    if height is not None:
        # The failures shrink before the workers vanish: a header and at least one worker line.
        room_for_failures = max(1, height - len(top) - len(bottom) - 3)
        failures = failures[:room_for_failures]
        rows = max(1, height - len(top) - len(failures) - len(bottom) - 1)
    else:
        rows = None
    lines = [*top, HEADER, *worker_lines(state, now, rows), *failures, *bottom]
    if height is not None:
        lines = lines[:height]
    return [line[:width] for line in lines]


def one_line(state: LiveTally, now: float) -> str:
    """For logs, pipes and CI: the queue, the run, and a short account of the workers."""
    slots = sorted(state.slots.values(), key=lambda s: natural_key(s.slot))
    if len(slots) <= 12:
        workers = ", ".join(f"{slot.slot} {short_state(state, slot, now)}"
                            f"{_progress_after(state, slot, now)}"
                            for slot in slots) or "none yet"
    else:
        counts: defaultdict[str, int] = defaultdict(int)
        for slot in slots:
            counts[short_state(state, slot, now).split(" ")[0]] += 1
        workers = f"{len(slots)} slots: " + ", ".join(f"{n} {what}" for what, n in
                                                      sorted(counts.items()))
    clock = time.strftime("%H:%M:%S", time.localtime(now))
    rate, parked = state.rate_line(now), parked_text(state, now)
    return (f"{clock} queue {state.queue!r}: {queue_text(state, now)}"
            f"{f' | {parked}' if parked else ''} | "
            f"{progress_text(state, now)}{f' | {rate}' if rate else ''} | workers: {workers}")


# --- the fixed lines ----------------------------------------------------------------------------
def queue_text(state: LiveTally, now: float) -> str:
    def show(value: int | None) -> str:
        return "?" if value is None else str(value)

    c = state.counts
    text = "PAUSED (task_control.py resume): " if state.paused(now) else ""
    text += (f"ready {show(c.ready)}, in progress {state.in_progress(now)}, retrying "
            f"{show(c.retry)}, dead {show(c.dead)}, consumers {show(c.consumers)}")
    if state.last_wait is not None and c.ready:
        text += f", latency {seconds_text(state.last_wait[1])}"
    return text


def parked_text(state: LiveTally, now: float) -> str:
    """The tasks a rate limit parked, as the web page's Queue card shows them: while some are
    parked or a limit is in force ("?": a tier the broker would not count); "" otherwise, or
    when nobody reads the tiers for this view. A line of its own: the queue line is cut at the
    terminal's width, and this count is what a limit leaves out of "ready"."""
    if not state.parked_read or not parked_shown(state.parked, bool(state.rate_line(now))):
        return ""
    return f"parked (rate limit): {'?' if state.parked is None else state.parked}"


def progress_text(state: LiveTally, now: float) -> str:
    total = f"/{state.total}" if state.total is not None else ""
    eta = state.eta(now)
    cancelled = f", cancelled {state.cancelled}" if state.cancelled else ""
    return (f"done {state.done}{total}, failed attempts {state.failed}, dead {state.dead}"
            f"{cancelled}, "
            f"{state.rate(now):.1f} tasks/s, ETA {'?' if eta is None else seconds_text(eta)}")


def failure_lines(state: LiveTally) -> list[str]:
    lines = ["", "last failures:" if state.failures else "last failures: none"]
    for when, worker, row, task, outcome, reason in reversed(state.failures):  # newest first
        clock = time.strftime("%H:%M:%S", time.localtime(when))
        lines.append(f"  {clock} {worker} row {row} {task[:30]!r}: {outcome} ({reason})")
    return lines


def seconds_text(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


# --- the workers --------------------------------------------------------------------------------
def worker_lines(state: LiveTally, now: float, rows: int | None) -> list[str]:
    slots = sorted(state.slots.values(), key=lambda s: natural_key(s.slot))
    if not slots:
        return ["(no worker heard from yet: start listening_worker.py)"]
    done_total = sum(slot.done for slot in slots) or 1
    if rows is None or len(slots) <= rows:
        return [row_text(slot.slot, slot.host, _slot_words(state, slot, now), slot.done,
                         slot.failed, done_total, _progress_after(state, slot, now))
                for slot in slots]
    workers: dict[str, list[SlotView]] = defaultdict(list)
    for slot in slots:
        workers[slot.worker or slot.slot].append(slot)
    names = sorted(workers, key=natural_key)
    if len(names) <= rows:
        return [worker_row(state, name, workers[name], now, done_total) for name in names]
    ranked = sorted(names, key=lambda name: (-attention(state, workers[name], now),
                                             natural_key(name)))
    shown = sorted(ranked[:rows - 1], key=natural_key)
    rest = ranked[rows - 1:]
    summary: defaultdict[str, int] = defaultdict(int)
    for name in rest:
        summary[worker_summary_state(state, workers[name], now)] += 1
    told = ", ".join(f"{n} {what}" for what, n in sorted(summary.items()))
    return [*(worker_row(state, name, workers[name], now, done_total) for name in shown),
            f"... and {len(rest)} more workers: {told}"]


def row_text(name: str, host: str, what: str, done: int, failed: int, done_total: int,
             progress: str = "") -> str:
    return (f"{name:<22.22} {host:<14.14} {what:<50.50} {done:>5} {failed:>6} "
            f"{100 * done / done_total:>4.0f}%{progress}")


def _slot_words(state: LiveTally, slot: SlotView, now: float) -> str:
    """A slot's state for its row's state column (a waiting slot's key goes after the
    columns: the column is cut at its width)."""
    if slot.rate_wait is not None and state.active(slot, now):
        return slot.rate_wait.words(slot.row, now, with_key=False)
    return state.slot_state(slot, now)


def _progress_after(state: LiveTally, slot: SlotView, now: float) -> str:
    """' 40% step 2 of 5' for a busy slot whose task told its progress, ' key "k"' for one
    waiting for the rate limit with a key, else ''."""
    if slot.rate_wait is not None and state.active(slot, now):
        key = slot.rate_wait.key_words()
        return f" {key}" if key else ""
    if slot.state != "busy" or not state.active(slot, now):
        return ""
    words = progress_words(slot.progress)
    return f" {words}" if words else ""


def worker_row(state: LiveTally, name: str, slots: list[SlotView], now: float,
               done_total: int) -> str:
    return row_text(name, slots[0].host, folded_state(state, slots, now),
                    sum(s.done for s in slots), sum(s.failed for s in slots), done_total)


def folded_state(state: LiveTally, slots: list[SlotView], now: float) -> str:
    """One worker's slots in a few words: '4/4 busy: rows 129-132, longest 3 s'."""
    if all(s.state == "stopped" for s in slots):
        return "stopped"
    if all(not state.active(s, now) for s in slots):
        return state.slot_state(slots[0], now)  # gone (not heard from for N s)
    waiting = [s for s in slots if s.rate_wait is not None and state.active(s, now)]
    busy = [s for s in slots if s.state == "busy" and state.active(s, now)
            and s.rate_wait is None]
    if waiting and not busy:
        return f"{len(waiting)}/{len(slots)} waiting for the rate limit"
    if not busy and slots[0].paused:
        return "paused"
    if not busy:
        idle_for = min(now - s.since for s in slots)
        return f"{len(slots)} idle for {max(0.0, idle_for):.0f} s"
    rows = sorted(s.row for s in busy if isinstance(s.row, int))
    where = ""
    if rows:
        where = f"rows {rows[0]}-{rows[-1]}" if len(rows) > 1 else f"row {rows[0]}"
    longest = max(now - s.since for s in busy)
    # The waiting first: a row is cut at the column's width.
    waits = f"{len(waiting)} waiting for the rate limit, " if waiting else ""
    return f"{waits}{len(busy)}/{len(slots)} busy: {where}{', ' if where else ''}longest " \
           f"{max(0.0, longest):.0f} s"


def short_state(state: LiveTally, slot: SlotView, now: float) -> str:
    if slot.rate_wait is not None and state.active(slot, now):
        return f"waiting row {slot.row}"
    if slot.state == "busy" and state.active(slot, now):
        return f"busy row {slot.row}"
    if state.active(slot, now):
        return "paused" if slot.paused else "idle"
    return "stopped" if slot.state == "stopped" else "gone"


def worker_summary_state(state: LiveTally, slots: list[SlotView], now: float) -> str:
    if any(s.state == "busy" and state.active(s, now) for s in slots):
        return "busy"
    if any(state.active(s, now) for s in slots):
        return "idle"
    return "stopped" if all(s.state == "stopped" for s in slots) else "gone"


def attention(state: LiveTally, slots: list[SlotView], now: float) -> float:
    """Who is shown first when not every worker fits: the gone and the stuck-looking, then
    the busiest."""
    mean = state.mean_seconds()
    stuck_after = STUCK_AFTER if mean is None else min(STUCK_AFTER, max(5.0, 5 * mean))
    busy = [s for s in slots if s.state == "busy" and state.active(s, now)]
    if any(s.state != "stopped" and not state.active(s, now) for s in slots):
        return 3.0
    if any(now - s.since > stuck_after for s in busy):
        return 2.0
    return len(busy) / len(slots)
