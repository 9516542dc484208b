#!/usr/bin/env python3
"""What ``taskqueue.progress`` costs a handler that calls it often (issue 31, item 2). Goal: a
handler calling it 10,000 times a second is slowed by at most 5%.

    python bench/progress.py                   # 10,000 calls/s for ~2 s, 9 pairs of runs
    python bench/progress.py --work 0          # as fast as it can call: the cost of one call

A handler (tests/progress_handlers.py ``spin``) runs in a real handler child process
(``IsolatedHandler``, as ``--handler`` does: the progress sender thread, the pipe) a loop of
light work, once without and once with a ``taskqueue.progress`` call a round, and times its
own loop; the work per round is sized so that the loop makes about ``--rate`` rounds a
second. The pairs alternate (no order effect). Two figures: the ratio of the best runs
with/without (what the calls cost: a busy machine only ever adds time, so the fastest run of
each kind is the least disturbed; the goal is judged on it), and the median of the pairs'
ratios (what a shared machine showed). ``--work 0`` gives the cost of one call.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from taskqueue.worker.progress import ProgressBox  # noqa: E402
from taskqueue.worker.work import IsolatedHandler  # noqa: E402

SPIN = "tests.progress_handlers:spin"


def loop_seconds(runner: IsolatedHandler, rounds: int, work: int, progress: bool) -> float:
    outcome = runner.run(f"{rounds} {work}{' progress' if progress else ''}")
    if not outcome.ok or outcome.result is None:
        raise SystemExit(f"the handler failed: {outcome.reason}")
    return float(outcome.result)


def work_for(runner: IsolatedHandler, rate: float) -> int:
    """The work per round for about *rate* rounds a second (without progress calls)."""
    work = 100
    while True:
        seconds = loop_seconds(runner, 2000, work, False)
        per_round = seconds / 2000
        if per_round >= 0.5 / rate:
            return max(1, round(work / (per_round * rate)))
        work *= 2


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=10_000.0,
                        help="progress calls (loop rounds) a second (default 10000)")
    parser.add_argument("--work", type=int, default=None,
                        help="work per round instead of sizing it for --rate (0: none)")
    parser.add_argument("--seconds", type=float, default=2.0, help="per run (default 2)")
    parser.add_argument("--pairs", type=int, default=9, help="runs with and without (default 9)")
    args = parser.parse_args()
    runner = IsolatedHandler(SPIN, label="bench")
    box = ProgressBox()
    runner.report_to(box)
    runner.start()
    try:
        work = work_for(runner, args.rate) if args.work is None else args.work
        rounds = max(1000, int(args.rate * args.seconds)) if args.work is None else \
            int(args.seconds * 1_000_000 / max(1, work))
        ratios, without, with_ = [], [], []
        for _pair in range(args.pairs):
            plain = loop_seconds(runner, rounds, work, False)
            told = loop_seconds(runner, rounds, work, True)
            without.append(plain)
            with_.append(told)
            ratios.append(told / plain)
        median_ratio = statistics.median(ratios)
        ratio = min(with_) / min(without)
        calls = rounds / statistics.median(with_)
        extra_us = (ratio - 1) * min(without) / rounds * 1e6
        print(f"{rounds} rounds of work {work}: without progress "
              f"{statistics.median(without):.3f} s, with a call a round "
              f"{statistics.median(with_):.3f} s ({calls:,.0f} calls/s)")
        print(f"ratio with/without, best runs of {args.pairs}: {ratio:.4f} "
              f"({100 * (ratio - 1):+.2f}%; {extra_us:.2f} us a call); median of the pairs' "
              f"ratios {median_ratio:.4f}; last progress the worker got: {box.value()}")
        goal = args.work is None and args.rate >= 10_000
        if goal:
            print("goal (<= 5% at 10,000 calls/s):", "met" if ratio <= 1.05 else "NOT met")
        return 0 if not goal or ratio <= 1.05 else 1
    finally:
        runner.close()


if __name__ == "__main__":
    sys.exit(main())
