#!/usr/bin/env python3
"""Urgent tasks behind a backlog (issue 31, item 4): N normal tasks wait, workers start on
them, then H high ones are published (``submit(..., priority="high")``). Goal: every high task
starts before the next 100 normal ones (1,000 normal, 50 high).

    python bench/priority.py                       # 1,000 + 50, 4 workers x 4 slots
    python bench/priority.py --normal 200 --high 20 --workers 2 --slots 2

Prints how many normal tasks started while the high ones were published or waiting, read from
the results record's start times: after the publishing began (the issue's measure), and after
the first high task started (the design's bound: one per slot at most, docs/queue-types.md).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.fleet import URL, delete_all, ready, start_workers, starts  # noqa: E402
from taskqueue.api import submit  # noqa: E402


def measure(args: argparse.Namespace, queue: str, logs: Path) -> dict:
    normal_run = submit([f"n{n}." for n in range(1, args.normal + 1)], queue, URL).run_id
    workers = start_workers(queue, args.workers, args.slots, args.seconds, logs)
    while ready(queue) > args.normal - 2 * args.workers * args.slots:
        time.sleep(0.02)  # the workers are into the backlog
    began = time.time()
    high_run = submit([f"h{n}." for n in range(1, args.high + 1)], queue, URL,
                      priority="high").run_id
    confirmed = time.time()
    for worker in workers:
        worker.wait(timeout=600)
    normal = starts(queue, normal_run, logs / "n")
    high = starts(queue, high_run, logs / "h")
    last = high[-1]
    return {"normal": len(normal), "high": len(high),
            "after_publishing_began": sum(began < s < last for s in normal),
            "after_confirmed": sum(confirmed < s < last for s in normal),
            "after_first_high": sum(high[0] < s < last for s in normal),
            "left_behind": sum(s > last for s in normal),
            "high_waited": last - confirmed}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--normal", type=int, default=1000)
    parser.add_argument("--high", type=int, default=50)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=0.1, help="each task's work")
    args = parser.parse_args()
    queue = f"bench.priority.{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory(prefix="bench-priority-") as directory:
        try:
            result = measure(args, queue, Path(directory))
        finally:
            delete_all(queue)
    print(f"{args.normal} normal waiting, {args.high} high published after, {args.workers} "
          f"workers x {args.slots} slots, {args.seconds} s a task: normal tasks started before "
          f"the last high one: {result['after_publishing_began']} after the publishing began, "
          f"{result['after_confirmed']} after it was confirmed, {result['after_first_high']} "
          f"after the first high one started (goal: fewer than {2 * args.high}); the last high "
          f"one started {result['high_waited']:.2f} s after the confirm, "
          f"{result['left_behind']} normal ones after it")
    ok = result["high"] == args.high and result["after_publishing_began"] < 2 * args.high
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
