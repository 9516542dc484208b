"""The report as text: short whatever the size of the run.

Always: the headline (tasks done by how many workers and slots), what the counts may miss,
and the worker table (workers in natural order, their slots folded under them when there are
few). Then, for a small run (``SMALL_RUN`` attempts) or with ``--tasks``, every attempt; for a
big one, the failures and dead letters (the first ``LISTED``) and the ten slowest tasks; the
CSV (``--csv``) keeps every task.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from taskqueue.views.run_tally import RunTally, WorkerLine

SMALL_RUN = 50  # tasks: up to this many, the table lists every attempt (else --tasks)
SLOT_LINES_UP_TO = 40  # slots: up to this many, each gets a line under its worker


def table_lines(report: RunTally, attempts: Iterable[dict] | None = None) -> list[str]:
    workers, slots = report.workers, report.slots
    counted = f"{len(workers)} workers" + (f" ({len(slots)} slots)"
                                           if len(slots) != len(workers) else "")
    cancelled = f", {report.cancelled} cancelled" if report.cancelled else ""
    out = [f"run {report.run_id or '(no run id)'} on queue {report.queue!r}: {report.done} "
           f"tasks done by {counted} in {report.end - report.start:.1f} s{cancelled}"]
    if report.published is not None:
        out.append(f"{report.published} tasks published by the emitter")
    out += report.completeness()
    out += ["", *worker_table(workers, slots)]
    if attempts is not None:
        out += ["", *attempt_table(attempts, report.start)]
    elif report.small is not None and report.attempts <= SMALL_RUN:
        out += ["", *attempt_table(sorted(report.small, key=lambda e: e["started"]),
                                   report.start)]
    else:
        out += ["", *big_run_lines(report)]
    return out


def worker_table(workers: list[WorkerLine], slots: list[WorkerLine]) -> list[str]:
    total_busy = sum(w.busy for w in workers) or 1.0
    lines = [f"{'worker':<24} {'done':>5} {'failed':>6} {'dead':>5} {'busy s':>8} {'share':>6}"]
    by_worker: dict[str, list[WorkerLine]] = {}
    for slot in slots:
        by_worker.setdefault(slot.worker.split("/", 1)[0], []).append(slot)
    show_slots = len(slots) <= SLOT_LINES_UP_TO
    for worker in workers:
        name = worker.worker + (f" ({worker.slots} slots)" if worker.slots > 1 else "")
        lines.append(line_of(name, worker, total_busy))
        if show_slots and worker.slots > 1:
            lines += [line_of(f"  {slot.worker}", slot, total_busy)
                      for slot in by_worker.get(worker.worker, [])]
    return lines


def line_of(name: str, line: WorkerLine, total_busy: float) -> str:
    return (f"{name:<24} {line.done:>5} {line.failed:>6} {line.dead:>5} {line.busy:>8.2f} "
            f"{100 * line.busy / total_busy:>5.0f}%")


def attempt_table(attempts: Iterable[dict], start: float) -> Iterator[str]:
    yield (f"{'row':>5}  {'task':<28} {'worker':<24} {'start s':>7} {'took s':>6}"
           "  outcome   result / reason")
    for event in attempts:
        yield attempt_line(event, start)


def attempt_line(event: dict, start: float) -> str:
    task = (event.get("task") or "")[:28].replace("\n", " ")
    row = event.get("row") if event.get("row") is not None else "-"
    note = event.get("result") or event.get("reason") or ""
    return (f"{row!s:>5}  {task:<28} {event['worker']:<24} "
            f"{event['started'] - start:>7.2f} {event.get('seconds', 0):>6.2f}  "
            f"{event.get('outcome', 'done'):<8}  {note[:60]}".rstrip())


def big_run_lines(report: RunTally) -> list[str]:
    lines = []
    if report.failures_count:
        listed = len(report.failures)
        more = report.failures_count - listed
        lines += [f"failed attempts and dead letters: {report.failures_count}"
                  + (f" (the first {listed})" if more else ""),
                  *attempt_table(report.failures, report.start)]
        lines.append("")
    else:
        lines += ["failed attempts and dead letters: none", ""]
    slowest = [event for _seconds, _n, event in sorted(report.slowest, reverse=True)]
    lines += [f"the {len(slowest)} slowest tasks:", *attempt_table(slowest, report.start), "",
              f"{report.attempts} attempts in all: every task with --csv FILE, every attempt "
              "with --tasks"]
    return lines
