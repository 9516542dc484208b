#!/usr/bin/env python3
"""Benchmark: this tree's worker against today's code (another commit), side by side in one run.

    make bench-versus                     # full sizes, 3 repetitions; writes bench/versus.md
    python bench/versus.py --quick        # small sizes, 1 repetition; bench/out/versus-quick.md
    python bench/versus.py --against REF  # another baseline commit (default f364aa4)
    python bench/versus.py --ours-dir DIR # measure DIR as "ours" (e.g. a `git archive HEAD`
                                          # copy while the working tree is half rewritten)

The baseline is REF's tree, taken out with ``git archive REF | tar -x`` into a temporary
directory. Both trees are driven the same way, through their command-line scripts only: the
queue is filled by one emitter (ours, for both), then the tree's ``listening_worker.py`` drains
it and exits when idle. Each (case, tree) is run --repeat times, baseline and ours alternating
(ABBA order, bench/abba.py), so that drift on a noisy machine hits both alike; the best of each
is compared.

How tasks/s is measured: from the outside, by passive ``queue_declare`` every ~10 ms (the
queue's ready count, with its time). The worker asks for prefetch = its slots, so the ready
count falls as fast as tasks are acked; the rate is the fall of the ready count between the
first sample after the first task was taken and the last sample before the queue was empty
(exact samples at both ends, so no 10 ms rounding at the edges, and the same for any worker,
whatever it logs). As a cross-check, the worker's log (ms timestamps) gives N / (first
"received" .. last "done"); it is shown beside it in the repetitions table. A run counts only
when the worker exited 0 and left the queue empty (every task acked).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pika

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script too
from bench.abba import alternate
from taskqueue.broker.config import QueueSpec

ROOT = Path(__file__).resolve().parent.parent
URL = os.environ.get("BENCH_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
POLL_SECONDS = 0.01
STALL_SECONDS = 60  # no task taken for this long: the worker is stuck, the benchmark cannot run


class BenchError(RuntimeError):
    """The benchmark itself could not run (not a goal missed)."""


@dataclass
class Row:
    measure: str
    ours: float
    baseline: float
    unit: str
    goal: str
    passed: bool

    @property
    def ratio(self) -> float:
        return self.ours / self.baseline if self.baseline else float("inf")


@dataclass
class Case:
    label: str  # part of the queue name
    measure: str
    slots: int
    dots: int
    seconds_per_dot: float
    goal: float
    count: int = 0


@dataclass
class Tree:
    name: str  # "today" or "ours"
    path: Path
    who: str  # in messages: "today's worker", "our worker"
    describe: str
    rates: dict[str, list[float]] = field(default_factory=dict)
    log_rates: dict[str, list[float | None]] = field(default_factory=dict)


def cases(zero: int, short: int) -> list[Case]:
    return [
        Case("zero-1", "zero-work tasks/s, 1 slot", 1, 0, 0.0, 0.7, zero),
        Case("zero-4", "zero-work tasks/s, 4 slots", 4, 0, 0.0, 0.9, zero),
        Case("10ms-1", "10 ms tasks, tasks/s, 1 slot", 1, 1, 0.01, 0.95, short),
        Case("10ms-4", "10 ms tasks, tasks/s, 4 slots", 4, 1, 0.01, 0.95, short),
    ]


# --- the baseline tree ------------------------------------------------------------------------

def git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True)


def resolve(ref: str) -> str | None:
    """REF's full commit hash, or None when this clone does not have it."""
    found = git("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    return found.stdout.strip() if found.returncode == 0 else None


def materialise(commit: str, directory: Path) -> None:
    """REF's tree into *directory* (git archive: no worktree metadata left behind)."""
    archive = subprocess.Popen(["git", "-C", str(ROOT), "archive", commit],
                               stdout=subprocess.PIPE)
    assert archive.stdout is not None  # (stdout=PIPE)
    untar = subprocess.run(["tar", "-x", "-C", str(directory)], stdin=archive.stdout)
    archive.stdout.close()
    if archive.wait() != 0 or untar.returncode != 0:
        raise BenchError(f"could not take {commit[:12]} out of git (git archive | tar failed)")


def describe_ours(path: Path) -> str:
    if path.resolve() == ROOT:
        found = git("describe", "--always", "--dirty")
        return f"this checkout ({found.stdout.strip() or 'unknown commit'})"
    return f"the tree at {path}"


# --- the broker, from the outside ---------------------------------------------------------------

def connect() -> pika.BlockingConnection:
    return pika.BlockingConnection(pika.URLParameters(URL))


def everything(queue: str) -> list[str]:
    """Every queue and stream either tree may make for *queue*: an older tree's, and all this
    tree's (``QueueSpec.everything``: e.g. ``<queue>.urgent.retry``, made by a worker)."""
    older = [queue, f"{queue}.retry", f"{queue}.dead", f"{queue}.urgent", f"{queue}.events",
             f"{queue}.results", f"{queue}.control"]
    return older + [name for name in QueueSpec(queue).everything if name not in older]


def delete_all(queue: str) -> None:
    """Each delete on a fresh channel: a 404 (or any refusal) closes the channel it came on."""
    connection = connect()
    try:
        for name in everything(queue):
            with contextlib.suppress(pika.exceptions.ChannelClosedByBroker):
                connection.channel().queue_delete(name)
        with contextlib.suppress(pika.exceptions.ChannelClosedByBroker):
            connection.channel().exchange_delete(f"{queue}.events")
    finally:
        connection.close()


def depth(channel, queue: str) -> tuple[int, int]:
    frame = channel.queue_declare(queue, passive=True)
    return frame.method.message_count, frame.method.consumer_count


# --- one measurement ----------------------------------------------------------------------------

LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}) .*?\] (received|done) ")
SUMMARY = re.compile(r"\b(\d+) done\b")


def log_rate(log_file: Path, count: int) -> float | None:
    """N / (first 'received' .. last 'done') from the worker's log, or None if it says
    otherwise (a format this script does not know, or not *count* tasks done)."""
    first = last = None
    done = 0
    try:
        lines = log_file.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    for line in lines:
        match = LOG_LINE.match(line)
        if not match:
            continue
        stamp, kind = match.groups()
        moment = time.mktime(time.strptime(stamp[:19], "%Y-%m-%d %H:%M:%S")) + int(stamp[20:]) / 1e3
        if kind == "received" and first is None:
            first = moment
        elif kind == "done":
            done += 1
            last = moment
    if first is None or last is None or done != count or last <= first:
        return None
    return count / (last - first)


def fill(ours: Path, queue: str, tasks: Path, env: dict, run_dir: Path) -> None:
    with open(run_dir / "emitter.out", "w") as out:
        done = subprocess.run([sys.executable, str(ours / "emitter_of_tasks.py"), "--file",
                               str(tasks), "--queue", queue, "--no-admin", "--queue-type",
                               "classic"], cwd=run_dir, env=env, stdout=out,
                              stderr=subprocess.STDOUT, timeout=120)
    if done.returncode != 0:
        raise BenchError(f"the emitter could not fill {queue} (exit {done.returncode}): "
                         f"{tail(run_dir / 'emitter.out')}")


def tail(path: Path, lines: int = 1) -> str:
    try:
        text = " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
        return text or "(no output)"
    except OSError:
        return "(no output)"


def stop(proc: subprocess.Popen) -> None:
    """End a worker this script started (its own handle), politely first."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def measure(tree: Tree, case: Case, ours: Path, tasks: Path, scratch: Path,
            live: list[subprocess.Popen]) -> tuple[float, float | None]:
    """(tasks/s from the queue's ready count, tasks/s from the worker's log) for one run."""
    queue = f"bench.versus.{uuid.uuid4().hex[:8]}.{tree.name}-{case.label}"
    run_dir = Path(tempfile.mkdtemp(prefix=f"{tree.name}-{case.label}-", dir=scratch))
    env = {**os.environ, "TASKQUEUE_LOG_DIR": str(run_dir / "logs")}
    env.pop("PYTHONPATH", None)  # each tree imports its own taskqueue (the script's directory)
    count = case.count
    connection = None
    try:
        fill(ours, queue, tasks, env, run_dir)
        connection = connect()
        channel = connection.channel()
        ready, _ = depth(channel, queue)
        if ready != count:
            raise BenchError(f"{queue} holds {ready} tasks after the emitter, not {count}")
        with open(run_dir / "worker.out", "w") as out:
            proc = subprocess.Popen(
                [sys.executable, str(tree.path / "listening_worker.py"), "--queue", queue,
                 "--concurrency", str(case.slots), "--exit-when-idle", "2", "--seconds-per-dot",
                 str(case.seconds_per_dot), "--name", "bench"],
                cwd=run_dir, env=env, stdout=out, stderr=subprocess.STDOUT)
        live.append(proc)
        samples = sample(channel, queue, proc, count, tree.who, run_dir / "worker.out")
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            stop(proc)
            raise BenchError(f"{tree.who} drained {queue} but did not exit when idle "
                             f"within 60 s: stopped it") from None
        live.remove(proc)
        left, _ = depth(channel, queue)
        if proc.returncode != 0 or left != 0:
            raise BenchError(f"{tree.who} exited {proc.returncode} leaving {left} "
                             f"unacked task(s) in {queue}: {tail(run_dir / 'worker.out')}")
        summary = SUMMARY.search(tail(run_dir / "worker.out", 3))
        if summary and int(summary.group(1)) != count:
            raise BenchError(f"{tree.who} says {summary.group(1)} done, not {count}")
        return drain_rate(samples, count), log_rate(run_dir / "logs" / "listening_worker.log",
                                                    count)
    finally:
        if connection is not None and connection.is_open:
            connection.close()
        delete_all(queue)
        shutil.rmtree(run_dir, ignore_errors=True)


def sample(channel, queue: str, proc: subprocess.Popen, count: int, who: str,
           out: Path) -> list[tuple[float, int]]:
    """The queue's ready count with its time, every ~10 ms, until it is 0 (*who*: the worker
    draining it, in messages; *out*: its output, quoted if it fails)."""
    samples: list[tuple[float, int]] = []
    last_change = time.monotonic()
    while True:
        before = time.perf_counter()
        ready, consumers = depth(channel, queue)
        samples.append(((before + time.perf_counter()) / 2, ready))
        if len(samples) > 1 and ready != samples[-2][1]:
            last_change = time.monotonic()
        if ready == 0:
            return samples
        if proc.poll() is not None:
            raise BenchError(f"{who} exited ({proc.returncode}) with {ready} of {count} "
                             f"tasks left: {tail(out)}")
        if time.monotonic() - last_change > STALL_SECONDS:
            raise BenchError(f"{who} took no task from {queue} for {STALL_SECONDS} s "
                             f"({ready} of {count} left, {consumers} consumer(s)): {tail(out)}")
        time.sleep(POLL_SECONDS)


def drain_rate(samples: list[tuple[float, int]], count: int) -> float:
    """Fall of the ready count between the first sample below *count* and the last above 0;
    with fewer than two such samples (a very fast drain), N over the whole bracket."""
    inside = [(moment, ready) for moment, ready in samples if 0 < ready < count]
    if len(inside) >= 2 and inside[-1][0] > inside[0][0]:
        (start, first), (end, last) = inside[0], inside[-1]
        return (first - last) / (end - start)
    full = max(moment for moment, ready in samples if ready == count)
    empty = min(moment for moment, ready in samples if ready == 0)
    return count / (empty - full)


# --- the report ---------------------------------------------------------------------------------

def render(rows: list[Row], today: Tree, ours: Tree, all_cases: list[Case], repeat: int,
           title: str, commit: str, load: float) -> str:
    lines = [f"# {title}", "",
             f"Measured {time.strftime('%Y-%m-%d %H:%M')} on {os.cpu_count()} cores, "
             f"RabbitMQ at {URL.split('@')[-1]}, pika {pika.__version__}, "
             f"Python {sys.version.split()[0]}; load average {load:.2f} at the start (other "
             "work on the machine shows as spread between repetitions).", "",
             f"Ours: {ours.describe}; today's code: {commit[:7]} ({today.describe}). "
             f"Best of {repeat} alternating run(s) each; `make bench-versus` (bench/versus.py).",
             "", "| measure | ours | today's code | ratio | goal | result |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row.measure} | {row.ours:,.0f} {row.unit} | {row.baseline:,.0f} "
                     f"{row.unit} | {row.ratio:.2f}x | {row.goal} | "
                     f"{'pass' if row.passed else 'FAIL'} |")
    lines += ["", "Every repetition, tasks/s from the queue's ready count (the worker's log in "
              "brackets); spread = (max - min) / max:", "",
              "| case | tree | runs | spread |", "|---|---|---|---|"]
    for case in all_cases:
        for tree in (today, ours):
            rates, log_rates = tree.rates[case.label], tree.log_rates[case.label]
            runs = ", ".join(f"{rate:,.0f} ({'?' if log is None else f'{log:,.0f}'})"
                             for rate, log in zip(rates, log_rates))
            spread = f"{(max(rates) - min(rates)) / max(rates):.1%}" if len(rates) > 1 else "—"
            lines.append(f"| {case.measure} | {tree.name} | {runs} | {spread} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--against", default="f364aa4", metavar="REF",
                        help="today's code: the commit to compare with (default: f364aa4)")
    parser.add_argument("--ours-dir", type=Path, default=ROOT, metavar="DIR",
                        help="the tree measured as ours (default: this checkout); its emitter "
                             "fills the queue for both")
    parser.add_argument("--quick", action="store_true",
                        help="N=500 zero-work / 100 10 ms tasks, 1 repetition (CI)")
    parser.add_argument("--repeat", type=int, help="runs per case and tree (default: 3, "
                                                   "--quick: 1)")
    args = parser.parse_args()
    commit = resolve(args.against)
    if commit is None:
        shallow = git("rev-parse", "--is-shallow-repository").stdout.strip() == "true"
        print(f"versus: comparison skipped: {args.against} is not in this repository"
              f"{' (a shallow clone: git fetch --unshallow)' if shallow else ''}")
        return 0
    ours_dir = args.ours_dir.resolve()
    if not (ours_dir / "listening_worker.py").is_file():
        print(f"versus: {ours_dir} has no listening_worker.py", file=sys.stderr)
        return 2
    repeat = args.repeat or (1 if args.quick else 3)
    all_cases = cases(500, 100) if args.quick else cases(3000, 300)
    live: list[subprocess.Popen] = []
    started, load = time.monotonic(), os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-versus-") as directory:
        scratch = Path(directory)
        baseline_dir = scratch / "today"
        baseline_dir.mkdir()
        try:
            materialise(commit, baseline_dir)
            today = Tree("today", baseline_dir, "today's worker", f"git archive {args.against}")
            ours = Tree("ours", ours_dir, "our worker", describe_ours(ours_dir))
            alternate((today, ours), all_cases, repeat, scratch,
                      lambda tree, case, tasks: measure(tree, case, ours_dir, tasks, scratch,
                                                        live))
        except BenchError as error:
            print(f"versus: the benchmark could not run: {error}", file=sys.stderr)
            return 1
        finally:
            for proc in live:
                stop(proc)
    rows = []
    for case in all_cases:
        best_ours, best_today = max(ours.rates[case.label]), max(today.rates[case.label])
        rows.append(Row(f"{case.measure}: ours vs today's code", best_ours, best_today,
                        "tasks/s", f">= {case.goal}x", best_ours >= case.goal * best_today))
    title = "Ours against today's code (quick sizes)" if args.quick else \
        "Ours against today's code"
    text = render(rows, today, ours, all_cases, repeat, title, commit, load)
    text += f"\nThe whole run took {time.monotonic() - started:.0f} s.\n"
    if args.quick:
        text += ("\nQuick sizes only check that the comparison still runs; they are too small "
                 "to judge the goals (see `make bench-versus` and bench/versus.md).\n")
    print(text)
    out = ROOT / ("bench/out/versus-quick.md" if args.quick else "bench/versus.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"written to {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
