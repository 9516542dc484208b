#!/usr/bin/env python3
"""Benchmark: our worker against the minimal loop, Dramatiq with Results and Celery with a
result backend, side by side in one run (issue 29, item 5).

    make bench-peers                 # 6000 zero-work / 600 10 ms tasks, 3 repetitions each
    python bench/peers.py --quick    # two cases, small, 1 repetition: a smoke run (< 1 min)
    python bench/peers.py --out FILE # the report elsewhere (default bench/peers.md,
                                     # --quick: bench/out/peers-quick.md)
    python bench/peers.py --case zero-1    # one case only (repeatable: zero-1 zero-4 10ms-1 10ms-4)
    python bench/peers.py --ours-ref HEAD  # measure a commit (git archive), not the checkout
                                           # (e.g. while others' edits are half done)

Four systems, each at N = 1 and 4 slots, prefetch N, on the machine's RabbitMQ (and its Redis
at 127.0.0.1:6379 for the peers' results): ours, the minimal loop (bench/peer_minimal.py),
Dramatiq with Results and Celery with a Redis backend (bench/peer_apps.py). The report's "How
each ran" (``render``) says how each is run and timed, and why Celery runs its thread pool.
Dramatiq and Celery are not taskqueue's dependencies: they live in bench/out/peers-venv
(git-ignored), made from PyPI on first use and reused after. Ours and the minimal loop read the
queue our emitter fills; the peers' queues are filled by their own clients (their message
formats), with the same texts. A run counts only when the queue is empty at the end (ours and
the minimal loop exit on their own when idle; the peers get SIGTERM, a warm shutdown, once the
queue is drained: a task they had not acked would be back in it) and, for the peers, with one
stored result per task. Repetitions alternate the order (ABCD, DCBA, ...; bench/abba.py) so
that drift hits all alike; the best of each is compared.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import pika

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.abba import alternate
from bench.versus import (
    ROOT,
    URL,
    BenchError,
    Case,
    cases,
    connect,
    delete_all,
    depth,
    describe_ours,
    drain_rate,
    fill,
    log_rate,
    materialise,
    resolve,
    sample,
    stop,
    tail,
)

VENV = ROOT / "bench" / "out" / "peers-venv"
PEER_PACKAGES = ["dramatiq[rabbitmq,redis]==2.2.1", "celery[redis]==5.7.0", "py-spy==0.4.3"]
REDIS_URL = os.environ.get("PEERS_REDIS", "redis://127.0.0.1:6379/0")
SECONDS_PER_DOT = 0.01


@dataclass
class OursTree:
    """The tree measured as ours: this checkout, or (--ours-ref) a commit's copy."""

    path: Path = ROOT
    describe: str = ""


OURS = OursTree()


@dataclass
class System:
    name: str
    describe: str
    rates: dict[str, list[float]] = field(default_factory=dict)
    log_rates: dict[str, list[float | None]] = field(default_factory=dict)


SYSTEMS = [
    System("ours", "listening_worker.py --concurrency N"),
    System("minimal", "bench/peer_minimal.py: N loops, prefetch 1 each"),
    System("dramatiq", "Dramatiq + Results (Redis), --processes 1 --threads N"),
    System("celery", "Celery + Redis backend, --pool threads --concurrency N"),
]


def venv_python() -> Path:
    """The peers' venv, made on first use (from PyPI) and reused after."""
    python = VENV / "bin" / "python"
    if (VENV / "bin" / "dramatiq").exists() and (VENV / "bin" / "celery").exists():
        return python
    print(f"peers: making {VENV.relative_to(ROOT)} (Dramatiq, Celery; once)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet",
                    "--disable-pip-version-check", *PEER_PACKAGES], check=True)
    return python


def peer_env(system: str, queue: str, run_dir: Path) -> dict[str, str]:
    env = {**os.environ, "PEERS_SYSTEM": system, "PEERS_QUEUE": queue,
           "PEERS_PREFIX": f"bench-peers-{queue}", "PEERS_REDIS": REDIS_URL,
           "PEERS_SECONDS_PER_DOT": str(SECONDS_PER_DOT), "PYTHONPATH": str(ROOT / "bench"),
           "TASKQUEUE_LOG_DIR": str(run_dir / "logs")}
    if system in ("ours", "minimal"):
        env.pop("PYTHONPATH")  # our tree imports its own taskqueue (the script's directory)
    return env


def worker_command(system: str, queue: str, slots: int) -> list[str]:
    bin_dir = VENV / "bin"
    if system == "ours":
        return [sys.executable, str(OURS.path / "listening_worker.py"), "--queue", queue,
                "--concurrency", str(slots), "--exit-when-idle", "2", "--seconds-per-dot",
                str(SECONDS_PER_DOT), "--name", "bench"]
    if system == "minimal":
        return [sys.executable, str(ROOT / "bench" / "peer_minimal.py"), "--queue", queue,
                "--slots", str(slots), "--seconds-per-dot", str(SECONDS_PER_DOT)]
    if system == "dramatiq":
        return [str(bin_dir / "dramatiq"), "peer_apps", "--processes", "1", "--threads",
                str(slots), "--path", str(ROOT / "bench")]
    return [str(bin_dir / "celery"), "-A", "peer_apps", "worker", "--pool", "threads",
            "--concurrency", str(slots), "--loglevel", "WARNING", "--without-gossip",
            "--without-mingle", "--without-heartbeat"]


def fill_queue(system: str, queue: str, case: Case, tasks: Path, env: dict,
               run_dir: Path) -> None:
    if system in ("ours", "minimal"):
        fill(OURS.path, queue, tasks, env, run_dir)
        return
    with open(run_dir / "fill.out", "w") as out:
        done = subprocess.run([str(venv_python()), str(ROOT / "bench" / "peer_apps.py"), "fill",
                               str(case.count), str(case.dots)], env=env, stdout=out,
                              stderr=subprocess.STDOUT, timeout=300)
    if done.returncode != 0:
        raise BenchError(f"{system} could not fill {queue}: {tail(run_dir / 'fill.out')}")


def finish(system: str, proc: subprocess.Popen, channel, queue: str, count: int,
           env: dict, out: Path) -> None:
    """Let the worker end (ours and the minimal loop: idle; the peers: SIGTERM once the last
    tasks can have been done), then check that every task was acked (and stored)."""
    if system in ("dramatiq", "celery"):
        time.sleep(1.0)  # the last N tasks in hand (10 ms each) are done and acked by then
        proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        stop(proc)
        raise BenchError(f"{system} did not exit within 60 s: stopped it") from None
    left, _ = depth(channel, queue)
    if left != 0 or (proc.returncode != 0 and system in ("ours", "minimal")):
        raise BenchError(f"{system} exited {proc.returncode} leaving {left} unacked task(s) "
                         f"in {queue}: {tail(out)}")
    if system in ("dramatiq", "celery"):
        stored = subprocess.run([str(venv_python()), str(ROOT / "bench" / "peer_apps.py"),
                                 "results"], env=env, capture_output=True, text=True)
        if stored.stdout.strip() != str(count):
            raise BenchError(f"{system} stored {stored.stdout.strip() or '?'} results, not "
                             f"{count}: {stored.stderr.strip()[-200:]}")


def remove(system: str, queue: str) -> None:
    if system in ("ours", "minimal"):
        delete_all(queue)
        return
    connection = connect()
    try:
        for name in (queue, f"{queue}.DQ", f"{queue}.XQ"):  # Dramatiq's delay and dead queues
            with contextlib.suppress(pika.exceptions.ChannelClosedByBroker):
                connection.channel().queue_delete(name)
        with contextlib.suppress(pika.exceptions.ChannelClosedByBroker):
            connection.channel().exchange_delete(queue)  # Celery's exchange for its queue
    finally:
        connection.close()


def measure(system: System, case: Case, tasks: Path, scratch: Path,
            live: list[subprocess.Popen]) -> tuple[float, float | None]:
    """(tasks/s from the queue's ready count, tasks/s from our worker's log) for one run."""
    queue = f"bench.peers.{uuid.uuid4().hex[:8]}.{system.name}-{case.label}"
    run_dir = Path(tempfile.mkdtemp(prefix=f"{system.name}-{case.label}-", dir=scratch))
    env = {**peer_env(system.name, queue, run_dir), "dramatiq_queue_prefetch": str(case.slots)}
    out, connection = run_dir / "worker.out", None
    try:
        fill_queue(system.name, queue, case, tasks, env, run_dir)
        connection = connect()
        channel = connection.channel()
        ready, _ = depth(channel, queue)
        if ready != case.count:
            raise BenchError(f"{queue} holds {ready} tasks after filling, not {case.count}")
        with open(out, "w") as sink:
            proc = subprocess.Popen(worker_command(system.name, queue, case.slots),
                                    cwd=run_dir, env=env, stdout=sink, stderr=subprocess.STDOUT)
        live.append(proc)
        samples = sample(channel, queue, proc, case.count, system.name, out)
        finish(system.name, proc, channel, queue, case.count, env, out)
        live.remove(proc)
        logged = log_rate(run_dir / "logs" / "listening_worker.log", case.count) \
            if system.name == "ours" else None
        return drain_rate(samples, case.count), logged
    finally:
        if connection is not None and connection.is_open:
            connection.close()
        remove(system.name, queue)
        shutil.rmtree(run_dir, ignore_errors=True)


def table(all_cases: list[Case], pick: Callable[[list[float]], float]) -> list[str]:
    """The comparison, each system's runs of a case taken as one by *pick* (max, median)."""
    lines = ["| case | ours | minimal loop | Dramatiq + Results | Celery + Redis backend | "
             "ours / minimal (goal >= 0.9) | Dramatiq / minimal | Celery / minimal | "
             "ours ahead of Dramatiq |", "|---|---|---|---|---|---|---|---|---|"]
    for case in all_cases:
        best = {system.name: pick(system.rates[case.label]) for system in SYSTEMS}
        base = best["minimal"]
        ratio = {name: rate / base for name, rate in best.items()}
        lines.append(
            f"| {case.measure} | {best['ours']:,.0f} | {base:,.0f} | {best['dramatiq']:,.0f} | "
            f"{best['celery']:,.0f} | {ratio['ours']:.2f}x "
            f"{'pass' if ratio['ours'] >= 0.9 else 'FAIL'} | {ratio['dramatiq']:.2f}x | "
            f"{ratio['celery']:.2f}x | "
            f"{'yes' if best['ours'] > best['dramatiq'] else 'NO'} |")
    return lines


def render(all_cases: list[Case], repeat: int, title: str, load: float) -> str:
    ours, minimal, dramatiq, celery = SYSTEMS
    lines = [f"# {title}", "",
             f"Measured {time.strftime('%Y-%m-%d %H:%M')} on {os.cpu_count()} cores, "
             f"RabbitMQ at {URL.split('@')[-1]}, Redis at {REDIS_URL.split('@')[-1]}, pika "
             f"{pika.__version__}, Python {sys.version.split()[0]}; load average {load:.2f} "
             "at the start.", "",
             f"Ours: {OURS.describe}. Best of {repeat} alternating run(s) each; tasks/s "
             "from the queue's ready count (\"How each ran\" below says how each ran and "
             "was timed); the ratios are to the minimal loop.", "",
             *table(all_cases, max), "",
             f"The median of the {repeat} runs instead of the best (the same code varies "
             "by up to 2x from run to run on this VM: the two tables together say how firm a "
             "ratio is; bench/cycle.py splits a 1-slot task's cycle from the packets):", "",
             *table(all_cases, statistics.median)]
    lines += ["", "How each ran (N = slots; prefetch N for all; the same queue of \"task K\" or "
              "\"task K.\" texts, 10 ms of sleep per '.'):", "",
              "- ours: `listening_worker.py --concurrency N --seconds-per-dot 0.01`: one "
              "process, an I/O thread and N slot threads (zero-work tasks run on the I/O "
              "thread); each record confirmed (in groups) before its task is acked, a slot "
              "taking its next task once the record is on its way; while tasks are short, one "
              "task more in hand on a second subscription of consumer priority -1 (the "
              "look-ahead: the broker serves it only while every first subscription is full);",
              "- minimal loop: bench/peer_minimal.py, N threads, each its own connection with "
              "prefetch 1: consume, publish a JSON record to `<queue>.results` (a stream) with "
              "confirms, wait for the confirm, ack;",
              "- Dramatiq: `dramatiq --processes 1 --threads N`, RabbitMQ broker, the Results "
              "middleware on Redis (`store_results=True`), `dramatiq_queue_prefetch=N`;",
              "- Celery: `celery worker --pool threads --concurrency N`, RabbitMQ broker, Redis "
              "result backend, `task_acks_late=True`, prefetch multiplier 1 (threads: one "
              "process like the others; prefork would add a process hand-off per task and N "
              "processes on 2 cores).", "",
              "Timing, the same for all four (bench/versus.py's method): the queue's ready "
              "count sampled by passive `queue_declare` every ~10 ms; the rate is its fall "
              "between the first sample below the task count and the last above 0, so start-up "
              "and shut-down are left out. A run counts only if the queue is empty at the end "
              "(every task acked) and, for Dramatiq and Celery, one result per task is in Redis.",
              "", "Every repetition, tasks/s (ours: the worker's log in brackets):", "",
              "| case | system | runs |", "|---|---|---|"]
    for case in all_cases:
        for system in (ours, minimal, dramatiq, celery):
            runs = ", ".join(
                f"{rate:,.0f}" + ("" if system is not ours else
                                  f" ({'?' if log is None else f'{log:,.0f}'})")
                for rate, log in zip(system.rates[case.label], system.log_rates[case.label]))
            lines.append(f"| {case.measure} | {system.describe} | {runs} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="300 zero-work tasks at 1 slot and 30 10 ms tasks at 4 slots, 1 "
                             "repetition (a smoke run)")
    parser.add_argument("--repeat", type=int, help="runs per case and system (default: 3, "
                                                   "--quick: 1)")
    parser.add_argument("--ours-ref", metavar="REF",
                        help="measure this commit's tree (git archive) as ours, not the checkout")
    parser.add_argument("--case", action="append", choices=[case.label for case in cases(1, 1)],
                        help="measure only this case (repeatable; default: all four)")
    parser.add_argument("--out", type=Path, help="the report (default bench/peers.md; "
                                                 "--quick: bench/out/peers-quick.md)")
    args = parser.parse_args()
    repeat = args.repeat or (1 if args.quick else 3)
    all_cases = cases(6000, 600)  # a few seconds a run: one stall weighs less
    if args.quick:  # two of the four cases, small: each run still costs a few seconds of start
        all_cases = [replace(case, count=case.count // 20) for case in all_cases
                     if case.label in ("zero-1", "10ms-4")]
    if args.case:
        all_cases = [case for case in all_cases if case.label in args.case]
    live: list[subprocess.Popen] = []
    started, load = time.monotonic(), os.getloadavg()[0]
    try:
        venv_python()
    except (OSError, subprocess.CalledProcessError) as error:
        print(f"peers: could not make the peers' venv: {error}", file=sys.stderr)
        return 1
    OURS.describe = describe_ours(ROOT)
    with tempfile.TemporaryDirectory(prefix="bench-peers-") as directory:
        scratch = Path(directory)
        try:
            if args.ours_ref:
                commit = resolve(args.ours_ref)
                if commit is None:
                    raise BenchError(f"{args.ours_ref} is not a commit of this repository")
                OURS.path = scratch / "ours"
                OURS.path.mkdir()
                materialise(commit, OURS.path)
                OURS.describe = f"commit {commit[:7]} (git archive {args.ours_ref})"
            alternate(SYSTEMS, all_cases, repeat, scratch,
                      lambda system, case, tasks: measure(system, case, tasks, scratch, live))
        except BenchError as error:
            print(f"peers: the benchmark could not run: {error}", file=sys.stderr)
            return 1
        finally:
            for proc in live:
                stop(proc)
    title = "Ours against the minimal loop, Dramatiq and Celery" + \
        (" (quick sizes)" if args.quick else "")
    text = render(all_cases, repeat, title, load)
    text += f"\nThe whole run took {time.monotonic() - started:.0f} s.\n"
    if args.quick:
        text += "\nQuick sizes only check that the comparison runs; too small to judge.\n"
    print(text)
    out = args.out or ROOT / ("bench/out/peers-quick.md" if args.quick else "bench/peers.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
