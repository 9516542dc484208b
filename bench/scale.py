#!/usr/bin/env python3
"""Benchmark: what each completed task costs the broker as the number of workers grows.

    python bench/scale.py                    # full sizes (~12 min); writes bench/scale.md
    python bench/scale.py --quick            # 1 and 4 real, 1 and 10 simulated (< 1 min)
    python bench/scale.py --label after      # the section of scale.md it (re)writes
    python bench/scale.py --out FILE         # another file (--quick: bench/out/scale-quick.md)

Every setting runs on fresh names (``bench.scale.<uuid>``), deleted at its end with the
product's own ``QueueRemover`` (every name of ``QueueSpec.everything`` and the events
exchange). Real: N ``listening_worker.py`` processes, T instant tasks (no '.') published by
``emitter_of_tasks.py``; the workers are stopped with SIGINT by pid once every task is acked
and the counters are read. Simulated: the product's ``TaskConsumer``, many per process on one
I/O loop (bench/scale_sim.py). The broker's counters are read with one ``rabbitmqctl eval`` per
snapshot (read-only calls: ``rabbit_global_counters:overview()`` and the connections'
``send_oct``, the same figures ``rabbitmqctl list_connections client_properties send_oct``
shows); its CPU from /proc/<pid>/stat of the beam.smp whose pid the node itself gives.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pika

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.scale_broker import BENCH_CONNECTION, BenchError, Broker, PrivateBroker, Snapshot
from bench.scale_sim import NO_PROBES, SIM_PER_PROCESS, STARTING_AT_ONCE, Workers
from taskqueue.broker.config import QueueSpec
from taskqueue.control.remove import QueueRemover

ROOT = Path(__file__).resolve().parent.parent
URL = os.environ.get("BENCH_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
STALL_SECONDS = 90  # no task acked for this long: the setting cannot finish
SETTLE_MAX = 5.0  # seconds after the last ack to wait for the stream's count to settle
IDLE_SETTLE = 10.0  # after the drain: > reach.py's PROBE_AFTER, so probes are steady
FD_SHARE = 0.6  # a setting may use at most this share of the broker's descriptors (shared!)
START_LIMIT = 120  # seconds (and a quarter of a second per worker) for the workers to subscribe


def queue_state(channel_holder: list, connection: pika.BlockingConnection,
                queue: str) -> tuple[int, int] | None:
    """(ready messages, consumers) of *queue*, or None while it does not exist."""
    if not channel_holder or not channel_holder[0].is_open:
        channel_holder[:] = [connection.channel()]
    try:
        frame = channel_holder[0].queue_declare(queue, passive=True)
    except pika.exceptions.ChannelClosedByBroker:
        return None
    return frame.method.message_count, frame.method.consumer_count


def wait_until(test, timeout: float, what: str, step: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = test()
        if value:
            return value
        time.sleep(step)
    raise BenchError(f"timed out ({timeout:.0f} s) waiting for {what}")


def publish(queue: str, tasks: int, tmp: Path, tree: Path) -> None:
    path = tmp / "tasks.csv"
    path.write_text("".join(f"task {n}\n" for n in range(tasks)))  # no '.': instant tasks
    env = dict(os.environ, TASKQUEUE_LOG_DIR=str(tmp / "logs"))
    done = subprocess.run([sys.executable, str(tree / "emitter_of_tasks.py"), "--url", URL,
                           "--queue", queue, "--file", str(path), "--no-admin", "--log-level",
                           "WARNING"], cwd=tmp, env=env, capture_output=True, timeout=300)
    if done.returncode != 0:
        raise BenchError(f"the emitter exited {done.returncode}: {done.stderr[-300:]!r}")


def drained(broker: Broker, begin: Snapshot, tasks: int) -> Snapshot:
    """The snapshot once every task is acked and the stream deliveries have stopped growing
    (the last records reach every reader a little after the last ack), or SETTLE_MAX seconds
    after the last ack: workers quiet for 8 s send probes, which at 1,000 workers (125 a
    second) keep the stream's count growing for good."""
    last, progress_at, acked_at = begin, time.monotonic(), None
    while True:
        time.sleep(0.5)
        snap = broker.snapshot()
        if snap.acked() - begin.acked() >= tasks:
            acked_at = acked_at or snap.at
            if snap.stream() == last.stream() or snap.at - acked_at >= SETTLE_MAX:
                return snap
        if snap.acked() != last.acked():  # (not the stream's count: probes move it anyway)
            progress_at = time.monotonic()
        elif time.monotonic() - progress_at > STALL_SECONDS:
            raise BenchError(f"{snap.acked() - begin.acked()} of {tasks} tasks acked; stalled")
        last = snap


def measure(broker: Broker, kind: str, count: int, tasks: int, idle: float,
            tmp: Path, tree: Path) -> dict:
    """One setting on fresh names: start, publish, drain, (idle), stop, delete."""
    started = time.monotonic()
    tag = uuid.uuid4().hex[:8]
    queue, prefix = f"bench.scale.{tag}", f"scale-{tag}-"
    params = pika.URLParameters(URL)
    params.client_properties = {"connection_name": f"{BENCH_CONNECTION} {tag}"}
    connection = pika.BlockingConnection(params)
    holder: list = []
    workers: Workers | None = Workers(kind, count, URL, queue, prefix, tmp, tree)
    try:
        before = broker.snapshot()
        workers.start()
        wait_until(lambda: (queue_state(holder, connection, queue) or (0, 0))[1] >= count,
                   START_LIMIT + count / 4, f"{count} consumers on {queue}", step=0.5)
        begin = broker.snapshot()
        client = workers.cpu()
        publish(queue, tasks, tmp, tree)
        end = drained(broker, begin, tasks)
        result = figures(kind, count, tasks, begin, end, prefix)
        result.update(start_figures(count, before, begin, client))
        result["worker_cpu_us_per_task"] = (workers.cpu() - client) * 1e6 / tasks
        if idle:
            time.sleep(IDLE_SETTLE)
            quiet, client = broker.snapshot(), workers.cpu()
            time.sleep(idle)
            later = broker.snapshot()
            seconds = later.at - quiet.at
            result["idle_stream_per_s"] = (later.stream() - quiet.stream()) / seconds
            result["idle_broker_ms"] = (later.cpu - quiet.cpu) * 1e3 / seconds / count
            result["idle_worker_ms"] = (workers.cpu() - client) * 1e3 / seconds / count
            result["foreign"] = max(result["foreign"], later.foreign(prefix))
        result.update({f"sim_{k}": v for k, v in workers.stop().items()})
        workers = None
    finally:
        if workers is not None:
            workers.stop()
        removed = QueueRemover(connection, QueueSpec(name=queue)).remove(force=True)
        connection.close()
    result["deleted"] = removed.queues
    result["took"] = time.monotonic() - started
    print(json.dumps({k: v for k, v in result.items() if k != "sim_up_seconds"}), flush=True)
    return result


def start_figures(count: int, before: Snapshot, up: Snapshot, client: float) -> dict:
    """From the workers' start to every one subscribed: the time, and what it cost the
    broker (CPU, memory) and the workers' processes (CPU), per worker."""
    return {"start_s": up.at - before.at,
            "start_broker_ms": (up.cpu - before.cpu) * 1e3 / count,
            "start_worker_ms": client * 1e3 / count,
            "mb_per_worker": (up.memory - before.memory) / 2**20 / count}


def figures(kind: str, count: int, tasks: int, begin: Snapshot, end: Snapshot,
            prefix: str) -> dict:
    return {
        "kind": kind, "workers": count, "tasks": tasks,
        "stream_per_task": (end.stream() - begin.stream()) / tasks,
        "task_deliveries_per_task": (end.tasks_delivered() - begin.tasks_delivered()) / tasks,
        "bytes_per_task": (end.worker_bytes(prefix) - begin.worker_bytes(prefix)) / tasks,
        "consuming_bytes_per_task": (end.worker_bytes(prefix, True)
                                     - begin.worker_bytes(prefix, True)) / tasks,
        "cpu_us_per_task": (end.cpu - begin.cpu) * 1e6 / tasks,
        "tasks_per_s": tasks / (end.at - begin.at),
        "connections": sum(1 for name in end.send_oct if prefix in name),
        "fds": end.fds, "fhc_sockets": end.fhc.get("sockets_used", 0),
        "memory_mb": end.memory / 2**20, "foreign": max(begin.foreign(prefix),
                                                       end.foreign(prefix)),
    }


def fd_guard(broker: Broker, results: list[dict], count: int) -> str | None:
    """Refuse a setting whose descriptors would crowd the shared broker (estimated from the
    largest setting run so far): the other sessions' connections would be refused."""
    done = [r for r in results if r["kind"] == "sim" and r["workers"] >= 10]
    if not done:
        return None
    base = broker.snapshot().fds
    per_worker = max((r["fds"] - base) / r["workers"] for r in done)
    needed = base + per_worker * count
    limit = min(broker.fd_limit, 1e9)
    if needed <= FD_SHARE * limit:
        return None
    return (f"needs ~{needed:.0f} of the broker's {broker.fd_limit} file descriptors "
            f"({per_worker:.1f} per worker measured at {done[-1]['workers']}); not run")


SIZES = {  # (workers, tasks, idle seconds)
    "full": {"real": [(1, 5000, 0), (8, 5000, 30), (64, 3000, 30)],
             # 1,000: ~45 s to start, 2 minutes in all (scale.md, "1,000 workers"); needs
             # --private-broker (the fd guard refuses it on the shared broker)
             "sim": [(1, 10000, 0), (10, 10000, 0), (100, 4000, 30), (1000, 4000, 30)]},
    "quick": {"real": [(1, 200, 0), (4, 200, 5)], "sim": [(1, 200, 0), (10, 200, 0)]},
}


def table(rows: list[dict], kind: str) -> list[str]:
    lines = ["| workers | tasks | stream deliveries / task | task deliveries / task | bytes to "
             "workers / task | of which consuming connections | broker CPU us / task | worker CPU "
             "us / task | tasks/s | worker connections | broker fds | broker MB | other "
             "connections | took s |", "|" + "---:|" * 14]
    for r in rows:
        if r["kind"] == kind:
            lines.append(
                f"| {r['workers']:,} | {r['tasks']:,} | {r['stream_per_task']:.2f} | "
                f"{r['task_deliveries_per_task']:.2f} | {r['bytes_per_task']:,.0f} | "
                f"{r['consuming_bytes_per_task']:,.0f} | "
                f"{r['cpu_us_per_task']:,.0f} | {r['worker_cpu_us_per_task']:,.0f} | "
                f"{r['tasks_per_s']:,.0f} | {r['connections']} | "
                f"{r['fds']} | {r['memory_mb']:.0f} | {r['foreign']} | {r['took']:.0f} |")
    return lines


def start_table(rows: list[dict]) -> list[str]:
    """From the workers' start to every one subscribed (before the counters' first reading)."""
    lines = ["| workers | all subscribed after s | one worker's start, median / max s | broker "
             "CPU ms / worker | worker CPU ms / worker | broker MB / worker | reconnects | "
             "gave up |", "|---|" + "---:|" * 7]
    for r in rows:
        ups = sorted(r.get("sim_up_seconds", []))
        each = f"{ups[len(ups) // 2]:.2f} / {ups[-1]:.2f}" if ups else ""
        lines.append(f"| {r['workers']:,} {r['kind']} | {r['start_s']:.1f} | {each} | "
                     f"{r['start_broker_ms']:.1f} | {r['start_worker_ms']:.1f} | "
                     f"{r['mb_per_worker']:.2f} | {r.get('sim_reconnects', '')} | "
                     f"{r.get('sim_failed', '')} |")
    return lines


def render(label: str, results: list[dict], skipped: list[str], broker: Broker, commit: str,
           quick: bool) -> str:
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text()
                .splitlines() if line.startswith("model name")), "?")
    lines = [f"## {label}: commit {commit}, {stamp}{' (--quick)' if quick else ''}", "",
             f"Machine: {os.cpu_count()} cores ({cpu}), Python {sys.version.split()[0]}; "
             f"RabbitMQ {broker.version}, {broker.where} (pid {broker.pid}, fd limit "
             f"{broker.fd_limit}); \"other connections\": connections not this setting's "
             "(another session's work moves the counters).", "",
             *(["Real workers (`listening_worker.py` processes):", "", *table(results, "real"),
                ""] if any(r["kind"] == "real" for r in results) else []),
             "Simulated workers (the product's `TaskConsumer`, "
             f"{SIM_PER_PROCESS} to a process on one I/O loop, {STARTING_AT_ONCE} of them "
             "starting at a time; bench/scale_sim.py):", "", *table(results, "sim"), "",
             "Start-up (the workers' start to all subscribed; simulated: each instance's own "
             "start to its subscription, \"reconnects\": connections opened again, \"gave up\": "
             "instances that failed):", "", *start_table(results), ""]
    idle = [r for r in results if "idle_stream_per_s" in r]
    if idle:
        lines += [f"Idle (after the drain, {IDLE_SETTLE:.0f} s to settle, then measured):", "",
                  "| workers | stream deliveries / s | per worker / s | broker CPU ms / s per "
                  "worker | worker CPU ms / s per worker |", "|---|---:|---:|---:|---:|"]
        lines += [f"| {r['workers']:,} {r['kind']} | {r['idle_stream_per_s']:.1f} | "
                  f"{r['idle_stream_per_s'] / r['workers']:.2f} | {r['idle_broker_ms']:.2f} | "
                  f"{r['idle_worker_ms']:.2f} |" for r in idle]
        lines.append("")
    sims = [r for r in results if r["kind"] == "sim" and "sim_tail_read" in r]
    if sims:
        lines += ["Cross-check, simulated: messages the tails read (client side, whole run, "
                  "from start to stop) / task: " + ", ".join(
                      f"{r['workers']}: {r['sim_tail_read'] / r['tasks']:.2f}" for r in sims), ""]
    lines += [f"Not run: {s}" for s in skipped] + ([""] if skipped else [])
    return "\n".join(lines)


def write_section(out: Path, label: str, section: str) -> None:
    """Replace the section named *label* in *out* (or add it), keeping the others."""
    out.parent.mkdir(parents=True, exist_ok=True)
    text = out.read_text() if out.exists() else HEADER
    parts = re.split(r"(?m)^(?=## )", text)
    kept = [p for p in parts if not p.startswith(f"## {label}:")]
    out.write_text("".join(kept).rstrip("\n") + "\n\n" + section)


HEADER = "# Broker cost per task against the number of workers (bench/scale.py)\n"


def parse_sizes(text: str) -> dict[str, list[tuple[int, int, float]]]:
    sizes: dict[str, list[tuple[int, int, float]]] = {"real": [], "sim": []}
    for item in text.split(","):
        kind, workers, tasks, idle = item.split(":")
        sizes[kind].append((int(workers), int(tasks), float(idle)))
    return sizes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, < 1 minute")
    parser.add_argument("--out", type=Path, help="markdown file (default: bench/scale.md)")
    parser.add_argument("--label", default="measured", help="the section's name")
    parser.add_argument("--only", choices=("real", "sim"), help="one part only")
    parser.add_argument("--sizes", metavar="KIND:WORKERS:TASKS:IDLE,...",
                        help="instead of the built-in sizes, e.g. sim:1000:300:0,real:8:500:30")
    parser.add_argument("--commit", default="HEAD",
                        help="the commit to measure (git archive of it; default: HEAD)")
    parser.add_argument("--private-broker", action="store_true",
                        help="run everything against a node of our own in a network namespace "
                             "(root; exact counters, 20,000 descriptors): see scale_broker.py")
    parser.add_argument("--no-probes", action="store_true",
                        help="diagnostic: simulated workers never probe (worker/reach.py)")
    parser.add_argument("--tcp-buffer", type=int, metavar="BYTES",
                        help="the private node's sndbuf and recbuf (default: the kernel's, "
                             "~3.8 MB a connection on loopback): see scale_broker.py")
    args = parser.parse_args()
    # SIGTERM (a timeout, CI) ends us through the finally blocks: queues, workers, the node
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(143))
    if args.private_broker:
        private = PrivateBroker(args.tcp_buffer)
        private.start()
        try:
            argv = [a for a in sys.argv[1:] if a != "--private-broker"]
            return private.run([sys.executable, str(Path(__file__).resolve()), *argv])
        finally:
            private.stop()
    if args.no_probes:
        os.environ[NO_PROBES] = "1"  # the simulation processes inherit it
    sizes = parse_sizes(args.sizes) if args.sizes else SIZES["quick" if args.quick else "full"]
    out = args.out or ROOT / "bench" / ("out/scale-quick.md" if args.quick else "scale.md")
    broker = Broker()
    results: list[dict] = []
    skipped: list[str] = []
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", args.commit],
                            capture_output=True, text=True, check=True).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        tree = Path(tmp) / "tree"  # the commit, not the working tree others are editing
        tree.mkdir()
        archive = subprocess.Popen(["git", "-C", str(ROOT), "archive", commit],
                                   stdout=subprocess.PIPE)
        subprocess.run(["tar", "-x", "-C", str(tree)], stdin=archive.stdout, check=True)
        archive.wait()
        for kind in ("real", "sim"):
            if args.only and kind != args.only:
                continue
            for count, tasks, idle in sizes[kind]:
                refusal = fd_guard(broker, results, count) if kind == "sim" else None
                if refusal:
                    skipped.append(f"{kind} {count}: {refusal}")
                    print(skipped[-1], flush=True)
                    continue
                results.append(measure(broker, kind, count, tasks, idle, Path(tmp), tree))
    section = render(args.label, results, skipped, broker, commit, quick=args.quick)
    if args.no_probes:
        section = section.replace("\n\n", "\n\n**Diagnostic: the simulated workers' probes "
                                  "(worker/reach.py) off; not the product.**\n\n", 1)
    write_section(out, args.label, section)
    print(f"wrote {out}")
    return 0

if __name__ == "__main__":
    sys.exit(main())
