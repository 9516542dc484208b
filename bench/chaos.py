#!/usr/bin/env python3
"""A randomized fault run: workers of every kind, an emitter, and faults drawn from a seed
striking while they work; then the invariants. Listed scenarios are the minimum: this finds
where faults meet.

    make chaos                                   # 3 minutes, a new seed (printed)
    python bench/chaos.py --seed 7 --duration 600 --setup cluster
    python bench/chaos.py --seed 7 --duration 45  # replay a seed (same schedule)

On throwaway nodes (one node behind a TCP proxy that can go silent, a 3-node cluster, or the
3-node cluster of tests/partitions.py whose nodes can be cut apart; the main broker is never
touched). Six workers (simulated, simulated x3 slots, isolated handler,
handler x2, --command, --command x2) with --task-timeout, retries and --exit-when-idle; tasks
that succeed, raise, hang, kill their process, plus bad bytes; batches emitted from CSV files.
Faults: SIGKILL and SIGTERM on workers and emitters (then --resume), node restart, node loss
(cluster), memory and disk alarms, a silent network path, companions deleted, workers started
late, stop requests during an alarm; with ``--setup partitions`` also network partitions
(one node cut off from the others, pause_minority), workers paused (SIGSTOP past their
heartbeat) and a node's Erlang VM paused.

At the end, with every fault undone, it checks: every task published is done or in .dead (none
lost); duplicates only from the causes docs/guarantees.md lists (a task cut off mid-work, an
emitter that lost its connection or was killed); no task left in any queue; every worker
sent SIGTERM exited 0 within its grace; every other worker exited on its own; no process of
ours left running; the report agrees with the workers' logs, and misses no task done (its
outcome is recorded before the ack, whatever killed whom); every task done has exactly one row
in --csv; no attempt of a task was started by a worker that had read its done record (same
run). Any violation: exit 1, with the seed.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pika

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.sides import Away, log_clock, node_of, stays, summary  # noqa: E402
from taskqueue.broker.config import BrokerSettings, QueueSpec  # noqa: E402
from taskqueue.results.history import History  # noqa: E402
from taskqueue.results.table import task_rows  # noqa: E402
from taskqueue.views.report import RunReport  # noqa: E402
from tests.brokers import ThrowawayBroker  # noqa: E402
from tests.helpers import consume_all, queue_state  # noqa: E402
from tests.partitions import PartitionCluster  # noqa: E402
from tests.proxy import SilentProxy  # noqa: E402

TASK_TIMEOUT = 1.5
# A worker sent SIGTERM finishes its tasks in hand (<= the task timeout), waits up to 5 s for
# copies and 5 s for events, then closes (3 s at most when the broker does not answer).
GRACE_LIMIT = TASK_TIMEOUT + 5 + 5 + 3 + 6
WORKER_KINDS = {
    "sim": ["--seconds-per-dot", "0.05"],
    "sim x3": ["--seconds-per-dot", "0.05", "--concurrency", "3"],
    "handler": ["--handler", "bench.chaos_tasks:work"],
    "handler x2": ["--handler", "bench.chaos_tasks:work", "--concurrency", "2"],
    "command": ["--command", f"{ROOT / 'bench' / 'chaos_task.sh'} {{}}"],
    "command x2": ["--command", f"{ROOT / 'bench' / 'chaos_task.sh'} {{}}", "--concurrency",
                   "2"],
}
WORKER_COMMON = ["--task-timeout", str(TASK_TIMEOUT), "--max-retries", "2", "--retry-delay",
                 "0.5", "--exit-when-idle", "6", "--connect-timeout", "300", "--heartbeat", "2"]
TASK_MIX = [("ok", 72), ("ok.", 17), ("raise", 6), ("kill", 4), ("hang", 1)]
FAULTS = {  # kind: (weight, setups it applies to)
    "kill worker": (5, "single cluster"), "term worker": (4, "single cluster"),
    "kill emitter": (3, "single cluster"), "term emitter": (2, "single cluster"),
    "node restart": (2, "single cluster"), "node loss": (3, "cluster"),
    "memory alarm": (2, "single cluster"), "disk alarm": (2, "single cluster"),
    "silent path": (3, "single"), "delete companions": (2, "single cluster"),
    "late worker": (2, "single cluster"), "stop during alarm": (2, "single cluster"),
    "bad bytes": (2, "single cluster"),
    "pause": (2, "single cluster"), "stop a worker by name": (2, "single cluster"),
    # Only with --setup partitions, which also gets every "cluster" fault (the schedules of the
    # other setups, and so their seeds' replays, stay as they were).
    "partition": (3, "partitions"), "pause worker": (3, "partitions"),
    "pause node": (2, "partitions"),
}
SETUPS = ["single", "cluster", "partitions"]
DONE = re.compile(r"\] done (?:row \d+|no row), id (\S+) in ")
REDELIVERED = re.compile(r"\] received (?:row \d+|no row), id (\S+)[^\n]*\(redelivered")
RUN_ID = re.compile(r"\(run (\S+)\)")
RESENT = "reconnecting to send it again"  # the outbox: confirms stopped, what was owed goes again
COPIED = re.compile(r"\] (?:dead-lettered|failed) (?:row \d+|no row), id (\S+)")
RESEND_WINDOW = 10.0  # s: a copy owed when confirms stopped is settled within this after it


def proc_start_time(pid: int) -> str | None:
    """The process's start time (to tell it from a later process with its pid), if alive."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else fields[19]


def descendants(pid: int) -> set[tuple[int, str]]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(parent, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            start = proc_start_time(child)
            if start is not None:
                found.add((child, start))
            todo.append(child)
    return found


def resent_copies(log: str) -> set[str]:
    """Message ids whose copy to .retry or .dead a worker may have sent twice: settled (its
    "dead-lettered" or "failed" line, said once the copy is confirmed) within RESEND_WINDOW
    seconds after the worker's outbox sent again what confirms had stopped on (the first
    send may have reached the queue: a listed cause, docs/guarantees.md)."""
    found: set[str] = set()
    resent_at = None
    for line in log.splitlines():
        parsed = log_clock(line)
        if parsed is None:
            continue
        at = parsed[0]
        if RESENT in line:
            resent_at = at
        elif resent_at is not None and (at - resent_at) % 86400 <= RESEND_WINDOW:
            copied = COPIED.search(line)
            if copied:
                found.add(copied[1])
    return found


def local_clock() -> float:
    """Now, as local seconds since midnight: what a log line's ``HH:MM:SS`` says."""
    now = time.time()
    moment = time.localtime(now)
    return moment.tm_hour * 3600 + moment.tm_min * 60 + moment.tm_sec + now % 1


@dataclass
class Proc:
    """A script we started, and what became of it."""

    name: str
    role: str  # worker kind, or "emitter"
    popen: subprocess.Popen
    out: Path
    started: float = field(default_factory=time.monotonic)
    signals: list[tuple[str, float]] = field(default_factory=list)
    exited: float | None = None
    code: int | None = None
    children: set = field(default_factory=set)
    resumed: bool = False  # an emitter whose batch was resumed by another

    def poll(self) -> bool:
        """True once it has ended (and records when)."""
        if self.exited is None and self.popen.poll() is not None:
            self.exited, self.code = time.monotonic(), self.popen.returncode
        return self.exited is not None

    def send(self, sig: signal.Signals) -> bool:
        if self.poll():
            return False
        if sig == signal.SIGKILL:
            self.children |= descendants(self.popen.pid)
        self.signals.append((sig.name, time.monotonic()))
        with contextlib.suppress(ProcessLookupError):
            self.popen.send_signal(sig)
        return True

    def text(self) -> str:
        return self.out.read_text(encoding="utf-8", errors="replace")


@dataclass
class Batch:
    name: str
    path: Path
    rows: int
    emitters: list[Proc] = field(default_factory=list)
    run_ids: list[str] = field(default_factory=list)
    complete: bool = False
    claimed: bool = False  # an emitter was started for it (by one fault thread only)
    republished: bool = False  # killed or reconnected mid-publish: duplicates are allowed


class Setup:
    """The broker side: one node behind a proxy, or a 3-node cluster."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        suffix = uuid.uuid4().hex[:6]
        count = 1 if kind == "single" else 3
        self.partitions: PartitionCluster | None = None
        if kind == "partitions":  # nodes on 127.0.0.11-13 with an epmd of their own
            self.partitions = PartitionCluster("pause_minority")
            self.nodes: list[ThrowawayBroker] = list(self.partitions.nodes)
        else:
            self.nodes = [ThrowawayBroker(name=f"chaos{n}-{suffix}") for n in range(count)]
        self.down: set[int] = set()
        self.proxy: SilentProxy | None = None

    def start(self) -> None:
        if self.partitions is not None:
            self.partitions.start()
            return
        with concurrent.futures.ThreadPoolExecutor(len(self.nodes)) as pool:
            list(pool.map(lambda node: node.start(), self.nodes))
        for node in self.nodes[1:]:
            node.stop_app()
            joined = node.ctl("join_cluster", self.nodes[0].node)
            if joined.returncode != 0:
                raise RuntimeError(f"cannot join the cluster: {joined.stderr}")
            node.start_app()
        if self.kind == "single":
            self.proxy = SilentProxy(self.nodes[0].port)

    def worker_urls(self, index: int, rng: random.Random) -> list[str]:
        if self.kind != "single":
            ring = self.nodes[index % 3:] + self.nodes[:index % 3]
            return [node.url for node in ring]
        if index % 2 == 0:
            return [f"amqp://guest:guest@127.0.0.1:{self.proxy.port}/%2F"]
        return [self.nodes[0].url]

    @property
    def url(self) -> str:
        """A node that is up, for the harness's own look-ups."""
        up = [node for n, node in enumerate(self.nodes) if n not in self.down]
        return (up or self.nodes)[0].url

    def answering_url(self, wait: float = 120.0) -> str:
        """A node that takes a connection now, for the checks at the end: a node the harness
        restarted as the faults ended may still be starting (seed 148826: node 0 refused)."""
        deadline = time.monotonic() + wait
        while True:
            for node in self.nodes:
                with contextlib.suppress(pika.exceptions.AMQPError, OSError):
                    pika.BlockingConnection(pika.URLParameters(node.url)).close()
                    return node.url
            if time.monotonic() >= deadline:
                return self.url
            time.sleep(1.0)

    def cleanup(self) -> None:
        if self.proxy:
            self.proxy.close()
        if self.partitions is not None:
            self.partitions.cleanup()  # the iptables rules, the nodes, its epmd
            return
        for node in self.nodes:
            node.cleanup()


class Chaos:
    def __init__(self, seed: int, duration: float, setup: str, workdir: Path) -> None:
        self.seed, self.duration, self.dir = seed, duration, workdir
        self.rng = random.Random(seed)  # the batches and the fault schedule
        self.misc = random.Random(seed + 1)  # restarts, sampling: drawn as timing allows
        self.setup = Setup(setup)
        self.queue = f"chaos_{seed}"
        self.logs = workdir / "logs"
        self.logs.mkdir(parents=True)
        self.lock = threading.RLock()
        self.t0, self.t0_clock = time.monotonic(), local_clock()
        self.aways: list[Away] = []  # nodes cut off or paused, for "longest on the wrong side"
        self.workers: list[Proc] = []
        self.pool: dict[int, Proc | None] = {}  # index -> its current worker
        self.batches: list[Batch] = []
        self.faults: Counter = Counter()
        self.skipped: Counter = Counter()
        self.active: set[str] = set()  # durational faults in force
        self.paused: set[str] = set()  # workers SIGSTOPped now (not to be signalled meanwhile)
        self.bad_ids: set[str] = set()
        self.drained_dead: list[tuple[pika.BasicProperties, bytes]] = []
        self.violations: list[str] = []
        self.harness_errors: list[str] = []
        self.ending = False
        self.threads: list[threading.Thread] = []
        self.report_incomplete = False

    # --- output ------------------------------------------------------------------------------
    def say(self, text: str) -> None:
        print(f"  t+{time.monotonic() - self.t0:6.1f}s  {text}", flush=True)

    # --- processes ---------------------------------------------------------------------------
    def env(self) -> dict[str, str]:
        return {**os.environ, "TASKQUEUE_LOG_DIR": str(self.logs), "PYTHONUNBUFFERED": "1"}

    def start_worker(self, index: int) -> Proc:
        kind = list(WORKER_KINDS)[index % len(WORKER_KINDS)]
        name = f"w{index}-{sum(p.name.startswith(f'w{index}-') for p in self.workers) + 1}"
        urls = [arg for url in self.setup.worker_urls(index, self.rng) for arg in ("--url", url)]
        out = self.dir / f"{name}.out"
        with open(out, "w") as handle:
            popen = subprocess.Popen(
                [sys.executable, str(ROOT / "listening_worker.py"), "--queue", self.queue,
                 "--name", name, *urls, *WORKER_KINDS[kind], *WORKER_COMMON],
                stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT,
                env=self.env())
        proc = Proc(name, kind, popen, out)
        with self.lock:
            self.workers.append(proc)
            self.pool[index] = proc
        return proc

    def start_emitter(self, batch: Batch) -> Proc:
        with self.lock:  # one numbering of a batch's emitter runs, whoever starts them
            batch.claimed = True
            return self._start_emitter(batch)

    def _start_emitter(self, batch: Batch) -> Proc:
        resume = ["--resume"] if batch.emitters else []
        url = self.setup.url
        if self.setup.proxy and self.misc.random() < 0.5:
            url = f"amqp://guest:guest@127.0.0.1:{self.setup.proxy.port}/%2F"
        out = self.dir / f"{batch.name}-{len(batch.emitters) + 1}.emitter.out"
        urls = [url] if self.setup.kind == "single" else [n.url for n in self.setup.nodes]
        with open(out, "w") as handle:
            popen = subprocess.Popen(
                [sys.executable, str(ROOT / "emitter_of_tasks.py"), "--queue", self.queue,
                 *[arg for u in urls for arg in ("--url", u)], "--file", str(batch.path),
                 "--no-admin", "--heartbeat", "2", "--connect-timeout", "300", *resume],
                stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT,
                env=self.env())
        proc = Proc(f"{batch.name}#{len(batch.emitters) + 1}", "emitter", popen, out)
        batch.emitters.append(proc)
        return proc

    def running_workers(self) -> list[Proc]:
        with self.lock:
            return [proc for proc in self.workers if not proc.poll()]

    def running_emitter(self) -> tuple[Batch, Proc] | None:
        for batch in self.batches:
            if batch.emitters and not batch.emitters[-1].poll():
                return batch, batch.emitters[-1]
        return None

    # --- the tasks -----------------------------------------------------------------------------
    def make_batches(self, count: int) -> None:
        kinds, weights = zip(*TASK_MIX)
        for number in range(1, count + 1):
            rows = self.rng.randint(250, 700)
            lines = []
            for n in range(1, rows + 1):
                kind = self.rng.choices(kinds, weights)[0]
                if kind == "ok.":
                    lines.append(f"ok {n}{'.' * self.rng.randint(1, 6)}")
                elif kind == "hang":
                    lines.append(f"hang {n}{'.' * 40}")
                else:
                    lines.append(f"{kind} {n}")
            path = self.dir / f"b{number}.csv"
            path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
            self.batches.append(Batch(f"b{number}", path, rows))

    # --- faults --------------------------------------------------------------------------------
    def schedule(self) -> list[tuple[float, str]]:
        plan = [(0.0 + i * self.duration / len(self.batches) * 0.8, "emit")
                for i in range(len(self.batches))]
        setups = {self.setup.kind, "cluster"} if self.setup.kind == "partitions" \
            else {self.setup.kind}
        kinds = [k for k, (_, where) in FAULTS.items() if setups & set(where.split())]
        weights = [FAULTS[k][0] for k in kinds]
        at = 2.0
        while True:
            at += self.rng.expovariate(1 / 5.0)  # a fault every 5 s on average
            if at >= self.duration:
                break
            plan.append((at, self.rng.choices(kinds, weights)[0]))
        return sorted(plan)

    def strike(self, kind: str) -> None:
        """Run one fault (on a thread of its own: faults overlap, as in life)."""
        rng = random.Random(self.rng.random())  # drawn now, in schedule order: replayable

        def run() -> None:
            try:
                applied = getattr(self, "fault_" + kind.replace(" ", "_"))(rng)
            except Exception as exc:  # a harness step failed: say so, count it
                self.harness_errors.append(f"{kind}: {exc!r}")
                self.say(f"harness error in {kind}: {exc!r}")
                return
            with self.lock:
                (self.faults if applied is not False else self.skipped)[kind] += 1

        thread = threading.Thread(target=run, name=kind, daemon=True)
        thread.start()
        self.threads.append(thread)

    def _durational(self, name: str) -> bool:
        with self.lock:
            if name in self.active:
                return False
            self.active.add(name)
            return True

    def _over(self, name: str) -> None:
        with self.lock:
            self.active.discard(name)

    def claim_batch(self) -> Batch | None:
        """The next batch nobody has emitted, taken by one caller only (faults race)."""
        with self.lock:
            batch = next((b for b in self.batches if not b.claimed), None)
            if batch is not None:
                batch.claimed = True
            return batch

    def fault_emit(self, rng: random.Random) -> bool:
        batch = self.claim_batch()
        if batch is None:
            return False
        self.start_emitter(batch)
        self.say(f"emitting {batch.name} ({batch.rows} rows)")
        return True

    def _pick_worker(self, rng: random.Random) -> Proc | None:
        # A paused worker is not signalled meanwhile: its grace would run while it cannot act.
        running = [proc for proc in self.running_workers() if proc.name not in self.paused]
        return rng.choice(running) if running else None

    def fault_kill_worker(self, rng: random.Random) -> bool:
        worker = self._pick_worker(rng)
        if worker is None or not worker.send(signal.SIGKILL):
            return False
        self.say(f"SIGKILL worker {worker.name} ({worker.role})")
        return True

    def fault_term_worker(self, rng: random.Random) -> bool:
        worker = self._pick_worker(rng)
        if worker is None or not worker.send(signal.SIGTERM):
            return False
        self.say(f"SIGTERM worker {worker.name} ({worker.role})")
        return True

    def _hit_emitter(self, rng: random.Random, sig: signal.Signals) -> bool:
        running = self.running_emitter()
        if running is None:
            batch = self.claim_batch()
            if batch is None:
                return False
            proc = self.start_emitter(batch)
            self.say(f"emitting {batch.name} ({batch.rows} rows), to be hit")
            time.sleep(rng.uniform(0.2, 0.6))  # the interpreter starts, then publishing
        else:
            batch, proc = running
        if not proc.send(sig):
            return False
        second = sig == signal.SIGTERM and rng.random() < 0.5
        if second:
            time.sleep(0.2)
            proc.send(signal.SIGINT)  # a second stop request: stop at once, unconfirmed left
        with self.lock:  # --resume publishes again what was not confirmed: the broker may
            batch.republished |= sig == signal.SIGKILL or second  # have had some of it
        self.say(f"{sig.name}{' x2' if len(proc.signals) > 1 else ''} emitter {proc.name}")
        return True

    def fault_kill_emitter(self, rng: random.Random) -> bool:
        return self._hit_emitter(rng, signal.SIGKILL)

    def fault_term_emitter(self, rng: random.Random) -> bool:
        return self._hit_emitter(rng, signal.SIGTERM)

    def fault_node_restart(self, rng: random.Random) -> bool:
        index = rng.randrange(len(self.setup.nodes))
        if not self._durational(f"node {index}"):
            return False
        try:
            node = self.setup.nodes[index]
            down = rng.uniform(0.5, 4.0)
            self.say(f"restarting node {index} (down {down:.1f} s)")
            self.setup.down.add(index)
            node.stop_app()
            time.sleep(down)
            node.start_app()
            self.setup.down.discard(index)
        finally:
            self._over(f"node {index}")
        return True

    def fault_node_loss(self, rng: random.Random) -> bool:
        index = rng.randrange(len(self.setup.nodes))
        if len(self.setup.down) or not self._durational(f"node {index}"):
            return False  # one node down at a time: a quorum queue needs a majority
        try:
            down = rng.uniform(5.0, 15.0)
            self.say(f"node {index} lost for {down:.1f} s")
            self.setup.down.add(index)
            self.setup.nodes[index].stop_app()
            self._sleep_unless_ending(down)
            self.setup.nodes[index].start_app()
            self.setup.down.discard(index)
        finally:
            self._over(f"node {index}")
        return True

    def _alarm(self, kind: str, seconds: float, during=None) -> bool:
        if not self._durational(f"{kind} alarm"):
            return False
        node = self.setup.nodes[0]
        try:
            self.say(f"{kind} alarm on for {seconds:.1f} s")
            if kind == "disk":
                node.ctl("set_disk_free_limit", "100000GB")
            else:
                node.ctl("set_vm_memory_high_watermark", "0.00001")
            started = time.monotonic()
            if during is not None:
                time.sleep(1.0)
                during()
            self._sleep_unless_ending(seconds - (time.monotonic() - started))
        finally:
            if kind == "disk":
                node.ctl("set_disk_free_limit", "50MB")
            else:
                node.ctl("set_vm_memory_high_watermark", "0.4")
            self.say(f"{kind} alarm off")
            self._over(f"{kind} alarm")
        return True

    def fault_memory_alarm(self, rng: random.Random) -> bool:
        return self._alarm("memory", rng.uniform(2.0, 8.0))

    def fault_disk_alarm(self, rng: random.Random) -> bool:
        return self._alarm("disk", rng.uniform(2.0, 8.0))

    def fault_stop_during_alarm(self, rng: random.Random) -> bool:
        kind = rng.choice(["memory", "disk"])
        if f"{kind} alarm" in self.active:  # one is on already: stop a worker during it
            return self.fault_term_worker(rng)
        return self._alarm(kind, rng.uniform(4.0, 10.0),
                           during=lambda: self.fault_term_worker(rng))

    def fault_silent_path(self, rng: random.Random) -> bool:
        proxy = self.setup.proxy
        if proxy is None or not self._durational("silent path"):
            return False
        try:
            seconds = rng.uniform(3.0, 15.0)
            self.say(f"network path silent for {seconds:.1f} s")
            proxy.go_silent()
            self._sleep_unless_ending(seconds)
        finally:
            proxy.drop_old()
            self._over("silent path")
        return True

    def fault_delete_companions(self, rng: random.Random) -> bool:
        """.retry and .dead, when empty (a full one would lose its tasks with it: not a fault of
        ours). What waits in .dead is kept by the harness first."""
        deleted = []

        def delete() -> None:
            url = self.setup.url
            with self.lock:
                self.drained_dead += consume_all(self.queue + ".dead", url, quiet_for=0.3)
            connection = pika.BlockingConnection(pika.URLParameters(url))
            with contextlib.suppress(pika.exceptions.AMQPError):  # closed by another fault
                for name in (self.queue + ".retry", self.queue + ".dead"):
                    try:
                        connection.channel().queue_delete(name, if_empty=True)
                        deleted.append(name)
                    except pika.exceptions.ChannelClosedByBroker:
                        pass  # not empty, or gone already
                connection.close()

        for _try in range(5):  # .retry empties between failures: try for a few seconds
            self.with_broker(delete)
            if deleted:
                break
            time.sleep(1.0)
        self.say(f"deleted {', '.join(deleted) or 'nothing (not empty)'}")
        return bool(deleted)

    def fault_late_worker(self, rng: random.Random) -> bool:
        index = len(self.pool)
        self.start_worker(index)
        self.say(f"late worker w{index} ({list(WORKER_KINDS)[index % len(WORKER_KINDS)]})")
        return True

    def fault_bad_bytes(self, rng: random.Random) -> bool:
        bodies = {f"chaos-bad:{uuid.uuid4().hex[:8]}": body
                  for body in (b"\xff\xfe not utf-8", b"", b"nul \x00 inside")}

        def publish() -> None:  # again after a fault: the same ids, so at most a duplicate
            connection = pika.BlockingConnection(pika.URLParameters(self.setup.url))
            try:
                channel = connection.channel()
                channel.confirm_delivery()
                for message_id, body in bodies.items():
                    with self.lock:
                        self.bad_ids.add(message_id)
                    channel.basic_publish("", self.queue, body, pika.BasicProperties(
                        delivery_mode=2, message_id=message_id), mandatory=True)
            finally:
                with contextlib.suppress(pika.exceptions.AMQPError):
                    connection.close()

        self.with_broker(publish)
        self.say("published 3 bad messages (not UTF-8, empty, a NUL byte)")
        return True

    def with_broker(self, operation, tries: int = 20) -> None:
        """A harness step on the broker, tried again while other faults get in its way (a
        node restarting, a path gone silent: the harness uses direct URLs, never the proxy)."""
        for attempt in range(tries):
            try:
                operation()
                return
            except (pika.exceptions.AMQPError, OSError):
                if attempt == tries - 1:
                    raise
                time.sleep(1.0)

    def control(self, *args: str) -> str:
        """task_control.py, as an operator would run it (on a node that is up); run again, as
        an operator would, when it said the broker did not answer (another fault's doing)."""
        for _attempt in range(20):
            result = subprocess.run([sys.executable, str(ROOT / "task_control.py"), *args,
                                     "--queue", self.queue, "--url", self.setup.url],
                                    capture_output=True, text=True, cwd=ROOT, env=self.env(),
                                    timeout=120, stdin=subprocess.DEVNULL)
            if result.returncode != 3:  # 3: unreachable, said in one line
                break
            time.sleep(1.0)
        if result.returncode != 0:
            raise RuntimeError(f"task_control.py {args[0]}: {result.stderr.strip()}")
        return result.stdout.strip()

    def fault_pause(self, rng: random.Random) -> bool:
        """Pause every worker for a while (they finish what is in hand), then resume."""
        if not self._durational("pause"):
            return False
        try:
            seconds = rng.uniform(2.0, 8.0)
            self.say(f"pause for {seconds:.1f} s: {self.control('pause')[:100]}")
            self._sleep_unless_ending(seconds)
        finally:
            self.say(f"resume: {self.control('resume')[:100]}")
            self._over("pause")
        return True

    def fault_stop_a_worker_by_name(self, rng: random.Random) -> bool:
        worker = self._pick_worker(rng)
        if worker is None:
            return False
        self.say(f"stop-workers --name {worker.name}: "
                 f"{self.control('stop-workers', '--name', worker.name)[:100]}")
        return True

    def fault_partition(self, rng: random.Random) -> bool:
        """One node cut off from the other two (its clients keep their connections to it)."""
        cluster = self.setup.partitions
        return self._node_away(rng, (15.0, 40.0), "partition: node {} cut off for {:.1f} s",
                               cluster.cut, lambda _node: cluster.heal())

    def fault_pause_node(self, rng: random.Random) -> bool:
        """A node's Erlang VM SIGSTOPped: it answers nothing, its sockets stay open."""
        cluster = self.setup.partitions
        return self._node_away(rng, (5.0, 25.0), "node {}'s VM paused (SIGSTOP) for {:.1f} s",
                               cluster.pause, cluster.resume)

    def _node_away(self, rng: random.Random, seconds_range: tuple[float, float], said: str,
                   begin, end) -> bool:
        """One node (drawn) made unable to serve for a while (drawn), then brought back and
        the cluster awaited whole; one node away at a time: a quorum queue needs a majority."""
        index = rng.randrange(len(self.setup.nodes))
        if self.setup.down or not self._durational(f"node {index}"):
            return False
        node = self.setup.nodes[index]
        seconds = rng.uniform(*seconds_range)
        what = said.format(index, seconds)
        self.say(what)
        began = time.monotonic() - self.t0
        try:
            self.setup.down.add(index)
            begin(node)
            self._sleep_unless_ending(seconds)
        finally:
            end(node)
            with self.lock:
                self.aways.append(Away(node_of(node.url), began, time.monotonic() - self.t0,
                                       what))
            self._wait_whole(node)
            self.setup.down.discard(index)
            self._over(f"node {index}")
        return True

    def _wait_whole(self, node: ThrowawayBroker) -> None:
        try:
            self.setup.partitions.wait_whole(restart=node, timeout=45)
        except AssertionError as exc:
            self.say(f"the cluster is not whole yet: {str(exc)[:200]}")

    def fault_pause_worker(self, rng: random.Random) -> bool:
        """A worker SIGSTOPped, mostly past its heartbeat (2 s): the broker gives its tasks to
        others; continued, it must stop that work and reconnect."""
        worker = self._pick_worker(rng)
        if worker is None or worker.poll():
            return False
        with self.lock:
            self.paused.add(worker.name)
        seconds = rng.uniform(2.0, 12.0)
        try:
            self.say(f"SIGSTOP worker {worker.name} ({worker.role}) for {seconds:.1f} s")
            with contextlib.suppress(ProcessLookupError):  # not in .signals: no grace runs
                worker.popen.send_signal(signal.SIGSTOP)
            self._sleep_unless_ending(seconds)
        finally:
            with contextlib.suppress(ProcessLookupError):
                worker.popen.send_signal(signal.SIGCONT)
            with self.lock:
                self.paused.discard(worker.name)
        return True

    def _sleep_unless_ending(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not self.ending:
            time.sleep(0.1)

    # --- the run -------------------------------------------------------------------------------
    def maintain(self) -> None:
        """Workers that ended come back (as new processes) after a while; emitters that were
        stopped are resumed; descendants of workers are recorded."""
        with self.lock:
            pool = list(self.pool.items())
        for index, proc in pool:
            if proc is None or not proc.poll():
                if proc is not None and self.misc.random() < 0.2:
                    proc.children |= descendants(proc.popen.pid)
                continue
            self.pool[index] = None
            delay = self.misc.uniform(0.5, 4.0)
            timer = threading.Timer(delay, lambda i=index: self.ending or self.start_worker(i))
            timer.daemon = True
            timer.start()
        for batch in self.batches:
            last = batch.emitters[-1] if batch.emitters else None
            if last is not None and last.poll() and not batch.complete:
                self.settle_emitter(batch, last, resume=not self.ending)

    def settle_emitter(self, batch: Batch, proc: Proc, resume: bool) -> None:
        text = proc.text()
        run = RUN_ID.search(text)
        if run and run[1] not in batch.run_ids:
            batch.run_ids.append(run[1])
        if "published again" in text:
            batch.republished = True
        if proc.code == 0 and "--resume" not in text:
            batch.complete = True
            return
        if resume and not proc.resumed:
            proc.resumed = True
            self.say(f"resuming {batch.name} (emitter {proc.name} ended with {proc.code})")
            self.start_emitter(batch)

    def run(self) -> int:
        print(f"chaos: seed {self.seed}, {self.duration:.0f} s, {self.setup.kind} setup; "
              f"replay with: python bench/chaos.py --seed {self.seed} --duration "
              f"{self.duration:g} --setup {self.setup.kind}", flush=True)
        self.setup.start()
        try:
            self.make_batches(max(3, int(self.duration // 15)))
            for index in range(4):  # two more start late, as faults or below
                self.start_worker(index)
            plan = self.schedule()
            self.t0, self.t0_clock = time.monotonic(), local_clock()
            for _late in range(2):
                plan.append((self.rng.uniform(2, self.duration / 2), "late worker"))
            plan.sort()
            for at, kind in plan:
                while time.monotonic() - self.t0 < at:
                    self.maintain()
                    time.sleep(0.2)
                self.strike(kind)
            while time.monotonic() - self.t0 < self.duration:  # the last faults run their course
                self.maintain()
                time.sleep(0.2)
            self.end_faults()
            self.finish_publishing()
            self.drain_with_workers()
            return self.check()
        finally:
            self.ending = True
            for proc in self.workers + [p for b in self.batches for p in b.emitters]:
                if not proc.poll():
                    proc.send(signal.SIGKILL)
            self.setup.cleanup()

    def end_faults(self) -> None:
        self.say("chaos over: undoing the faults in force")
        self.ending = True
        for thread in self.threads:
            thread.join(60)
        self.ending = False
        for index in list(self.setup.down):
            self.setup.nodes[index].start_app()
            self.setup.down.discard(index)

    def finish_publishing(self) -> None:
        """Every batch published whole: emitted if never, resumed until an emitter completes."""
        while (batch := self.claim_batch()) is not None:
            self.start_emitter(batch)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            self.maintain()
            if all(b.complete for b in self.batches):
                return
            time.sleep(0.3)
        self.violations.append("emitters did not finish publishing within 300 s")

    def drain_with_workers(self) -> None:
        """Let the workers drain the queue and exit on their own (--exit-when-idle)."""
        self.ending = True  # no more restarts: ...
        for index, proc in list(self.pool.items()):
            if proc is None or proc.poll():
                self.start_worker(index)  # ... but every kind is back for the end
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if not self.running_workers():
                return
            with self.lock:
                for proc in self.running_workers():
                    if self.misc.random() < 0.1:
                        proc.children |= descendants(proc.popen.pid)
            time.sleep(0.3)
        for proc in self.running_workers():
            self.violations.append(f"worker {proc.name} did not exit on its own within 300 s "
                                   "of the end (stuck?)")
            proc.send(signal.SIGKILL)

    # --- the invariants --------------------------------------------------------------------------
    def check(self) -> int:
        url = self.setup.answering_url()
        dead = self.drained_dead + consume_all(self.queue + ".dead", url, quiet_for=0.5)
        settled: Counter = Counter(self.key(props.message_id) for props, _ in dead)
        in_dead = sum(settled.values())
        redelivered: set[str] = set()
        logged: set[str] = set()
        for proc in self.workers:
            text = proc.text()
            for message_id in DONE.findall(text):
                settled[self.key(message_id)] += 1
                logged.add(self.key(message_id))
            redelivered.update(self.key(i) for i in REDELIVERED.findall(text))
            redelivered.update(self.key(i) for i in resent_copies(text))
        logged |= set(settled)
        # A SIGKILL can cut the last tenth of a second of a worker's log, not its events: what
        # the report shows settled counts too (once: the logs may have it already).
        reported = self.reported_tasks()
        for key in reported - logged:
            settled[key] += 1
        published = {f"{b.path.name}:{n}" for b in self.batches for n in range(1, b.rows + 1)}
        expected = published | self.bad_ids
        lost = sorted(expected - set(settled))
        unknown = sorted(set(settled) - expected)
        duplicates = {key: n - 1 for key, n in settled.items() if n > 1}
        republished_files = {b.path.name for b in self.batches if b.republished}
        unexplained = [key for key in duplicates if key not in redelivered
                       and key.split(":")[0] not in republished_files]
        if lost:
            self.violations.append(f"{len(lost)} tasks lost, e.g. {lost[:5]}")
        if unknown:
            self.violations.append(f"{len(unknown)} tasks settled that nobody published: "
                                   f"{unknown[:5]}")
        if unexplained:
            self.violations.append(f"{len(unexplained)} duplicates with no listed cause, e.g. "
                                   f"{unexplained[:5]}")
        for name in (self.queue, self.queue + ".retry"):
            state = queue_state(name, url)
            if state and state[0]:
                self.violations.append(f"{state[0]} tasks left in {name}")
            if state and state[1]:
                self.violations.append(f"{state[1]} consumers still on {name}")
        kills = any("SIGKILL" in [n for n, _ in p.signals] for p in self.workers)
        unlogged = reported - logged
        if unlogged and not kills:
            self.violations.append(f"the report shows {len(unlogged)} tasks no log shows")
        missing = (published & set(settled)) - reported
        if missing:  # recorded before the ack: a SIGKILL cannot lose an outcome any more
            self.violations.append(f"the record misses {len(missing)} settled tasks, e.g. "
                                   f"{sorted(missing)[:5]}")
        term_exits = self.check_workers()
        leftovers = self.check_processes()
        self.violations += [f"harness error: {text}" for text in self.harness_errors]
        self.print_table([
            ("tasks published", f"{len(published)} rows in {len(self.batches)} files + "
                                f"{len(self.bad_ids)} bad messages"),
            ("settled (done or dead)", len(set(settled))), ("in .dead", in_dead),
            ("lost", len(lost)), ("duplicated", sum(duplicates.values())),
            ("SIGTERM to exit, slowest", f"{max(term_exits, default=0):.1f} s "
                                        f"(limit {GRACE_LIMIT:g} s)"),
            ("processes left over", leftovers),
            ("report: tasks it misses / shows beyond the logs", f"{len(missing)} / "
                                                                f"{len(unlogged)}"),
            ("--csv: tasks checked for one row each", self.rows_checked),
            ("attempts started after reading their task's done record", self.late_starts),
            ("attempts started after a done record's time, before it could be read",
             self.after_done_time),
            ("longest a worker stayed on a node cut off or paused", self.wrong_side()),
        ])
        if self.violations:
            print(f"\nVIOLATIONS (seed {self.seed}):")
            for text in self.violations:
                print(f"  - {text}")
            return 1
        print(f"\nall invariants hold (seed {self.seed})")
        return 0

    def wrong_side(self) -> str:
        """bench/sides.py: from the nodes' times away and where the workers' logs say they
        were."""
        if self.setup.kind != "partitions":
            return "no partitions in this setup"
        found = []
        for proc in self.workers:
            exited = None if proc.exited is None else proc.exited - self.t0
            found += stays(proc.name, proc.text(), self.t0_clock, exited)
        return summary(self.aways, found)

    def key(self, message_id: object) -> str:
        """A task: ``<file>:<row>`` (a message id without its hash), or a bad message's id."""
        text = str(message_id)
        return text if text in self.bad_ids else ":".join(text.split(":")[:2])

    def check_workers(self) -> list[float]:
        term_exits = []
        for proc in self.workers:
            signals = [name for name, _ in proc.signals]
            if "SIGKILL" in signals:
                continue
            if "SIGTERM" in signals:
                took = proc.exited - proc.signals[0][1]
                if proc.code == -signal.SIGTERM and "starting:" not in proc.text():
                    continue  # stopped before Python could install its handler: had nothing
                term_exits.append(took)
                if took > GRACE_LIMIT or proc.code != 0:
                    self.violations.append(f"worker {proc.name} took {took:.1f} s to stop after "
                                           f"SIGTERM (exit {proc.code}; limit {GRACE_LIMIT:g} s)")
            elif proc.code != 0:
                self.violations.append(f"worker {proc.name} ({proc.role}) exited with "
                                       f"{proc.code} on its own: {proc.text()[-300:]!r}")
        return term_exits

    def check_processes(self) -> int:
        leftovers = 0
        for proc in self.workers:
            for pid, start in proc.children:
                if proc_start_time(pid) == start:
                    leftovers += 1
                    self.violations.append(f"process {pid} started by worker {proc.name} "
                                           f"outlived it")
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)
        return leftovers

    def reported_tasks(self) -> set[str]:
        """The tasks the results record shows done or dead, over every emitter run of every
        batch; also checks one row per task in --csv and no start after a done record."""
        history = History(BrokerSettings(urls=[self.setup.url]), QueueSpec(self.queue),
                          self.dir / "reports")
        reported: set[str] = set()
        self.report_incomplete = False
        self.rows_checked = self.late_starts = self.after_done_time = 0
        for batch in self.batches:
            for run_id in batch.run_ids:
                records = history.run_records(run_id)
                self.report_incomplete |= bool(RunReport(records(), run_id,
                                                         self.queue).completeness())
                _table, rows = task_rows(run_id, records)
                per_task = Counter(row["row"] for row in rows)
                self.rows_checked += len(per_task)
                twice = [row for row, n in per_task.items() if n > 1]
                if twice:
                    self.violations.append(f"run {run_id}: {len(twice)} tasks with more than "
                                           f"one row in --csv, e.g. rows {twice[:5]}")
                reported |= {f"{batch.path.name}:{row}" for row in per_task}
                self.check_no_start_after_done(run_id, records())
        return reported

    def check_no_start_after_done(self, run_id: str, records) -> None:
        """No attempt may be started by a worker that had read the task's done record: each
        record says how far its worker had read the stream when it decided to run it (seen),
        each done record where it is in the stream (offset). Also counted, not a violation:
        attempts that started after a done record's time but before their worker could read it
        (a record not yet confirmed, or a copy taken while the first still ran)."""
        done_at: dict[object, tuple[int, float]] = {}
        attempts: list[tuple[object, int | None, float]] = []
        for record in records:
            if (record.get("kind") or "task") != "task":
                continue
            key = record.get("message_id")
            attempts.append((key, record.get("seen"), float(record.get("started") or 0)))
            offset = record.get("offset")
            if record.get("outcome") == "done" and isinstance(offset, int):
                first = done_at.get(key)
                if first is None or offset < first[0]:
                    done_at[key] = (offset, float(record.get("finished") or 0))
        late = [key for key, seen, _ in attempts
                if isinstance(seen, int) and key in done_at and seen > done_at[key][0]]
        self.late_starts += len(late)
        self.after_done_time += sum(1 for key, _, started in attempts
                                    if key in done_at and started > done_at[key][1])
        if late:
            self.violations.append(f"run {run_id}: {len(late)} attempts started by a worker that "
                                   f"had read the task's done record, e.g. {late[:3]}")

    def print_table(self, counts: list[tuple[str, object]]) -> None:
        rows = [
            ("seed", self.seed), ("setup", self.setup.kind),
            ("faults", ", ".join(f"{k} {n}" for k, n in sorted(self.faults.items())
                                 if k != "emit")),
            ("faults that found nothing to hit",
             ", ".join(f"{k} {n}" for k, n in sorted(self.skipped.items())) or "none"),
            *counts,
            ("emitter runs", sum(len(b.emitters) for b in self.batches)),
            ("worker processes", len(self.workers)),
            ("harness errors", len(self.harness_errors)),
        ]
        print("\n| what | count |\n|---|---|")
        for what, value in rows:
            print(f"| {what} | {value} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=None, help="default: a new one (printed)")
    parser.add_argument("--duration", type=float, default=180.0,
                        help="seconds of faults (default: %(default)s)")
    parser.add_argument("--setup", choices=SETUPS, default=None,
                        help="default: drawn from the seed")
    parser.add_argument("--keep", action="store_true", help="keep the run's folder")
    args = parser.parse_args()
    if not shutil.which("rabbitmq-server"):
        print("chaos needs rabbitmq-server (throwaway nodes)", file=sys.stderr)
        return 2
    # SIGTERM (a CI timeout, kill) ends the run through its finally: nodes and workers stopped.
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(143))
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(10**6)
    setup = args.setup or random.Random(seed).choice(["single", "cluster"])
    workdir = Path(tempfile.mkdtemp(prefix=f"chaos-{seed}-"))
    try:
        code = Chaos(seed, args.duration, setup, workdir).run()
    except BaseException:
        print(f"chaos run failed (seed {seed}); outputs in {workdir}", file=sys.stderr)
        raise
    if code or args.keep:
        print(f"outputs kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
