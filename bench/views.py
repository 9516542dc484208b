#!/usr/bin/env python3
"""The views at scale: the report of a run of 10k, 100k and 1M task events (generated into an
event store, as workers would have sent them), and the live view's screen with 200 workers x
8 slots. Each report runs in a process of its own, so its peak memory is its own.

    make bench-views                       # writes bench/views.md
    python bench/views.py --sizes 10000    # quicker

Goals (issue 18): 1M events reported in under 30 s and under 150 MB; memory flat with size.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

REPORT_GOAL_SECONDS, REPORT_GOAL_MB = 30.0, 150.0


def write_events(path: Path, count: int, workers: int = 10, slots: int = 4,
                 run_id: str = "big") -> None:
    """*count* task events of one run, as the store holds them (one JSON line each), with a
    run announcement and the workers' totals; 2% failed attempts, 1% dead letters."""
    rng = random.Random(count)
    clock = 1_700_000_000.0
    free_at = {f"w{w}/{s}": clock for w in range(1, workers + 1) for s in range(1, slots + 1)}
    names = list(free_at)
    done: dict[str, int] = {}
    with open(path, "w", encoding="utf-8") as store:
        store.write(json.dumps({"kind": "run", "id": "r0", "run_id": run_id, "queue": "q",
                                "state": "started", "total": count, "published": 0,
                                "time": clock}) + "\n")
        for n in range(1, count + 1):
            slot = names[n % len(names)]
            seconds = rng.expovariate(1 / 0.05)
            started = free_at[slot]
            free_at[slot] = started + seconds
            roll = rng.random()
            outcome = "failed" if roll < 0.02 else "dead" if roll < 0.03 else "done"
            worker = slot.split("/")[0]
            done[worker] = done.get(worker, 0) + (outcome == "done")
            store.write(json.dumps({
                "kind": "task", "id": f"e{n}", "run_id": run_id, "worker": slot, "host": "h1",
                "message_id": f"big.csv:{n}:abcdef012345", "row": n, "task": f"task {n}..",
                "outcome": outcome, "queued": started - 1, "received": started,
                "started": started, "finished": started + seconds, "seconds": round(seconds, 4),
                "attempt": 1, "redelivered": False,
                "reason": "ValueError: boom" if outcome != "done" else "",
                "result": f"did {n}" if outcome == "done" else None}) + "\n")
        store.write(json.dumps({"kind": "run", "id": "r1", "run_id": run_id, "queue": "q",
                                "state": "finished", "total": count, "published": count,
                                "time": max(free_at.values())}) + "\n")
        for worker, count_done in done.items():
            store.write(json.dumps({"kind": "worker", "id": f"t-{worker}", "worker": worker,
                                    "runs": {run_id: count_done}, "events_dropped": 0}) + "\n")


def report_once(store: Path, csv: Path | None) -> dict:
    """In this process: the report's text, picture and (optionally) CSV; time and peak RSS."""
    import resource  # POSIX only: here, so tests importing write_events collect on Windows

    from taskqueue.views.report import RunReport
    from taskqueue.views.store import EventStore

    started = time.perf_counter()
    events = EventStore(store.parent, "q")
    report = RunReport(events.events(), "big", "q")
    text = report.table()
    picture = report.svg()
    rows = report.write_csv(csv, events.events()) if csv else None
    return {"seconds": time.perf_counter() - started, "lines": text.count("\n") + 1,
            "svg_bytes": len(picture.encode()), "csv_rows": rows,
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def measure(count: int, tmp: Path, with_csv: bool) -> dict:
    store = tmp / "q.events.jsonl"
    write_events(store, count)
    csv = tmp / "out.csv" if with_csv else None
    out = subprocess.run([sys.executable, __file__, "--one", str(store), *(
        ["--csv", str(csv)] if csv else [])], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout)
    result["events"] = count
    result["store_mb"] = store.stat().st_size / 2**20
    return result


def live_render() -> dict:
    from taskqueue.views.live import LiveState, QueueCounts

    now = time.time()
    state = LiveState("q")
    for w in range(1, 201):
        state.feed({"kind": "snapshot", "worker": f"w{w}", "host": "h", "time": now, "slots": [
            {"slot": f"w{w}/{s}", "state": "busy", "since": now - s, "queued": now - 9,
             "row": w * 8 + s, "task": "x", "done": s, "failed": 0} for s in range(1, 9)]})
    state.counts = QueueCounts(5000, 0, 0, 200)
    started = time.perf_counter()
    for _ in range(20):
        lines = state.screen(now, 120, 30)
    return {"ms": (time.perf_counter() - started) / 20 * 1000, "lines": len(lines)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--one", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--csv", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--write", action="store_true", help="write bench/views.md")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(report_once(args.one, args.csv)))
        return 0
    rows, failed = [], False
    with tempfile.TemporaryDirectory() as directory:
        for count in (int(size) for size in args.sizes.split(",")):
            for with_csv in (False, True):
                result = measure(count, Path(directory), with_csv)
                ok = count < 1_000_000 or (result["seconds"] < REPORT_GOAL_SECONDS
                                           and result["peak_mb"] < REPORT_GOAL_MB)
                failed |= not ok
                rows.append(
                    f"| report of {count:,} events{' + --csv' if with_csv else ''} | "
                    f"{result['seconds']:.1f} s | {result['peak_mb']:.0f} MB | "
                    f"{result['lines']} lines, SVG {result['svg_bytes'] / 1024:.0f} KiB"
                    f"{', CSV ' + format(result['csv_rows'], ',') + ' rows' if with_csv else ''}"
                    f" (store {result['store_mb']:.0f} MB) | {'ok' if ok else 'FAIL'} |")
                print(rows[-1], flush=True)
    live = live_render()
    rows.append(f"| live view, 200 workers x 8 slots, 120x30 | {live['ms']:.1f} ms a screen | "
                f"- | {live['lines']} lines | ok |")
    print(rows[-1])
    text = "\n".join(["# The views at scale (bench/views.py)", "",
                      f"Measured {time.strftime('%Y-%m-%d %H:%M')} on {os.cpu_count()} cores, "
                      f"Python {sys.version.split()[0]}. Goal: 1M events in under "
                      f"{REPORT_GOAL_SECONDS:g} s and {REPORT_GOAL_MB:g} MB.", "",
                      "| what | time | peak memory | output | goal |", "|---|---|---|---|---|",
                      *rows]) + "\n"
    if args.write:
        (ROOT / "bench" / "views.md").write_text(text, encoding="utf-8")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
